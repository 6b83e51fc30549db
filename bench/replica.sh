#!/bin/bash
# Replication benchmarks, side by side in one run.
#
#  1. RPO under load: fio writes RATE (default 20 MB/s) for DURATION seconds
#     (default 60) on a replicated mount, with an fdatasync every 2 MiB (a
#     database's commits; without a flush the kernel may hold dirty pages
#     for 30 s whatever the filesystem).  Reported: the replicator's own
#     figure for every piece (how old the piece's oldest record was when the
#     piece landed on the replica: the RPO at its worst moment of each
#     cycle) as p50/p99/max, and the lag `drfs status` showed, sampled every
#     0.2 s.
#  2. The mount's own speed with replication on against off: a sequential
#     write and a 4 KiB random write with fsync after each, alternating the
#     two mounts REPS times, medians and the ratio on/off.
#  3. Initial replication of a repository of INIT_MB (default 2048) MiB of
#     random data (64 MiB files; a first snapshot by `drfs init`): the time
#     from mount until the replica holds the snapshot, as MB/s, and the
#     requests per GiB; beside it, the same repository files copied by a
#     plain tool (s3://: rclone copy with 4 transfers, as an operator would
#     script it; file://: cp and sync).
#
#   bench/replica.sh [--quick] [--url URL | --s3]
#   env: BENCH_DIR (default /var/tmp/drfs-bench-replica), RATE (20m),
#        DURATION (60), REPS (3), INIT_MB (2048), S3_DIR (BENCH_DIR/s3)
# --url replicates to URL instead of a file:// directory under BENCH_DIR
# (e.g. an s3:// URL; credentials from the environment); --s3 starts the
# test harness's S3 server (OpenStack Swift on 127.0.0.1) and uses it.
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
drfs=$top/drfs
dir=${BENCH_DIR:-/var/tmp/drfs-bench-replica}
rate=${RATE:-20m}
duration=${DURATION:-60}
reps=${REPS:-3}
init_mb=${INIT_MB:-2048}
s3dir=${S3_DIR:-$dir/s3}   # --s3: the server's files (a tmpfs puts its disk writes elsewhere)
url=""
s3=0
while [ $# -gt 0 ]; do
	case $1 in
	--quick) duration=20; reps=1; init_mb=256 ;;
	--url) url=$2; shift ;;
	--s3) s3=1 ;;
	*) echo "usage: bench/replica.sh [--quick] [--url URL | --s3]" >&2; exit 2 ;;
	esac
	shift
done
command -v fio >/dev/null || { echo "bench: fio is missing (make deps installs it)" >&2; exit 1; }
if [ $s3 = 1 ] || [ "${url#s3://}" != "$url" ]; then
	command -v rclone >/dev/null || apt-get install -y -qq rclone >/dev/null ||
		{ echo "bench: rclone (the baseline of the initial replication) is missing and could not be installed" >&2; exit 1; }
fi
[ -x "$drfs" ] || { echo "bench: build drfs first (make)" >&2; exit 1; }

mounts=()
cleanup() {
	for m in "${mounts[@]}"; do
		mountpoint -q "$m" && "$drfs" umount "$m" >/dev/null 2>&1
	done
	[ $s3 = 1 ] && S3_PORT_BASE=18580 "$top/tests/helpers/s3server.sh" stop "$s3dir"
}
trap cleanup EXIT
rm -rf "$dir"
mkdir -p "$dir"
if [ $s3 = 1 ]; then
	env_lines=$(S3_PORT_BASE=18580 "$top/tests/helpers/s3server.sh" start "$s3dir") ||
		{ echo "bench: the S3 server did not start" >&2; exit 1; }
	eval "$env_lines"
	export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
	url="s3://$S3_BUCKET/bench?endpoint=$S3_ENDPOINT&region=$S3_REGION&path_style=1"
fi
[ -n "$url" ] || { mkdir -p "$dir/replica"; url="file://$dir/replica"; }

