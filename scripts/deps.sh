#!/usr/bin/env bash
# Installs what building and testing syn needs on Debian: fuse3 for
# fusermount3 and a C compiler for the bundled SQLite. Rust itself (1.85 or
# newer) must already be installed, for example with rustup.
set -euo pipefail

missing=()
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        sudo apt-get update -qq
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is missing: install Rust 1.85 or newer (https://rustup.rs) and run this again" >&2
    exit 1
fi
if [ ! -e /dev/fuse ]; then
    echo "/dev/fuse is missing: load the fuse module (modprobe fuse) or run where FUSE is available" >&2
    exit 1
fi
