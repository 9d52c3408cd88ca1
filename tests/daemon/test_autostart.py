"""Autostart entries: written into a temporary HOME, parsed back, removed again.

systemd and XDG entries are installed through the real CLI (`main_server`) with the real interpreter and
probed the way a login would run them. The macOS and Windows writers run here with their platform and
interpreter passed explicitly. Real parsers check the quoting where this machine has them:
`systemd-analyze verify` (the unit, including a program path with a space and `%`), `gio launch` (GLib
runs the .desktop Exec line and we read back the argv), `plistlib`.

systemd's user manager cannot run in this container (PID 1 is not systemd), so one test puts a
recording `systemctl` stand-in on PATH to check which commands install/uninstall issue; the no-bus path
is checked against the real systemctl.
"""

from __future__ import annotations

import configparser
import json
import os
import plistlib
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pulse_server import service
from pulse_server.cli import main_server
from pulse_server.service import DaemonOptions, common, launchd, systemd, windows, xdg
from pulse_server.service.common import AutostartError, LaunchCommand

NASTY = ['a b', '100%', '$HOME', 'q"uote', 'back\\slash', 'tick`', "it's", ';', 'semi;colon', 'ünï', '']


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private HOME with nothing in it; XDG_CONFIG_HOME unset so the ~/.config default is used.

    The user manager is made unreachable (empty runtime dir, no session bus) so that no test can touch
    the real systemd user session of whoever runs the suite; the tests that need one bring a stand-in.
    """
    h = tmp_path / "home"
    h.mkdir()
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("APPDATA", str(h / "AppData" / "Roaming"))
    monkeypatch.delenv("PULSE_ENDPOINT", raising=False)
    return h


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())


def _expected_program() -> tuple[str, ...]:
    """What the entry must run for the interpreter running these tests (its pip script or `-m`)."""
    script = Path(sys.executable).parent / "pulse-server"
    if script.is_file():
        first = script.read_text(errors="replace").splitlines()[0]
        if Path(first[2:].split()[0]).parent == Path(sys.executable).parent:
            return (str(script),)
    return (os.path.abspath(sys.executable), "-m", "pulse_server.service")


def _ini(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp.optionxform = str  # keys are case-sensitive in both formats
    cp.read_string(path.read_text(encoding="utf-8"))
    return cp


# -- test-side readers of each format's quoting, written from the specs -------------------------------

def _systemd_split(line: str) -> list[str]:
    """systemd.service "Command lines": specifiers first (only %% here), then words with C escapes, then $$."""
    # Specifiers: `%%` is a percent sign; any other `%x` would be replaced by systemd, so it is a bug here.
    assert "%" not in line.replace("%%", ""), f"unescaped specifier in {line!r}"
    line = line.replace("%%", "%")
    words, i = [], 0
    while i < len(line):
        if line[i].isspace():
            i += 1
            continue
        word, quote = "", None
        while i < len(line) and (quote or not line[i].isspace()):
            c = line[i]
            if c == "\\" and i + 1 < len(line):
                word += {"n": "\n", "t": "\t"}.get(line[i + 1], line[i + 1])
                i += 2
                continue
            if c in "\"'" and quote in (None, c):
                quote = None if quote else c
            else:
                word += c
            i += 1
        words.append(word.replace("$$", "$"))
    return words


def _crt_split(cmdline: str) -> list[str]:
    """The Microsoft C runtime's argv rules (what pythonw.exe sees): 2n backslashes + quote -> n and a
    toggle, 2n+1 -> n and a literal quote, other backslashes literal."""
    args, cur, in_q, has, i = [], "", False, False, 0
    while i < len(cmdline):
        c = cmdline[i]
        if c == "\\":
            n = len(cmdline[i:]) - len(cmdline[i:].lstrip("\\"))
            if i + n < len(cmdline) and cmdline[i + n] == '"':
                cur += "\\" * (n // 2)
                if n % 2:
                    cur += '"'
                    i += n + 1
                else:
                    i += n
                continue
            cur += "\\" * n
            i += n
            continue
        if c == '"':
            in_q, has = not in_q, True
        elif c in " \t" and not in_q:
            if cur or has:
                args.append(cur)
            cur, has = "", False
        else:
            cur += c
        i += 1
    if cur or has:
        args.append(cur)
    return args


# -- the command line ---------------------------------------------------------------------------------

def test_command_is_the_current_interpreters_pulse_server():
    cmd = common.daemon_command(DaemonOptions(endpoint="tcp://127.0.0.1:5999", weights="/w.pt", device="cpu"))
    assert cmd.program == _expected_program()
    assert cmd.args == ("run", "--endpoint", "tcp://127.0.0.1:5999", "--weights", "/w.pt", "--device", "cpu")
    # Nothing optional given: the daemon's own defaults apply.
    assert common.daemon_command(DaemonOptions()).args == ("run",)


def test_script_is_used_only_when_its_shebang_is_this_interpreters(tmp_path):
    bin_ = tmp_path / "env" / "bin"
    bin_.mkdir(parents=True)
    python = bin_ / "python"
    python.symlink_to(sys.executable)
    script = bin_ / "pulse-server"
    script.write_text(f"#!{bin_ / 'python3'}\nimport sys\n")
    script.chmod(0o755)
    assert common.server_command(python, "linux") == (str(script),)
    # A script written for another environment's Python is not ours: fall back to `-m`.
    script.write_text("#!/opt/other/bin/python3\n")
    assert common.server_command(python, "linux") == (str(python), "-m", "pulse_server.service")
    script.chmod(0o644)
    script.write_text(f"#!{bin_ / 'python3'}\n")
    assert common.server_command(python, "linux") == (str(python), "-m", "pulse_server.service")


def test_module_entry_runs_pulse_server_from_home(home):
    # What the `-m` form of every entry (and all of Windows) runs; from HOME, so not via this checkout.
    env = common.login_like_env()
    proc = subprocess.run([sys.executable, "-m", "pulse_server.service", "--version"], cwd=home, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("pulse-server ")


def test_bad_interpreters_fail_clearly_and_write_nothing(home, tmp_path, monkeypatch):
    missing = tmp_path / "gone" / "python3"
    with pytest.raises(AutostartError, match="does not exist") as e:
        service.install("xdg", python=str(missing), platform="linux", say=lambda s: None)
    assert e.value.code == "BAD_INTERPRETER"

    not_exec = tmp_path / "ne" / "python3"
    not_exec.parent.mkdir()
    not_exec.write_text("")
    with pytest.raises(AutostartError, match="not executable"):
        service.install("xdg", python=str(not_exec), platform="linux", say=lambda s: None)

    # A real Python without pulse installed (as when running from a checkout via PYTHONPATH): the
    # login-like probe (from HOME, no PYTHONPATH) catches it before anything is written.
    venv = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    bare = venv / "bin" / "python"
    monkeypatch.setenv("PYTHONPATH", str(Path(service.__file__).parents[2]))  # importable here, not at login
    with pytest.raises(AutostartError, match="No module named") as e:
        service.install("xdg", python=str(bare), platform=sys.platform, say=lambda s: None)
    assert e.value.code == "BAD_INTERPRETER" and "pip install" in e.value.message
    assert _files(home) == []


def test_weights_are_made_absolute_and_must_exist(home, tmp_path, monkeypatch):
    w = tmp_path / "prior.pt"
    w.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert common.resolve_weights("prior.pt") == str(w.resolve())
    assert common.resolve_weights("ffhq-1024") == "ffhq-1024"  # a registry name passes through
    with pytest.raises(AutostartError, match="weights file not found") as e:
        common.resolve_weights("missing.pt")
    assert e.value.code == "NO_WEIGHTS"


# -- systemd ------------------------------------------------------------------------------------------

def _exec_start(unit: Path) -> list[str]:
    return _systemd_split(_ini(unit)["Service"]["ExecStart"])


def test_systemd_unit_via_cli(home, tmp_path, capsys):
    weights = tmp_path / "tiny.pt"
    weights.write_bytes(b"not read by install")
    session = systemd.user_session()
    assert not session.available  # the `home` fixture hides any real user manager
    rc = main_server(["install-autostart", "--method", "systemd", "--weights", str(weights),
                      "--endpoint", "tcp://127.0.0.1:5871", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0, out
    unit = home / ".config" / "systemd" / "user" / "pulse-server.service"
    cp = _ini(unit)
    argv = _exec_start(unit)
    program = _expected_program()
    assert tuple(argv[: len(program)]) == program
    assert argv[len(program):] == ["run", "--endpoint", "tcp://127.0.0.1:5871", "--weights", str(weights),
                                   "--device", "cpu"]
    assert cp["Service"]["Restart"] == "on-failure"
    assert cp["Install"]["WantedBy"] == "default.target"
    # No user manager here: systemctl is skipped with a hint, and the [Install] link is made by hand.
    assert "hint:" in out and "systemctl" in out and session.reason in out
    link = home / ".config" / "systemd" / "user" / "default.target.wants" / "pulse-server.service"
    assert link.is_symlink() and link.resolve() == unit.resolve()
    if shutil.which("systemd-analyze"):
        proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr

    assert main_server(["uninstall-autostart"]) == 0
    assert not unit.exists() and not link.is_symlink()
    assert main_server(["uninstall-autostart"]) == 0  # idempotent
    assert "nothing to remove" in capsys.readouterr().out
    assert _files(home) == []


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_quoting_survives_systemds_own_parser(tmp_path):
    # A venv in a folder with a space and `%h` (a real specifier: the home folder): systemd must find the
    # interpreter (verify checks it exists), so a missed quote or an unescaped specifier fails here.
    bin_ = tmp_path / "my env 100%h" / "bin"
    bin_.mkdir(parents=True)
    (bin_ / "python3").symlink_to(sys.executable)
    options = DaemonOptions(weights="/w/" + "|".join(NASTY[:-1]), endpoint="ipc:///run/x$y")
    cmd = common.daemon_command(options, python=bin_ / "python3", platform="linux")
    unit = tmp_path / "pulse-server.service"
    unit.write_text(systemd.render(cmd))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert _exec_start(unit) == cmd.argv
    for arg in NASTY:  # one word each, read back unchanged
        assert _systemd_split(systemd.quote_arg(arg)) == [arg] or (arg == "" and systemd.quote_arg(arg) == '""')


def _fake_systemctl(tmp_path: Path, monkeypatch, fail_on: str = "", dies: bool = False) -> Path:
    """A recording stand-in for systemctl (the real user manager cannot run in this container): it logs
    its arguments, and `is-active` answers "active" once `enable --now` ran (or "failed" with `dies`)."""
    bin_ = tmp_path / "fakebin"
    bin_.mkdir()
    log, started = tmp_path / "systemctl.log", tmp_path / "started"
    script = bin_ / "systemctl"
    script.write_text(f"""#!{sys.executable}
