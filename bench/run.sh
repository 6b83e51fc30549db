#!/bin/bash
# Benchmarks drfs against native ext4, side by side in one run.
#
# Every job runs on a directory of the same filesystem (native) and on a drfs
# mount whose backing directory is on that filesystem, alternating, REPS
# times; the script prints the median of each and the ratio drfs/native,
# where a ratio above 1 means drfs is faster (throughput, or 1/time).
#
#   bench/run.sh [--quick] [--out FILE]
#   env: BENCH_DIR (default /var/tmp/drfs-bench), REPS (3), SEQ_SIZE (1G)
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
drfs=$top/drfs
dir=${BENCH_DIR:-/var/tmp/drfs-bench}
reps=${REPS:-3}
seq_size=${SEQ_SIZE:-1G}
rand_time=${RAND_TIME:-15}
nfiles=${NFILES:-50000}
out=""
while [ $# -gt 0 ]; do
	case $1 in
	--quick) reps=1; seq_size=256M; rand_time=5; nfiles=10000 ;;
	--out) out=$2; shift ;;
	*) echo "usage: bench/run.sh [--quick] [--out FILE]" >&2; exit 2 ;;
	esac
	shift
done
for t in fio python3 tar; do
	command -v $t >/dev/null || { echo "bench: $t is missing (make deps installs it)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "bench: run as root (drops caches, mounts)" >&2; exit 1; }

cc -O2 -o "$top/build/metaops" "$top/bench/metaops.c" || exit 1
rm -rf "$dir"; mkdir -p "$dir/native" "$dir/backing" "$dir/mnt"
"$drfs" init "$dir/backing" >/dev/null || exit 1
"$drfs" mount "$dir/backing" "$dir/mnt" || exit 1
pid=$(sed -n 's/^pid=//p' "$dir/backing/.drfs/mount")
cleanup() {
	mountpoint -q "$dir/mnt" && { "$drfs" umount "$dir/mnt" || umount -l "$dir/mnt"; }
	kill -9 "$pid" 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# The tarball: every header of the machine's C library and kernel interfaces.
tarball=$dir/src.tar
tar -cf "$tarball" -C /usr include 2>/dev/null
tar_files=$(tar -tf "$tarball" | wc -l)
tar_mb=$(( $(stat -c %s "$tarball") / 1048576 ))

results=$dir/results.txt
: >"$results"
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# fio_job NAME TARGETDIR ARGS... -> records "NAME TARGET VALUE UNIT"
fio_value() {
	python3 -c '
import json,sys
j=json.load(open(sys.argv[1]))["jobs"][0]
kind=sys.argv[2]
if kind=="bw": print("%.1f"%((j["read"]["bw_bytes"]+j["write"]["bw_bytes"])/1048576))
else: print("%.0f"%(j["read"]["iops"]+j["write"]["iops"]))' "$1" "$2"
}
run_fio() {
	local name=$1 target=$2 kind=$3; shift 3
	local json=$dir/fio.json
	fio --output-format=json --output="$json" --directory="$target" --name="$name" "$@" >/dev/null 2>"$dir/fio.err" ||
		{ echo "bench: fio $name on $target failed: $(head -3 "$dir/fio.err")" >&2; exit 1; }
	echo "$name $(basename "$target") $(fio_value "$json" "$kind")" >>"$results"
}

for rep in $(seq 1 "$reps"); do
	for target in "$dir/native" "$dir/mnt"; do
		side=$(basename "$target")
		echo "bench: round $rep/$reps on $side" >&2
		rm -f "$target"/seq* "$target"/rand*
		run_fio seqwrite "$target" bw --rw=write --bs=1M --size="$seq_size" --end_fsync=1 --ioengine=psync --filename=seqfile
		drop
		run_fio seqread-cold "$target" bw --rw=read --bs=1M --size="$seq_size" --ioengine=psync --filename=seqfile
		# invalidate=0: fio would otherwise drop the file's pages first.
		run_fio seqread-cached "$target" bw --rw=read --bs=1M --size="$seq_size" --ioengine=psync --invalidate=0 --filename=seqfile
		rm -f "$target/seqfile"
		run_fio randfile-prep "$target" bw --rw=write --bs=1M --size=1G --end_fsync=1 --filename=randfile
		drop
		run_fio randread-qd32-direct "$target" iops --rw=randread --bs=4k --size=1G --direct=1 --ioengine=io_uring --iodepth=32 --runtime="$rand_time" --time_based --filename=randfile
		drop
		run_fio randread-qd1-direct "$target" iops --rw=randread --bs=4k --size=1G --direct=1 --ioengine=psync --runtime="$rand_time" --time_based --filename=randfile
		rm -f "$target/randfile"
		run_fio write4k-fdatasync "$target" iops --rw=randwrite --bs=4k --size=256M --fdatasync=1 --ioengine=psync --runtime="$rand_time" --time_based --filename=syncfile
		rm -f "$target/syncfile"
		# Concurrent writers, one file each: what group commit is for.
		for n in 4 16; do
			run_fio write4k-fdatasync-${n}w "$target" iops --rw=randwrite --bs=4k --size=64M --fdatasync=1 --ioengine=psync --runtime="$rand_time" --time_based --numjobs=$n --group_reporting
			rm -f "$target"/write4k-fdatasync-${n}w.*
		done
		mkdir -p "$target/meta"
		"$top/build/metaops" "$target/meta" "$nfiles" | while read -r phase secs rate; do
			echo "files-$phase $side $rate" >>"$results"
		done
		rm -rf "$target/meta"
		drop
		start=$(date +%s.%N)
		mkdir -p "$target/tar" && tar -xf "$tarball" -C "$target/tar" && sync -f "$target/tar" ||
			{ echo "bench: tar -x on $side failed" >&2; exit 1; }
		end=$(date +%s.%N)
		echo "tar-x $side $(python3 -c "print('%.1f' % ($tar_mb / ($end - $start)))")" >>"$results"
		rm -rf "$target/tar"
	done
done

report=$(python3 - "$results" "$reps" "$tar_files" "$tar_mb" "$nfiles" "$seq_size" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(lambda: collections.defaultdict(list))
order = []
for line in open(sys.argv[1]):
    name, side, value = line.split()
    if name == "randfile-prep":
        continue
    if name not in order:
        order.append(name)
    rows[name][side].append(float(value))
units = {"seqwrite": "MiB/s", "seqread-cold": "MiB/s", "seqread-cached": "MiB/s",
         "randread-qd32-direct": "IOPS", "randread-qd1-direct": "IOPS",
         "write4k-fdatasync": "IOPS", "write4k-fdatasync-4w": "IOPS",
         "write4k-fdatasync-16w": "IOPS", "tar-x": "MiB/s"}
print("| job | unit | native (median) | drfs (median) | drfs/native |")
print("|---|---|---:|---:|---:|")
for name in order:
    n = statistics.median(rows[name]["native"]); d = statistics.median(rows[name]["mnt"])
    print("| %s | %s | %.0f | %.0f | %.2f |" % (name, units.get(name, "ops/s"), n, d, d / n if n else 0))
print()
print("runs per job: %s; sequential file %s; %s small files; tarball %s files, %s MiB" %
      (sys.argv[2], sys.argv[6], sys.argv[5], sys.argv[3], sys.argv[4]))
PY
)
echo "$report"
if [ -n "$out" ]; then
	{ echo "$report"; echo; echo "raw values (job side value):"; sed 's/^/    /' "$results"; } >"$out"
fi
