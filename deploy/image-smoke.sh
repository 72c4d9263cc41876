#!/usr/bin/env bash
# Build deploy/Dockerfile and prove the image serves (deploy/README.md, "Checking the image").
#
#   deploy/image-smoke.sh                 build with docker or podman, then check the image
#   deploy/image-smoke.sh --no-build      check the image built last time (ml-gateway:smoke)
#   deploy/image-smoke.sh --remake-stand-ins   make the stand-in base images again first
#
# Where the base images cannot be pulled (no registry reachable), it makes stand-ins under the
# same names from what can be reached: a Debian bookworm root file system from debootstrap,
# Python and the build tools from Debian's packages, this machine's own Rust toolchain. It
# says so loudly and never edits the Dockerfile. Where containers cannot run, it runs the
# image's entrypoint from the image's root file system (chroot, as the image's user, the root
# read-only, the compose stack's volumes and environment). The last line starts `image:`;
# the exit status is non-zero on any failure.
#
# It needs root (podman, debootstrap, chroot), about 25 minutes on 2 cores the first time (the
# `dist` build inside the image is most of it) and some 5 GB under target/image-smoke and
# podman's storage. Not part of scripts/test.sh for that reason.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf '[image-smoke] %s\n' "$*" >&2; }
die() { printf '[image-smoke] FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: building with podman --isolation chroot, debootstrap and the chroot check need it"

# The tools: an engine (docker with a running daemon, else podman), debootstrap for stand-in
# base images, unshare/nsenter/chroot (util-linux, coreutils) for the check.
missing=()
if ! { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }; then
  command -v podman >/dev/null 2>&1 || missing+=(podman)
fi
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]}: install them with your package manager"
  say "installing ${missing[*]} with apt-get"
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }; } \
    || die "apt-get could not install ${missing[*]}"
fi

# PyYAML for the compose file (the project's virtualenv has it).
scripts/setup.sh --python >&2
exec "$ROOT/.venv/bin/python" "$ROOT/deploy/image_smoke.py" "$@"