import os, sys
args = sys.argv[1:]
open({str(log)!r}, "a").write(" ".join(args) + "\\n")
if {fail_on!r} and {fail_on!r} in " ".join(args):
    print("Failed to enable unit: Access denied", file=sys.stderr)
    sys.exit(1)
if args[:3] == ["--user", "enable", "--now"]:
    open({str(started)!r}, "w").close()
if args[:2] == ["--user", "is-active"]:
    state = ({'"failed"' if dies else '"active"'}) if os.path.exists({str(started)!r}) else "inactive"
    if "--quiet" not in args:
        print(state)
    sys.exit(0 if state == "active" else 3)
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(systemd, "START_SETTLE_S", 0.05)  # the stand-in's state is settled at once
    return log


def test_systemd_session_enables_and_disables(home, tmp_path, monkeypatch, capsys):
    log = _fake_systemctl(tmp_path, monkeypatch)
    assert systemd.user_session().available
    log.write_text("")
    assert main_server(["install-autostart"]) == 0  # auto: a reachable session means systemd
    unit = home / ".config" / "systemd" / "user" / "pulse-server.service"
    assert unit.is_file()
    assert "enabled and started" in capsys.readouterr().out
    assert log.read_text().splitlines() == [
        "--user show-environment", "--user is-active --quiet pulse-server.service",
        "--user daemon-reload", "--user enable --now pulse-server.service",
        "--user is-active pulse-server.service"]
    # Installing again over a running daemon restarts it so the new flags apply.
    log.write_text("")
    assert main_server(["install-autostart", "--method", "systemd", "--device", "cpu"]) == 0
    assert "--user try-restart pulse-server.service" in log.read_text().splitlines()
    log.write_text("")
    assert main_server(["uninstall-autostart"]) == 0
    assert not unit.exists()
    calls = log.read_text().splitlines()
    assert calls.index("--user disable --now pulse-server.service") < calls.index("--user daemon-reload")


