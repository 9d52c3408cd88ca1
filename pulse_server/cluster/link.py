"""What the daemon and its Ray bridge process say to each other over their socket pair.

Both ends are this package (a parent and the child it started), so messages are pickled tuples on a
`multiprocessing.connection.Connection`: the first element names the message.

    daemon -> bridge   ("run", actor_id, JobSpec)  ("cancel", actor_id, ticket, reason)  ("stop",)
    bridge -> daemon   ("ready", [actor])  ("error", code, message)  ("actors", [actor])
                       ("event", ticket, kind, payload)  ("final", ticket, actor_id, payload, models)
                       ("lost", ticket, actor_id, reason)  ("down", message)

`actor` is a dict: id, state (starting|idle|busy|dead), host, pid, device, gpus, models.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BridgeConfig:
    address: str  # what ray.init gets: "auto", "HOST:PORT" (a GCS address) or "ray://HOST:PORT" (Ray Client)
    weights: str | None
    device: str = "auto"  # inside each actor: a GPU actor sees its one GPU as cuda:0
    precision: str = "default"
    actor_cpus: float = 1.0
    actors: int = 0  # 0 = one per GPU, else (no GPU) as many as the CPUs allow
    actor_start_timeout: float = 180.0  # an actor imports torch and builds its executor before it answers


def parse_cluster(value: str) -> str:
    """`--cluster` -> the address for ray.init. `ray` and `ray://auto` join the cluster this machine is part
    of (`ray start` ran here; RAY_ADDRESS, Ray's own variable, may name the head); `ray://HOST:PORT` is Ray
    Client (the head's client server, port 10001 by default)."""
    import os

    text = value.strip()
    if text in ("ray", "ray://auto", "auto"):
        return os.environ.get("RAY_ADDRESS") or "auto"
    if text.startswith("ray://") and ":" in text[len("ray://"):]:
        return text
    from ..errors import PulseError

    raise PulseError(f"--cluster {value}: use ray (the Ray cluster this machine joined), ray://auto or "
                     f"ray://HOST:PORT (a Ray head's client port, 10001 by default)", "BAD_CLUSTER")
