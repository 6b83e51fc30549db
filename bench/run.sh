#!/bin/bash
# Benchmarks drfs against native ext4, side by side in one run.
#
# Every job runs on a directory of the same filesystem (native) and on a drfs
# mount whose backing directory is on that filesystem, alternating, REPS
# times; the script prints the median of each and the ratio drfs/native,
# where a ratio above 1 means drfs is faster (throughput, or 1/time).
#
#   bench/run.sh [--quick] [--out FILE] [--compare DRFS]
#   --compare DRFS: also runs every job on a mount made by that other drfs
#          binary (an earlier commit's build), in the same rounds, and reports
#          its median and the ratio drfs/other: an A/B without the drift
#          between two separate runs.  With OTHER_OPTS, the other mount
#          gets those options instead of DRFS_OPTS: --compare ./drfs with
#          OTHER_OPTS=fuse_uring=off compares the two transports of one build.
#   env: BENCH_DIR (default /var/tmp/drfs-bench), REPS (3), SEQ_SIZE (1G)
#        BENCH_JOBS="job ..." runs only these jobs (names as in the report, or
#          shell patterns: BENCH_JOBS="pgbench files-*"); default: all
#        DRFS_OPTS="opt,..." adds mount options (e.g. fuse_uring=off)
#        BENCH_SKIP_PGBENCH=1 leaves out pgbench; PGBENCH_TIME (30 s per run),
#          PGBENCH_PORT (54331)
#
# pgbench: a PostgreSQL 15 server (postgres user, default settings: fsync and
# synchronous_commit on) with its data directory in the target, scale 10,
# 8 clients, prepared statements; it measures fsync-heavy commits.
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
drfs=$top/drfs
dir=${BENCH_DIR:-/var/tmp/drfs-bench}
reps=${REPS:-3}
seq_size=${SEQ_SIZE:-1G}
rand_time=${RAND_TIME:-15}
nfiles=${NFILES:-50000}
pg_time=${PGBENCH_TIME:-30}
pg_port=${PGBENCH_PORT:-54331}
out=""
other=""
while [ $# -gt 0 ]; do
	case $1 in
	--quick) reps=1; seq_size=256M; rand_time=5; nfiles=10000; pg_time=10 ;;
	--out) out=$2; shift ;;
	--compare) other=$(realpath -e "$2") || exit 2; shift ;;
	*) echo "usage: bench/run.sh [--quick] [--out FILE] [--compare DRFS]" >&2; exit 2 ;;
	esac
	shift
done
for t in fio python3 tar; do
	command -v $t >/dev/null || { echo "bench: $t is missing (make deps installs it)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "bench: run as root (drops caches, mounts)" >&2; exit 1; }

# The jobs, in report order; BENCH_JOBS selects among them.
all_jobs="seqwrite seqread-cold seqread-cached randread-qd32-direct randread-qd1-direct
	write4k-buffered write4k-fdatasync write4k-fdatasync-4w write4k-fdatasync-16w
	files-create files-stat files-unlink tar-x pgbench"
set -f # BENCH_JOBS holds patterns, not file names
for p in ${BENCH_JOBS:-}; do
	m=""; for j in $all_jobs; do case $j in $p) m=1 ;; esac; done
	[ -n "$m" ] || { echo "bench: BENCH_JOBS: no job $p (jobs:" $all_jobs")" >&2; exit 2; }
done
jobs=""
for j in $all_jobs; do
	[ "$j" = pgbench ] && [ "${BENCH_SKIP_PGBENCH:-0}" = 1 ] && continue
	if [ -z "${BENCH_JOBS:-}" ]; then jobs="$jobs $j"; continue; fi
	for p in $BENCH_JOBS; do
		case $j in $p) jobs="$jobs $j"; break ;; esac
	done
