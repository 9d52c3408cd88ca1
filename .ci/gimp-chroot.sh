#!/usr/bin/env bash
# Build (or reuse) the cached Debian 13 chroot with GIMP 3 and Krita 5.2 that tests/editors/test_gimp_real.py and the
# Krita tests ([chroot] variants) drive; a root cached before Krita was added gets it installed in place.
# Standard library only, so it can start in the background before the venv exists and overlap with it:
#     .ci/gimp-chroot.sh > /tmp/gimp-chroot.log 2>&1 &
# The tests wait for it through a lock file. Cache: $PULSE_GIMP_CHROOT (default /var/cache/pulse-ci/gimp-trixie);
# mirror: the host's /etc/apt/sources.list.d/debian.sources (or $PULSE_DEBIAN_MIRROR).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ] || ! command -v debootstrap >/dev/null; then
    echo "gimp-chroot: needs root and debootstrap; the GIMP and Krita 5.2 tests will skip" >&2
    exit 0
fi
start=$(date +%s)
python3 tests/gimp_chroot.py build
echo "gimp-chroot: ready after $(( $(date +%s) - start )) s"