def test_systemd_daemon_dying_at_start_is_reported(home, tmp_path, monkeypatch, capsys):
    _fake_systemctl(tmp_path, monkeypatch, dies=True)
    assert main_server(["install-autostart", "--method", "systemd"]) == 0  # the entry itself is fine
    out = capsys.readouterr().out
    assert "warning:" in out and "failed" in out and "journalctl --user -u pulse-server.service" in out


def test_systemd_enable_failure_is_a_clear_error(home, tmp_path, monkeypatch, capsys):
    _fake_systemctl(tmp_path, monkeypatch, fail_on="enable")
    assert main_server(["install-autostart", "--method", "systemd"]) == 2
    err = capsys.readouterr().err
    assert "pulse-server: error:" in err and "enable --now" in err and "Access denied" in err


# -- XDG autostart ------------------------------------------------------------------------------------

def _desktop_unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"s": " ", "n": "\n", "t": "\t", "r": "\r"}.get(m[1], m[1]), value)


def _check_exec_spec(value: str) -> None:
    """Desktop Entry spec, "The Exec key", strictly (GLib is lenient): reserved characters only inside
    quotes, and inside quotes every `"`, `` ` ``, `$` and `\\` escaped; no lone `%`."""
    assert "%" not in value.replace("%%", ""), value
    i, quoted = 0, False
    while i < len(value):
        c = value[i]
        if quoted and c == "\\":
            assert value[i + 1] in '"`$\\', f"bad escape in {value!r}"
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif quoted:
            assert c not in "`$", f"unescaped {c!r} inside quotes in {value!r}"
        else:
            assert c not in "\t\n'\\><~|&;$*?#`()", f"unquoted reserved {c!r} in {value!r}"
        i += 1
    assert not quoted, value