done
set +f
[ -n "$jobs" ] || { echo "bench: no job left to run" >&2; exit 2; }
# want JOB...: whether any of these jobs runs.
want() {
	local j
	for j in "$@"; do
		case " $jobs " in *" $j "*) return 0 ;; esac
	done
	return 1
}
pgbin=/usr/lib/postgresql/15/bin
if want pgbench; then
	[ -x "$pgbin/initdb" ] && [ -x "$pgbin/pgbench" ] && id postgres >/dev/null 2>&1 ||
		{ echo "bench: PostgreSQL 15 is missing (make deps installs it; BENCH_SKIP_PGBENCH=1 skips pgbench)" >&2; exit 1; }
fi

cc -O2 -o "$top/build/metaops" "$top/bench/metaops.c" || exit 1
rm -rf "$dir"; mkdir -p "$dir/native" "$dir/backing" "$dir/mnt"
"$drfs" init "$dir/backing" >/dev/null || exit 1
# allow_other: the pgbench job's server runs as the postgres user.
"$drfs" mount "$dir/backing" "$dir/mnt" -o "allow_other${DRFS_OPTS:+,$DRFS_OPTS}" || exit 1
pid=$(sed -n 's/^pid=//p' "$dir/backing/.drfs/mount")
targets=("$dir/native" "$dir/mnt")
pid_other=""
if [ -n "$other" ]; then
	mkdir -p "$dir/backing-other" "$dir/other"
	"$other" init "$dir/backing-other" >/dev/null || exit 1
	other_opts=${OTHER_OPTS-${DRFS_OPTS:-}}
	"$other" mount "$dir/backing-other" "$dir/other" -o "allow_other${other_opts:+,$other_opts}" || exit 1
	pid_other=$(sed -n 's/^pid=//p' "$dir/backing-other/.drfs/mount")
	targets+=("$dir/other")
fi
pg_data=""; pg_pid=""
pg() { runuser -u postgres -- "$@"; }
# pg_kill: stops the server of a pgbench run that did not finish (failure, signal).
pg_kill() {
	[ -n "$pg_pid" ] || return 0
	if kill -0 "$pg_pid" 2>/dev/null; then
		pg "$pgbin/pg_ctl" -D "$pg_data" -m immediate -w -t 30 stop >/dev/null 2>&1
		pkill -9 -P "$pg_pid" 2>/dev/null
		kill -9 "$pg_pid" 2>/dev/null
	fi
	pg_pid=""
}
cleanup() {
	local rc=$? log
	pg_kill
	# a failed run keeps what the daemons said
	if [ "$rc" != 0 ]; then
		for log in "$dir"/backing/.drfs/drfs.log "$dir"/backing-other/.drfs/drfs.log; do
			[ -s "$log" ] || continue
			cp "$log" "/tmp/drfs-bench-$(basename "$(dirname "$(dirname "$log")")").log" &&
				echo "bench: the daemon's log is in /tmp/drfs-bench-$(basename "$(dirname "$(dirname "$log")")").log" >&2
		done
	fi
	mountpoint -q "$dir/mnt" && { "$drfs" umount "$dir/mnt" || umount -l "$dir/mnt"; }
	kill -9 "$pid" 2>/dev/null
	if [ -n "$pid_other" ]; then
		mountpoint -q "$dir/other" && { "$other" umount "$dir/other" || umount -l "$dir/other"; }
		kill -9 "$pid_other" 2>/dev/null
	fi
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
	case $name in randfile-prep|bufile-prep) ;; *) want "$name" || return 0 ;; esac
	echo "$name $(basename "$target") $(fio_value "$json" "$kind")" >>"$results"
}

