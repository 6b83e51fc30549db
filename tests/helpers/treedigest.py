#!/usr/bin/python3
"""Prints a digest of a tree that covers contents and metadata, one line per
entry, sorted by path: type, mode, owner, size, mtime in ns, rdev, xattrs
(ACLs included), symlink target, the data extents of sparse files, and the
hard-link structure (each set of names of one inode, as the first name).
The top directory's own mode, owner and mtime come first.  Paths under the
names given with --skip (relative to the top) are left out.

usage: treedigest.py DIR [--skip NAME]... [--no-root-mtime] [--no-mtime]

--no-mtime leaves every mtime out (a point-in-time restore sets the times
the journal does not record to the time of the record).
"""
import errno
import hashlib
import os
import stat
import sys
import time


def xattrs(path):
    try:
        names = sorted(os.listxattr(path, follow_symlinks=False))
    except OSError:
        return ""
    out = []
    for n in names:
        try:
            v = os.getxattr(path, n, follow_symlinks=False)
        except OSError:
            continue
        out.append("%s=%s" % (n, v.hex()))
    return ",".join(out)


def seek(fd, pos, whence):
    """lseek, waiting up to 2 s out the EINVAL a drfs mount gives while a
    handle that can write the file is still open (the kernel releases a
    closed one asynchronously; docs/design.md "Holes")."""
    for _ in range(400):
        try:
            return os.lseek(fd, pos, whence)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            time.sleep(0.005)
    return os.lseek(fd, pos, whence)


def extents(path, size):
    """Data extents as start-end pairs (holes are the gaps)."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = 0
        while pos < size:
            try:
                s = seek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            e = seek(fd, s, os.SEEK_HOLE)
            out.append("%d-%d" % (s, min(e, size)))
            pos = e
    finally:
        os.close(fd)
    return ";".join(out)


def content(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()[:24]


MT = True


def mt(st):
    return str(st.st_mtime_ns) if MT else "-"


def main():
    args = sys.argv[1:]
    top = args.pop(0)
    skip = set()
    root_mtime = True
    global MT
    while args:
        a = args.pop(0)
        if a == "--skip":
            skip.add(args.pop(0))
        elif a == "--no-root-mtime":
            root_mtime = False
        elif a == "--no-mtime":
            root_mtime = False
            MT = False
    st = os.lstat(top)
    print(". root %o %d:%d %s %s" % (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                                    st.st_mtime_ns if root_mtime else "-", xattrs(top)))
    first_name = {}
    lines = []
    for dirpath, dirnames, filenames in os.walk(top):
        rel_dir = os.path.relpath(dirpath, top)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d not in skip]
            filenames = [f for f in filenames if f not in skip]
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(p)
            common = "%o %d:%d %s %s" % (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                                         mt(st), xattrs(p))
            m = st.st_mode
            if stat.S_ISREG(m):
                key = (st.st_dev, st.st_ino) if st.st_nlink > 1 else None
                lines.append((rel, "f %s size=%d nlink=%d data=%s ext=%s" % (
                    common, st.st_size, st.st_nlink, content(p), extents(p, st.st_size)), key))
            elif stat.S_ISDIR(m):
                lines.append((rel, "d %s" % common, None))
            elif stat.S_ISLNK(m):
                lines.append((rel, "l %d:%d %s -> %s" % (st.st_uid, st.st_gid, mt(st),
                                                         os.readlink(p)), None))
            else:
                kind = "c" if stat.S_ISCHR(m) else "b" if stat.S_ISBLK(m) else \
                    "p" if stat.S_ISFIFO(m) else "s"
                lines.append((rel, "%s %s rdev=%d" % (kind, common, st.st_rdev), None))
    # a hard-link set is named by its first name in path order
    lines.sort()
    out = []
    for rel, line, key in lines:
        if key is not None:
            line += " link=" + first_name.setdefault(key, rel)
        out.append("%s %s" % (rel, line))
    print("\n".join(out))


if __name__ == "__main__":
    main()
