#!/bin/bash
# O_TMPFILE (docs/design.md "O_TMPFILE"): a file without a name has link
# count 0, is in no directory and leaves nothing in the journal; its first
# link records it as a create and writes (holes kept, xattrs, mode, owner),
# so that it survives a daemon crash, a replay as after a machine restart
# (the backing lost the link), and shows in snapshots: one built from the
# records has the root tree a scan has (invariant 4).  O_EXCL makes it
# unlinkable, as natively.
. "$(dirname "$0")/lib.sh"

B=$(new_backing b)
M=$T/m
mount_drfs "$B" "$M" allow_other
chmod 1777 "$M"
chmod o+x "$T"   # for the other user

# tmpf DIR NAME [excl|nolink] [OWNER UID]: makes a file with O_TMPFILE in
# DIR: 64 KiB of data, a hole, 4 KiB at 1 MiB, user.t=v, mode 640, fsync;
# prints "nlink-before listed-before nlink-after", links it as NAME (unless
# nolink), fsyncs DIR.  The same bytes go to $T/expect.
cat >"$T/tmpf.py" <<'EOF'
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
d, name, how = sys.argv[1], sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else "")
uid = int(sys.argv[4]) if len(sys.argv) > 4 else 0
a = bytes((i * 7 + 3) % 251 for i in range(65536))
b = b"tail" * 1024
with open(os.environ["EXPECT"], "wb") as e:
    e.write(a); e.seek(1 << 20); e.write(b)
if uid:
    os.setgid(uid); os.setuid(uid)
flags = os.O_TMPFILE | os.O_RDWR | (os.O_EXCL if how == "excl" else 0)
fd = os.open(d, flags, 0o600)
os.pwrite(fd, a, 0)
os.pwrite(fd, b, 1 << 20)
os.setxattr(fd, "user.t", b"v")
os.fchmod(fd, 0o640)
os.fsync(fd)
before = os.fstat(fd).st_nlink
listed = int(any(e.inode() == os.fstat(fd).st_ino for e in os.scandir(d)))
if how == "nolink":
    print(before, listed, "-"); sys.exit(0)
# linkat(AT_FDCWD, "/proc/self/fd/N", AT_FDCWD, NAME, AT_SYMLINK_FOLLOW): os.link would not follow
if libc.linkat(-100, b"/proc/self/fd/%d" % fd, -100, os.path.join(d, name).encode(), 0x400):
    print(before, listed, errno.errorcode[ctypes.get_errno()]); sys.exit(0)
dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
os.fsync(dfd)
print(before, listed, os.fstat(fd).st_nlink)
EOF
tmpf() { EXPECT=$T/expect python3 "$T/tmpf.py" "$@"; }
records() { "$DRFS" journal dump "$B" | grep -c '^[0-9a-f]\{16\} '; }

# ---- no name, no records; the first link records it whole ----
check_eq "no name: link count 0, not listed; linked: link count 1" "0 0 1" "$(tmpf "$M" a)"
check "linked file has the bytes written before the link" cmp -s "$T/expect" "$M/a"
check_eq "size, mode, owner of the linked file" "1052672 640 0" "$(stat -c '%s %a %u' "$M/a")"
check_eq "its xattr" v "$(getfattr --absolute-names --only-values -n user.t "$M/a")"
check "the hole stays a hole in the backing" [ "$(stat -c %b "$B/a")" -le 200 ]
fid=$("$DRFS" journal dump "$B" | sed -n 's/.*CREATE .*name="a" fid=\([0-9:]*\).*/\1/p')
check "the first link is recorded as a CREATE" [ -n "$fid" ]
check_eq "one WRITE per data extent" 2 "$("$DRFS" journal dump "$B" | grep -c "WRITE .*fid=$fid ")"
check "and the xattr" grep -q "SETXATTR .*fid=$fid .*user.t" <("$DRFS" journal dump "$B")

