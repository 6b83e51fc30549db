#!/bin/bash
# The snapshot mount: 'drfs mount --snapshot SNAP SOURCE MOUNTPOINT' serves
# one snapshot read-only.  The mounted tree digests like the backing it was
# taken of (contents, modes, owners, mtimes, xattrs, ACLs, hard links, holes,
# specials); every change fails with EROFS; nothing is written to the
# repository; 'drfs umount' leaves no daemon; an older snapshot shows the old
# content; a damaged chunk is EIO and a log line naming it and its pack.
. "$(dirname "$0")/lib.sh"
DIGEST="python3 $TOP/tests/helpers/treedigest.py"
command -v setfacl >/dev/null || skip "setfacl is missing (package acl)"

# run_record MOUNTPOINT: the daemon's /run/drfs record of that mount point
run_record() { grep -lx "mountpoint=$1" /run/drfs/*.mount 2>/dev/null | head -1; }
record_key() { local r; r=$(run_record "$1") && [ -n "$r" ] && sed -n "s/^$2=//p" "$r"; }

# mount_snap SPEC SOURCE MOUNTPOINT [MOUNT-ARGS...]: mounts a snapshot and registers it for cleanup
mount_snap() {
	mkdir -p "$3"
	MOUNTS+=("$3")
	"$DRFS" mount --snapshot "$@" || { say "mount --snapshot $* failed"; exit 1; }
	PIDS+=("$(record_key "$3" pid)")
}

# gone PID: the process has ended (a zombie has: only its reaper has not looked yet)
gone() {
	local state
	state=$(sed -n 's/.*) \(.\).*/\1/p' "/proc/$1/stat" 2>/dev/null)
	[ -z "$state" ] || [ "$state" = Z ]
}

# erofs DESCRIPTION COMMAND: the shell command must fail with EROFS
erofs() {
	local out
	if out=$(bash -c "$2" 2>&1); then
		fail "$1: succeeded on a snapshot mount"
	elif [[ $out == *"Read-only file system"* ]]; then
		pass
	else
		fail "$1: failed, but not with EROFS: $out"
	fi
}

