#!/usr/bin/python3
"""Random changes to a tree, for the snapshot tests: writes at random offsets
in large files, appends, truncates (down and up), preallocations
(fallocate, also past the end) and punched holes, renames across
directories, hard links, xattrs, deletes, new files, symlinks, mode, owner
and time changes, new and removed directories.  Deterministic for a seed.

usage: snapload.py DIR SEED OPS [--big BYTES]
  --big  the size of the large files made on the first run (default 8 MiB)
"""
import ctypes
import os
import random
import sys

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2


def fallocate(path, mode, off, length):
    fd = os.open(path, os.O_WRONLY)
    try:
        if LIBC.fallocate(fd, mode, off, length):
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    finally:
        os.close(fd)


def files_under(top):
    out = []
    for dp, dn, fn in os.walk(top):
        for f in fn:
            p = os.path.join(dp, f)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append(p)
    out.sort()
    return out


def dirs_under(top):
    out = [top]
    for dp, dn, fn in os.walk(top):
        for d in dn:
            out.append(os.path.join(dp, d))
    out.sort()
    return out


def main():
    top, seed, ops = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    big = 8 << 20
    if "--big" in sys.argv:
        big = int(sys.argv[sys.argv.index("--big") + 1])
    rnd = random.Random(seed)
    work = os.path.join(top, "w")
    if not os.path.isdir(work):
        os.makedirs(os.path.join(work, "a", "b"))
        os.makedirs(os.path.join(work, "c"))
        for i in range(2):
            with open(os.path.join(work, "big%d" % i), "wb") as f:
                left = big
                while left:
                    n = min(left, 1 << 20)
                    f.write(rnd.randbytes(n))
                    left -= n
    n = 0
    for _ in range(ops):
        fl = files_under(work)
        dl = dirs_under(work)
        op = rnd.randrange(17)
        try:
            if op in (0, 1, 2) and fl:                 # write at a random offset
                p = rnd.choice(fl)
                size = os.path.getsize(p)
                off = rnd.randrange(0, max(size, 1) + 4096)
                with open(p, "r+b") as f:
                    f.seek(off)
                    f.write(rnd.randbytes(rnd.choice([1, 100, 4096, 8192, 70000, 300000])))
            elif op == 3 and fl:                       # append
                with open(rnd.choice(fl), "ab") as f:
                    f.write(rnd.randbytes(rnd.randrange(1, 200000)))
            elif op == 4 and fl:                       # truncate down or up
                p = rnd.choice(fl)
                size = os.path.getsize(p)
                os.truncate(p, rnd.choice([0, size // 2, size + 100000, max(size - 5000, 0)]))
            elif op == 5 and fl:                       # rename across directories
                p = rnd.choice(fl)
                d = rnd.choice(dl)
                os.rename(p, os.path.join(d, "r%d" % rnd.randrange(1000)))
            elif op == 6 and fl:                       # hard link
                p = rnd.choice(fl)
                os.link(p, os.path.join(rnd.choice(dl), "h%d" % rnd.randrange(1000)))
            elif op == 7 and fl:                       # xattr set or remove
                p = rnd.choice(fl + dl)
                name = "user.k%d" % rnd.randrange(3)
                if rnd.random() < 0.7:
                    os.setxattr(p, name, rnd.randbytes(rnd.randrange(1, 64)))
                else:
                    os.removexattr(p, name)
            elif op == 8 and fl:                       # delete
                os.unlink(rnd.choice(fl))
            elif op == 9:                              # new file
                with open(os.path.join(rnd.choice(dl), "n%d" % rnd.randrange(1000)), "wb") as f:
                    f.write(rnd.randbytes(rnd.randrange(0, 300000)))
            elif op == 10:                             # symlink
                os.symlink("target%d" % rnd.randrange(100),
                           os.path.join(rnd.choice(dl), "s%d" % rnd.randrange(1000)))
            elif op == 11 and fl:                      # mode, owner
                p = rnd.choice(fl)
                os.chmod(p, rnd.choice([0o600, 0o644, 0o755, 0o4755]))
                os.chown(p, rnd.choice([0, 1000, 1001]), rnd.choice([0, 1000]))
            elif op == 12 and fl:                      # times
                p = rnd.choice(fl)
                t = rnd.randrange(10**9, 2 * 10**9) * 10**9 + rnd.randrange(10**9)
                os.utime(p, ns=(t, t))
            elif op == 13:                             # new directory
                os.mkdir(os.path.join(rnd.choice(dl), "d%d" % rnd.randrange(1000)))
            elif op == 14:                             # remove an empty directory
                empty = [d for d in dl if d != work and not os.listdir(d)]
                if empty:
                    os.rmdir(rnd.choice(empty))
            elif op == 15 and fl:                      # preallocate, maybe past the end
                p = rnd.choice(fl)
                size = os.path.getsize(p)
                fallocate(p, rnd.choice([0, FALLOC_FL_KEEP_SIZE]),
                          rnd.randrange(0, size + 65536), rnd.choice([1, 4096, 100000, 1 << 20]))
            elif op == 16 and fl:                      # punch a hole
                p = rnd.choice(fl)
                size = os.path.getsize(p)
                fallocate(p, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                          rnd.randrange(0, max(size, 1)), rnd.choice([1, 4096, 70000, 1 << 20]))
            n += 1
        except (FileExistsError, FileNotFoundError, OSError):
            pass
    print(n)


if __name__ == "__main__":
    main()
