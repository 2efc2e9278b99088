#!/bin/sh
# Build the Debian package (make deb).
#
# Usage: tools/build-deb.sh [OUTDIR]        (default: dist, under the checkout)
#
# dpkg-buildpackage writes build products into debian/ and its results into the parent
# directory, so the build runs on a copy of the tree in a temporary directory: the
# checkout stays clean, and the copy holds exactly what a fresh clone would (tracked
# files plus new files git does not ignore). The .deb, .buildinfo and .changes are
# copied to OUTDIR. As root, missing build dependencies are installed first with
# apt-get build-dep; otherwise they are listed and the build stops.
#
# DEB_BUILD_OPTIONS=nocheck skips the unit tests (and their build dependencies);
# DPKG_BUILDPACKAGE_OPTS adds options to dpkg-buildpackage.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-dist}
case $out in
    /*) ;;
    *) out="$top/$out" ;;
esac

case " ${DEB_BUILD_OPTIONS:-} " in
    *" nocheck "*)
        DEB_BUILD_PROFILES="${DEB_BUILD_PROFILES:+$DEB_BUILD_PROFILES }nocheck"
        export DEB_BUILD_PROFILES
        ;;
esac
profiles=""
if [ -n "${DEB_BUILD_PROFILES:-}" ]; then
    profiles="-P $(echo "$DEB_BUILD_PROFILES" | tr ' ' ',')"
fi

cd "$top"
if ! dpkg-checkbuilddeps >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        dpkg-checkbuilddeps || true
        echo "build-deb: install the build dependencies (as root: apt-get build-dep ./)," \
            "or run make deb as root" >&2
        exit 1
    fi
    echo "build-deb: installing build dependencies"
    # shellcheck disable=SC2086  # $profiles is empty or one word pair
    if ! DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -q --no-install-recommends \
        $profiles "$top" >/dev/null; then
        apt-get update -q
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -q --no-install-recommends \
            $profiles "$top"
    fi
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/debtorrent-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
src="$work/debtorrent"
mkdir "$src"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # Files deleted in the work tree but still in the index are skipped.
    git ls-files -z --cached --others --exclude-standard \
        | tar --null -T - --ignore-failed-read -cf - 2>/dev/null \
        | tar -xf - -C "$src"
else
    tar --exclude=./.git --exclude=./.venv --exclude=./dist --exclude=./build \
        --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -xf - -C "$src"
fi

# Debian's own Python must build and test it: no virtualenv or pyenv interpreter that
# happens to come first on PATH, no PYTHONPATH from the caller.
# shellcheck disable=SC2086
(cd "$src" && env -u PYTHONPATH -u PYTHONHOME -u VIRTUAL_ENV \
    PATH=/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
    dpkg-buildpackage -us -uc -b ${DPKG_BUILDPACKAGE_OPTS:-})

mkdir -p "$out"
rm -f "$out"/debtorrent_*.deb "$out"/debtorrent_*.buildinfo "$out"/debtorrent_*.changes
cp "$work"/debtorrent_*.deb "$work"/debtorrent_*.buildinfo "$work"/debtorrent_*.changes "$out"/
echo "build-deb: built" "$out"/debtorrent_*.deb