# ---- a backing directory holding data: its first snapshot is taken at init ----
B=$T/b
mkdir -p "$B/dir/sub" "$B/big" "$B/ünïcødé"
head -c 3000000 /dev/urandom >"$B/dir/random"
seq 1 200000 >"$B/dir/text"
: >"$B/empty"
echo unicode >"$B/ünïcødé/名前"
ln "$B/dir/text" "$B/dir/sub/text-link"
ln -s dir/text "$B/symlink"
ln -s /nowhere "$B/dangling"
mkfifo "$B/fifo"
truncate -s 100M "$B/sparse"
printf 'middle' | dd of="$B/sparse" bs=1 seek=50000000 conv=notrunc status=none
for i in $(seq 1 2000); do echo "$i" >"$B/big/f$i"; done
setfattr -n user.color -v blue "$B/dir/text"
setfattr -n user.empty "$B/empty"
setfacl -m u:1000:rwx "$B/dir/sub"
chown 1000:1001 "$B/dir/random"
chmod 640 "$B/dir/random"
touch -d '1999-12-31 23:59:59.5' "$B/dir/sub"
text_sum=$(sha256sum <"$B/dir/text")
require "drfs init on a directory holding data" "$DRFS" init "$B"
first=$("$DRFS" snapshots "$B" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')
require "init took a snapshot" test -n "$first"
repo_sum() { (cd "$B/.drfs/repo" && find . -print0 | sort -z | xargs -0 stat -c '%n %s %Y' && find . -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum; }
repo_before=$(repo_sum)
# the root's mtime changed when init made .drfs (after the tree was read)
before=$($DIGEST "$B" --skip .drfs --no-root-mtime)

# ---- the mount shows the snapshot ----
S=$T/s1
mount_snap latest "$B" "$S" -o allow_other
pid=$(record_key "$S" pid)
check "the daemon is running" kill -0 "$pid"
check_eq "mounted tree equals the backing (contents, modes, owners, mtimes, xattrs, ACLs, links, holes, specials)" \
	"$before" "$($DIGEST "$S" --no-root-mtime)"
check "/proc/mounts: fuse.drfs, read-only, named after the snapshot" \
	grep -Eq "^drfs-snapshot:${first:0:16} $S fuse.drfs ro," /proc/mounts
check_eq "hard links share st_ino" "$(stat -c %i "$S/dir/text")" "$(stat -c %i "$S/dir/sub/text-link")"
check_eq "hard links show their link count" 2 "$(stat -c %h "$S/dir/sub/text-link")"
check_eq "the sparse file holds little data" 1 "$([ "$(du -k "$S/sparse" | cut -f1)" -lt 1024 ] && echo 1)"
check_eq "a 2,000-entry directory lists whole" 2000 "$(ls "$S/big" | wc -l)"
check_eq "a lookup in it" 1234 "$(cat "$S/big/f1234")"
check_eq "a unicode name" unicode "$(cat "$S/ünïcødé/名前")"
check_eq "an xattr" blue "$(getfattr --only-values -n user.color "$S/dir/text")"
check_eq "a symlink" dir/text "$(readlink "$S/symlink")"
check_eq "data through the symlink" "$text_sum" "$(sha256sum <"$S/symlink")"
check_eq "the root directory's owner and mode" "$(stat -c '%a %u:%g' "$B")" "$(stat -c '%a %u:%g' "$S")"
check "statfs answers" stat -f "$S"
check "-o allow_other reaches the kernel" grep -Eq "^drfs-snapshot:[0-9a-f]+ $S .*allow_other" /proc/mounts

# ---- every change fails with EROFS ----
erofs "touch a new file" "touch '$S/new'"
erofs "touch an existing file" "touch '$S/dir/text'"
erofs "mkdir" "mkdir '$S/newdir'"
erofs "append" "echo more >>'$S/dir/text'"
erofs "truncate" "truncate -s 0 '$S/dir/text'"
erofs "rm" "rm '$S/dir/text'"
erofs "rmdir" "rmdir '$S/big'"
erofs "rename" "mv '$S/empty' '$S/empty2'"
erofs "link" "ln '$S/empty' '$S/empty2'"
erofs "symlink" "ln -s x '$S/sym2'"
erofs "chmod" "chmod 600 '$S/empty'"
erofs "setfattr" "setfattr -n user.x -v 1 '$S/empty'"
erofs "mkfifo" "mkfifo '$S/fifo2'"
check_eq "the file is unchanged" "$text_sum" "$(sha256sum <"$S/dir/text")"

# ---- unmount: no daemon left, nothing written ----
check "drfs umount" "$DRFS" umount "$S"
check "no longer mounted" bash -c "! mountpoint -q '$S'"
check "the daemon has exited" gone "$pid"
check "its record is gone" test -z "$(run_record "$S")"
check_eq "the repository is as it was" "$repo_before" "$(repo_sum)"
check "no mount record in the state directory" test ! -e "$B/.drfs/mount"

# ---- what is refused, with one line ----
mkdir -p "$T/s-none"
check_exit "a snapshot that does not exist" 1 "$DRFS" mount --snapshot deadbeefdeadbeef "$B" "$T/s-none"
check_err "the refusal names what was asked" "no snapshot matches 'deadbeefdeadbeef'"
check "nothing mounted" bash -c "! mountpoint -q '$T/s-none'"
check_exit "a bad spec" 1 "$DRFS" mount --snapshot not-a-snap "$B" "$T/s-none"
check_err "the refusal says what a spec is" "is not a snapshot"
check_exit "a writable option" 2 "$DRFS" mount --snapshot latest "$B" "$T/s-none" -o rw
check_err "the refusal names the option" "'rw' is for a writable mount"
check_exit "a source without snapshots" 1 "$DRFS" mount --snapshot latest "$T/s-none" "$T/s-none"
check_err "the refusal names the source" "holds no snapshots"

# ---- a second snapshot (at unmount); the first still shows the old content ----
M=$T/m
mount_drfs "$B" "$M"
# a snapshot mount next to the live mount of the same backing
mount_snap latest "$B" "$T/s-live"
echo changed >"$M/dir/text"
echo new >"$M/added"
check_eq "the snapshot does not see the live change" "$text_sum" "$(sha256sum <"$T/s-live/dir/text")"
check "drfs umount of the snapshot next to a live mount" "$DRFS" umount "$T/s-live"
umount_drfs "$M"
count=$("$DRFS" snapshots "$B" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
check_eq "unmount took the second snapshot" 2 "$count"

mount_snap "${first:0:12}" "$B" "$T/s-old"
check_eq "the first snapshot by id prefix: old content" "$text_sum" "$(sha256sum <"$T/s-old/dir/text")"
check "the first snapshot has no later file" test ! -e "$T/s-old/added"
check_eq "the first snapshot's tree" "$before" "$($DIGEST "$T/s-old" --no-root-mtime)"
mount_snap latest "file://$B/.drfs/repo" "$T/s-new"
check_eq "latest through file://: new content" changed "$(cat "$T/s-new/dir/text")"
check_eq "the later file" new "$(cat "$T/s-new/added")"
mount_snap "@$(($(date +%s) + 1))" "$B/.drfs/repo" "$T/s-time"
check_eq "@TIME through the repository directory: the newest before it" changed "$(cat "$T/s-time/dir/text")"
check "the old and new mounts both unmount" "$DRFS" umount "$T/s-old"
check "drfs umount of the newest" "$DRFS" umount "$T/s-new"
# SIGTERM to the daemon unmounts too
tpid=$(record_key "$T/s-time" pid)
kill -TERM "$tpid"
for _ in $(seq 1 100); do gone "$tpid" && break; sleep 0.1; done
check "SIGTERM: the daemon exits" gone "$tpid"
check "SIGTERM: unmounted" bash -c "! mountpoint -q '$T/s-time'"

# ---- a damaged chunk: EIO to the reader, a log line naming it ----
cp -a "$B/.drfs/repo" "$T/repo-copy"
damaged=""
# every data pack (blob type 1) over 1 MiB gets a damaged first blob (blobs start at
# 16); the first snapshot's files are in the first pack written, so it has one
for p in $(find "$T/repo-copy/packs" -name '*.pack' -size +1M); do
	if [ "$(od -An -tu4 -j12 -N4 "$p" | tr -d ' ')" = 1 ]; then
		damaged=$p
		printf '\xff\x00\xff\x00' | dd of="$p" bs=1 seek=1000 conv=notrunc status=none
	fi
done
first_id=$("$DRFS" snapshots "$B" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"][:16])')
if [ -n "$damaged" ]; then
	mount_snap "$first_id" "file://$T/repo-copy" "$T/s-bad"
	log=$(record_key "$T/s-bad" log)
	errs=$(cd "$T/s-bad" && find . -type f -exec cat {} + 2>&1 >/dev/null | grep -c 'Input/output error')
	check "a damaged chunk is EIO to the reader" test "$errs" -gt 0
	check "the log names the path, the chunk and its pack" \
		grep -Eq "snapshot mount: /[^:]+: chunk [0-9a-f]{64} .*pack [0-9a-f]{64}" "$log"
	check "the mount still works after the error" test -n "$(ls "$T/s-bad/big" | head -1)"
	check "drfs umount after errors" "$DRFS" umount "$T/s-bad"
else
	fail "no data pack over 1 MiB found in $T/repo-copy/packs"
fi

finish
