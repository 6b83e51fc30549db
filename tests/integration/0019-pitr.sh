#!/bin/bash
# Point-in-time restore: 'drfs restore SOURCE @TIME DIR' is the newest
# snapshot at or before TIME plus the journal replayed up to TIME, and equals
# the tree as it was at TIME (contents, names, links, modes, owners, xattrs;
# times the journal does not record are approximate, so mtimes are compared
# only where set explicitly).  -o journal_retention keeps the journal for it;
# without the journal @TIME fails with one line naming the snapshot to use.
. "$(dirname "$0")/lib.sh"
DIGEST="python3 $TOP/tests/helpers/treedigest.py"
LOAD="python3 $TOP/tests/helpers/snapload.py"

count_snaps() {
	"$DRFS" snapshots "$1" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'
}
# at_time MOUNTPOINT FILE: digest of the tree now into FILE, then prints a
# moment after it and before any later change
at_time() {
	sync -f "$1"
	$DIGEST "$1" --no-mtime >"$2"
	sleep 0.3
	date -u +%s.%N
	sleep 0.3
}

B=$T/b
mkdir -p "$B/keep"
seq 1 50000 >"$B/keep/numbers"
require "init" "$DRFS" init "$B"
M=$T/m
mount_drfs "$B" "$M"

# ---- three moments, a live snapshot between the first and the second ----
$LOAD "$M" 1 150 --big 4000000 >/dev/null
mkdir "$M/t"; echo explicit >"$M/t/f"
touch -d '2011-01-01 01:01:01.123456789' "$M/t/f"
T1=$(at_time "$M" "$T/d1")
check "a live snapshot" "$DRFS" snapshot "$M" --tag mid >/dev/null
$LOAD "$M" 2 150 >/dev/null
mv "$M/t" "$M/w/a/moved-t"
ln "$M/w/a/moved-t/f" "$M/keep/f-link"
setfattr -n user.pitr -v two "$M/keep/numbers"
T2=$(at_time "$M" "$T/d2")
$LOAD "$M" 3 150 >/dev/null
rm -rf "$M/keep" "$M/w/a"
T3=$(at_time "$M" "$T/d3")
require "unmount" umount_drfs "$M"
check_eq "snapshots: init, mid, unmount" 3 "$(count_snaps "$B")"

check "restore @T1 (init snapshot + replay)" "$DRFS" restore "$B" "@$T1" "$T/r1"
check_eq "@T1 equals the tree at T1" "$(cat "$T/d1")" "$($DIGEST "$T/r1" --no-mtime)"
check_eq "an explicitly set mtime is replayed exactly" "2011-01-01 01:01:01.123456789" \
	"$(TZ=UTC0 stat -c %y "$T/r1/t/f" 2>/dev/null | cut -c1-29)"
grep -q "replayed [1-9][0-9]* journal records" <("$DRFS" restore "$B" "@$T1" "$T/r1b") &&
	pass || fail "@T1 replayed records"
check "restore @T2 (live snapshot + replay)" "$DRFS" restore "$B" "@$T2" "$T/r2"
check_eq "@T2 equals the tree at T2" "$(cat "$T/d2")" "$($DIGEST "$T/r2" --no-mtime)"
check_eq "@T2 starts from the live snapshot" mid \
	"$("$DRFS" restore "$B" "@$T2" "$T/r2b" | sed -n 's/^restored snapshot \([0-9a-f]*\).*/\1/p' |
	   xargs -I{} sh -c "'$DRFS' snapshots '$B' --json | python3 -c 'import json,sys; print([s[\"tags\"] for s in json.load(sys.stdin) if s[\"id\"].startswith(\"{}\")][0])'")"
check "restore @T3" "$DRFS" restore "$B" "@$T3" "$T/r3"
check_eq "@T3 equals the tree at T3" "$(cat "$T/d3")" "$($DIGEST "$T/r3" --no-mtime)"
check "restore latest" "$DRFS" restore "$B" latest "$T/r4"
check_eq "latest equals the tree at T3" "$(cat "$T/d3")" "$($DIGEST "$T/r4" --no-mtime)"
check_eq "@T1 and @T2 differ (the replay is not a no-op)" 1 \
	"$([ "$(cat "$T/d1")" != "$(cat "$T/d2")" ] && echo 1)"

