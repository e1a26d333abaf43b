#!/usr/bin/env bash
# Runs one file-system workload on a syn mount, a gocryptfs mount and a plain
# directory on the same disk, and prints each figure with its ratio to the
# plain directory. The three targets alternate within every round, so a
# change in machine load during the run hits all of them alike.
#
# Usage: bash scripts/bench.sh [--quick] [--rounds N] [--size-mb N] [--keep]
# docs/benchmarks.md explains each figure and the environment variables.
# The script only prints numbers. It exits non-zero when a step fails or
# when a target returns bytes that differ from the plain directory's.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    cat <<'EOF'
Usage: bash scripts/bench.sh [--quick] [--rounds N] [--size-mb N] [--keep]

  --quick       small sizes and 3 rounds: about 45 s on 2 cores, plus the build
  --rounds N    rounds of the whole workload (BENCH_ROUNDS, default 3)
  --size-mb N   size of the sequential file in MiB (BENCH_SIZE_MB, default 256)
  --keep        keep the work directory (BENCH_KEEP=1)

Other settings (environment variables):
  BENCH_RAND_MB        size of the random-I/O file in MiB (default 64)
  BENCH_RAND_OPS       4 KiB reads, and again 4 KiB writes, per round (default 2000)
  BENCH_SMALL_FILES    small files created and stat-ed per round (default 2000)
  BENCH_TREE           directory to tar and extract (default /usr/share/doc,
                       or ~/.cargo/registry/src when the docs are stripped)
  BENCH_TREE_ENTRIES   maximum number of entries taken from it (default 5000)
  BENCH_STEP_TIMEOUT   seconds before a single step counts as hung (default 900)
  BENCH_TMPDIR         parent of the work directory (default /tmp)
  SYN_BIN              syn binary to use instead of building target/release/syn
EOF
}

keep=${BENCH_KEEP:-0}
quick=0

# Flags set the same variables as the environment, so that an explicit size
# wins over --quick's in either form.
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --rounds | --size-mb)
            [ $# -ge 2 ] || { echo "missing value for $1 (see --help)" >&2; exit 2; }
            if [ "$1" = --rounds ]; then BENCH_ROUNDS=$2; else BENCH_SIZE_MB=$2; fi
            shift
            ;;
        --keep) keep=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$quick" = 1 ]; then
    rounds=${BENCH_ROUNDS:-3}
    size_mb=${BENCH_SIZE_MB:-64}
    rand_mb=${BENCH_RAND_MB:-32}
    rand_ops=${BENCH_RAND_OPS:-1000}
    small_files=${BENCH_SMALL_FILES:-500}
    tree_entries=${BENCH_TREE_ENTRIES:-1500}
else
    rounds=${BENCH_ROUNDS:-3}
    size_mb=${BENCH_SIZE_MB:-256}
    rand_mb=${BENCH_RAND_MB:-64}
    rand_ops=${BENCH_RAND_OPS:-2000}
    small_files=${BENCH_SMALL_FILES:-2000}
    tree_entries=${BENCH_TREE_ENTRIES:-5000}
fi
step_timeout=${BENCH_STEP_TIMEOUT:-900}

for value in "$rounds" "$size_mb" "$rand_mb" "$rand_ops" "$small_files" "$tree_entries"; do
    case "$value" in
        '' | *[!0-9]* | 0) echo "invalid size or count: '$value' (expected a positive integer)" >&2; exit 2 ;;
    esac
done

# ---------------------------------------------------------------------------
# Tools: fuse3 and gocryptfs from Debian, syn built in release mode.

install_packages() {
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
    else
        sudo apt-get update -qq
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
    fi
}

bash scripts/deps.sh
missing=()
command -v gocryptfs >/dev/null 2>&1 || missing+=(gocryptfs)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    install_packages "${missing[@]}"
fi

if [ -n "${SYN_BIN:-}" ]; then
    syn=$SYN_BIN
else
    cargo build --release --locked
    syn="$PWD/target/release/syn"
fi

# ---------------------------------------------------------------------------
# Work directory and cleanup.

work=$(mktemp -d "${BENCH_TMPDIR:-/tmp}/syn-bench.XXXXXX")
plain_dir="$work/plain"
gocryptfs_cipher="$work/gocryptfs-cipher"
gocryptfs_mount="$work/gocryptfs-mnt"
syn_store="$work/syn-store"
syn_mount="$work/syn-mnt"
server_dir="$work/syn-server"
results="$work/results.tsv"
server_pid=""
gocryptfs_pid=""
failures=0

