#!/usr/bin/env bash
# Runs every check of syn: formatting, clippy, and the whole test suite,
# which mounts real FUSE file systems and starts real servers on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh

# Programs that the integration tests run on the mount.
missing=()
for tool in git sqlite3 python3 runuser rsync gio; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    packages=()
    for tool in "${missing[@]}"; do
        case "$tool" in
            runuser) packages+=(util-linux) ;;
            gio) packages+=(libglib2.0-bin) ;;
            *) packages+=("$tool") ;;
        esac
    done
    sudo_prefix=()
    [ "$(id -u)" -eq 0 ] || sudo_prefix=(sudo)
    "${sudo_prefix[@]}" apt-get update -qq
    "${sudo_prefix[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"
fi
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
