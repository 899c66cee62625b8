#!/usr/bin/env bash
# Build a stand-in for python:3.11-slim without any image registry: debootstrap Debian bookworm
# (whose python3 is 3.11) from the mirror this machine's apt uses, add a venv that is first on
# PATH, and `docker import` the tree as a local image. The Space's Dockerfile then builds on it
# with `--build-arg BASE_IMAGE=<tag>`.
#
# Usage: docker/base-image.sh [TAG]   (default openenv-zmq/python:3.11-bookworm)
# Needs root (debootstrap, chroot) and a running Docker engine. Does nothing if TAG exists.
# DEBIAN_MIRROR overrides the mirror read from /etc/apt.
set -euo pipefail

tag="${1:-openenv-zmq/python:3.11-bookworm}"
suite=bookworm
venv=/opt/venv

if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "base image $tag exists; not rebuilding"
    exit 0
fi
if ((EUID != 0)); then
    echo "building $tag needs root (debootstrap and chroot)" >&2
    exit 1
fi

# The first Debian archive URL in apt's sources, one-line (`deb [opts] URL suite ...`) or
# deb822 (`URIs: URL`) format; the `/debian` suffix leaves out debian-security and other repos.
debian_mirror() {
    local sources=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
    { grep -hsE '^[[:space:]]*(deb|URIs:)[[:space:]]' "${sources[@]}" || true; } \
        | grep -oE 'https?://[^[:space:]]+/debian/?([[:space:]]|$)' \
        | head -n 1 | tr -d '[:space:]'
}

mirror="${DEBIAN_MIRROR:-$(debian_mirror)}"
mirror="${mirror:-http://deb.debian.org/debian}"

work="$(mktemp -d "${TMPDIR:-/tmp}/openenv-base.XXXXXX")"
# debootstrap mounts /proc (and /sys) inside the tree and unmounts them when it ends; should one
# be left, deleting through it would reach the host's, hence the unmounting and the
# --one-file-system.
cleanup() {
    awk -v root="$work/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r \
        | xargs -r umount --lazy || true
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
rootfs="$work/rootfs"

echo "debootstrap $suite (minbase) from $mirror"
# python3-venv brings ensurepip's bundled pip and setuptools wheels, so pip needs no index here.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    exit 1
}

# Debian marks its python3 externally managed (PEP 668), so `pip install` into it is refused.
# A venv owned by root and first on PATH gives what python:3.11-slim gives: `python` and `pip`
# that install system-wide as root and are only read by other users.
chroot "$rootfs" python3 -m venv "$venv"
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/tmp/*

tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change "ENV PATH=$venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV VIRTUAL_ENV=$venv" \
    --change "ENV LANG=C.UTF-8" \
    --change 'CMD ["python3"]' \
    --message "debootstrap $suite minbase + python3 venv at $venv" \
    - "$tag" >/dev/null
echo "built base image $tag: $(docker run --rm --network none "$tag" python --version)"
