"""`pulse-server install-plugin gimp`: folder layout, executable bit, client copy, per-OS folders, vendoring."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pulse_server.commands import plugins
from pulse_server.editors import common, gimp
from pulse_server.errors import PulseError


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pulse-server")
    plugins.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_install_lays_out_an_executable_plugin_with_its_client(tmp_path, capsys):
    assert _cli(["install-plugin", "gimp", "--dest", str(tmp_path), "--target", "linux"]) == 0
    folder = tmp_path / "pulse-depixelate"
    main = folder / "pulse-depixelate.py"  # GIMP 3 needs folder and file of the same name
    assert main.is_file() and os.access(main, os.X_OK)
    assert main.read_text().startswith("#!/usr/bin/env python3")
    assert (folder / "pulse_gimp.py").is_file()
    assert (folder / "protocol" / "client.py").exists() or (folder / "protocol" / "__init__.py").is_file()
    assert not list(folder.rglob("__pycache__"))
    out = capsys.readouterr().out
    assert str(folder) in out and "Filters" in out
    # The copied plug-in logic and client import together with only the standard library + pyzmq/msgpack.
    code = "import pulse_gimp, protocol.layers; print(pulse_gimp.PROC_NAME)"
    res = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(folder)!r}); {code}"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.stdout.strip() == "python-fu-pulse-depixelate", res.stderr
    # Reinstalling replaces the folder; uninstalling removes it.
    (folder / "stale.txt").write_text("old")
    assert _cli(["install-plugin", "gimp", "--dest", str(tmp_path), "--target", "linux"]) == 0
    assert not (folder / "stale.txt").exists()
    assert _cli(["uninstall-plugin", "gimp", "--dest", str(tmp_path)]) == 0
    assert not folder.exists()
    assert _cli(["uninstall-plugin", "gimp", "--dest", str(tmp_path)]) == 0  # nothing left: still fine
    assert "nothing to remove" in capsys.readouterr().out


def test_system_python_check_names_missing_packages(tmp_path):
    report = gimp.install_plugin(tmp_path, target="linux", system_python=sys.executable)
    assert report.missing == [] and report.vendored == []  # this venv has pyzmq and msgpack
    bare = tmp_path / "bare-python"
    bare.write_text("#!/bin/sh\nexit 1\n")  # a Python that can import nothing
    bare.chmod(0o755)
    assert common.missing_system_deps(str(bare)) == ["python3-zmq", "python3-msgpack"]
    assert common.missing_system_deps(str(tmp_path / "no-such-python")) == ["python3-zmq", "python3-msgpack"]


def test_default_plugin_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert gimp.plugins_dir("linux") == tmp_path / ".config/GIMP/3.0/plug-ins"
    monkeypatch.setenv("XDG_CONFIG_HOME", "cfg")  # relative: invalid per the XDG spec, ignored
    assert gimp.plugins_dir("linux") == tmp_path / ".config/GIMP/3.0/plug-ins"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert gimp.plugins_dir("linux") == tmp_path / "cfg/GIMP/3.0/plug-ins"
    assert gimp.plugins_dir("flatpak") == tmp_path / ".var/app/org.gimp.GIMP/config/GIMP/3.0/plug-ins"
    assert gimp.plugins_dir("macos") == tmp_path / "Library/Application Support/GIMP/3.0/plug-ins"
    monkeypatch.setenv("APPDATA", str(tmp_path / "Roaming"))
    assert gimp.plugins_dir("windows") == tmp_path / "Roaming/GIMP/3.0/plug-ins"
    with pytest.raises(PulseError):
        gimp.plugins_dir("amiga")
    # Installing without --dest goes to the per-user folder.
    assert gimp.install_plugin(target="linux").dest == tmp_path / "cfg/GIMP/3.0/plug-ins/pulse-depixelate"


def test_plugin_folder_follows_the_newest_gimp_3_series(monkeypatch, tmp_path):
    # GIMP creates its user folder per major.minor series on first run; a user on 3.2 has GIMP/3.2.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    for name in ("2.10", "3.0", "3.2", "3.x-backup"):
        (tmp_path / "cfg/GIMP" / name).mkdir(parents=True)
    (tmp_path / "cfg/GIMP/3.10").write_text("not a folder")
    assert gimp.plugins_dir("linux") == tmp_path / "cfg/GIMP/3.2/plug-ins"
    (tmp_path / "cfg/GIMP/3.12").mkdir()
    assert gimp.plugins_dir("linux") == tmp_path / "cfg/GIMP/3.12/plug-ins"


def test_copy_client_replaces_an_old_copy(tmp_path):
    (tmp_path / "protocol").mkdir()
    (tmp_path / "protocol" / "old.py").write_text("")
    target = common.copy_client(tmp_path)
    assert (target / "layers.py").is_file() and not (target / "old.py").exists()


def test_bad_python_version_is_refused(tmp_path):
    with pytest.raises(PulseError, match="bad Python version"):
        common.vendor_wheels(tmp_path, "three", ["win_amd64"])


def test_windows_install_vendors_wheels_for_gimps_python(tmp_path):
    """Real pip download of pyzmq + msgpack wheels for CPython 3.12 on win_amd64, unpacked into _vendor."""
    report = gimp.install_plugin(tmp_path, target="windows", python_version="3.12")
    names = report.vendored
    assert any(n.startswith("pyzmq-") and "win_amd64" in n for n in names), names
    assert any(n.startswith("msgpack-") for n in names), names
    vendor = report.dest / common.VENDOR_DIR
    assert (vendor / "zmq" / "__init__.py").is_file() and (vendor / "msgpack" / "__init__.py").is_file()
    assert list((vendor / "zmq").rglob("*.pyd")), "pyzmq's compiled backend must be in the vendored copy"
    assert report.missing == []


def test_bundled_python_version_is_read_from_the_gimp_installation(monkeypatch, tmp_path):
    monkeypatch.setenv("ProgramFiles", str(tmp_path / "none"))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "Local"))
    assert gimp.bundled_python_version("windows") == gimp.DEFAULT_BUNDLED_PYTHON["windows"]
    (tmp_path / "Local/Programs/GIMP 3/lib/python3.13").mkdir(parents=True)
    assert gimp.bundled_python_version("windows") == "3.13"


# ---------------------------------------------------------------------------------------------- offline / stalled index


@pytest.fixture
def unreachable_index(monkeypatch):
    """pip sees only a loopback index on a port nobody listens on (this machine's pip.conf and find-links off)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _only_index(monkeypatch, f"http://127.0.0.1:{port}/simple")


@pytest.fixture
def stalled_index(monkeypatch):
    """A loopback 'mirror' that accepts connections (kernel backlog) but never answers a byte."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    _only_index(monkeypatch, f"http://127.0.0.1:{server.getsockname()[1]}/simple")
    yield
    server.close()


def _only_index(monkeypatch, url: str) -> None:
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no pip.conf: no extra indexes, no find-links
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", url)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")


def test_offline_bundled_install_completes_and_says_how_to_finish(tmp_path, capsys, unreachable_index):
    """Offline, a Windows/macOS/Flatpak install still completes (exit 0) and says how to vendor pyzmq later."""
    assert _cli(["install-plugin", "gimp", "--dest", str(tmp_path), "--target", "windows",
                 "--python-version", "3.12"]) == 0
    folder = tmp_path / "pulse-depixelate"
    main = folder / "pulse-depixelate.py"
    assert main.is_file() and os.access(main, os.X_OK) and (folder / "protocol" / "client.py").is_file()
    assert not (folder / common.VENDOR_DIR).exists()
    out, err = capsys.readouterr()
    assert "installed the GIMP 3 plug-in" in out
    assert "warning:" in err and "pyzmq and msgpack" in err and "could not be vendored" in err
    assert f"pulse-server install-plugin gimp --target windows --python-version 3.12 --dest {tmp_path}" in err


def test_bad_python_version_is_refused_before_copying(tmp_path):
    with pytest.raises(PulseError, match="bad Python version"):
        gimp.install_plugin(tmp_path, target="windows", python_version="three")
    assert list(tmp_path.iterdir()) == []


def test_pip_download_gives_up_on_a_stalled_mirror(tmp_path, stalled_index):
    import time

    start = time.monotonic()
    with pytest.raises(PulseError) as err:  # per-socket timeout (1 s) x (1 + retries)
        common.vendor_wheels(tmp_path, "3.12", ["win_amd64"], timeout=1)
    assert err.value.code == "VENDOR_FAILED" and time.monotonic() - start < 30
    start = time.monotonic()
    with pytest.raises(PulseError, match="did not finish within 2 s") as err:  # the hard cap on the whole run
        common.vendor_wheels(tmp_path, "3.12", ["win_amd64"], timeout=60, total_timeout=2)
    assert err.value.code == "VENDOR_FAILED" and time.monotonic() - start < 15
    assert not (tmp_path / common.VENDOR_DIR).exists()


# ---------------------------------------------------------------------------------------------- Flatpak sandbox

OVERRIDE = "flatpak override --user --filesystem=xdg-run/pulse-depixelate:create org.gimp.GIMP"


@pytest.fixture
def fake_flatpak(tmp_path, monkeypatch):
    """A `flatpak` on PATH that records its arguments (Flatpak itself cannot run in this container);
    FAKE_FLATPAK_EXIT makes it fail."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    log = tmp_path / "flatpak-args"
    (bindir / "flatpak").write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > "{log}"\n[ -z "$FAKE_FLATPAK_EXIT" ] || echo "error: nope" >&2\n'
        'exit "${FAKE_FLATPAK_EXIT:-0}"\n')
    (bindir / "flatpak").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_flatpak_install_prints_the_override_and_restart(tmp_path, capsys, unreachable_index, fake_flatpak):
    dest = tmp_path / "plug-ins"
    assert _cli(["install-plugin", "gimp", "--dest", str(dest), "--target", "flatpak"]) == 0
    out = capsys.readouterr().out
    assert OVERRIDE in out and "restart GIMP" in out and "--flatpak-override" in out
    assert not fake_flatpak.exists()  # only printed, not run
    assert (dest / "pulse-depixelate" / "pulse-depixelate.py").is_file()


