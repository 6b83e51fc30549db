#!/bin/bash
# Snapshots: drfs against restic (Debian's package), side by side in one run
# on the same dataset and disk.
#
#   bench/snapshot.sh [--quick]
#   env: BENCH_DIR (default /var/tmp/drfs-snapbench), RANDOM_MB (512)
#
# Dataset (about 2 GB, mixed): /usr/share and /usr/lib/x86_64-linux-gnu
# (text, documentation, shared libraries; many small files) and RANDOM_MB of
# incompressible data in files of 64 MiB.  Jobs, caches dropped before each:
#   first     the first snapshot (drfs init of the directory; restic backup)
#   size      repository size after it
#   incr      after changing 1% of the bytes (random 8 KiB pages of the big
#             files, appends to text files, new files): drfs builds the
#             snapshot from the journal (the changes are made through a drfs
#             mount); restic backs up the same changes made to its copy
#   added     bytes the second snapshot added to each repository
#   restore   full restore of the latest snapshot into an empty directory
#   ttfb      drfs mount --snapshot, then the first byte of one file (drfs only)
# restic 0.14 always encrypts (a password is required; no way to turn it
# off), drfs does not: restic pays for AES on every byte.
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
drfs=$top/drfs
dir=${BENCH_DIR:-/var/tmp/drfs-snapbench}
random_mb=${RANDOM_MB:-512}
sources="/usr/share /usr/lib/x86_64-linux-gnu"
if [ "${1:-}" = --quick ]; then random_mb=128; sources="/usr/share/doc /usr/lib/python3"; fi
[ "$(id -u)" = 0 ] || { echo "bench: run as root (drops caches, mounts)" >&2; exit 1; }
command -v restic >/dev/null || apt-get install -y -qq restic >/dev/null ||
	{ echo "bench: restic is missing and could not be installed" >&2; exit 1; }
export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$dir/restic-cache