is_mounted() {
    grep -qs " $1 fuse" /proc/mounts
}

cleanup() {
    local status=$?
    if is_mounted "$syn_mount"; then
        "$syn" unmount "$syn_mount" --timeout 10 ||
            { echo "syn unmount failed; unmounting lazily" >&2; fusermount3 -u -z "$syn_mount" || true; }
    fi
    if is_mounted "$gocryptfs_mount"; then
        fusermount3 -u "$gocryptfs_mount" || fusermount3 -u -z "$gocryptfs_mount" || true
    fi
    if [ -n "$gocryptfs_pid" ]; then
        kill "$gocryptfs_pid" 2>/dev/null || true
        wait "$gocryptfs_pid" 2>/dev/null || true
    fi
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi

    if [ "$status" -ne 0 ] && [ -f "$syn_store/daemon.log" ]; then
        echo "== Last lines of the syn daemon log ($syn_store/daemon.log):" >&2
        tail -n 20 "$syn_store/daemon.log" >&2
    fi
    # Removing the directory while a mount is still active would delete
    # through it, so a leftover mount keeps the directory.
    if grep -qs " $work/" /proc/mounts; then
        echo "A mount under $work is still active, so it was kept." >&2
    elif [ "$keep" = 1 ] || [ "$status" -ne 0 ]; then
        echo "Kept $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------
# Helpers.

# Python helpers for the steps that dd and tar cannot time: random 4 KiB I/O
# and many small files. Each prints its own elapsed seconds, measured around
# the I/O only, so interpreter start-up is not counted.
cat >"$work/io.py" <<'EOF'
import os
import random
import sys
import time

BLOCK = 4096


def random_offsets(path, ops, seed):
    blocks = os.path.getsize(path) // BLOCK
    rng = random.Random(seed)
    return [rng.randrange(blocks) * BLOCK for _ in range(ops)], rng


def random_read(path, ops, seed):
    offsets, _ = random_offsets(path, ops, seed)
    fd = os.open(path, os.O_RDONLY)
    start = time.perf_counter()
    for offset in offsets:
        if len(os.pread(fd, BLOCK, offset)) != BLOCK:
            sys.exit(f"short read at offset {offset} of {path}")
    elapsed = time.perf_counter() - start
    os.close(fd)
    return elapsed


def random_write(path, ops, seed):
    offsets, rng = random_offsets(path, ops, seed)
    blocks = [rng.randbytes(BLOCK) for _ in offsets]
    fd = os.open(path, os.O_WRONLY)
    start = time.perf_counter()
    for offset, data in zip(offsets, blocks):
        if os.pwrite(fd, data, offset) != BLOCK:
            sys.exit(f"short write at offset {offset} of {path}")
    os.fsync(fd)
    elapsed = time.perf_counter() - start
    os.close(fd)
    return elapsed


def small_create(directory, count, seed):
    # Each file gets distinct contents, so that a content-addressed store
    # cannot deduplicate them.
    rng = random.Random(seed)
    contents = [rng.randbytes(1024) for _ in range(count)]
    os.mkdir(directory)
    start = time.perf_counter()
    for index, data in enumerate(contents):
        with open(os.path.join(directory, f"f{index:05d}"), "wb") as file:
            file.write(data)
    return time.perf_counter() - start


def small_stat(directory, count, seed):
    start = time.perf_counter()
    for index in range(count):
        if os.stat(os.path.join(directory, f"f{index:05d}")).st_size != 1024:
            sys.exit(f"f{index:05d} in {directory} does not have 1024 bytes")
    return time.perf_counter() - start


ACTIONS = {
    "random-read": random_read,
    "random-write": random_write,
    "small-create": small_create,
    "small-stat": small_stat,
}

action, path, count, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
print(f"{ACTIONS[action](path, count, seed):.6f}")
EOF

# Runs a step with a deadline, so that a hung file system fails the run
# instead of stalling it.
run_step() {
    local status=0
    timeout -k 10 "$step_timeout" "$@" || status=$?
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        echo "timed out after $step_timeout s: $*" >&2
    elif [ "$status" -ne 0 ]; then
        echo "failed with exit status $status: $*" >&2
    fi
    return "$status"
}

now_ns() {
    date +%s%N
}

seconds_since() {
    awk -v start="$1" -v end="$(now_ns)" 'BEGIN { printf "%.6f", (end - start) / 1e9 }'
}

record() {
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$results"
}

can_drop_caches=0
if [ -w /proc/sys/vm/drop_caches ]; then
    can_drop_caches=1
fi

# Writes back dirty pages and drops the page, dentry and inode caches, so the
# next read goes through the file system instead of the kernel's cache.
drop_caches() {
    sync
    if [ "$can_drop_caches" = 1 ]; then
        echo 3 >/proc/sys/vm/drop_caches
    fi
}

fail() {
    echo "FAILED: $*" >&2
    failures=$((failures + 1))
}

# Runs a setup command with its output in setup.log, shown only on failure.
quietly() {
    if ! "$@" >>"$work/setup.log" 2>&1; then
        echo "failed: $*" >&2
        cat "$work/setup.log" >&2
        return 1
    fi
}

# Prints the peak resident memory (VmHWM) of a process in MiB.
peak_memory_mib() {
    awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}

# ---------------------------------------------------------------------------
# The tree to extract, tarred once.

tree=${BENCH_TREE:-/usr/share/doc}
if [ -z "${BENCH_TREE:-}" ] && [ "$(find "$tree" -type f 2>/dev/null | head -n 500 | wc -l)" -lt 500 ]; then
    tree="$HOME/.cargo/registry/src"
fi
[ -d "$tree" ] || { echo "tree to extract not found: $tree (set BENCH_TREE)" >&2; exit 1; }
# Sorting lists every directory before its contents, so a truncated list
# still extracts without missing parents. awk reads to the end, where head
# would close the pipe early and fail the pipeline with SIGPIPE.
(cd "$(dirname "$tree")" && find "$(basename "$tree")" | LC_ALL=C sort | awk -v max="$tree_entries" 'NR <= max') >"$work/tree.list"
tar -C "$(dirname "$tree")" --no-recursion -cf "$work/tree.tar" -T "$work/tree.list"
tree_count=$(wc -l <"$work/tree.list")
tree_mib=$(awk -v bytes="$(stat -c %s "$work/tree.tar")" 'BEGIN { printf "%.1f", bytes / 1048576 }')

# ---------------------------------------------------------------------------
# The three targets.

echo "== Setting up the targets in $work"
mkdir -p "$plain_dir" "$gocryptfs_cipher" "$gocryptfs_mount" "$syn_mount"

# gocryptfs with a lowered scrypt cost (-scryptn 10), which only shortens
# mounting, like syn's --insecure-test-kdf below.
printf 'bench passphrase, not for real files\n' >"$work/gocryptfs.pass"
gocryptfs -init -q -scryptn 10 -passfile "$work/gocryptfs.pass" "$gocryptfs_cipher"
gocryptfs -fg -q -passfile "$work/gocryptfs.pass" "$gocryptfs_cipher" "$gocryptfs_mount" \
    >"$work/gocryptfs.log" 2>&1 &
gocryptfs_pid=$!
for _ in $(seq 1 100); do
    is_mounted "$gocryptfs_mount" && break
    sleep 0.1
done
is_mounted "$gocryptfs_mount" || { echo "gocryptfs did not mount; see $work/gocryptfs.log" >&2; exit 1; }

# syn with a local server, so that sync runs during the workload as in real use.
token=$("$syn" serve --data "$server_dir" add-account bench 2>>"$work/setup.log")
"$syn" serve --data "$server_dir" --listen 127.0.0.1:0 >"$work/server.out" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 1 100); do
    grep -q '^listening on ' "$work/server.out" 2>/dev/null && break
    sleep 0.1
