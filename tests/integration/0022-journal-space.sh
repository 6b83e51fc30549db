#!/bin/bash
# The journal that retention and a lagging replica keep is bounded: past
# -o journal_max (retention only), or with less than -o journal_min_free free
# on the backing filesystem (retention and replica), the oldest segments go
# anyway.  Nothing written is lost (the
# tree and the next snapshot hold it), writes never fail for it, and status
# and the log say what was given up and why; @TIME into the dropped stretch
# fails with one line.  Without the limits the same load keeps the journal.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/replica-lib.sh"
DIGEST="python3 $TOP/tests/helpers/treedigest.py"

# jstat BACKING KEY: a field of 'drfs status --json' .journal
jstat() { status_field "$1" journal "$2"; }
# yielded BACKING: waits (up to 30 s) until status counts recycled held segments
yielded() {
	for _ in $(seq 1 150); do
		[ "$(jstat "$1" yielded_segments)" -gt 0 ] 2>/dev/null && return 0
		sleep 0.2
	done
	return 1
}
segments() { ls "$1/.drfs/journal" | grep -c '^[0-9a-f]\{8\}-[0-9a-f]\{16\}\.seg$'; }
# churn MOUNT N: N times, 4 MB written to a file, made durable, the file removed
churn() {
	for i in $(seq 1 "$2"); do
		head -c 4000000 /dev/urandom >"$1/churn" && sync -f "$1" && rm "$1/churn" || return 1
	done
}
# backing_4m NAME [init args]: an initialised backing with 4 MiB journal segments
backing_4m() {
	mkdir -p "$T/$1"
	"$DRFS" init "$T/$1" "${@:2}" >/dev/null || { say "init $1 failed"; exit 1; }
	echo "journal_segment_size=4M" >>"$T/$1/.drfs/drfs.conf"
	echo "$T/$1"
}

# ---- journal_max: retention gives way at the cap ----
A=$(backing_4m a)
MA=$T/ma
mount_drfs "$A" "$MA" journal_max=12M,snapshot_interval=0
echo before >"$MA/before"
sync -f "$MA"
sleep 0.3
TA=$(date -u +%s.%N)
sleep 0.3
for i in $(seq 1 10); do head -c 4000000 /dev/urandom >"$MA/f$i"; sync -f "$MA"; done
check "past journal_max the retention hold gives way" yielded "$A"
check_eq "status names the hold" "snapshot" "$(jstat "$A" yielded_holds)"
check "and the cap" grep -q "journal_max" <(jstat "$A" yield_reason)
check_eq "status gives the cap" $((12 << 20)) "$(jstat "$A" max_bytes)"
check "the human status warns" grep -q "WARNING: .* segments the snapshot hold kept were recycled" \
	<("$DRFS" status "$A")
check "the log says what was given up" grep -q "recycling segments that the snapshot hold kept" \
	"$A/.drfs/drfs.log"
n=$(segments "$A")
check "the journal is back near the cap ($n segments of 4 MiB)" [ "$n" -le 6 ]
$DIGEST "$MA" --no-mtime >"$T/a-now"
umount_drfs "$MA"
check_exit "@TIME in the dropped stretch fails" 1 "$DRFS" restore "$A" "@$TA" "$T/ra"
check_err "saying it is not kept and what to restore instead" "not kept.*drfs restore"
check "the unmount snapshot holds everything" "$DRFS" restore "$A" latest "$T/ra-latest"
check_eq "equal to the mount" "$(cat "$T/a-now")" "$($DIGEST "$T/ra-latest" --no-mtime)"

# the same load under a cap it does not reach keeps every segment
A2=$(backing_4m a2)
MA2=$T/ma2
mount_drfs "$A2" "$MA2" journal_max=1G,snapshot_interval=0
for i in $(seq 1 10); do head -c 4000000 /dev/urandom >"$MA2/f$i"; sync -f "$MA2"; done
sleep 2
check_eq "under the cap nothing is given up" 0 "$(jstat "$A2" yielded_segments)"
check "and the first segment is kept" [ -e "$A2/.drfs/journal/00000001-0000000000000000.seg" ]
umount_drfs "$MA2"

