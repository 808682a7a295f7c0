#!/usr/bin/env bash
# Local stand-ins for the three base images that the Dockerfile and docker-compose.yml name
# (python:3.11-slim, postgres:16, redis:7), built from Debian packages.
#
# Only for machines without access to an image registry (a build host or CI runner that reaches
# a Debian mirror and a Python package index, but no registry). Everyone else: do not run this;
# `docker compose up` pulls the official images, which is what the stack is meant to run on.
#
# What the stand-ins are:
#   python:3.11-slim  Debian bookworm's python3.11, a venv at /usr/local (python, pip on PATH)
#   postgres:16       Debian bookworm's PostgreSQL 15 (16 is not in bookworm) with an entrypoint
#                     that follows the official image: POSTGRES_USER, POSTGRES_PASSWORD,
#                     POSTGRES_DB, initdb on an empty /var/lib/postgresql/data
#   redis:7           Debian bookworm's redis-server 7.0, run as the official image runs it
#
# An image already present (official or stand-in) is kept, so a second run costs a few seconds;
# `--rebuild` replaces the stand-ins. Needs root, debootstrap and a Debian mirror (DEBIAN_MIRROR).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ROOTFS_IMAGE="artifact-loop-local/debian:bookworm-minbase"
IMAGES=(python:3.11-slim postgres:16 redis:7)

have() { docker image inspect "$1" >/dev/null 2>&1; }

rebuild=0
[ "${1:-}" = "--rebuild" ] && rebuild=1

missing=()
for image in "${IMAGES[@]}"; do
  if [ "$rebuild" = 0 ] && have "$image"; then
    echo "$image: present, kept"
  else
    missing+=("$image")
  fi
done
[ "${#missing[@]}" -eq 0 ] && exit 0

echo "NOTE: building local stand-ins for ${missing[*]} from Debian packages; with registry" \
  "access, pull the official images instead (docker compose pull)."

if [ "$rebuild" = 1 ] || ! have "$ROOTFS_IMAGE"; then
  command -v debootstrap >/dev/null || { echo "debootstrap is needed (apt-get install debootstrap)" >&2; exit 1; }
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  echo "== debootstrap bookworm (minbase) from $MIRROR"
  debootstrap --variant=minbase bookworm "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  # no services start while packages install in a build
  printf '#!/bin/sh\nexit 101\n' >"$work/rootfs/usr/sbin/policy-rc.d"
  chmod +x "$work/rootfs/usr/sbin/policy-rc.d"
  rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
  tar -C "$work/rootfs" -c . | docker import - "$ROOTFS_IMAGE" >/dev/null
fi

for image in "${missing[@]}"; do
  name="${image%%:*}"
  echo "== $image (stand-in, deploy/local-base-images/$name.Dockerfile)"
  # the classic builder: these files need nothing from BuildKit
  DOCKER_BUILDKIT=0 docker build -q -t "$image" --build-arg "BASE=$ROOTFS_IMAGE" \
    -f "$here/local-base-images/$name.Dockerfile" "$here/local-base-images"
done