done
url=$(sed -n 's/^listening on //p' "$work/server.out")
[ -n "$url" ] || { echo "syn serve did not start; see $work/server.log" >&2; exit 1; }
export SYN_PASSPHRASE="bench passphrase, not for real files"
quietly "$syn" init --store "$syn_store" --server "$url" --token "$token" --device-name bench \
    --insecure-test-kdf
quietly "$syn" mount --store "$syn_store" "$syn_mount"
syn_pid=$("$syn" status --store "$syn_store" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["pid"])')

# Runs one sync round through the daemon and waits for it to finish.
syn_sync() {
    if ! run_step "$syn" sync --store "$syn_store" --timeout "$step_timeout" >"$work/sync.log" 2>&1; then
        cat "$work/sync.log" >&2
        return 1
    fi
}

target_dir() {
    case "$1" in
        plain) echo "$plain_dir" ;;
        gocryptfs) echo "$gocryptfs_mount" ;;
        syn) echo "$syn_mount" ;;
    esac
}

# ---------------------------------------------------------------------------
# The workload.

# Runs every step of one round on one target and records the figures.
run_workload() {
    local target=$1 round=$2 dir start seconds
    dir="$(target_dir "$target")/round-$round"
    mkdir "$dir"

    # Sequential write from a source file that is in the page cache, with
    # fsync before dd returns, then a read of it with cold caches.
    cat "$work/seq.src" >/dev/null
    start=$(now_ns)
    run_step dd if="$work/seq.src" of="$dir/seq" bs=1M conv=fsync status=none
    seconds=$(seconds_since "$start")
    record "$round" "$target" seq_write "$(awk -v s="$seconds" -v mb="$size_mb" 'BEGIN { print mb * 1.048576 / s }')"
    drop_caches
    start=$(now_ns)
    run_step dd if="$dir/seq" of=/dev/null bs=1M status=none
    seconds=$(seconds_since "$start")
    record "$round" "$target" seq_read "$(awk -v s="$seconds" -v mb="$size_mb" 'BEGIN { print mb * 1.048576 / s }')"
    if [ "$(run_step sha256sum <"$dir/seq" | cut -d' ' -f1)" != "$seq_hash" ]; then
        fail "$target round $round: the sequential file reads back different bytes"
    fi

    # Random 4 KiB reads with cold caches, then random 4 KiB writes and an
    # fsync, on a file written beforehand (untimed).
    run_step dd if="$work/rand.src" of="$dir/rand" bs=1M conv=fsync status=none
    drop_caches
    seconds=$(run_step python3 "$work/io.py" random-read "$dir/rand" "$rand_ops" "$round")
    record "$round" "$target" rand_read "$seconds"
    seconds=$(run_step python3 "$work/io.py" random-write "$dir/rand" "$rand_ops" "$((round + 1000))")
    record "$round" "$target" rand_write "$seconds"
    rand_hash=$(run_step sha256sum <"$dir/rand" | cut -d' ' -f1)
    if [ "$target" = plain ]; then
        plain_rand_hash=$rand_hash
    elif [ "$rand_hash" != "$plain_rand_hash" ]; then
        fail "$target round $round: the random-I/O file differs from the plain directory's"
    fi

    # Small files: create them, then stat each one with cold caches.
    seconds=$(run_step python3 "$work/io.py" small-create "$dir/small" "$small_files" "$round")
    record "$round" "$target" small_create "$seconds"
    drop_caches
    seconds=$(run_step python3 "$work/io.py" small-stat "$dir/small" "$small_files" "$round")
    record "$round" "$target" small_stat "$seconds"

    # A real tree: extract it from a tarball in the page cache, check it
    # against the tarball (untimed), then delete it.
    cat "$work/tree.tar" >/dev/null
    mkdir "$dir/tree"
    start=$(now_ns)
    run_step tar -C "$dir/tree" -xf "$work/tree.tar"
    record "$round" "$target" untar "$(seconds_since "$start")"
    if ! run_step tar -C "$dir/tree" -df "$work/tree.tar" >"$work/tree-compare.txt" 2>&1; then
        fail "$target round $round: the extracted tree differs from the tarball:"
        head -n 5 "$work/tree-compare.txt" >&2
    fi
    start=$(now_ns)
    run_step rm -rf "$dir/tree"
    record "$round" "$target" rm_tree "$(seconds_since "$start")"

    # syn only: time until the server has everything this round changed.
    # The other targets start only after this, so syn's background pushes
    # do not slow down their steps.
    if [ "$target" = syn ]; then
        start=$(now_ns)
        syn_sync
        record "$round" "$target" sync_push "$(seconds_since "$start")"
    fi

    run_step rm -rf "$dir"
    if [ "$target" = syn ]; then
        syn_sync
    fi
}