# run_pgbench TARGETDIR: initdb in TARGETDIR/pg, start, pgbench -i, a timed
# pgbench run, stop, remove; records "pgbench TARGET TPS".
pgfail() { echo "bench: pgbench on $1: $2 failed: $(tail -3 "$3")" >&2; exit 1; }
run_pgbench() {
	local target=$1 side log out tps
	side=$(basename "$target")
	log=$dir/pgsock/$side.log; out=$dir/pgbench.out
	mkdir -p "$target/pg" "$dir/pgsock"
	chown postgres:postgres "$target/pg" "$dir/pgsock"
	pg_data=$target/pg/data
	pg "$pgbin/initdb" -D "$pg_data" --no-locale -E UTF8 -A trust -U postgres >"$out" 2>&1 ||
		pgfail "$side" initdb "$out"
	pg "$pgbin/pg_ctl" -D "$pg_data" -l "$log" -w -t 120 \
		-o "-k $dir/pgsock -p $pg_port -c listen_addresses=''" start >"$out" 2>&1
	pg_pid=$(head -1 "$pg_data/postmaster.pid" 2>/dev/null)
	[ -n "$pg_pid" ] && kill -0 "$pg_pid" 2>/dev/null || pgfail "$side" "pg_ctl start" "$log"
	local c=(-h "$dir/pgsock" -p "$pg_port" -U postgres)
	pg "$pgbin/pgbench" "${c[@]}" -i -s 10 -q postgres >"$out" 2>&1 || pgfail "$side" "pgbench -i" "$out"
	# Both sides start the timed run without dirty pages from the load.
	pg "$pgbin/psql" "${c[@]}" -X -q -c checkpoint postgres >"$out" 2>&1 || pgfail "$side" checkpoint "$out"
	pg "$pgbin/pgbench" "${c[@]}" -c 8 -j 2 -T "$pg_time" -M prepared postgres >"$out" 2>&1 ||
		pgfail "$side" pgbench "$out"
	tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' "$out")
	[ -n "$tps" ] || pgfail "$side" "reading tps from pgbench" "$out"
	pg "$pgbin/pg_ctl" -D "$pg_data" -m fast -w -t 120 stop >"$out" 2>&1 || pgfail "$side" "pg_ctl stop" "$out"
	pg_pid=""
	rm -rf "$target/pg"
	echo "pgbench $side $tps" >>"$results"
}

for rep in $(seq 1 "$reps"); do
	for target in "${targets[@]}"; do
		side=$(basename "$target")
		echo "bench: round $rep/$reps on $side" >&2
		rm -f "$target"/seq* "$target"/rand*
		# seqwrite writes the file the seqread jobs read.
		if want seqwrite seqread-cold seqread-cached; then
			run_fio seqwrite "$target" bw --rw=write --bs=1M --size="$seq_size" --end_fsync=1 --ioengine=psync --filename=seqfile
			drop
			want seqread-cold && run_fio seqread-cold "$target" bw --rw=read --bs=1M --size="$seq_size" --ioengine=psync --filename=seqfile
			# invalidate=0: fio would otherwise drop the file's pages first.
			want seqread-cached && run_fio seqread-cached "$target" bw --rw=read --bs=1M --size="$seq_size" --ioengine=psync --invalidate=0 --filename=seqfile
			rm -f "$target/seqfile"
		fi
		if want randread-qd32-direct randread-qd1-direct; then
			run_fio randfile-prep "$target" bw --rw=write --bs=1M --size=1G --end_fsync=1 --filename=randfile
			drop
			want randread-qd32-direct && run_fio randread-qd32-direct "$target" iops --rw=randread --bs=4k --size=1G --direct=1 --ioengine=io_uring --iodepth=32 --runtime="$rand_time" --time_based --filename=randfile
			drop
			want randread-qd1-direct && run_fio randread-qd1-direct "$target" iops --rw=randread --bs=4k --size=1G --direct=1 --ioengine=psync --runtime="$rand_time" --time_based --filename=randfile
			rm -f "$target/randfile"
		fi
		# 4 KiB write(2)s of an existing file, into the page cache: what a
		# service's logs and data files see between its fsyncs.
		if want write4k-buffered; then
			run_fio bufile-prep "$target" bw --rw=write --bs=1M --size=256M --end_fsync=1 --filename=bufile
			run_fio write4k-buffered "$target" bw --rw=write --bs=4k --size=256M --ioengine=psync --filename=bufile
			rm -f "$target/bufile"
		fi
		if want write4k-fdatasync; then
			run_fio write4k-fdatasync "$target" iops --rw=randwrite --bs=4k --size=256M --fdatasync=1 --ioengine=psync --runtime="$rand_time" --time_based --filename=syncfile
			rm -f "$target/syncfile"
		fi
		# Concurrent writers, one file each: what group commit is for.
		for n in 4 16; do
			want write4k-fdatasync-${n}w || continue
			run_fio write4k-fdatasync-${n}w "$target" iops --rw=randwrite --bs=4k --size=64M --fdatasync=1 --ioengine=psync --runtime="$rand_time" --time_based --numjobs=$n --group_reporting
			rm -f "$target"/write4k-fdatasync-${n}w.*
		done
		if want files-create files-stat files-unlink; then
			mkdir -p "$target/meta"
			"$top/build/metaops" "$target/meta" "$nfiles" | while read -r phase secs rate; do
				want "files-$phase" && echo "files-$phase $side $rate" >>"$results"
			done
			rm -rf "$target/meta"
		fi
		if want tar-x; then
			drop
			start=$(date +%s.%N)
			mkdir -p "$target/tar" && tar -xf "$tarball" -C "$target/tar" && sync -f "$target/tar" ||
				{ echo "bench: tar -x on $side failed" >&2; exit 1; }
			end=$(date +%s.%N)
			echo "tar-x $side $(python3 -c "print('%.1f' % ($tar_mb / ($end - $start)))")" >>"$results"
			rm -rf "$target/tar"
		fi
		if want pgbench; then
			drop
			run_pgbench "$target"
		fi
	done