def test_flatpak_override_runs_flatpak_for_the_user(tmp_path, capsys, unreachable_index, fake_flatpak, monkeypatch):
    dest = tmp_path / "plug-ins"
    # --flatpak-override implies the flatpak target
    assert _cli(["install-plugin", "gimp", "--dest", str(dest), "--flatpak-override"]) == 0
    assert fake_flatpak.read_text().splitlines() == OVERRIDE.split()[1:]
    out = capsys.readouterr().out
    assert "restart GIMP" in out and (dest / "pulse-depixelate" / "pulse-depixelate.py").is_file()

    monkeypatch.setenv("FAKE_FLATPAK_EXIT", "1")  # flatpak fails: say so (exit 2 via the CLI), plug-in stays
    with pytest.raises(PulseError, match="error: nope") as err:
        _cli(["install-plugin", "gimp", "--dest", str(dest), "--flatpak-override"])
    assert err.value.code == "FLATPAK_OVERRIDE" and OVERRIDE in err.value.message
    assert (dest / "pulse-depixelate" / "pulse-depixelate.py").is_file()

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no flatpak at all: the command to run by hand
    with pytest.raises(PulseError, match="not on PATH") as err:
        _cli(["install-plugin", "gimp", "--dest", str(dest), "--flatpak-override"])
    assert OVERRIDE in err.value.message and "restart GIMP" in err.value.message

    with pytest.raises(PulseError, match="not --target windows"):
        _cli(["install-plugin", "gimp", "--dest", str(dest), "--target", "windows", "--flatpak-override"])


def test_readme_gives_the_flatpak_override():
    readme = (Path(__file__).resolve().parents[2] / "gimp_plugin" / "README.md").read_text(encoding="utf-8")
    assert OVERRIDE in readme and OVERRIDE.replace("org.gimp.GIMP", "org.kde.krita") in readme
