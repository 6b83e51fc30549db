#!/bin/bash
# The journal as an operator sees it: every kind of change shows up in
# `drfs journal dump` (with --from/--to), `drfs status` reports the LSNs,
# fsync makes changes durable in the journal without a checkpoint, a daemon
# crash is recovered by replay, a damaged journal is refused with a clear
# message (and accepted with -o journal_truncate), and a state directory
# without room for the journal gives a clear error.
. "$(dirname "$0")/lib.sh"
B=$(new_backing b); M=$T/m
mount_drfs "$B" "$M"

# one of each kind of change
echo hello >"$M/file"                                   # CREATE, WRITE
mkdir "$M/dir"                                          # CREATE (dir)
ln -s file "$M/sym"                                     # CREATE (symlink)
ln "$M/file" "$M/hard"                                  # LINK
mv "$M/hard" "$M/dir/moved"                             # RENAME
chmod 600 "$M/file"                                     # SETATTR mode
touch -d @1000000000 "$M/file"                          # SETATTR times
setfattr -n user.k -v v "$M/file"                       # SETXATTR
setfattr -x user.k "$M/file"                            # REMOVEXATTR
fallocate -l 65536 "$M/dir/moved"                       # FALLOCATE
truncate -s 3 "$M/file"                                 # SETATTR size
"$FSOPS" copy "$M/file" "$M/copy" >/dev/null 2>&1 || cp --reflink=never "$M/file" "$M/copy"
rm "$M/sym"                                             # UNLINK
mkfifo "$M/fifo"                                        # CREATE (fifo)
rmdir "$M/dir" 2>/dev/null; rm "$M/dir/moved"; rmdir "$M/dir"   # UNLINK dir
sync "$M/file"

check_exit "journal dump works while mounted" 0 "$DRFS" journal dump "$B"
D=$T/last.out
for t in CREATE WRITE LINK RENAME SETATTR SETXATTR REMOVEXATTR FALLOCATE UNLINK; do
	check "dump shows a $t record" grep -q " $t " "$D"
done
check "dump names the file" grep -q 'CREATE .*name="file"' "$D"
check "dump shows the symlink target" grep -q 'target="file"' "$D"
check "dump shows the rename's new name" grep -q 'RENAME .*newname="moved"' "$D"
check "dump shows the rmdir" grep -q 'UNLINK .*name="dir".* dir$' "$D"
check "dump shows the size change" grep -q 'SETATTR .* size=3' "$D"
check "dump shows explicit times" grep -q 'mtime=1000000000.000000000' "$D"
check "dump ends with a count" grep -q '^# [0-9]* records$' "$D"
n=$(grep -c '^[0-9a-f]\{16\} ' "$D")
third=$(grep '^[0-9a-f]\{16\} ' "$D" | sed -n 3p | cut -c1-16)
fifth=$(grep '^[0-9a-f]\{16\} ' "$D" | sed -n 5p | cut -c1-16)
check_exit "dump --from --to" 0 "$DRFS" journal dump "$B" --from "0x$third" --to "0x$fifth"
check_eq "--from/--to select records 3 and 4" 2 "$(grep -c '^[0-9a-f]\{16\} ' "$T/last.out")"
check_exit "dump rejects a bad LSN" 2 "$DRFS" journal dump "$B" --from banana
check_err "the bad LSN is named" "needs an LSN.*'banana'"
check_exit "journal without a subcommand" 2 "$DRFS" journal
check_exit "dump of a directory that is not a backing" 1 "$DRFS" journal dump "$T"

# status: the LSNs, text and JSON
check_exit "status" 0 "$DRFS" status "$M"
check "status shows the journal" grep -Eq '^journal: +head LSN [0-9]+, durable [0-9]+' "$T/last.out"
check_exit "status --json" 0 "$DRFS" status "$M" --json
check "json has the journal" python3 -c "
import json,sys; j=json.load(open('$T/last.out'))['journal']
assert j['head_lsn'] >= j['durable_lsn'] >= j['checkpoint_lsn'] >= 0 and j['segments'] >= 1, j"

# fsync is durable in the journal: after a kill -9 right after fsync, the
# state is back, and the log says it recovered by replay
dd if=/dev/urandom of="$T/data" bs=1k count=300 status=none
cp "$T/data" "$M/data"; sync "$M/data"
pid=$(daemon_pid "$B")
kill -9 "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
umount -l "$M"
mount_drfs "$B" "$M"
check "data back after a crash" cmp -s "$T/data" "$M/data"
for i in $(seq 1 40); do grep -q "recovered after an unclean stop" "$B/.drfs/drfs.log" && break; sleep 0.05; done
check "the log says what was replayed" grep -q "recovered after an unclean stop (the daemon had stopped): replayed LSN" "$B/.drfs/drfs.log"
check_exit "dump after recovery" 0 "$DRFS" journal dump "$B"
check "a RECOVERED record marks it" grep -q " RECOVERED " "$T/last.out"
check "the old segment was sealed" grep -q " SEAL " "$T/last.out"

