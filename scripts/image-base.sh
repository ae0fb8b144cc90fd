#!/usr/bin/env bash
# The serving image's base when Docker Hub cannot be reached: Debian 12 (bookworm) built from Debian's
# own packages with debootstrap, plus python3 and python3-venv, tagged resnet-deploy-base:bookworm.
# Run by scripts/image.sh; kept as a local image, so only the first build pays for it (~3 minutes).
#
#   scripts/image-base.sh            make it unless it exists
#   scripts/image-base.sh --rebuild  make it again (e.g. for Debian's security updates)
#   DEBIAN_MIRROR=http://...         the apt mirror (default: the first one this machine's apt uses)
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_TAG="resnet-deploy-base:bookworm"
ROOTFS_TAG="resnet-deploy-base:bookworm-rootfs"
if [ "${1:-}" != "--rebuild" ] && docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
    echo "[image-base] $BASE_TAG exists (scripts/image-base.sh --rebuild makes it again)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "[image-base] debootstrap needs root: run sudo scripts/image-base.sh once" >&2
    exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    echo "[image-base] debootstrap is missing: ./install.sh --docker installs it" >&2
    exit 1
fi

apt_mirror() {
    # deb822 (URIs: ...) or one-line (deb URL suite ...) sources; the first Debian archive, not -security.
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
        | sed -nE 's/^URIs:[[:space:]]*([^[:space:]]+).*/\1/p; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' \
        | grep -v -- '-security' | head -n 1 || true
}
MIRROR="${DEBIAN_MIRROR:-$(apt_mirror)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

ROOTFS="$(mktemp -d /var/tmp/resnet-deploy-rootfs.XXXXXX)"
trap 'rm -rf --one-file-system "$ROOTFS"' EXIT
echo "[image-base] debootstrap bookworm from $MIRROR (a few minutes)"
debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 \
    || { tail -n 20 "$ROOTFS.log" >&2; rm -f "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"
# Debian's security updates too, as the official images carry them.
echo "deb $MIRROR bookworm-updates main" >>"$ROOTFS/etc/apt/sources.list"
echo "deb http://deb.debian.org/debian-security bookworm-security main" >>"$ROOTFS/etc/apt/sources.list"
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
tar -C "$ROOTFS" -c . | docker import - "$ROOTFS_TAG" >/dev/null

# What the python:3.11-slim-bookworm image offers the Dockerfile: a python3 that can make a venv.
docker build -q -t "$BASE_TAG" - >/dev/null <<DOCKERFILE
FROM $ROOTFS_TAG
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && apt-get upgrade -y \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
CMD ["bash"]
DOCKERFILE
docker image rm "$ROOTFS_TAG" >/dev/null 2>&1 || true
echo "[image-base] made $BASE_TAG"
