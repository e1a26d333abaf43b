#!/usr/bin/env bash
# Builds syn and shows its main job end to end on this machine: a local
# server, two devices of one vault, a real directory tree copied into the
# first device's mount and arriving byte-identical in the second's.
#
# Everything lives in a temporary directory that is removed at the end;
# set SYN_DEMO_KEEP=1 to keep it. The demo vault uses a throwaway passphrase.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
cargo build --release --locked
syn="$PWD/target/release/syn"

work=$(mktemp -d /tmp/syn-demo.XXXXXX)
server_pid=""
cleanup() {
    for mountpoint in "$work/device-a/mnt" "$work/device-b/mnt"; do
        if grep -qs " $mountpoint " /proc/mounts; then
            "$syn" unmount "$mountpoint" --timeout 5 || fusermount3 -u -z "$mountpoint" || true
        fi
    done
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [ "${SYN_DEMO_KEEP:-0}" = 1 ]; then
        echo "Kept $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

# A real tree to copy: the system's documentation, or the crate sources
# where a slim image has stripped /usr/share/doc.
source_tree=/usr/share/doc
if [ "$(find "$source_tree" -type f 2>/dev/null | head -n 100 | wc -l)" -lt 100 ]; then
    source_tree="$HOME/.cargo/registry/src"
fi
echo "== Source tree: $source_tree ($(du -sh "$source_tree" | cut -f1))"

echo "== Starting syn serve on a loopback port"
"$syn" serve --data "$work/server" --listen 127.0.0.1:0 >"$work/server.out" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 1 100); do
    grep -q '^listening on ' "$work/server.out" 2>/dev/null && break
    sleep 0.1
done
url=$(sed -n 's/^listening on //p' "$work/server.out")
[ -n "$url" ] || { echo "the server did not start; see $work/server.log" >&2; exit 1; }
token=$("$syn" serve --data "$work/server" add-account demo)
echo "   server at $url"

export SYN_PASSPHRASE="demo passphrase, not for real files"
echo "== Device A: a new vault"
mkdir -p "$work/device-a/mnt" "$work/device-b/mnt"
"$syn" init --store "$work/device-a/store" --server "$url" --token "$token" --device-name device-a
echo "== Device B: joins the vault"
"$syn" join --store "$work/device-b/store" --server "$url" --token "$token" --device-name device-b

"$syn" mount --store "$work/device-a/store" "$work/device-a/mnt"
"$syn" mount --store "$work/device-b/store" "$work/device-b/mnt"

echo "== Copying the tree into device A's mount"
start=$(date +%s)
cp -a "$source_tree" "$work/device-a/mnt/tree"
echo "   copied in $(( $(date +%s) - start )) s"

echo "== Waiting for it to arrive on device B"
deadline=$(( $(date +%s) + 600 ))
expected=$(find "$source_tree" | wc -l)
# Count entries first, which is cheap, and compare bytes once they match.
until [ "$(find "$work/device-b/mnt/tree" 2>/dev/null | wc -l)" -eq "$expected" ] &&
    diff -r --no-dereference "$source_tree" "$work/device-b/mnt/tree" >/dev/null 2>&1; do
    if [ "$(date +%s)" -gt "$deadline" ]; then
        echo "device B did not converge within 10 minutes" >&2
        "$syn" status --store "$work/device-b/store" >&2
        exit 1
    fi
    sleep 1
done
echo "   arrived after $(( $(date +%s) - start )) s in all"

diff -r --no-dereference "$source_tree" "$work/device-b/mnt/tree"
echo "== diff -r: device B's copy is byte-identical to $source_tree"
"$syn" status --store "$work/device-b/store"

"$syn" unmount "$work/device-a/mnt"
"$syn" unmount "$work/device-b/mnt"
echo "== Done"