# a snapshot mount of @TIME says it shows the snapshot, not the replayed state
mkdir -p "$T/sm"
MOUNTS+=("$T/sm")
"$DRFS" mount --snapshot "@$T2" "$B" "$T/sm" 2>"$T/sm.err"
check_eq "mount --snapshot @TIME says what it shows" 1 \
	"$(grep -c "showing snapshot .* the newest at or before" "$T/sm.err")"
"$DRFS" umount "$T/sm"

# ---- an aborted record is not replayed ----
# (the journal's own ABORT handling is tested in 0015; here a damaged tail)
# ---- damage in the replayed stretch is an error, not a silent shorter tree ----
cp -a "$B/.drfs/journal" "$T/journal-saved"
seg=$(ls "$B/.drfs/journal"/*.seg | head -1)
# the first record after the init snapshot's LSN 0: flip a byte of its payload
printf '\xff' | dd of="$seg" bs=1 seek=$((4096 + 100)) conv=notrunc status=none
check_exit "@T1 over a damaged journal fails" 1 "$DRFS" restore "$B" "@$T1" "$T/r5"
check_err "the failure names the damage" "journal (is damaged|from LSN).*"
rm -rf "$B/.drfs/journal"; cp -a "$T/journal-saved" "$B/.drfs/journal"

# ---- retention: without it the journal is recycled, and @TIME says so ----
C=$T/c
mkdir -p "$C"
require "init c" "$DRFS" init "$C"
echo "journal_segment_size=4M" >>"$C/.drfs/drfs.conf"
MC=$T/mc
mount_drfs "$C" "$MC" journal_retention=0
head -c 10000000 /dev/urandom >"$MC/one"
TC=$(at_time "$MC" "$T/dc")
sleep 1        # the status below gives whole seconds
check "a snapshot after the change" "$DRFS" snapshot "$MC" >/dev/null
for i in 1 2 3 4 5 6; do head -c 4000000 /dev/urandom >"$MC/more$i"; sync -f "$MC"; done
umount_drfs "$MC"
check_exit "@TIME before a recycled stretch fails" 1 "$DRFS" restore "$C" "@$TC" "$T/rc"
check_err "it names the snapshot to restore instead" "cannot restore the state at .*not kept.*snapshot [0-9a-f]{16} of .*drfs restore"
check_eq "nothing was written into the target" "" "$(ls -A "$T/rc" 2>/dev/null)"
# pitr_from BACKING: 'drfs status --json' point_in_time_from, as seconds since the epoch (0: none)
pitr_from() {
	"$DRFS" status "$1" --json | python3 -c 'import json,sys,calendar,time
v=json.load(sys.stdin).get("point_in_time_from")
print(calendar.timegm(time.strptime(v,"%Y-%m-%dT%H:%M:%SZ")) if v else 0)'
}
check "status: the restorable window of c starts after the recycled moment" \
	[ "$(pitr_from "$C")" -gt "${TC%.*}" ]

D=$T/d
mkdir -p "$D"
require "init d" "$DRFS" init "$D"
echo "journal_segment_size=4M" >>"$D/.drfs/drfs.conf"
MD=$T/md
mount_drfs "$D" "$MD"
head -c 10000000 /dev/urandom >"$MD/one"
TD=$(at_time "$MD" "$T/dd")
check "a snapshot after the change (default retention)" "$DRFS" snapshot "$MD" >/dev/null
for i in 1 2 3 4 5 6; do head -c 4000000 /dev/urandom >"$MD/more$i"; sync -f "$MD"; done
umount_drfs "$MD"
check "@TIME within the default retention of 1h" "$DRFS" restore "$D" "@$TD" "$T/rd"
check_eq "and it equals the tree then" "$(cat "$T/dd")" "$($DIGEST "$T/rd" --no-mtime)"
p=$(pitr_from "$D")
check "status: the restorable window of d reaches back to that moment" [ "$p" -gt 0 -a "$p" -le "${TD%.*}" ]

check_exit "a bad journal_retention" 2 "$DRFS" mount "$D" "$MD" -o journal_retention=soon
check_err "names the option" "journal_retention=soon"
finish