cache_note="reads after sync and echo 3 > /proc/sys/vm/drop_caches"
if [ "$can_drop_caches" = 0 ]; then
    cache_note="NOT cold: /proc/sys/vm/drop_caches is not writable, so reads may come from the page cache"
fi

echo "== Workload: ${size_mb} MiB sequential file, ${rand_ops} random 4 KiB reads and writes in a ${rand_mb} MiB file,"
echo "   ${small_files} small files, tree of ${tree_count} entries (${tree_mib} MiB tar of $tree); ${rounds} rounds"
echo "   Cache: $cache_note"

for round in $(seq 1 "$rounds"); do
    # Fresh random data each round, because syn names blocks by a hash of
    # their contents and would store a repeated block only once.
    head -c "$((size_mb * 1048576))" /dev/urandom >"$work/seq.src"
    head -c "$((rand_mb * 1048576))" /dev/urandom >"$work/rand.src"
    seq_hash=$(sha256sum <"$work/seq.src" | cut -d' ' -f1)
    for target in plain gocryptfs syn; do
        echo "   round $round/$rounds: $target"
        run_workload "$target" "$round"
    done
done

# ---------------------------------------------------------------------------
# Report.

# Disk space still in use once every round has deleted its files.
disk_mib() {
    du -sk "$1" | awk '{ printf "%.1f", $1 / 1024 }'
}
plain_disk=$(disk_mib "$plain_dir")
gocryptfs_disk=$(disk_mib "$gocryptfs_cipher")
syn_store_disk=$(disk_mib "$syn_store")
server_disk=$(disk_mib "$server_dir")