cleanup() {
	mountpoint -q "$dir/mnt" 2>/dev/null && "$drfs" umount "$dir/mnt"
}
trap cleanup EXIT
now() { date +%s.%N; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
mb() { echo "scale=1; $1 / 1048576" | bc; }

rm -rf "$dir"; mkdir -p "$dir/data" "$dir/mnt"
echo "== dataset"
for s in $sources; do cp -a "$s" "$dir/data/" 2>/dev/null; done
python3 - "$dir/data/random" "$random_mb" <<'PY'
import os, random, sys
d, mb = sys.argv[1], int(sys.argv[2])
os.makedirs(d)
r = random.Random(1)
for i in range(max(1, mb // 64)):
    with open(os.path.join(d, "blob%02d" % i), "wb") as f:
        for _ in range(64):
            f.write(r.randbytes(1 << 20))
PY
bytes=$(du -sb --apparent-size "$dir/data" | cut -f1)
files=$(find "$dir/data" -type f | wc -l)
echo "dataset: $(mb "$bytes") MiB in $files files"
cp -a "$dir/data" "$dir/backing"

echo "== first snapshot"
drop; t0=$(now); restic init -r "$dir/restic" >/dev/null &&
	restic backup -q -r "$dir/restic" "$dir/data" >/dev/null; t1=$(now)
restic_first=$(echo "$t1 - $t0" | bc)
drop; t0=$(now); "$drfs" init "$dir/backing" >/dev/null; t1=$(now)
drfs_first=$(echo "$t1 - $t0" | bc)
restic_size=$(du -sb "$dir/restic" | cut -f1)
drfs_size=$(du -sb "$dir/backing/.drfs/repo" | cut -f1)

echo "== change 1% of the bytes"
change() { # DIR: the same changes, by seed
	python3 - "$1" "$bytes" <<'PY'
import os, random, sys
top, total = sys.argv[1], int(sys.argv[2])
r = random.Random(42)
budget = total // 100
blobs = sorted(os.path.join(top, "random", f) for f in os.listdir(os.path.join(top, "random")))
texts = []
for dp, dn, fn in os.walk(top):
    dn.sort()
    for f in sorted(fn):
        p = os.path.join(dp, f)
        if len(texts) < 2000 and "/random" not in p and not os.path.islink(p) and \
                os.path.isfile(p) and os.path.getsize(p) < (1 << 20):
            texts.append(p)
done = 0
while done < budget * 6 // 10:                   # 60%: random 8 KiB pages of the big files
    p = r.choice(blobs)
    fd = os.open(p, os.O_WRONLY)
    os.pwrite(fd, r.randbytes(8192), r.randrange(0, (64 << 20) // 8192) * 8192)
    os.close(fd)
    done += 8192
while done < budget * 8 // 10:                   # 20%: appends to small files
    p = r.choice(texts)
    with open(p, "ab") as f:
        n = r.randrange(100, 20000)
        f.write(r.randbytes(n))
    done += n
os.makedirs(os.path.join(top, "new"), exist_ok=True)
i = 0
while done < budget:                             # 20%: new files
    n = r.randrange(1000, 200000)
    with open(os.path.join(top, "new", "f%05d" % i), "wb") as f:
        f.write(r.randbytes(n))
    done += n
    i += 1
PY
}
change "$dir/data"
"$drfs" mount "$dir/backing" "$dir/mnt" -o nosnapshot || exit 1
change "$dir/mnt"
"$drfs" umount "$dir/mnt"

echo "== incremental snapshot"
drop; t0=$(now); restic backup -q -r "$dir/restic" "$dir/data" >/dev/null; t1=$(now)
restic_incr=$(echo "$t1 - $t0" | bc)
drop; t0=$(now); "$drfs" snapshot "$dir/backing" >"$dir/drfs-incr.out"; t1=$(now)
drfs_incr=$(echo "$t1 - $t0" | bc)
cat "$dir/drfs-incr.out"
restic_added=$(( $(du -sb "$dir/restic" | cut -f1) - restic_size ))
drfs_added=$(( $(du -sb "$dir/backing/.drfs/repo" | cut -f1) - drfs_size ))

echo "== restore"
drop; t0=$(now); restic restore -q -r "$dir/restic" latest --target "$dir/restic-out" >/dev/null; t1=$(now)
restic_restore=$(echo "$t1 - $t0" | bc)
drop; t0=$(now); "$drfs" restore "$dir/backing" latest "$dir/drfs-out" >/dev/null; t1=$(now)
drfs_restore=$(echo "$t1 - $t0" | bc)
# the restored trees must match their sources
ok=$(diff -rq --no-dereference "$dir/backing" "$dir/drfs-out" 2>&1 | grep -v '\.drfs' | head -3)
[ -z "$ok" ] || echo "WARNING: drfs restore differs: $ok"

echo "== snapshot mount: time to first byte"
mkdir -p "$dir/snapmnt"
first_file=$(cd "$dir/backing" && find . -path ./.drfs -prune -o -type f -print | sed -n '1000p')
drop; t0=$(now)
"$drfs" mount --snapshot latest "$dir/backing" "$dir/snapmnt" && head -c 1 "$dir/snapmnt/$first_file" >/dev/null
t1=$(now)
ttfb=$(echo "$t1 - $t0" | bc)
"$drfs" umount "$dir/snapmnt"
echo "mount --snapshot and the first byte of $first_file: $ttfb s (cold cache)"

ratio() { echo "scale=2; $1 / $2" | bc; }
echo
echo "| job | drfs | restic | drfs/restic | target |"
echo "|---|---:|---:|---:|---:|"
printf '| first snapshot, MB/s | %.0f | %.0f | %s | >= 1.0 |\n' \
	"$(echo "$bytes / 1000000 / $drfs_first" | bc -l)" "$(echo "$bytes / 1000000 / $restic_first" | bc -l)" \
	"$(ratio "$restic_first" "$drfs_first")"
printf '| repository size, MiB | %s | %s | %s | <= 1.0 |\n' "$(mb "$drfs_size")" "$(mb "$restic_size")" \
	"$(ratio "$drfs_size" "$restic_size")"
printf '| incremental after 1%%, s | %.2f | %.2f | %s | <= 0.25 |\n' "$drfs_incr" "$restic_incr" \
	"$(ratio "$drfs_incr" "$restic_incr")"
printf '| incremental added, MiB | %s | %s | %s | <= 1.5 |\n' "$(mb "$drfs_added")" "$(mb "$restic_added")" \
	"$(ratio "$drfs_added" "$restic_added")"
printf '| full restore, MB/s | %.0f | %.0f | %s | >= 1.0 |\n' \
	"$(echo "$bytes / 1000000 / $drfs_restore" | bc -l)" "$(echo "$bytes / 1000000 / $restic_restore" | bc -l)" \
	"$(ratio "$restic_restore" "$drfs_restore")"
echo
echo "dataset $(mb "$bytes") MiB, $files files; times: first $drfs_first / $restic_first s," \
	"incremental $drfs_incr / $restic_incr s, restore $drfs_restore / $restic_restore s (drfs / restic)"
