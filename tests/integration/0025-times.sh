#!/bin/bash
# Times as a native filesystem keeps them: atime moves by the mount's rule
# (relatime, strictatime, noatime, nodiratime, ro, O_NOATIME) without moving
# ctime; mtime and ctime do not move across a remount, nor mtime across a
# crash and replay.  docs/design.md, "Times: who keeps them".
. "$(dirname "$0")/lib.sh"
B=$(new_backing b); M=$T/m
at() { stat -c %x "$1"; }
cycle() { umount_drfs "$M" >/dev/null; mount_drfs "$B" "$M" "$@"; }
past() { touch -a -d '1 hour ago' "$@"; sleep 0.05; }   # atime behind mtime and ctime
read_noatime() {
	python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY | os.O_NOATIME); os.read(fd, 1)' "$1"
}

# relatime, the default
mount_drfs "$B" "$M"
echo data >"$M/f"; echo data >"$M/g"; mkdir "$M/d"
past "$M/f" "$M/g" "$M/d"
a0=$(at "$M/f"); z0=$(stat -c %z "$M/f"); y0=$(stat -c %y "$M/f")
cat "$M/f" >/dev/null
a1=$(at "$M/f")
check "relatime: reading a file whose atime is behind moves it" test "$a1" != "$a0"
check_eq "relatime: the atime update leaves ctime" "$z0" "$(stat -c %z "$M/f")"
check_eq "relatime: the atime update leaves mtime" "$y0" "$(stat -c %y "$M/f")"
sleep 0.05; cat "$M/f" >/dev/null
check_eq "relatime: a second read leaves atime" "$a1" "$(at "$M/f")"
a0=$(at "$M/g"); read_noatime "$M/g"
check_eq "an O_NOATIME open leaves atime" "$a0" "$(at "$M/g")"
a0=$(at "$M/d"); ls "$M/d" >/dev/null
check "relatime: listing a directory whose atime is behind moves it" test "$a0" != "$(at "$M/d")"

# noatime
cycle noatime
past "$M/f" "$M/d"; a0=$(at "$M/f"); d0=$(at "$M/d")
cat "$M/f" >/dev/null; ls "$M/d" >/dev/null
check_eq "noatime: reading leaves atime" "$a0" "$(at "$M/f")"
check_eq "noatime: listing leaves atime" "$d0" "$(at "$M/d")"

# strictatime: every open
cycle strictatime
cat "$M/f" >/dev/null; a1=$(at "$M/f")
sleep 0.05; cat "$M/f" >/dev/null; a2=$(at "$M/f")
check "strictatime: a read moves atime" test "$a1" != "$a0"
check "strictatime: every read moves atime" test "$a2" != "$a1"

# nodiratime: directories stay, files follow relatime
cycle nodiratime
past "$M/f" "$M/d"; a0=$(at "$M/f"); d0=$(at "$M/d")
cat "$M/f" >/dev/null; ls "$M/d" >/dev/null
check "nodiratime: reading a file still moves its atime" test "$a0" != "$(at "$M/f")"
check_eq "nodiratime: listing leaves the directory's atime" "$d0" "$(at "$M/d")"

# read-only
past "$M/f"; a0=$(at "$M/f")
cycle ro
cat "$M/f" >/dev/null
check_eq "ro: reading leaves atime" "$a0" "$(at "$M/f")"

# mount -o remount changes the rule of a mounted drfs; "atime" brings relatime back
cycle
check "remount,noatime" "$DRFS" mount -o remount,noatime "$B" "$M"
past "$M/f"; a0=$(at "$M/f"); cat "$M/f" >/dev/null
check_eq "remount,noatime: reading leaves atime" "$a0" "$(at "$M/f")"
check "remount,atime" "$DRFS" mount -o remount,atime "$B" "$M"
check "remount,atime: the mount is relatime again" grep -q " $M fuse.drfs .*relatime" /proc/mounts
cat "$M/f" >/dev/null
check "remount,atime: reading moves atime again" test "$a0" != "$(at "$M/f")"
# a remount that names no atime mode keeps strictatime (which the kernel lists as no word)
"$DRFS" mount -o remount,strictatime,nodiratime "$B" "$M"
check "remount,ro keeps strictatime" "$DRFS" mount -o remount,ro "$B" "$M"
check "remount,ro: no relatime" eval "! grep -q ' $M fuse.drfs .*relatime' /proc/mounts"
"$DRFS" mount -o remount,rw,relatime,diratime "$B" "$M"

# mtime and ctime across a remount, after every kind of change
cycle
for i in $(seq 1 10); do printf x >"$M/n$i"; done          # created and written at once
echo a >"$M/w"; sleep 0.02; echo b >>"$M/w"                 # written again later
echo c >"$M/c"; sleep 0.02; chmod 600 "$M/c"
echo t >"$M/t"; sleep 0.02; truncate -s 100 "$M/t"
fallocate -l 64k "$M/fa"
cp "$M/w" "$M/cp"
# written within the tick of the create (no new time to send), written back later
python3 -c '
import os, sys, time
for i in range(5):
    fd = os.open(sys.argv[1] + "/late%d" % i, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"x")
    time.sleep(0.1)
    os.close(fd)' "$M"
ln "$M/c" "$M/c2"; mv "$M/t" "$M/t2"
sleep 0.2
times() { (cd "$M" && stat -c '%n %y %z' n* w c c2 t2 fa cp late*); }
before=$(times)
cycle
check_eq "mtime and ctime the same after a remount" "$before" "$(times)"
check "STATE/ctimes written at unmount" test -s "$B/.drfs/ctimes"
# removed files leave the table (40 bytes an entry)
size1=$(stat -c %s "$B/.drfs/ctimes")
rm "$M"/n*
cycle
check_eq "the ctimes of removed files are dropped" $((size1 - 400)) "$(stat -c %s "$B/.drfs/ctimes")"

# mtime across a crash: replay does not move it
for i in $(seq 1 10); do printf y >"$M/k$i"; done
# and a truncation by O_TRUNC that the backing lost (as a machine restart
# can): its replay truncates again, and the file keeps the mtime it showed
printf zz >"$M/kt"; sync "$M/kt"; sleep 1.1; : >"$M/kt"
sync "$M"/k*
before=$(cd "$M" && stat -c '%n %y %s' k*)
sleep 1.1
pid=$(daemon_pid "$B")
kill -9 "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
umount -l "$M"
printf zz >"$B/kt"
mount_drfs "$B" "$M"
check_eq "mtime the same after a crash and replay" "$before" "$(cd "$M" && stat -c '%n %y %s' k*)"

# a damaged STATE/ctimes: said once, the mount works, backing ctimes shown
umount_drfs "$M" >/dev/null
printf 'garbage' >"$B/.drfs/ctimes"
mount_drfs "$B" "$M"
check "a damaged ctimes file is reported" grep -q "ctimes is damaged; ignored" "$B/.drfs/drfs.log"
check_eq "files read after a damaged ctimes file" y "$(cat "$M/k1")"
check_eq "backing ctime shown without the table" "$(stat -c %z "$B/k1")" "$(stat -c %z "$M/k1")"
umount_drfs "$M" >/dev/null
finish
