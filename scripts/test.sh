#!/usr/bin/env bash
# Runs every check of syn: formatting, clippy, and the whole test suite,
# which mounts real FUSE file systems and starts real servers on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
