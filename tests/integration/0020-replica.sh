#!/bin/bash
# Replication to a file:// replica: the journal is shipped continuously and
# the snapshots with it; the replica restores (latest, and @TIME from its
# journal pieces) and snapshot-mounts to what the mount held; after the
# primary is killed the replica still holds every change that was durable
# and shipped; an unreachable replica shows as FAILING in status while
# writes go on, and replication catches up by itself; a daemon killed
# mid-upload resumes; the replica stays consistent after every interruption.
. "$(dirname "$0")/lib.sh"
DIGEST="python3 $TOP/tests/helpers/treedigest.py"
LOAD="python3 $TOP/tests/helpers/snapload.py"

. "$(dirname "$0")/replica-lib.sh"
# consistent DIR: every snapshot the replica lists restores (each blob's
# SHA-256 checked), head names a snapshot it holds, and the journal pieces
# chain without a gap from the oldest one
consistent() {
	local dir=$1 id
	for id in $("$DRFS" snapshots "file://$dir" --json |
		python3 -c 'import json,sys; [print(s["id"]) for s in json.load(sys.stdin)]'); do
		rm -rf "$T/cons"
		"$DRFS" restore "file://$dir" "$id" "$T/cons" >/dev/null 2>"$T/cons.err" || {
			say "replica snapshot $id does not restore: $(cat "$T/cons.err")"; return 1; }
	done
	id=$(sed -n 's/^snapshot=//p' "$dir/head")
	[ -f "$dir/snapshots/$id.snap" ] || { say "head names $id, which is not there"; return 1; }
	consistent_journal "$dir"
}
consistent_journal() {
	python3 - "$1/journal" <<'EOF' || return 1
import os, sys
top = sys.argv[1]
for tl in os.listdir(top):
    # a put interrupted by kill -9 leaves its NAME.tmpTID behind; readers skip those
    ps = sorted((int(n[:16], 16), int(n[17:33], 16), n)
                for n in os.listdir(os.path.join(top, tl)) if n.endswith(".log"))
    end = ps[0][0]
    for f, e, n in ps:
        if f > end:
            sys.exit("journal gap before %s" % n)
        if os.path.getsize(os.path.join(top, tl, n)) != e - f:
            sys.exit("piece %s is not whole" % n)
        end = max(end, e)
EOF
}

R=$T/replica
mkdir -p "$R"
B=$T/b
mkdir -p "$B"
seq 1 20000 >"$B/existing"
check_exit "a replica URL drfs does not know" 2 "$DRFS" init "$B" --replica ftp://host/x
check_err "names the URL and what to give" "ftp://host/x.*file:///path or s3://"
require "init with a file:// replica" "$DRFS" init "$B" --replica "file://$R"
M=$T/m
mount_drfs "$B" "$M"
$LOAD "$M" 11 200 --big 3000000 >/dev/null
durable "$M"
check "the replica catches up" caught_up "$B"
check_eq "the replica's journal reaches the durable LSN" 1 \
	"$("$DRFS" status "$B" --json | python3 -c 'import json,sys; r=json.load(sys.stdin)["replica"]; print(int(r["remote_lsn"] == r["durable_lsn"] > 0))')"
check "a live snapshot" "$DRFS" snapshot "$M" --tag r1 >/dev/null
check "and it is shipped" caught_up "$B"
check_eq "head names the latest snapshot" "$(latest_id "$B")" \
	"$(sed -n 's/^snapshot=//p' "$R/head")"
rm -rf "$T/r1"
check "restore latest from the replica" "$DRFS" restore "file://$R" latest "$T/r1"
check_eq "it equals the local snapshot's restore" \
	"$("$DRFS" restore "$B" latest "$T/r1-local" >/dev/null; $DIGEST "$T/r1-local")" "$($DIGEST "$T/r1")"
mkdir -p "$T/sm"
MOUNTS+=("$T/sm")
check "snapshot-mount from the replica" "$DRFS" mount --snapshot latest "file://$R" "$T/sm"
check_eq "the snapshot mount equals the restore" "$($DIGEST "$T/r1")" "$($DIGEST "$T/sm")"
"$DRFS" umount "$T/sm"
check "consistent after a clean run" consistent "$R"

# ---- the primary dies: the replica has everything shipped, snapshot or not ----
$LOAD "$M" 12 150 >/dev/null
durable "$M"
check "caught up before the crash" caught_up "$B"
$DIGEST "$M" --no-mtime >"$T/before-crash"
sleep 0.3
kill -9 "$(daemon_pid "$B")"
sleep 0.5
umount -l "$M" 2>/dev/null
rm -rf "$T/r2"
check "restore @now from the replica alone" "$DRFS" restore "file://$R" "@$(date +%s.%N)" "$T/r2"
check_eq "the replica holds every change made before the crash" \
	"$(cat "$T/before-crash")" "$($DIGEST "$T/r2" --no-mtime)"
check "consistent after the crash" consistent "$R"

# ---- the replica goes away: status says so, writes go on, it catches up ----
mount_drfs "$B" "$M"
mv "$R" "$R.away"
echo "while away" >"$M/away"
durable "$M"
check "status shows the replica failing" wait_failing "$B"
"$DRFS" status "$B" >"$T/st.out" 2>&1
check "the status line says FAILING and names the replica directory" \
	grep -Eq "FAILING for [0-9]+ s: PUT file://$R/.*missing" "$T/st.out"