# ---- 1. RPO under load ----
"$drfs" init "$dir/on" --replica "$url" >/dev/null
mkdir -p "$dir/mon"
"$drfs" mount "$dir/on" "$dir/mon" -o nosnapshot,snapshot_interval=0
mounts+=("$dir/mon")
: >"$dir/lag.samples"
(
	while :; do
		"$drfs" status "$dir/on" --json 2>/dev/null |
			python3 -c 'import json,sys; print(json.load(sys.stdin)["replica"]["lag_seconds"])' \
			>>"$dir/lag.samples" 2>/dev/null
		sleep 0.2
	done
) &
sampler=$!
fio --name=rpo --directory="$dir/mon" --rw=write --bs=64k --size=4G --rate="$rate" \
	--time_based --runtime="$duration" --fdatasync=32 --output="$dir/fio-rpo.txt" >/dev/null
kill $sampler 2>/dev/null
wait $sampler 2>/dev/null
sleep 3
status=$("$drfs" status "$dir/on" --json)
python3 - "$dir/lag.samples" "$status" "$rate" "$duration" "$url" <<'EOF'
import json, sys
samples = sorted(float(x) for x in open(sys.argv[1]) if x.strip())
st = json.loads(sys.argv[2])["replica"]
def pct(v, p):
    return v[min(len(v) - 1, int(len(v) * p))] if v else float("nan")
print("replica: %s; fio %s/s for %s s with fdatasync every 2 MiB" % (sys.argv[5], sys.argv[3], sys.argv[4]))
print("  per piece (RPO at its worst moment of each cycle, %d pieces): p50 %.2f s  p99 %.2f s  max %.2f s"
      % (st["piece_lag_count"], st["piece_lag_p50"], st["piece_lag_p99"], st["piece_lag_max"]))
print("  status lag sampled every 0.2 s (%d samples): p50 %.2f s  p99 %.2f s  max %.2f s"
      % (len(samples), pct(samples, 0.5), pct(samples, 0.99), samples[-1] if samples else float("nan")))
gib = st["put_bytes"] / 2**30
print("  shipped %.2f GiB in %d requests: %.0f requests per GiB; retries %d; lag now %d bytes"
      % (gib, st["requests"], st["requests"] / gib if gib else 0, st["retries"], st["lag_bytes"]))
EOF
"$drfs" umount "$dir/mon"

# ---- 2. the mount's own speed, replication on and off ----
"$drfs" init "$dir/off" >/dev/null
mkdir -p "$dir/moff"
"$drfs" mount "$dir/on" "$dir/mon" -o nosnapshot,snapshot_interval=0
"$drfs" mount "$dir/off" "$dir/moff" -o nosnapshot,snapshot_interval=0
mounts+=("$dir/moff")
run_job() { # JOB DIR: prints MB/s (seq) or IOPS (randsync)
	local job=$1 d=$2
	rm -rf "$d"/fio.*
	case $job in
	seq) fio --name=fio --directory="$d" --rw=write --bs=1m --size=1G --end_fsync=1 \
		--output-format=json | python3 -c 'import json,sys; print("%.1f" % (json.load(sys.stdin)["jobs"][0]["write"]["bw"]/1024))' ;;
	randsync) fio --name=fio --directory="$d" --rw=randwrite --bs=4k --size=64M --fsync=1 \
		--time_based --runtime=10 --output-format=json |
		python3 -c 'import json,sys; print("%.0f" % json.load(sys.stdin)["jobs"][0]["write"]["iops"])' ;;
	esac
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
for job in seq randsync; do
	on=(); off=()
	for _ in $(seq 1 "$reps"); do
		off+=("$(run_job $job "$dir/moff")")
		on+=("$(run_job $job "$dir/mon")")
	done
	mon=$(printf '%s\n' "${on[@]}" | median)
	moff=$(printf '%s\n' "${off[@]}" | median)
	unit=$([ $job = seq ] && echo MB/s || echo IOPS)
	printf '%-9s replication on %8s %s   off %8s %s   ratio on/off %.2f\n' "$job" "$mon" "$unit" \
		"$moff" "$unit" "$(echo "$mon $moff" | awk '{print $1/$2}')"