syn_peak=$(peak_memory_mib "$syn_pid")
server_peak=$(peak_memory_mib "$server_pid")
gocryptfs_peak=$(peak_memory_mib "$gocryptfs_pid")
syn_state=$("$syn" status --store "$syn_store" --json | python3 -c '
import json, sys
status = json.load(sys.stdin)
sync = status["sync"]
pending = status["pending_changes"]
pushed = sync["pushed_total"]
sent_mib = sync["bytes_sent"] / 1048576
error = sync["last_error"]["message"] if sync["last_error"] else "none"
print(f"pending changes {pending}, pushed {pushed} changes ({sent_mib:.1f} MiB sent), last error: {error}")')

echo
echo "== Results: median of $rounds rounds. In brackets: how many times slower than plain."
python3 - "$results" "$rounds" <<'EOF'
import statistics
import sys
from collections import defaultdict

path, rounds = sys.argv[1], int(sys.argv[2])
values = defaultdict(list)
with open(path) as file:
    for line in file:
        _, target, metric, value = line.split("\t")
        values[(target, metric)].append(float(value))

# (metric, label, unit, whether a larger value is faster)
METRICS = [
    ("seq_write", "sequential write, fsync", "MB/s", True),
    ("seq_read", "sequential read, cold", "MB/s", True),
    ("rand_read", "random 4 KiB reads, cold", "s", False),
    ("rand_write", "random 4 KiB writes + fsync", "s", False),
    ("small_create", "create small files", "s", False),
    ("small_stat", "stat small files, cold", "s", False),
    ("untar", "untar tree", "s", False),
    ("rm_tree", "rm -rf tree", "s", False),
    ("sync_push", "syn: push to server after round", "s", False),
]
TARGETS = ["plain", "gocryptfs", "syn"]

print(f"{'figure':<34}{'unit':<6}" + "".join(f"{target:>18}" for target in TARGETS))
for metric, label, unit, larger_is_faster in METRICS:
    plain = values.get(("plain", metric))
    plain_median = statistics.median(plain) if plain else None
    cells = []
    for target in TARGETS:
        samples = values.get((target, metric))
        if not samples:
            cells.append("-")
            continue
        median = statistics.median(samples)
        cell = f"{median:.1f}" if unit == "MB/s" else f"{median:.3f}"
        if target != "plain" and plain_median:
            slowdown = plain_median / median if larger_is_faster else median / plain_median
            cell += f" ({slowdown:.1f}x)"
        cells.append(cell)
    print(f"{label:<34}{unit:<6}" + "".join(f"{cell:>18}" for cell in cells))

print()
print("Per-round values (plain | gocryptfs | syn):")
for metric, label, unit, _ in METRICS:
    rows = []
    for target in TARGETS:
        samples = values.get((target, metric))
        rows.append(" ".join(f"{sample:.3g}" for sample in samples) if samples else "-")
    print(f"  {label:<34}{' | '.join(rows)}")
EOF

echo
echo "== Peak resident memory (VmHWM) at the end of the run"
printf '   %-22s %8s MiB\n' "syn daemon" "$syn_peak" "syn serve" "$server_peak" "gocryptfs" "$gocryptfs_peak"
echo "== Disk use after all rounds, when every file written has been deleted"
printf '   %-22s %8s MiB\n' "plain directory" "$plain_disk" "gocryptfs ciphertext" "$gocryptfs_disk" \
    "syn store" "$syn_store_disk" "syn serve data" "$server_disk"
echo "== syn sync state: $syn_state"

if [ "$failures" -gt 0 ]; then
    echo "$failures check(s) failed; see the FAILED lines above." >&2
    exit 1
fi
