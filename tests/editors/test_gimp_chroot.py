"""Safety of the GIMP chroot helpers: mirror from the host's APT config, mounts always undone, no rm through mounts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gimp_chroot

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mount/umount need root")


def test_mirror_from_deb822_skips_the_security_archive(tmp_path, monkeypatch):
    monkeypatch.delenv("PULSE_DEBIAN_MIRROR", raising=False)
    src = tmp_path / "debian.sources"
    src.write_text(
        "Types: deb\n# comment: line\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\nTypes: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    assert gimp_chroot.debian_mirror(src, tmp_path / "none") == "http://mirror.example/debian"


def test_mirror_from_one_line_sources_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("PULSE_DEBIAN_MIRROR", raising=False)
    legacy = tmp_path / "sources.list"
    legacy.write_text("# x\ndeb [arch=amd64] http://m.example/debian bookworm main\n"
                      "deb http://m.example/debian-security bookworm-security main\n")
    assert gimp_chroot.debian_mirror(tmp_path / "none", legacy) == "http://m.example/debian"
    with pytest.raises(gimp_chroot.ChrootUnavailable):
        gimp_chroot.debian_mirror(tmp_path / "none", tmp_path / "none2")
    monkeypatch.setenv("PULSE_DEBIAN_MIRROR", "http://other.example/debian")
    assert gimp_chroot.debian_mirror(tmp_path / "none", tmp_path / "none2") == "http://other.example/debian"


def test_host_mirror_is_readable():
    if not gimp_chroot.DEB822_SOURCES.exists() and not gimp_chroot.LEGACY_SOURCES.exists():
        pytest.skip("no APT sources on this host")
    assert "://" in gimp_chroot.debian_mirror()


@needs_root
def test_mounts_are_undone_even_when_the_block_raises(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(RuntimeError, match="boom"):
        with gimp_chroot.mounted(root):
            assert os.path.ismount(root / "proc") and os.path.ismount(root / "dev")
            assert (root / "dev" / "null").exists()
            raise RuntimeError("boom")
    assert gimp_chroot.mounts_below(root) == []
    gimp_chroot.remove_tree(root)
    assert not root.exists()


@needs_root
def test_remove_tree_refuses_a_tree_with_a_live_mount(tmp_path, monkeypatch):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("host data")
    root = tmp_path / "root"
    (root / "mnt").mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(precious), str(root / "mnt")], check=True)
    try:
        monkeypatch.setattr(gimp_chroot, "_umount", lambda point: None)  # an unmount that fails
        with pytest.raises(RuntimeError, match="refusing to delete"):
            gimp_chroot.remove_tree(root)
        assert (precious / "keep.txt").read_text() == "host data"
        monkeypatch.undo()
        gimp_chroot.remove_tree(root)  # with working unmounts it cleans up, still sparing the bind source
        assert not root.exists() and (precious / "keep.txt").exists()
    finally:
        if os.path.ismount(root / "mnt"):
            subprocess.run(["umount", "-l", str(root / "mnt")])


def test_cached_chroot_is_complete_or_absent():
    root = gimp_chroot.chroot_root()
    if not root.exists():
        pytest.skip(f"no cached chroot at {root}")
    assert gimp_chroot.is_ready(root), f"{root} exists but has no completion marker"
    assert gimp_chroot.mounts_below(root) == [], "nothing may stay mounted in the cached chroot between runs"


def test_root_cached_before_krita_is_not_ready_and_lacks_only_the_krita_packages(tmp_path):
    root = tmp_path / "root"
    for exe in (gimp_chroot.GIMP_CONSOLE, gimp_chroot.KRITA):
        (root / exe.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (root / gimp_chroot.GIMP_CONSOLE.lstrip("/")).write_text("")
    (root / gimp_chroot.MARKER).write_text(json.dumps({"packages": list(gimp_chroot.GIMP_PACKAGES)}))
    assert not gimp_chroot.is_ready(root)
    assert gimp_chroot.missing_packages(root) == list(gimp_chroot.KRITA_PACKAGES)  # build() installs these in place
    (root / gimp_chroot.KRITA.lstrip("/")).write_text("")
    (root / gimp_chroot.MARKER).write_text(json.dumps(gimp_chroot._packages_fields()))
    assert gimp_chroot.is_ready(root) and gimp_chroot.missing_packages(root) == []
    # a checkout from before Krita joined compares "packages" with its GIMP list: it must keep this root
    assert json.loads((root / gimp_chroot.MARKER).read_text())["packages"] == list(gimp_chroot.GIMP_PACKAGES)
    (root / gimp_chroot.MARKER).unlink()  # no marker: an interrupted build, nothing in it counts
    assert not gimp_chroot.is_ready(root) and gimp_chroot.missing_packages(root) == list(gimp_chroot.PACKAGES)


@needs_root
def test_shared_folder_is_seen_at_the_same_path_inside_and_its_mount_points_go_afterwards(tmp_path):
    root, shared = tmp_path / "root", tmp_path / "work" / "case"
    root.mkdir()
    shared.mkdir(parents=True)
    (shared / "cfg.json").write_text("{}")
    inside = root / shared.relative_to("/")
    with gimp_chroot.mounted(root, [shared]):
        assert (inside / "cfg.json").read_text() == "{}"
        (inside / "result.json").write_text("[]")  # what the editor writes lands in the test's folder
    assert (shared / "result.json").read_text() == "[]"
    assert gimp_chroot.mounts_below(root) == []
    assert not (root / "tmp").exists(), "the mount points made for the bind were left in the root"