done
"$drfs" umount "$dir/mon"
"$drfs" umount "$dir/moff"
rm -rf "$dir/on" "$dir/off"

# ---- 3. initial replication of a repository ----
mkdir -p "$dir/init"
for i in $(seq 1 $((init_mb / 64))); do head -c 64M /dev/urandom >"$dir/init/r$i"; done
"$drfs" init "$dir/init" >/dev/null
repo=$dir/init/.drfs/repo
repo_bytes=$(du -sb "$repo" | cut -f1)
case $url in
s3://*) init_url=${url/\/bench\?//bench-init?} ;;
file://*) mkdir -p "${url#file://}/initial"; init_url="$url/initial" ;;
*) mkdir -p "$dir/replica-init"; init_url="file://$dir/replica-init" ;;
esac
sync
echo 3 >/proc/sys/vm/drop_caches 2>/dev/null
mkdir -p "$dir/minit"
t0=$(date +%s.%N)
"$drfs" mount "$dir/init" "$dir/minit" -o "replica=$init_url,nosnapshot,snapshot_interval=0"
mounts+=("$dir/minit")
want=$("$drfs" snapshots "$dir/init" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')
while :; do
	st=$("$drfs" status "$dir/init" --json)
	echo "$st" | python3 -c 'import json,sys; r=json.load(sys.stdin)["replica"]; sys.exit(0 if r["head_snapshot"] == sys.argv[1] and r["queue_objects"] == 0 else 1)' "$want" && break
	sleep 0.2
done
t1=$(date +%s.%N)
"$drfs" umount "$dir/minit"
# the baseline: the same files by a plain tool
sync
echo 3 >/proc/sys/vm/drop_caches 2>/dev/null
b0=$(date +%s.%N)
case $url in
s3://*)
	# AWS_CA_BUNDLE makes rclone 1.60 refuse its own HTTP transport; nothing here is TLS
	env -u AWS_CA_BUNDLE rclone copy "$repo" ":s3:$S3_BUCKET/bench-rclone" --s3-provider Other \
		--s3-endpoint "$S3_ENDPOINT" --s3-region "$S3_REGION" --s3-force-path-style \
		--s3-access-key-id "$AWS_ACCESS_KEY_ID" --s3-secret-access-key "$AWS_SECRET_ACCESS_KEY" \
		--transfers 4 2>"$dir/rclone.log" || echo "bench: rclone failed: $(tail -2 "$dir/rclone.log")" >&2
	baseline="rclone copy, 4 transfers" ;;
*)
	cp -r "$repo" "$dir/copy" && sync -f "$dir/copy"
	baseline="cp -r and sync" ;;
esac
b1=$(date +%s.%N)
python3 - "$st" "$repo_bytes" "$t0" "$t1" "$b0" "$b1" "$init_url" "$baseline" <<'EOF'
import json, sys
r = json.loads(sys.argv[1])["replica"]
size = int(sys.argv[2])
t = float(sys.argv[4]) - float(sys.argv[3])
b = float(sys.argv[6]) - float(sys.argv[5])
gib = r["put_bytes"] / 2**30
print("initial replication of a %.0f MiB repository to %s" % (size / 2**20, sys.argv[7]))
print("  drfs: %.1f s, %.0f MB/s, %d requests for %.2f GiB: %.1f requests per GiB"
      % (t, size / t / 1e6, r["requests"], gib, r["requests"] / gib if gib else 0))
print("  %s: %.1f s, %.0f MB/s;  drfs/baseline throughput %.2f" % (sys.argv[8], b, size / b / 1e6, b / t))
EOF
