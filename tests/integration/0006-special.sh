#!/bin/bash
# FIFOs, device nodes, unix sockets, flock and POSIX byte-range locks.
. "$(dirname "$0")/lib.sh"
B=$(new_backing b); M=$T/m
mount_drfs "$B" "$M" dev
cd "$M" || exit 1
mkfifo fifo
check_eq "mkfifo" fifo "$(stat -c %F fifo)"
check_eq "fifo in the backing" fifo "$(stat -c %F "$B/fifo")"
(echo through >fifo) &
check_eq "data through the fifo" through "$(timeout 5 cat fifo)"
wait
mknod cdev c 1 3
check_eq "char device numbers" "character special file 1:3" "$(stat -c '%F %t:%T' cdev)"
check_eq "device node usable with -o dev" "" "$(head -c 10 cdev)"
mknod bdev b 7 0
check_eq "block device" "block special file" "$(stat -c %F bdev)"
check_eq "unix socket bind and connect" "connect: ok" "$("$FSOPS" socket "$M/sock")"
check_eq "socket node" socket "$(stat -c %F sock)"
: >lockfile
expected="getlk: conflict pid_matches=1
setlk overlapping: EAGAIN
setlk disjoint: ok
flock: EAGAIN
after unlock setlk: ok
after unlock flock: ok"
check_eq "POSIX locks and flock" "$expected" "$("$FSOPS" locks lockfile)"
flock -n lockfile true
check "flock(1) on a free file" [ $? = 0 ]
cd /
# an open fifo whose name is gone still answers fstat (link count 0), as natively
mkfifo "$M/gonefifo"
check_eq "fstat of an open, unlinked fifo" "nlink 0" "$(python3 -c "
import os
fd = os.open('$M/gonefifo', os.O_RDWR | os.O_NONBLOCK)
os.unlink('$M/gonefifo')
print('nlink', os.fstat(fd).st_nlink)" 2>&1)"
finish