done

report=$(python3 - "$results" "$reps" "$tar_files" "$tar_mb" "$nfiles" "$seq_size" "$pg_time" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(lambda: collections.defaultdict(list))
order = []
for line in open(sys.argv[1]):
    name, side, value = line.split()
    if name in ("randfile-prep", "bufile-prep"):
        continue
    if name not in order:
        order.append(name)
    rows[name][side].append(float(value))
units = {"seqwrite": "MiB/s", "seqread-cold": "MiB/s", "seqread-cached": "MiB/s",
         "randread-qd32-direct": "IOPS", "randread-qd1-direct": "IOPS", "write4k-buffered": "MiB/s",
         "write4k-fdatasync": "IOPS", "write4k-fdatasync-4w": "IOPS",
         "write4k-fdatasync-16w": "IOPS", "tar-x": "MiB/s", "pgbench": "TPS"}
other = any("other" in r for r in rows.values())
ratio = lambda a, b: a / b if b else 0
if other:
    print("| job | unit | native (median) | drfs (median) | drfs/native | other drfs (median) | other/native | drfs/other |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
else:
    print("| job | unit | native (median) | drfs (median) | drfs/native |")
    print("|---|---|---:|---:|---:|")
for name in order:
    n = statistics.median(rows[name]["native"]); d = statistics.median(rows[name]["mnt"])
    line = "| %s | %s | %.0f | %.0f | %.2f |" % (name, units.get(name, "ops/s"), n, d, ratio(d, n))
    if other:
        o = statistics.median(rows[name]["other"])
        line += " %.0f | %.2f | %.2f |" % (o, ratio(o, n), ratio(d, o))
    print(line)
print()
print("runs per job: %s; sequential file %s; %s small files; tarball %s files, %s MiB" %
      (sys.argv[2], sys.argv[6], sys.argv[5], sys.argv[3], sys.argv[4]))
if "pgbench" in order:
    print("pgbench: PostgreSQL 15, scale 10, 8 clients, 2 threads, prepared statements, %s s per run" %
          sys.argv[7])
PY
)
report="$report
drfs mount options: allow_other${DRFS_OPTS:+,$DRFS_OPTS}"
[ -n "$other" ] && report="$report; other drfs ($other): allow_other${other_opts:+,$other_opts}"
echo "$report"
if [ -n "$out" ]; then
	{ echo "$report"; echo; echo "raw values (job side value):"; sed 's/^/    /' "$results"; } >"$out"
fi