def test_xdg_desktop_entry_via_cli(home, tmp_path, monkeypatch, capsys):
    xdg_home = tmp_path / "cfg"  # XDG_CONFIG_HOME is honoured
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg_home))
    monkeypatch.setenv("PULSE_ENDPOINT", "tcp://127.0.0.1:5872")  # set now -> written down for login
    assert main_server(["install-autostart", "--method", "xdg"]) == 0
    entry = xdg_home / "autostart" / "pulse-server.desktop"
    d = _ini(entry)["Desktop Entry"]
    program = _expected_program()
    assert d["Type"] == "Application"
    assert d["X-GNOME-Autostart-enabled"] == "true" and d["Hidden"] == "false"
    assert os.access(_desktop_unescape(d["TryExec"]), os.X_OK) and _desktop_unescape(d["TryExec"]) == program[0]
    argv = shlex.split(_desktop_unescape(d["Exec"]).replace("%%", "%"))
    assert argv == [*program, "run", "--endpoint", "tcp://127.0.0.1:5872"]
    assert "autostart (xdg) runs:" in capsys.readouterr().out

    # Switching to systemd replaces the desktop entry (two starters would race for the lock).
    assert main_server(["install-autostart", "--method", "systemd"]) == 0
    assert not entry.exists()
    assert (xdg_home / "systemd" / "user" / "pulse-server.service").is_file()
    assert main_server(["uninstall-autostart", "--method", "auto"]) == 0
    assert _files(xdg_home) == []


