#!/bin/bash
# What the kernel asks of a FUSE filesystem for each small-file operation of
# bench/run.sh, and what that allows at best.
#
#   bench/requests.sh [N]          (N files, default 5000; root; needs perf)
#
# For each phase of build/metaops (create, stat, unlink: 100-byte files in
# one directory) it runs the phase on native ext4 and on a drfs mount over
# the same filesystem, counts the requests the kernel sent to drfs (the
# fuse:fuse_request_send tracepoint), and prints per operation: native time,
# drfs time, the requests that the caller waits for, and the asynchronous
# ones (RELEASE, FORGET).  The statfs phase measures the transport's round
# trip: one STATFS request, which drfs answers with one fstatfs(2).
#
# The ceiling column is native / (native + waited requests x round trip):
# a passthrough daemon does at least the native filesystem's work on its
# backing tree (the same create, write, stat or unlink), and the caller
# waits for each of those requests, none cheaper than the cheapest one.  It
# is the best ratio drfs/native that any daemon could reach on this kernel
# and machine, whatever it does inside; a target above it cannot be met.
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
drfs=$top/drfs
n=${1:-5000}
dir=${BENCH_DIR:-/var/tmp/drfs-requests}
[ "$(id -u)" = 0 ] || { echo "requests: run as root (tracepoints, mounts)" >&2; exit 1; }
command -v perf >/dev/null ||
	{ echo "requests: perf is missing: apt-get install linux-perf" >&2; exit 1; }
[ -x "$drfs" ] || { echo "requests: $drfs is missing: run make first" >&2; exit 1; }
cc -O2 -o "$top/build/metaops" "$top/bench/metaops.c" || exit 1
metaops=$top/build/metaops

pid=""
cleanup() {
	mountpoint -q "$dir/mnt" && { "$drfs" umount "$dir/mnt" || umount -l "$dir/mnt"; }
	[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
rm -rf "$dir"; mkdir -p "$dir/native/meta" "$dir/backing" "$dir/mnt"
"$drfs" init "$dir/backing" >/dev/null || exit 1
"$drfs" mount "$dir/backing" "$dir/mnt" -o "allow_other${DRFS_OPTS:+,$DRFS_OPTS}" || exit 1
pid=$(sed -n 's/^pid=//p' "$dir/backing/.drfs/mount")
mkdir "$dir/mnt/meta" || exit 1
# the tracepoint names a connection by the minor number of the mount's device
conn=$(mountpoint -d "$dir/mnt" | cut -d: -f2)
out=$dir/out; mkdir -p "$out"

# Timed passes (no tracing), native and drfs in turn; the round trip is the
# best of five statfs passes, a second apart (a daemon still settling the
# previous phase's work answers more slowly).  Then one traced pass on drfs
# counts the requests.
for phase in create stat unlink; do
	"$metaops" "$dir/native/meta" "$n" "$phase" >"$out/native-$phase" || exit 1
	"$metaops" "$dir/mnt/meta" "$n" "$phase" >"$out/drfs-$phase" || exit 1
done
"$metaops" "$dir/native/meta" "$n" statfs >"$out/native-statfs" || exit 1
for i in 1 2 3 4 5; do
	sleep 1
	"$metaops" "$dir/mnt/meta" "$n" statfs >>"$out/statfs-passes" || exit 1
done
sort -k2,2n "$out/statfs-passes" | head -n 1 >"$out/drfs-statfs"
mkdir "$dir/mnt/counted" || exit 1
for phase in create stat unlink statfs; do
	perf record -q -o "$out/perf.data" -e fuse:fuse_request_send -a -- \
		"$metaops" "$dir/mnt/counted" "$n" "$phase" >/dev/null 2>"$out/perf.err" ||
		{ cat "$out/perf.err" >&2; exit 1; }
	perf script -i "$out/perf.data" 2>/dev/null |
		awk -v c="$conn" '$0 ~ "connection " c " " {
			for (i = 1; i <= NF; i++) if ($i == "opcode") { op = $(i + 2); gsub(/[()]/, "", op); sub(/^FUSE_/, "", op); print op } }' |
		sort | uniq -c >"$out/ops-$phase"
done

python3 - "$out" "$n" <<'PY'
import os, sys
out, n = sys.argv[1], int(sys.argv[2])
asynchronous = {"RELEASE", "RELEASEDIR", "FORGET", "BATCH_FORGET", "INTERRUPT"}
def usec(path):
    _, secs, _ = open(path).read().split()
    return float(secs) / n * 1e6
def ops(phase):
    counts = {}
    for line in open(os.path.join(out, "ops-" + phase)):
        c, op = line.split()
        counts[op] = int(c) / n
    return counts
rtt = usec(os.path.join(out, "drfs-statfs"))
print("| phase | native us/op | drfs us/op | drfs/native | requests waited for, per op | asynchronous, per op | ceiling |")
print("|---|---:|---:|---:|---|---|---:|")
for phase in ("create", "stat", "unlink", "statfs"):
    nat, dr = usec(os.path.join(out, "native-" + phase)), usec(os.path.join(out, "drfs-" + phase))
    c = ops(phase)
    sync = {k: v for k, v in c.items() if k not in asynchronous}
    asyn = {k: v for k, v in c.items() if k in asynchronous}
    fmt = lambda d: " + ".join("%s %.2g" % (k, v) for k, v in sorted(d.items(), key=lambda x: -x[1])) or "-"
    waited = sum(sync.values())
    ceiling = "%.2f" % (nat / (nat + waited * rtt)) if waited and phase != "statfs" else ""
    print("| %s | %.1f | %.1f | %.2f | %s (%.2g) | %s | %s |" % (phase, nat, dr, nat / dr, fmt(sync), waited, fmt(asyn), ceiling))
print()
print("%d files; round trip (statfs on drfs): %.1f us" % (n, rtt))
PY