check "the lag in bytes shows" [ "$(rstat "$B" lag_bytes)" -gt 0 ]
check_eq "writes keep working meanwhile" "while away" "$(cat "$M/away")"
mv "$R.away" "$R"
check "it catches up once the replica is back" caught_up "$B"
check "consistent after the outage" consistent "$R"

# ---- the daemon is killed in the middle of uploads, and resumes ----
head -c 30000000 /dev/urandom >"$M/big1" &
writer=$!
sleep 0.5
kill -9 "$(daemon_pid "$B")"
wait $writer
sleep 0.5
umount -l "$M" 2>/dev/null
mount_drfs "$B" "$M"
echo after >"$M/after-restart"
check "replication resumes after the daemon was killed" caught_up "$B"
durable "$M"
check "and catches up with what came after" caught_up "$B"
$DIGEST "$M" --no-mtime >"$T/resumed"
rm -rf "$T/r3"
check "restore @now after the restart" "$DRFS" restore "file://$R" "@$(date +%s.%N)" "$T/r3"
check_eq "equals the mount" "$(cat "$T/resumed")" "$($DIGEST "$T/r3" --no-mtime)"

# ---- the journal is kept until shipped: an outage longer than several segments ----
umount_drfs "$M"
E=$T/e
RE=$T/replica-e
mkdir -p "$E" "$RE"
require "init e" "$DRFS" init "$E" --replica "file://$RE"
echo "journal_segment_size=4M" >>"$E/.drfs/drfs.conf"
ME=$T/me
# no retention and a snapshot during the outage: only the replica holds the journal
mount_drfs "$E" "$ME" snapshot_interval=0,journal_retention=0
echo first >"$ME/first"
check "e caught up" caught_up "$E"
mv "$RE" "$RE.away"
for i in $(seq 1 6); do head -c 4000000 /dev/urandom >"$ME/f$i"; durable "$ME"; done
check "a snapshot during the outage" "$DRFS" snapshot "$ME" >/dev/null
for i in $(seq 7 12); do head -c 4000000 /dev/urandom >"$ME/f$i"; durable "$ME"; done
first_seg=$(ls "$E/.drfs/journal" | grep -c '^00000001-0000000000000000.seg$')
check_eq "the first segment is still there while the replica is away" 1 "$first_seg"
mv "$RE.away" "$RE"
check "e catches up after the long outage" caught_up "$E"
check "and its replica's journal has no gap" consistent_journal "$RE"
$DIGEST "$ME" --no-mtime >"$T/e-now"
check "restore @now from e's replica" "$DRFS" restore "file://$RE" "@$(date +%s.%N)" "$T/re"
check_eq "equals e" "$(cat "$T/e-now")" "$($DIGEST "$T/re" --no-mtime)"
umount_drfs "$ME"
mount_drfs "$B" "$M"

# ---- a full replica disk: FAILING with what to do; catches up once there is room ----
umount_drfs "$M"
F=$T/small
mkdir -p "$F"
MOUNTS+=("$F")
mount -t tmpfs -o size=3m tmpfs "$F"
BF=$T/bf
mkdir -p "$BF"
require "init with a small replica" "$DRFS" init "$BF" --replica "file://$F"
MF=$T/mf
mount_drfs "$BF" "$MF"
head -c 6000000 /dev/urandom >"$MF/too-big"
durable "$MF"
check "a full replica shows as failing" wait_failing "$BF"
check "and says what to do" grep -q "free space on the replica" <("$DRFS" status "$BF")
check_eq "the mount still reads what was written" 6000000 "$(stat -c %s "$MF/too-big")"
mount -o remount,size=64m "$F"
check "it catches up once the replica has room" caught_up "$BF"
umount_drfs "$MF"
umount "$F"

# ---- replica_bwlimit: shipping 4 MB at 1 MB/s cannot be done within a second ----
mount_drfs "$B" "$M" replica_bwlimit=1M
check "caught up at the start" caught_up "$B"
head -c 4000000 /dev/urandom >"$M/limited"
durable "$M"
t0=$(date +%s.%N)
sleep 1
for _ in $(seq 1 10); do fresh "$B" "$t0" 'True' && break; sleep 0.2; done
check "with replica_bwlimit=1M the 4 MB are not all shipped after 1 s" fresh "$B" "$t0" 'r["lag_bytes"] >= 3000000'
check "and they are, in time" caught_up "$B"
check_exit "a bad replica_bwlimit" 2 "$DRFS" mount "$B" "$T/x" -o replica_bwlimit=fast
umount_drfs "$M"
mount_drfs "$B" "$M"

# ---- unmount ships the snapshot it takes ----
umount_drfs "$M"
check_eq "after unmount the replica's head is the unmount snapshot" "$(latest_id "$B")" \
	"$(sed -n 's/^snapshot=//p' "$R/head")"
check "consistent at the end" consistent "$R"
check_exit "a bad replica mount option" 2 "$DRFS" mount "$B" "$M" -o replica=relative/dir
check_err "names it" "replica.*file:///"
finish