# a damaged record with valid records after it: refused, nothing changed
for i in $(seq 1 20); do echo "$i" >"$M/f$i"; done
sync "$M/f1"
pid=$(daemon_pid "$B")
kill -9 "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
umount -l "$M"
seg=$(ls "$B"/.drfs/journal/0*.seg | tail -1)
first=$(basename "$seg" .seg); first=$((16#${first#*-}))
# the fifth record of the last segment (after SEAL, RECOVERED and the first creates)
lsn=$("$DRFS" journal dump "$B" --from "$first" | grep '^[0-9a-f]\{16\} ' | sed -n 5p | cut -c1-16)
off=$((4096 + 16#$lsn - first + 45))
before=$(ls "$B")
printf '\377' | dd of="$seg" bs=1 seek="$off" conv=notrunc status=none
mkdir -p "$M"
check_exit "a damaged journal is refused" 1 "$DRFS" mount "$B" "$M"
check "the refusal names the damage and the way out" \
	grep -q "is damaged: .*checksum mismatch, and valid records follow.*journal_truncate" "$T/last.err"
check "nothing mounted" eval "! mountpoint -q '$M'"
check_eq "the tree is untouched" "$before" "$(ls "$B")"
MOUNTS+=("$M")
check_exit "-o journal_truncate accepts the loss" 0 "$DRFS" mount "$B" "$M" -o journal_truncate
PIDS+=("$(daemon_pid "$B")")
check "the damaged segment is kept" test -f "$seg"
check "files from before the damage are there" test -f "$M/f1"
umount_drfs "$M"

# invariant 1: a write's data never reaches the backing file before its
# record is durable.  The first journal flush fails (DRFS_JOURNAL_FAIL_FLUSH):
# fsync reports it, and the data must not be in the backing file.
B4=$(new_backing b4)
DRFS_JOURNAL_FAIL_FLUSH=1 mount_drfs "$B4" "$M"
printf 'not durable' >"$M/nd" 2>/dev/null
check "fsync reports the failed flush" eval "! sync '$M/nd' 2>/dev/null"
sleep 0.3
check_eq "the data never reached the backing file" "" "$(cat "$B4/nd" 2>/dev/null)"
check "later changes fail with EIO" eval "! { echo x >'$M/later'; } 2>/dev/null"
umount_drfs "$M"

# segment size and seal age from drfs.conf
B3=$(new_backing b3)
echo "journal_segment_size=8M" >>"$B3/.drfs/drfs.conf"
echo "journal_seal_age=1" >>"$B3/.drfs/drfs.conf"
mount_drfs "$B3" "$M"
echo one >"$M/one"; sleep 1.3; echo two >"$M/two"; sync "$M/two"
check_eq "segments have the configured size" 8388608 "$(stat -c %s "$(ls "$B3"/.drfs/journal/0*.seg | head -1)")"
check "a segment older than journal_seal_age was sealed" eval "\"$DRFS\" journal dump '$B3' | grep -q ' SEAL '"
umount_drfs "$M"
echo "journal_segment_size=3M" >>"$B3/.drfs/drfs.conf"
check_exit "a bad journal_segment_size is refused" 1 "$DRFS" mount "$B3" "$M"
check_err "the error names the file and the key" "drfs.conf: journal_segment_size=3M: give a size from 4M to 1G"

# a full backing disk: acknowledged data is safe in the journal (on another
# disk), the write that cannot be applied stops the filesystem with EIO, and
# once there is room the next mount applies it.  Whether the fsync of the
# 10 MiB is acknowledged depends on when the applier meets the full disk:
# before the last WRITE reached the journal (EIO) or after (success).
IMG=$T/small.img; FB=$T/fullb
truncate -s 8M "$IMG" && mkfs.ext4 -q -F "$IMG" && mkdir -p "$FB" &&
	mount -o loop "$IMG" "$FB" && LOOPED=1 || LOOPED=
if [ -n "$LOOPED" ]; then
	"$DRFS" init "$FB" --state "$T/fullstate" >/dev/null
	mount_drfs "$FB" "$M"
	MOUNTS+=("$FB")   # cleanup: after the drfs mount on top of it
	dd if=/dev/urandom of="$T/ten" bs=1M count=10 status=none
	dd if="$T/ten" of="$M/big" bs=1M status=none 2>/dev/null
	if sync "$M/big" 2>/dev/null; then acked=10; else acked=0; fi
	say "10 MiB to a 6 MiB disk: the fsync was $([ $acked = 10 ] && echo acknowledged || echo refused)"
	for i in $(seq 1 40); do grep -q "No space left" "$T/fullstate/drfs.log" && break; sleep 0.05; done
	check "the log names the failed apply and the way out" \
		grep -q "applying a write to inode .* failed: No space left on device; .*applied at the next mount" "$T/fullstate/drfs.log"
	check "later changes fail with EIO" eval "! { echo x >'$M/after'; } 2>/dev/null"
	umount_drfs "$M"
	umount "$FB"
	truncate -s 32M "$IMG"; e2fsck -fy "$IMG" >/dev/null 2>&1; resize2fs "$IMG" >/dev/null 2>&1
	mount -o loop "$IMG" "$FB"
	mount_drfs "$FB" "$M"
	check "with room again, the mount applied it: nothing acknowledged was lost" \
		cmp -s -n $((acked << 20)) "$T/ten" "$M/big"
	check "every acknowledged byte is there" [ "$(stat -c %s "$M/big")" -ge $((acked << 20)) ]
	umount_drfs "$M"
	umount "$FB"
else
	say "no loop device: the full-disk case is not checked"
fi

# no room for the journal in the state directory
S=$T/small
mkdir -p "$S"
if mount -t tmpfs -o size=8m tmpfs "$S" 2>/dev/null; then
	B2=$T/b2; mkdir -p "$B2"
	"$DRFS" init "$B2" --state "$S/state" >/dev/null
	check_exit "a full state directory is refused" 1 "$DRFS" mount "$B2" "$M"
	check_err "the error names the journal and the cause" "cannot create the journal in $S/state/journal: No space left on device"
	check "no half-made segment is left" eval "! ls '$S/state/journal/'*.seg 2>/dev/null"
	umount "$S"
else
	say "no tmpfs: the full-disk case is not checked"
fi
finish
