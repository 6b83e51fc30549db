#!/bin/bash
# fallocate (default, KEEP_SIZE, PUNCH_HOLE), sparse files with SEEK_DATA and
# SEEK_HOLE, copy_file_range, O_DIRECT, O_TMPFILE, shared writable mmap.
. "$(dirname "$0")/lib.sh"
B=$(new_backing b); M=$T/m
mount_drfs "$B" "$M"
cd "$M" || exit 1

check_eq "fallocate default" ok "$("$FSOPS" fallocate fa 0 0 1048576)"
check_eq "fallocate extends the size" 1048576 "$(stat -c %s fa)"
check "fallocate allocates blocks" [ "$(stat -c %b fa)" -ge 2048 ]
check_eq "fallocate KEEP_SIZE" ok "$("$FSOPS" fallocate fa keep 1048576 1048576)"
check_eq "KEEP_SIZE keeps the size" 1048576 "$(stat -c %s fa)"
check "KEEP_SIZE allocates beyond EOF" [ "$(stat -c %b "$B/fa")" -ge 4096 ]
head -c 65536 /dev/urandom >"$T/pat"
cp "$T/pat" ph
check_eq "PUNCH_HOLE" ok "$("$FSOPS" fallocate ph punch 8192 16384)"
check_eq "punched range reads zeros" 0 "$(dd if=ph bs=4096 skip=2 count=4 status=none | tr -d '\0' | wc -c)"
check_eq "punch keeps the size" 65536 "$(stat -c %s ph)"
check "data outside the hole intact" cmp -s <(head -c 8192 "$T/pat") <(head -c 8192 ph)
check_eq "hole seen by SEEK_HOLE" 8192 "$("$FSOPS" seek ph hole 0)"
check_eq "data after the hole by SEEK_DATA" 24576 "$("$FSOPS" seek ph data 8192)"

# A sparse file written through the mount keeps its holes.
dd if=/dev/urandom of=sp bs=4096 count=1 seek=256 status=none
check_eq "sparse size" $((257 * 4096)) "$(stat -c %s sp)"
check_eq "SEEK_DATA skips the leading hole" $((256 * 4096)) "$("$FSOPS" seek sp data 0)"
check_eq "SEEK_HOLE at the start" 0 "$("$FSOPS" seek sp hole 0)"
check_eq "SEEK_DATA past EOF" ENXIO "$("$FSOPS" seek sp data $((300 * 4096)))"
check "sparse in the backing (few blocks)" [ "$(stat -c %b "$B/sp")" -le 64 ]
check_eq "SEEK results equal the backing's" "$("$FSOPS" seek "$B/sp" data 0)" "$("$FSOPS" seek sp data 0)"

# Holes by the allocation map, as a snapshot reads the file (docs/design.md
# "Holes"): a preallocated range is data whether or not its pages are cached.
check_eq "preallocate 64 KiB" ok "$("$FSOPS" fallocate pa 0 0 65536)"
truncate -s 1M pa
check_eq "a preallocated range is data to SEEK_DATA" 0 "$("$FSOPS" seek pa data 0)"
check_eq "SEEK_HOLE finds its end" 65536 "$("$FSOPS" seek pa hole 0)"
check_eq "no data after it" ENXIO "$("$FSOPS" seek pa data 65536)"

# While a file is open for writing the kernel may hold written pages drfs has
# not been sent: SEEK_DATA must never call them a hole, and cp (which seeks
# for data) must copy them.
seek_open() {
	python3 - "$1" "$2" <<'PY'
import errno, os, subprocess, sys
path, copy = sys.argv[1], sys.argv[2]
data = os.urandom(4096)
w = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
os.pwrite(w, data, 1 << 20)
r = os.open(path, os.O_RDONLY)
try:
    at = os.lseek(r, 0, os.SEEK_DATA)
    verdict = "ok" if at <= 1 << 20 else "data seen at %d" % at
except OSError as e:
    verdict = "ok" if e.errno == errno.EINVAL else "SEEK_DATA: " + e.strerror
subprocess.run(["cp", path, copy], check=True)
with open(copy, "rb") as f:
    got = f.read()
if got != bytes(1 << 20) + data:
    verdict += ", the copy differs"
os.close(r)
os.close(w)
print(verdict)
PY
}
check_eq "SEEK_DATA and cp while a writer holds unwritten-back pages" ok "$(seek_open dw "$T/dw.copy")"
check_eq "after the writer closes, holes are exact again" $((1 << 20)) "$("$FSOPS" seek dw data 0)"

# copy_file_range
check_eq "copy_file_range" 4096 "$("$FSOPS" copy ph cp 0 4096 4096)"
check "copied bytes" cmp -s <(head -c 4096 "$T/pat") <(dd if=cp bs=4096 skip=1 count=1 status=none)
check_eq "copy_file_range size" 8192 "$(stat -c %s cp)"

# O_DIRECT
check_eq "O_DIRECT write and read back" ok "$("$FSOPS" odirect od 4096 Z)"
check_eq "O_DIRECT data in the backing" 8192 "$(dd if="$B/od" bs=4096 skip=1 count=2 status=none | tr -cd Z | wc -c)"

# O_TMPFILE (more in 0026-tmpfile.sh)
check_eq "O_TMPFILE made, written, linked in" ok "$("$FSOPS" tmpfile "$M" tmpname payload)"
check_eq "O_TMPFILE linked in" payload "$(cat tmpname)"

# shared writable mmap, seen by read(2) and in the backing after msync
head -c 16384 /dev/zero >mm
check_eq "mmap write + msync" ok "$("$FSOPS" mmapwrite mm 5000 MAPPED)"
check_eq "mmap data via read" MAPPED "$(dd if=mm bs=1 skip=5000 count=6 status=none)"
check_eq "mmap data in the backing" MAPPED "$(dd if="$B/mm" bs=1 skip=5000 count=6 status=none)"

# Large writes reach the backing exactly (1 MiB requests).
dd if=/dev/urandom of="$T/r" bs=1M count=32 status=none
dd if="$T/r" of=big bs=4M conv=fsync status=none
check "32 MiB written with fsync reads back equal" cmp -s "$T/r" big
# reads that reach the daemon (O_DIRECT) see writes not yet applied to the backing file
dd if="$T/r" of=big2 bs=1M count=8 status=none
check "O_DIRECT read right after the write" eval "dd if=big2 iflag=direct bs=1M status=none | cmp -s - <(head -c 8M '$T/r')"
# a write the backing filesystem refuses (past ext4's 16 TiB) fails for the
# caller and leaves the filesystem working
check "a write at 16 TiB fails" eval "! dd if=/dev/zero of=huge bs=4096 seek=$((2**32)) count=1 conv=notrunc status=none 2>/dev/null"
check "and the filesystem still takes writes" eval "echo ok >after-huge && [ \"\$(cat after-huge)\" = ok ]"
# the backing file gets the data once its records are durable; unmounting
# applies whatever is still pending
cd /
umount_drfs "$M"
check "32 MiB reached the backing exactly" cmp -s "$T/r" "$B/big"
finish