# ---- journal_min_free: a small disk does not fill with journal ----
# 80 MB churned through a 64 MiB ext4 filesystem while its replica is away:
# kept whole the journal could not fit
S=$T/small
mkdir -p "$S"
truncate -s 64M "$T/small.img"
mkfs.ext4 -q -F "$T/small.img" || { say "mkfs.ext4 failed"; exit 1; }
MOUNTS+=("$S")
mount -o loop "$T/small.img" "$S" || { say "cannot loop-mount an ext4 image"; exit 1; }
mkdir -p "$S/b"
RS=$T/replica-s
mkdir -p "$RS"
"$DRFS" init "$S/b" --replica "file://$RS" >/dev/null || { say "init on the ext4 image failed"; exit 1; }
echo "journal_segment_size=4M" >>"$S/b/.drfs/drfs.conf"
MS=$T/ms
mount_drfs "$S/b" "$MS" journal_min_free=40%,journal_max=100%,snapshot_interval=0
echo kept >"$MS/kept"
check "caught up before the outage" caught_up "$S/b"
mv "$RS" "$RS.away"
check "20 x 4 MB churned through a 64 MiB disk: no write fails" churn "$MS" 20
check "the holds gave way for free space" grep -q "free, under journal_min_free" \
	<(jstat "$S/b" yield_reason)
check "the replica's among them" grep -q replica <(jstat "$S/b" yielded_holds)
check_eq "what is there reads back" kept "$(cat "$MS/kept")"
check_eq "the journal did not fail" False "$(jstat "$S/b" error)"
mv "$RS.away" "$RS"
check "the replica catches up after the gap" caught_up "$S/b"
check_exit "restore @now from the replica, across the gap, fails" 1 \
	"$DRFS" restore "file://$RS" "@$(date +%s.%N)" "$T/rs-gap"
check_err "naming the gap and what restores past it" "has a gap from LSN .*a snapshot taken after the gap"
check "a snapshot" "$DRFS" snapshot "$MS" >/dev/null
check "the replica catches up over the gap" caught_up "$S/b"
check "the log names the gap" grep -q "recycled before it was shipped" "$S/b/.drfs/drfs.log"
$DIGEST "$MS" --no-mtime >"$T/s-now"
check "restore latest from the replica" "$DRFS" restore "file://$RS" latest "$T/rs-replica"
check_eq "equals the mount" "$(cat "$T/s-now")" "$($DIGEST "$T/rs-replica" --no-mtime)"
umount_drfs "$MS"
check "the unmount snapshot restores" "$DRFS" restore "$S/b" latest "$T/rs"
check_eq "with the file" kept "$(cat "$T/rs/kept")"
umount "$S"

# ---- journal_max does not cut a replica's journal: only a full disk does ----
R=$T/replica
mkdir -p "$R"
E=$(backing_4m e --replica "file://$R")
ME=$T/me
mount_drfs "$E" "$ME" journal_max=12M,snapshot_interval=0,journal_retention=0
echo first >"$ME/first"
check "caught up" caught_up "$E"
mv "$R" "$R.away"
for i in $(seq 1 10); do head -c 4000000 /dev/urandom >"$ME/f$i"; sync -f "$ME"; done
sleep 2
check "past journal_max the replica's hold keeps the first segment" \
	[ -e "$E/.drfs/journal/00000001-0000000000000000.seg" ]
holds=$(jstat "$E" yielded_holds)
check "and status does not name it among the holds given up ('$holds')" [ "${holds/replica/}" = "$holds" ]
mv "$R.away" "$R"
check "the replica catches up without a gap" caught_up "$E"
check "nothing was skipped" bash -c "! grep -q 'recycled before it was shipped' \"\$1\"" _ "$E/.drfs/drfs.log"
durable "$ME"
check "caught up" caught_up "$E"
$DIGEST "$ME" --no-mtime >"$T/e-now"
check "restore @now from the replica's journal" "$DRFS" restore "file://$R" "@$(date +%s.%N)" "$T/re"
check_eq "equals the mount" "$(cat "$T/e-now")" "$($DIGEST "$T/re" --no-mtime)"
umount_drfs "$ME"

# ---- bad values ----
check_exit "a bad journal_max" 2 "$DRFS" mount "$A" "$MA" -o journal_max=lots
check_err "names the option and the forms it takes" "journal_max=lots.*percentage"
check_exit "a percentage over 100" 2 "$DRFS" mount "$A" "$MA" -o journal_min_free=150%
finish
