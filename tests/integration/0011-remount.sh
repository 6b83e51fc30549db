#!/bin/bash
# Data, names and inode numbers survive unmount and remount; file handles stay
# valid; the mount(8) helper and an /etc/fstab-style line work.
. "$(dirname "$0")/lib.sh"
B=$(new_backing b); M=$T/m
mount_drfs "$B" "$M"
mkdir -p "$M/d/e"; echo data >"$M/d/e/f"; ln "$M/d/e/f" "$M/hl"; ln -s d/e/f "$M/sl"
ino_before=$(stat -c %i "$M/d/e/f")
root_before=$(stat -c %i "$M")
digest_before=$(tree_digest "$M")
handle=$(python3 - "$M/d/e/f" <<'PY' 2>/dev/null
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(8 + 128)
ctypes.c_uint.from_buffer(buf, 0).value = 128
mid = ctypes.c_int()
r = libc.name_to_handle_at(-100, sys.argv[1].encode(), buf, ctypes.byref(mid), 0)
print(buf.raw.hex() if r == 0 else "ERR%d" % ctypes.get_errno())
PY
)
umount_drfs "$M"
check "unmounted" eval "! mountpoint -q $M"
mount_drfs "$B" "$M"
# The handle is opened before anything else is looked up on the new mount.
case $handle in
ERR*|"") fail "name_to_handle_at on the mount: $handle" ;;
*)
	reopened=$(python3 - "$M" "$handle" <<'PY'
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(bytes.fromhex(sys.argv[2]))
mfd = os.open(sys.argv[1], os.O_RDONLY)
fd = libc.open_by_handle_at(mfd, buf, os.O_RDONLY)
print(os.read(fd, 100).decode().strip() if fd >= 0 else "ERR%d" % ctypes.get_errno())
PY
)
	check_eq "a file handle taken before the remount still opens the file" data "$reopened" ;;
esac
check_eq "tree after remount" "$digest_before" "$(tree_digest "$M")"
check_eq "inode number stable across remount" "$ino_before" "$(stat -c %i "$M/d/e/f")"
check_eq "root inode stable" "$root_before" "$(stat -c %i "$M")"
check_eq "hard link count after remount" 2 "$(stat -c %h "$M/hl")"
umount_drfs "$M"

# mount(8): mount -t fuse.drfs, and an fstab line.
helper=/sbin/mount.fuse.drfs
if [ ! -e $helper ]; then
	ln -s "$DRFS" $helper && trap 'rm -f '$helper'; cleanup' EXIT
fi
MOUNTS+=("$M")
check "mount -t fuse.drfs" mount -t fuse.drfs "$B" "$M" -o allow_other
PIDS+=("$(daemon_pid "$B")")
check "mounted by mount(8) with allow_other" grep -q " $M fuse.drfs .*allow_other" /proc/mounts
check "mount(8) mount is dev,suid by default for root" eval "! grep ' $M ' /proc/mounts | grep -q nosuid"
check_eq "data through the mount(8) mount" data "$(cat "$M/d/e/f")"
check "mount -o remount,ro" mount -o remount,ro "$M"
check "remounted read-only" eval "grep ' $M ' /proc/mounts | grep -q ' ro,'"
check "writes refused read-only" eval "! touch $M/ro-test 2>/dev/null"
check "mount -o remount,rw" mount -o remount,rw "$M"
check "writable again" touch "$M/rw-test"
check_eq "daemon unchanged by remounts" "$(daemon_pid "$B")" "${PIDS[-1]}"
check "umount(8)" umount "$M"
# A mount right after the unmount waits for the old daemon to let go.
check "mount again at once" "$DRFS" mount "$B" "$M"
PIDS+=("$(daemon_pid "$B")")
check "umount again" "$DRFS" umount "$M"
for i in $(seq 1 100); do [ -e "$B/.drfs/mount" ] || break; sleep 0.05; done
echo "$B $M fuse.drfs allow_other,noatime,nofail,x-systemd.automount 0 0" >"$T/fstab"
check "mount from an fstab line" mount -T "$T/fstab" "$M"
PIDS+=("$(daemon_pid "$B")")
check "fstab options applied" grep -q " $M fuse.drfs .*noatime" /proc/mounts
check "umount" "$DRFS" umount "$M"

# /run/drfs keeps nothing of a mount that is gone
mount_drfs "$B" "$M"
h=$(grep -l "^mountpoint=$M\$" /run/drfs/*.mount 2>/dev/null | head -1)
h=${h##*/}; h=${h%.mount}
check "the mount has a record in /run/drfs" [ -n "$h" ]
for _ in $(seq 1 50); do [ -e "/run/drfs/$h.journal" ] && break; sleep 0.1; done
check "and its counters file" [ -e "/run/drfs/$h.journal" ]
umount_drfs "$M"
check "no counters file left after umount" [ ! -e "/run/drfs/$h.journal" ]
check "no transport file left after umount" [ ! -e "/run/drfs/$h.transport" ]
# what killed mounts leave is swept by the next mount: a record with a dead
# pid, or no record for over a minute; a fresh recordless file stays
dead=fffffffffffffff0 old=fffffffffffffff1 fresh=fffffffffffffff2
printf 'pid=999999999\nmountpoint=/nowhere\n' >"/run/drfs/$dead.mount"
echo x >"/run/drfs/$dead.journal"; echo x >"/run/drfs/$dead.transport"
echo x >"/run/drfs/$old.journal"; touch -d '-2 minutes' "/run/drfs/$old.journal"
echo x >"/run/drfs/$fresh.journal"
# a snapshot mount's log: kept a week after its mount ended
echo x >"/run/drfs/$dead.log"; touch -d '-8 days' "/run/drfs/$dead.log"
echo x >"/run/drfs/$old.log"; touch -d '-8 days' "/run/drfs/$old.log"
echo x >"/run/drfs/$fresh.log"; touch -d '-6 days' "/run/drfs/$fresh.log"
livehash=fffffffffffffff3
printf 'pid=%s\nmountpoint=/nowhere-live\n' $$ >"/run/drfs/$livehash.mount"
echo x >"/run/drfs/$livehash.log"; touch -d '-8 days' "/run/drfs/$livehash.log"
mount_drfs "$B" "$M"
check "an ended mount's log older than a week is swept" [ ! -e "/run/drfs/$dead.log" ]
check "a recordless log older than a week is swept" [ ! -e "/run/drfs/$old.log" ]
check "a log younger than a week stays" [ -e "/run/drfs/$fresh.log" ]
check "a live mount's log stays, however old" [ -e "/run/drfs/$livehash.log" ]
check "a dead mount's counters are swept" [ ! -e "/run/drfs/$dead.journal" ]
check "a dead mount's transport line is swept" [ ! -e "/run/drfs/$dead.transport" ]
check "its record stays (status reports it)" [ -e "/run/drfs/$dead.mount" ]
check "an old recordless file is swept" [ ! -e "/run/drfs/$old.journal" ]
check "a fresh recordless file stays" [ -e "/run/drfs/$fresh.journal" ]
rm -f /run/drfs/fffffffffffffff[0123].*
umount_drfs "$M"
finish
