"""`pulse-server install-plugin krita` / `uninstall-plugin krita`: files, layout, dependency checks (no Krita needed)."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from pulse_server.cli import main_server
from pulse_server.editors import krita
from pulse_server.errors import PulseError


def test_install_lays_out_a_pykrita_plugin_and_uninstall_removes_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PULSE_KRITA_PYTHON", sys.executable)  # a Python that has zmq + msgpack
    pykrita = tmp_path / "krita" / "pykrita"
    assert main_server(["install-plugin", "krita", "--dest", str(pykrita)]) == 0
    out = capsys.readouterr().out
    assert "Python Plugin Manager" in out and "cannot import" not in out

    desktop = configparser.ConfigParser(interpolation=None)
    desktop.read(pykrita / "pulse_depixelate.desktop", encoding="utf-8")
    entry = desktop["Desktop Entry"]
    assert entry["ServiceTypes"] == "Krita/PythonPlugin" and entry["X-KDE-Library"] == "pulse_depixelate"
    pkg = pykrita / "pulse_depixelate"
    for name in ("__init__.py", "logic.py", "docker.py", "extension.py", "client_path.py",
                 "_client/protocol/client.py", "_client/protocol/layers.py", "server.json"):
        assert (pkg / name).is_file(), name
    assert not list(pkg.rglob("__pycache__")) and not list(pkg.rglob("*.action"))
    action = (tmp_path / "krita" / "actions" / "pulse_depixelate.action").read_text()
    assert '<Action name="pulse_depixelate">' in action and "Depixelate Face (PULSE)" in action

    # the docker's Start button runs this: it must be a working `pulse-server run`
    cmd = json.loads((pkg / "server.json").read_text())["command"]
    assert Path(cmd[0]).exists()
    help_run = subprocess.run(cmd + ["run", "--help"], capture_output=True, text=True, timeout=120)
    assert help_run.returncode == 0 and "--endpoint" in help_run.stdout

    # reinstalling replaces, uninstalling removes everything it put there (and is idempotent)
    (pkg / "stale.py").write_text("")
    krita.install(pykrita)
    assert not (pkg / "stale.py").exists()
    capsys.readouterr()
    assert main_server(["uninstall-plugin", "krita", "--dest", str(pykrita)]) == 0
    assert sorted(p.name for p in pykrita.iterdir()) == []
    assert not (tmp_path / "krita" / "actions" / "pulse_depixelate.action").exists()
    krita.uninstall(pykrita)


def test_installed_plugin_finds_its_client_and_server_command(tmp_path):
    pkg = krita.install(tmp_path / "pykrita", python=krita.PythonTarget("system", python=sys.executable))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from pulse_depixelate import client_path as c; "
            "c.ensure_client_path(); import protocol; print(protocol.__file__); print(c.missing_dependencies()); "
            "print(c.server_command('tcp://127.0.0.1:1'))")
    # -I: the repository's own protocol package must not be what gets imported
    res = subprocess.run([sys.executable, "-I", "-c", code, str(pkg.parent)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert res.returncode == 0, res.stderr
    proto, missing, cmd = res.stdout.splitlines()
    assert Path(proto).is_relative_to(pkg / "_client")
    assert missing == "[]"
    assert cmd.endswith("'run', '--endpoint', 'tcp://127.0.0.1:1']")


def test_system_python_without_zmq_gets_the_package_names(tmp_path, capsys):
    bare = tmp_path / "bare"
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(bare)
    python = bare / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    pkg = krita.install(tmp_path / "pykrita", python=krita.PythonTarget("system", python=str(python)))
    out = capsys.readouterr().out
    assert "python3-zmq" in out and "python3-msgpack" in out
    # ...and the plug-in itself still imports there and says the same in its docker
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import pulse_depixelate; "
            "from pulse_depixelate import client_path as c, logic; m = c.missing_dependencies(); print(m); "
            "print(c.dependency_help(m))")
    res = subprocess.run([str(python), "-I", "-c", code, str(pkg.parent)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert res.returncode == 0, res.stderr
    missing, help_text = res.stdout.splitlines()[:2]
    assert missing == "['zmq', 'msgpack']"
    assert "sudo apt install python3-zmq python3-msgpack" in help_text


@pytest.mark.parametrize("value,kind,versions", [("3.10", "bundled", ("3.10",)), ("system", "system", ()),
                                                  ("/opt/krita/python", "system", ())])
def test_python_override(monkeypatch, value, kind, versions):
    monkeypatch.setenv("PULSE_KRITA_PYTHON", value)
    target = krita.detect_python()
    assert (target.kind, target.versions) == (kind, versions)
    if kind == "bundled":
        assert target.platforms


def test_default_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    if sys.platform.startswith("linux"):
        assert krita.pykrita_dir() == tmp_path / "data" / "krita" / "pykrita"
        monkeypatch.setenv("XDG_DATA_HOME", "data")  # relative: invalid per the XDG spec, ignored
        assert krita.pykrita_dir() == tmp_path / ".local" / "share" / "krita" / "pykrita"


def _other_cpython() -> tuple[str, str] | None:
    """A CPython 3.10/3.13 (Krita's bundled versions) other than this one, standing in for Krita's own."""
    import shutil

    for version in ("3.10", "3.13", "3.12"):
        found = [shutil.which(f"python{version}")] + sorted(
            str(p) for p in (Path.home() / ".pyenv" / "versions").glob(f"{version}.*/bin/python{version}"))
        for exe in filter(None, found):
            if version == f"{sys.version_info[0]}.{sys.version_info[1]}":
                break
            ok = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
            if ok.returncode == 0:
                return version, exe
    return None


@pytest.mark.slow
def test_vendored_wheels_serve_a_bundled_python(tmp_path, capsys):
    """The AppImage/Windows/macOS case: pyzmq + msgpack wheels for *that* Python, importable there alone."""
    other = _other_cpython()
    if other is None:
        pytest.skip("no second CPython (3.10/3.12/3.13) on PATH to stand in for Krita's bundled one")
    version, exe = other
    target = krita.PythonTarget("bundled", versions=(version,), platforms=krita._machine_tags())
    pkg = krita.install(tmp_path / "pykrita", python=target)
    err = capsys.readouterr().err
    if "could not be vendored" in err:
        pytest.skip(f"the package index is not reachable: {err.strip().splitlines()[0]}")
    digits = version.replace(".", "")
    assert (pkg / "_client" / f"py{digits}" / "_vendor" / "zmq").is_dir()
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from pulse_depixelate import client_path as c; "
            "assert c.missing_dependencies() == [], c.missing_dependencies(); import zmq, msgpack; "
            "from protocol.client import PulseClient; print(zmq.__file__)")
    res = subprocess.run([exe, "-I", "-c", code, str(pkg.parent)], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()).is_relative_to(pkg / "_client" / f"py{digits}" / "_vendor")


@pytest.fixture
def offline_pip(monkeypatch):
    """pip sees only a loopback index on a port nobody listens on (this machine's pip.conf and find-links off)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{port}/simple")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")


def test_offline_bundled_install_warns_how_to_finish(tmp_path, capsys, offline_pip):
    """Shared with the GIMP installer (common.vendor_or_warn): installed, then a clear warning with the fix."""
    target = krita.PythonTarget("bundled", versions=("3.10",), platforms=["manylinux2014_x86_64"])
    pkg = krita.install(tmp_path / "pykrita", python=target)
    assert (pkg / "client_path.py").is_file() and (pkg / "_client" / "protocol" / "client.py").is_file()
    assert not (pkg / "_client" / "py310" / "_vendor").exists()
    out, err = capsys.readouterr()
    assert "Python Plugin Manager" in out
    assert "warning: the Krita plug-in is installed, but pyzmq and msgpack for Krita's own Python 3.10" in err
    assert f"pulse-server install-plugin krita --python-version 3.10 --dest {tmp_path / 'pykrita'}" in err


def test_bad_bundled_version_is_refused_before_copying(tmp_path):
    with pytest.raises(PulseError, match="bad Python version"):
        krita.install(tmp_path, python=krita.PythonTarget("bundled", versions=("3.x",), platforms=["win_amd64"]))
    assert list(tmp_path.iterdir()) == []


def _client_path():
    import importlib.util

    spec = importlib.util.spec_from_file_location(  # the module alone: no package __init__, no krita import
        "pulse_client_path_under_test",
        Path(__file__).resolve().parents[2] / "krita_plugin" / "pulse_depixelate" / "client_path.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_daemon_started_from_an_appimage_gets_no_appimage_library_env(tmp_path, monkeypatch):
    """Krita's AppImage exports LD_LIBRARY_PATH, QT_PLUGIN_PATH, PYTHON*: the Start button's daemon gets none."""
    cp = _client_path()
    appdir = tmp_path / ".mount_krita"
    krita_env = {"PATH": f"{appdir}/usr/bin{os.pathsep}/usr/local/bin{os.pathsep}/usr/bin",
                 "XDG_DATA_DIRS": f"{appdir}/usr/share:/usr/share", "APPDIR": str(appdir),
                 "APPIMAGE": str(tmp_path / "krita.appimage"), "ARGV0": "krita", "OWD": str(tmp_path),
                 "LD_LIBRARY_PATH": f"{appdir}/usr/lib", "QT_PLUGIN_PATH": f"{appdir}/usr/plugins",
                 "PYTHONHOME": f"{appdir}/usr", "PYTHONPATH": f"{appdir}/usr/lib/python3.10",
                 "PYTHONDONTWRITEBYTECODE": "1", "PULSE_ENDPOINT": "tcp://127.0.0.1:1"}
    for key, value in krita_env.items():  # this process stands in for Krita started from its AppImage
        monkeypatch.setenv(key, value)
    env = cp.daemon_env()
    # what a real child process started with it sees
    child = subprocess.run([sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"],
                           env=env, capture_output=True, text=True, timeout=60)
    seen = json.loads(child.stdout)
    for key in ("LD_LIBRARY_PATH", "QT_PLUGIN_PATH", "APPDIR", "APPIMAGE", "ARGV0", "OWD", "PYTHONHOME",
                "PYTHONPATH", "PYTHONDONTWRITEBYTECODE"):
        assert key not in seen, key
    assert seen["PATH"] == f"/usr/local/bin{os.pathsep}/usr/bin" and seen["XDG_DATA_DIRS"] == "/usr/share"
    assert seen["PULSE_ENDPOINT"] == "tcp://127.0.0.1:1" and seen["HOME"] == os.environ["HOME"]
    # Not an AppImage (distribution Krita): the user's own LD_LIBRARY_PATH stays, PYTHONHOME/PYTHONPATH go.
    for key in ("APPDIR", "APPIMAGE"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/cuda/lib64")
    monkeypatch.setenv("VIRTUAL_ENV", str(tmp_path / "venv"))  # Krita started from a terminal with a venv active
    plain = cp.daemon_env()
    assert plain["LD_LIBRARY_PATH"] == "/opt/cuda/lib64" and plain["PYTHONDONTWRITEBYTECODE"] == "1"
    assert "PYTHONHOME" not in plain and "PYTHONPATH" not in plain and plain["PATH"] == krita_env["PATH"]
    assert "VIRTUAL_ENV" not in plain


def test_flatpak_krita_gets_the_override(tmp_path, capsys, monkeypatch):
    """Flatpak Krita's sandbox has a private $XDG_RUNTIME_DIR: print (or run) the override, then restart."""
    override = ["override", "--user", "--filesystem=xdg-run/pulse-depixelate:create", "org.kde.krita"]
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PULSE_KRITA_PYTHON", sys.executable)  # a Python with zmq + msgpack: no download
    bindir, log = tmp_path / "fakebin", tmp_path / "flatpak-args"
    bindir.mkdir()  # a `flatpak` that records its arguments (Flatpak cannot run in this container)
    (bindir / "flatpak").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{log}"\n')
    (bindir / "flatpak").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")

    # --target flatpak without --dest: the Flatpak's own resource folder; the override is printed, not run
    assert main_server(["install-plugin", "krita", "--target", "flatpak"]) == 0
    pkg = tmp_path / ".var/app/org.kde.krita/data/krita/pykrita/pulse_depixelate"
    assert (pkg / "client_path.py").is_file()
    out = capsys.readouterr().out
    assert "flatpak " + " ".join(override) in out and "restart Krita" in out and not log.exists()

    # a --dest inside the Flatpak's folder is recognised; --flatpak-override runs it
    assert main_server(["install-plugin", "krita", "--dest", str(pkg.parent), "--flatpak-override"]) == 0
    assert log.read_text().splitlines() == override
    assert "restart Krita" in capsys.readouterr().out

    # a plain Krita hears nothing about Flatpak
    assert main_server(["install-plugin", "krita", "--dest", str(tmp_path / "native")]) == 0
    assert "flatpak override" not in capsys.readouterr().out
    assert main_server(["install-plugin", "krita", "--target", "windows"]) == 2
    assert main_server(["uninstall-plugin", "krita", "--target", "flatpak"]) == 0
    assert not pkg.exists() and not (pkg.parent / "pulse_depixelate.desktop").exists()


def test_python_version_option_vendors_for_that_python_only(tmp_path, capsys, offline_pip, monkeypatch):
    """`install-plugin krita --python-version X.Y` like GIMP's: wheels for Krita's bundled CPython X.Y alone."""
    monkeypatch.setenv("PULSE_KRITA_PYTHON", sys.executable)  # what it overrides: the detected Python
    pykrita = tmp_path / "pykrita"
    assert main_server(["install-plugin", "krita", "--dest", str(pykrita), "--python-version", "3.12"]) == 0
    err = capsys.readouterr().err  # offline here: the warning names the version it tried and the same option
    assert "Krita's own Python 3.12" in err and "3.10" not in err and "3.13" not in err
    assert f"pulse-server install-plugin krita --python-version 3.12 --dest {pykrita}" in err
    assert (pykrita / "pulse_depixelate" / "client_path.py").is_file()
    assert main_server(["install-plugin", "krita", "--dest", str(tmp_path / "bad"), "--python-version", "3"]) == 2
    assert "bad Python version" in capsys.readouterr().err and not (tmp_path / "bad").exists()
