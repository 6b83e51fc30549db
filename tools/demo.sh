#!/bin/sh
# make run: mount a demo data directory with drfs and show how to use it.
# Idempotent: a second run reports the mount that is already there.
set -e
top=$(cd "$(dirname "$0")/.." && pwd)
drfs="$top/drfs"
base=${DRFS_DEMO_DIR:-/var/tmp/drfs-demo}
data="$base/data"
mnt="$base/mnt"
replica=${DRFS_DEMO_REPLICA:-$base/replica}

if [ "$(id -u)" != 0 ]; then
	echo "drfs: the demo mounts a filesystem; run it as root (sudo make run)" >&2
	exit 1
fi
if mountpoint -q "$mnt" 2>/dev/null; then
	echo "The demo is already mounted:"
	"$drfs" status "$mnt"
	echo
	echo "Unmount it with: $drfs umount $mnt"
	exit 0
fi
mkdir -p "$data" "$mnt" "$replica"
if [ ! -e "$data/.drfs/drfs.conf" ]; then
	# Some ordinary data, as a service would keep it.
	mkdir -p "$data/etc" "$data/var/log" "$data/db"
	printf 'listen = 127.0.0.1:5432\nshared_buffers = 128MB\n' >"$data/etc/service.conf"
	for i in 1 2 3; do echo "$(date -u +%FT%TZ) demo service started ($i)" >>"$data/var/log/service.log"; done
	head -c 4194304 /dev/urandom >"$data/db/table.dat"
	"$drfs" init "$data" --replica "file://$replica"
fi
"$drfs" mount "$data" "$mnt" -o "allow_other,replica=file://$replica"
echo
echo "drfs is serving $data on $mnt, replicated to file://$replica."
# a moment for the first shipment, so that the status below shows it
sleep 2
echo
"$drfs" status "$mnt"
echo
echo "Try:"
echo "  ls -la $mnt                      the demo data, through drfs"
echo "  echo hello > $mnt/hello.txt       changes land in $data"
echo "  watch -n1 $drfs status $mnt          RPO: how far the replica is behind, in seconds and bytes"
echo "  $drfs snapshot $mnt --tag first       a snapshot, shipped to the replica at once"
echo "  $drfs snapshots file://$replica       the replica's history"
echo "  $drfs restore file://$replica @\$(date +%s) /tmp/restored   the state of a moment, from the replica alone"
echo "  $drfs journal dump $data                every change, one line per journal record"
echo "  tail $data/.drfs/drfs.log         the daemon's log"
echo "  $drfs umount $mnt"