n=$(records)
files=$(find "$B" -path "$B/.drfs" -prune -o -type f -print | wc -l)
check_eq "never linked" "0 0 -" "$(tmpf "$M" x nolink)"
check_eq "a file never linked leaves no record" "$n" "$(records)"
check_eq "nor anything in the backing" "$files" "$(find "$B" -path "$B/.drfs" -prune -o -type f -print | wc -l)"

check_eq "O_EXCL: cannot be linked" "0 0 ENOENT" "$(tmpf "$M" e excl)"
check "and has no name" [ ! -e "$M/e" ]

mkdir "$M/u" && chown 65534:65534 "$M/u"
check_eq "made and linked by another user" "0 0 1" "$(tmpf "$M/u" f "" 65534)"
check_eq "owned by that user" "65534:65534 640" "$(stat -c '%u:%g %a' "$M/u/f")"

# copy_file_range into a file without a name reads what was just written to the source
cat >"$T/copy.py" <<'EOF'
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
d = sys.argv[1]
ok = 0
for i in range(20):
    data = os.urandom(65536)
    src = os.open(os.path.join(d, "src%d" % i), os.O_RDWR | os.O_CREAT, 0o644)
    os.write(src, data)
    fd = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o644)
    n = os.copy_file_range(src, fd, len(data), 0, 0)
    if libc.linkat(-100, b"/proc/self/fd/%d" % fd, -100, os.path.join(d, "copy%d" % i).encode(), 0x400):
        sys.exit("linkat failed")
    ok += n == len(data) and os.pread(fd, len(data), 0) == data
    os.close(fd); os.close(src)
print(ok)
EOF
check_eq "copy_file_range into it, 20 times: the source's new bytes each time" 20 "$(python3 "$T/copy.py" "$M")"
for i in 0 7 19; do
	check "copy $i linked with the source's bytes" cmp -s "$M/src$i" "$M/copy$i"
done

# ---- invariant 4: the snapshot built from these records equals a scan ----
last_field() {
	"$DRFS" snapshots "$B" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1][sys.argv[1]])' "$1"
}
umount_drfs "$M"
check_eq "the snapshot at unmount is built from the journal" journal "$(last_field source)"
jtree=$(last_field tree)
check "a snapshot by scan" "$DRFS" snapshot "$B" --scan --tag scan
check_eq "its root tree equals the journal-built one" "$jtree" "$(last_field tree)"
mount_drfs "$B" "$M" allow_other

# ---- a daemon crash after the link: replay keeps it ----
check_eq "linked before a crash" "0 0 1" "$(tmpf "$M" c)"
pid=$(daemon_pid "$B")
kill -9 "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
umount -l "$M"
mount_drfs "$B" "$M" allow_other
check "after the crash: the bytes" cmp -s "$T/expect" "$M/c"
check_eq "after the crash: mode and xattr" "640 v" "$(stat -c %a "$M/c") $(getfattr --absolute-names --only-values -n user.t "$M/c")"

# ---- the backing lost the link (a machine restart): the records make it again ----
check_eq "linked before a restart" "0 0 1" "$(tmpf "$M" d)"
pid=$(daemon_pid "$B")
kill -9 "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
umount -l "$M"
rm "$B/d"
DRFS_REPLAY_FULL=1 mount_drfs "$B" "$M" allow_other
check "after the restart replay: the bytes" cmp -s "$T/expect" "$M/d"
check_eq "after the restart replay: mode, owner, xattr, size" "640 0 1052672 v" \
	"$(stat -c '%a %u %s' "$M/d") $(getfattr --absolute-names --only-values -n user.t "$M/d")"

# ---- snapshots see it ----
check "a snapshot" "$DRFS" snapshot "$M" --tag tmp >/dev/null
check "restore of that snapshot" "$DRFS" restore "$B" latest "$T/r" >/dev/null
check "the restored copy has the linked file's bytes" cmp -s "$M/a" "$T/r/a"
umount_drfs "$M" >/dev/null
finish