@pytest.mark.skipif(not shutil.which("gio"), reason="gio (GLib) not installed")
def test_xdg_exec_line_survives_glibs_parser(tmp_path):
    # GLib launches the entry; a recorder script writes down the argv it was given.
    folder = tmp_path / "a b"
    folder.mkdir()
    recorder = folder / "rec"
    out = tmp_path / "argv.json"
    recorder.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(out)!r}, 'w'))\n")
    recorder.chmod(0o755)
    args = ("run", *NASTY)
    entry = tmp_path / "pulse-server.desktop"
    entry.write_text(xdg.render(LaunchCommand((str(recorder),), args)), encoding="utf-8")
    _check_exec_spec(_desktop_unescape(_ini(entry)["Desktop Entry"]["Exec"]))
    proc = subprocess.run(["gio", "launch", str(entry)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    deadline = time.monotonic() + 30
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)
    assert json.loads(out.read_text()) == list(args)


# -- macOS LaunchAgent --------------------------------------------------------------------------------

def test_launchd_plist(home, tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    res = service.install("launchd", DaemonOptions(weights=str(weights)), platform="darwin", say=lambda s: None)
    path = home / "Library" / "LaunchAgents" / "org.pulse-depixelate.pulse-server.plist"
    assert res.method == "launchd" and res.path == path
    pl = plistlib.loads(path.read_bytes())
    program = _expected_program()
    assert pl["Label"] == "org.pulse-depixelate.pulse-server"
    assert pl["ProgramArguments"] == [*program, "run", "--weights", str(weights)]
    assert pl["RunAtLoad"] is True
    assert pl["KeepAlive"] == {"SuccessfulExit": False}  # restart after a crash, not after `stop`
    path_dirs = pl["EnvironmentVariables"]["PATH"].split(":")
    assert path_dirs[0] == os.path.dirname(program[0]) and "/usr/bin" in path_dirs
    logs = home / "Library" / "Logs" / "pulse-depixelate"
    assert Path(pl["StandardOutPath"]).parent == logs and Path(pl["StandardErrorPath"]).parent == logs
    assert logs.is_dir()  # launchd creates the files but not the folder
    assert not stat.S_IMODE(path.stat().st_mode) & 0o022  # launchd ignores group/world-writable plists

    # The per-user TMPDIR (home of the default ipc socket on macOS) is pinned when installing on a Mac.
    pinned = plistlib.loads(launchd.render(res.command, {"TMPDIR": "/var/folders/ab/cd/T/"}))
    assert pinned["EnvironmentVariables"]["TMPDIR"] == "/var/folders/ab/cd/T/"
    assert launchd.login_env("darwin") == ({"TMPDIR": os.environ["TMPDIR"]} if sys.platform == "darwin"
                                           and os.environ.get("TMPDIR") else {})

    assert service.uninstall("auto", platform="darwin", say=lambda s: None) == ["launchd"]
    assert not path.exists()
    assert service.uninstall("launchd", platform="darwin", say=lambda s: None) == []


# -- Windows Startup folder ---------------------------------------------------------------------------

def _windows_python(root: Path) -> Path:
    scripts = root / "Scripts"
    scripts.mkdir(parents=True)
    for name in ("python.exe", "pythonw.exe"):
        (scripts / name).write_bytes(b"MZ")
    return scripts / "python.exe"


def _start_line(cmd_file: Path) -> list[str]:
    raw = cmd_file.read_bytes()
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")  # batch files want CRLF
    line = next(ln for ln in raw.decode("utf-8").splitlines() if ln.startswith("start "))
    prefix = 'start "pulse-server" '
    assert line.startswith(prefix)
    return _crt_split(line[len(prefix):].replace("%%", "%"))


def test_windows_startup_entry_runs_pythonw(home, tmp_path):
    python = _windows_python(tmp_path / "my venv ü")
    res = service.install("auto", DaemonOptions(endpoint="tcp://127.0.0.1:5873", weights="ffhq-1024"),
                          python=str(python), platform="win32", say=lambda s: None)
    startup = home / "AppData" / "Roaming" / "Microsoft" / "Windows" / "Start Menu" / "Programs" / "Startup"
    entry = startup / "pulse-server.cmd"
    assert res.method == "windows" and res.path == entry
    pythonw = str(python.with_name("pythonw.exe"))
    assert _start_line(entry) == [pythonw, "-m", "pulse_server.service", "run", "--endpoint",
                                  "tcp://127.0.0.1:5873", "--weights", "ffhq-1024"]
    text = entry.read_text(encoding="utf-8")
    assert "chcp 65001" in text  # the path is not ASCII
    assert service.uninstall(platform="win32", say=lambda s: None) == ["windows"]
    assert _files(home) == []


def test_windows_quoting_reads_back_through_the_c_runtime(tmp_path):
    args = ("run", "--weights", *[a for a in NASTY if '"' not in a], "C:\\dir with space\\", "x^y&z|w")
    line = " ".join(windows.quote_arg(a) for a in args).replace("%%", "%")
    assert _crt_split(line) == list(args)
    with pytest.raises(AutostartError, match="double quote"):
        windows.quote_arg('q"uote')


def test_windows_without_pythonw_fails(home, tmp_path):
    python = _windows_python(tmp_path / "v")
    python.with_name("pythonw.exe").unlink()
    with pytest.raises(AutostartError, match="pythonw.exe does not exist"):
        service.install("windows", python=str(python), platform="win32", say=lambda s: None)


# -- dry run, method choice ---------------------------------------------------------------------------

@pytest.mark.parametrize("method,platform", [("systemd", "linux"), ("xdg", "linux"), ("launchd", "darwin"),
                                             ("windows", "win32")])
def test_dry_run_writes_nothing(home, tmp_path, method, platform):
    python = str(_windows_python(tmp_path / "v")) if platform == "win32" else None
    said: list[str] = []
    res = service.install(method, python=python, platform=platform, dry_run=True, say=said.append)
    assert _files(home) == []
    assert any(s.startswith(f"would write {res.path}") for s in said)
    # ...and the same for removal of a real entry.
    service.install(method, python=python, platform=platform, say=lambda s: None)
    before = _files(home)
    said.clear()
    service.uninstall(method, platform=platform, dry_run=True, say=said.append)
    assert _files(home) == before and any(s.startswith("would remove") for s in said)


def test_dry_run_via_cli_prints_the_entry(home, capsys):
    assert main_server(["install-autostart", "--method", "xdg", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would write" in out and "Exec=" in out and "autostart (xdg) would run:" in out
    assert _files(home) == []


def test_auto_follows_the_systemd_user_session(home, tmp_path, monkeypatch):
    if sys.platform.startswith("linux"):
        assert service.choose_method("auto", "linux")[0] == "xdg"  # no user manager reachable
        _fake_systemctl(tmp_path, monkeypatch)
        assert service.choose_method("auto", "linux")[0] == "systemd"
    assert service.choose_method("auto", "darwin")[0] == "launchd"
    assert service.choose_method("auto", "win32")[0] == "windows"


def test_method_of_another_os_is_refused(home, capsys):
    other = "windows" if sys.platform == "darwin" else "launchd"
    assert main_server(["install-autostart", "--method", other]) == 2
    assert "does not apply" in capsys.readouterr().err
    assert main_server(["install-autostart", "--weights", str(home / "missing.pt")]) == 2
    assert "weights file not found" in capsys.readouterr().err
    assert _files(home) == []


# -- end to end: the entry starts a working daemon ---------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("gio"), reason="gio (GLib) not installed")
def test_xdg_entry_starts_a_daemon_that_answers(tmp_path, tiny_weights):
    """Install with the real CLI as a user would, let GLib launch the written entry the way a desktop
    session does, and talk to the daemon it started; then stop it."""
    from daemon_fixture import free_tcp_port, isolated_env

    env = common.login_like_env(isolated_env(tmp_path))  # no PYTHONPATH: only an installed pulse works
    env["PULSE_TOKEN"] = "autostart-test-token"
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    home = env["HOME"]
    server = [*_expected_program()]

    def pulse_server(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*server, *args], env=env, cwd=home, capture_output=True, text=True, timeout=timeout)

    proc = pulse_server("install-autostart", "--method", "xdg", "--endpoint", endpoint, "--weights", str(tiny_weights),
                        "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    entry = Path(env["XDG_CONFIG_HOME"]) / "autostart" / "pulse-server.desktop"
    log = tmp_path / "launched.log"
    try:
        with open(log, "wb") as out:  # the daemon inherits gio's output: a file, not a pipe we would wait on
            launch = subprocess.run(["gio", "launch", str(entry)], env=env, cwd=home, stdout=out,
                                    stderr=subprocess.STDOUT, timeout=60)
        assert launch.returncode == 0, log.read_text()
        deadline = time.monotonic() + 90
        while True:
            status = pulse_server("status", "--endpoint", endpoint, "--timeout", "2")
            if status.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert status.returncode == 0, f"{status.stdout}{status.stderr}\n{log.read_text(errors='replace')}"
        assert "running (pid" in status.stdout
    finally:
        stop = pulse_server("stop", "--endpoint", endpoint, timeout=60)
        assert stop.returncode == 0, stop.stdout + stop.stderr
    assert pulse_server("uninstall-autostart").returncode == 0
    assert not entry.exists()
