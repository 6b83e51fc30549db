/*
 * ops.c - the FUSE low-level operations.
 *
 * Reads are served straight from the backing tree (spliced where the kernel
 * allows); every change is handed to fs_mutate() as a struct mutation.
 * Errors are negative errno values internally and become positive only at
 * the fuse_reply_err() call.
 *
 * Caching: drfs is the only writer of its backing tree, so entries and
 * attributes are cached by the kernel for fs->timeout seconds, file pages are
 * kept across opens, and the writeback cache is on.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "../common/common.h"
#include "fs_i.h"

static struct drfs_fs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

/* Resolves a node id or replies ESTALE; returns NULL after replying. */
static struct drfs_inode *node_or_reply(fuse_req_t req, fuse_ino_t ino)
{
	struct drfs_inode *in = inode_get(fs_of(req), ino);

	if (!in)
		fuse_reply_err(req, ESTALE);
	return in;
}

static void drfs_init(void *userdata, struct fuse_conn_info *conn)
{
	struct drfs_fs *fs = userdata;
	unsigned int want = FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_SPLICE_WRITE |
			    FUSE_CAP_SPLICE_MOVE | FUSE_CAP_PARALLEL_DIROPS |
			    FUSE_CAP_POSIX_ACL | FUSE_CAP_DONT_MASK |
			    FUSE_CAP_ATOMIC_O_TRUNC |
			    FUSE_CAP_CACHE_SYMLINKS | FUSE_CAP_ASYNC_READ |
			    FUSE_CAP_EXPORT_SUPPORT;

	conn->want |= want & conn->capable;
	if ((want & conn->capable) != want)
		log_debug("kernel lacks FUSE capabilities 0x%x", want & ~conn->capable);
	/* Nobody else writes the backing tree: no need to revalidate pages. */
	conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
	/*
	 * Asynchronous direct I/O lets buffered reads racing with AIO O_DIRECT
	 * writes put pre-write data back in the page cache (xfstests 451).
	 */
	conn->want &= ~FUSE_CAP_ASYNC_DIO;
	/* The kernel must not emulate locks we would then not see: local is right for one mount. */
	conn->want &= ~(FUSE_CAP_POSIX_LOCKS | FUSE_CAP_FLOCK_LOCKS);
	conn->max_write = 1 << 20;
	conn->max_readahead = 1 << 20;
	conn->max_background = 64;
	conn->congestion_threshold = 48;
	times_start(fs, (conn->want & FUSE_CAP_WRITEBACK_CACHE) != 0);
}

static void drfs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;
	struct drfs_inode *dir;
	int ret;

	/* "." names the node itself: the kernel decoding an exported handle. */
	if (!strcmp(name, ".")) {
		ret = inode_lookup_self(fs_of(req), parent, &e);
		if (ret)
			fuse_reply_err(req, -ret);
		else
			fuse_reply_entry(req, &e);
		return;
	}
	if (!(dir = node_or_reply(req, parent)))
		return;
	ret = inode_lookup(fs_of(req), dir, name, &e);
	if (ret == -ENOENT) {
		/* A negative entry, cached like positive ones. */
		memset(&e, 0, sizeof(e));
		e.entry_timeout = fs_of(req)->timeout;
		fuse_reply_entry(req, &e);
		return;
	}
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_entry(req, &e);
}

static void drfs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	struct drfs_inode *in = inode_get(fs_of(req), ino);

	if (in)
		inode_forget(fs_of(req), in, nlookup);
	fuse_reply_none(req);
}

static void drfs_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *f)
{
	for (size_t i = 0; i < count; i++) {
		struct drfs_inode *in = inode_get(fs_of(req), f[i].ino);
		if (in)
			inode_forget(fs_of(req), in, f[i].nlookup);
	}
	fuse_reply_none(req);
}

/* fstat of IN through its open backing FD, or by its handle when FD is -1.  0 or -errno. */
static int stat_node(fuse_req_t req, struct drfs_inode *in, int fd, struct stat *st)
{
	if (fd < 0)
		return inode_stat(fs_of(req), in, st);
	return fstat(fd, st) < 0 ? -errno : 0;
}

/*
 * fstat of FD without its mtime and ctime (left zero).  Asking for either
 * makes the file's next change take a fine-grained timestamp (times.c); a
 * reply that shows the times the kernel just set does not need them.
 */
static int fstat_untimed(int fd, struct stat *st)
{
	struct statx sx;

	if (statx(fd, "", AT_EMPTY_PATH | AT_STATX_SYNC_AS_STAT,
		  STATX_BASIC_STATS & ~(unsigned)(STATX_MTIME | STATX_CTIME), &sx) < 0)
		return -errno;
	memset(st, 0, sizeof(*st));
	st->st_dev = makedev(sx.stx_dev_major, sx.stx_dev_minor);
	st->st_ino = sx.stx_ino;
	st->st_mode = sx.stx_mode;
	st->st_nlink = sx.stx_nlink;
	st->st_uid = sx.stx_uid;
	st->st_gid = sx.stx_gid;
	st->st_rdev = makedev(sx.stx_rdev_major, sx.stx_rdev_minor);
	st->st_size = (off_t)sx.stx_size;
	st->st_blksize = (blksize_t)sx.stx_blksize;
	st->st_blocks = (blkcnt_t)sx.stx_blocks;
	st->st_atim.tv_sec = sx.stx_atime.tv_sec;
	st->st_atim.tv_nsec = sx.stx_atime.tv_nsec;
	return 0;
}

/* Replies with IN's attributes; times set by M but not yet applied (M may be NULL) shown as set. */
static void reply_attr(fuse_req_t req, struct drfs_inode *in, struct fuse_file_info *fi,
		       const struct mutation *m)
{
	int fd = fi && fi->fh && !S_ISDIR(in->type) ? (int)fi->fh : -1;
	struct stat st;
	int ret;

	if (fd >= 0 && m && m->times_deferred && (m->valid & FUSE_SET_ATTR_MTIME) &&
	    (m->valid & FUSE_SET_ATTR_CTIME))
		ret = fstat_untimed(fd, &st);   /* both are shown as set, below */
	else
		ret = stat_node(req, in, fd, &st);
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	times_show(fs_of(req), &st);
	if (m && m->times_deferred) {
		if (m->valid & FUSE_SET_ATTR_ATIME)
			st.st_atim = m->attr.st_atim;
		if (m->valid & FUSE_SET_ATTR_MTIME)
			st.st_mtim = m->attr.st_mtim;
		if (m->valid & FUSE_SET_ATTR_CTIME)
			st.st_ctim = m->attr.st_ctim;
	}
	fuse_reply_attr(req, &st, fs_of(req)->timeout);
}

static void drfs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct drfs_inode *in = node_or_reply(req, ino);

	/*
	 * No wait for pending writes: for a file it caches, the kernel keeps
	 * size and times itself (writeback cache); a lookup waits instead.
	 */
	if (in)
		reply_attr(req, in, fi, NULL);
}

/* Whether the caller of REQ belongs to group GID (primary or supplementary). */
static bool caller_in_group(fuse_req_t req, gid_t gid)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	gid_t groups[256];
	int n;

	if (ctx->gid == gid)
		return true;
	n = fuse_req_getgroups(req, ARRAY_SIZE(groups), groups);
	for (int i = 0; i < n && i < (int)ARRAY_SIZE(groups); i++)
		if (groups[i] == gid)
			return true;
	return false;
}

/*
 * The mode of regular file ST once a change by the caller of REQ, who lacks
 * CAP_FSETID, has cleared its set-id bits as the VFS does: set-user-ID
 * always; set-group-ID when the file is group-executable or the caller is
 * not in its group (root counts as a member).
 */
static mode_t setid_cleared(fuse_req_t req, const struct stat *st)
{
	mode_t mode = st->st_mode & 07777 & ~(mode_t)S_ISUID;

	if ((mode & S_ISGID) &&
	    ((mode & S_IXGRP) || (fuse_req_ctx(req)->uid != 0 && !caller_in_group(req, st->st_gid))))
		mode &= ~(mode_t)S_ISGID;
	return mode;
}

/*
 * Clears the set-id bits of IN (node id INO, open as FD or -1) by the rule
 * above, as a journaled SETATTR of the mode, before the change that calls
 * for it; then the kernel drops the attributes it caches (no reply to the
 * request that asked carries them).  docs/design.md "Set-id bits".
 * 0 or -errno.
 */
static int clear_setid(fuse_req_t req, struct drfs_inode *in, fuse_ino_t ino, int fd)
{
	struct drfs_fs *fs = fs_of(req);
	struct mutation m = { .type = MUT_SETATTR, .node = in, .fd = fd,
			      .valid = FUSE_SET_ATTR_MODE };
	struct stat st;
	int ret = stat_node(req, in, fd, &st);

	if (ret || !S_ISREG(st.st_mode) || !(st.st_mode & (S_ISUID | S_ISGID)))
		return ret;
	m.attr.st_mode = setid_cleared(req, &st);
	if (m.attr.st_mode == (st.st_mode & 07777))
		return 0;
	ret = (int)fs_mutate(fs, &m);
	if (!ret)
		fuse_lowlevel_notify_inval_inode(fs->se, ino, -1, 0);
	return ret;
}

#define TIME_BITS (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME_NOW | \
		   FUSE_SET_ATTR_MTIME_NOW | FUSE_SET_ATTR_CTIME)

static void drfs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int valid,
			 struct fuse_file_info *fi)
{
	struct drfs_inode *in = node_or_reply(req, ino);
	struct mutation m = { .type = MUT_SETATTR, .node = in, .valid = valid, .fd = -1 };
	ssize_t ret;

	if (!in)
		return;
	if (fi && !S_ISDIR(in->type))
		m.fd = (int)fi->fh;
	m.attr = *attr;
	/*
	 * A mode change by an unprivileged caller outside the file's group
	 * never leaves setgid set (chmod strips it natively).  This is also how
	 * a write, truncate or fallocate by such a caller clears setgid: the
	 * kernel sends the mode with setuid removed but, for files without
	 * group execute, keeps setgid, an older rule than the VFS applies.
	 */
	if ((valid & FUSE_SET_ATTR_MODE) && (attr->st_mode & S_ISGID) &&
	    fuse_req_ctx(req)->uid != 0) {
		struct stat cur;
		gid_t gid = (valid & FUSE_SET_ATTR_GID) ? attr->st_gid : (gid_t)-1;

		if (gid == (gid_t)-1 && inode_stat(fs_of(req), in, &cur) == 0)
			gid = cur.st_gid;
		if (gid != (gid_t)-1 && !caller_in_group(req, gid))
			m.attr.st_mode &= ~S_ISGID;
	}
	/*
	 * FATTR_KILL_SUIDGID (libfuse's KILL_SUID bit): a truncate by a caller
	 * without CAP_FSETID, or a chown; the kernel left the set-id bits to us.
	 */
	if ((valid & FUSE_SET_ATTR_KILL_SUID) && !(valid & FUSE_SET_ATTR_MODE) &&
	    in->type == S_IFREG) {
		struct stat cur;

		ret = stat_node(req, in, m.fd, &cur);
		if (ret) {
			fuse_reply_err(req, (int)-ret);
			return;
		}
		m.attr.st_mode = setid_cleared(req, &cur);
		if (m.attr.st_mode != (cur.st_mode & 07777))
			m.valid |= FUSE_SET_ATTR_MODE;
	}
	ret = fs_mutate(fs_of(req), &m);
	if (ret == -ESTALE && !(valid & ~TIME_BITS)) {
		/*
		 * The kernel writes back the times of a file whose last name
		 * was just removed; the object is gone and no one can see its
		 * times.  Report them as set rather than fail the writeback.
		 */
		struct stat st = { .st_ino = in->ino, .st_mode = in->type, .st_nlink = 0 };
		st.st_atim = attr->st_atim;
		st.st_mtim = attr->st_mtim;
		st.st_ctim = attr->st_ctim;
		fuse_reply_attr(req, &st, 0);
		return;
	}
	if (ret)
		fuse_reply_err(req, (int)-ret);
	else
		reply_attr(req, in, fi, &m);
}

static void drfs_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct drfs_inode *in = node_or_reply(req, ino);
	char buf[PATH_MAX + 1];
	bool owned;
	ssize_t n;
	int fd;

	if (!in)
		return;
	fd = inode_fd(fs_of(req), in, O_PATH | O_NOFOLLOW, &owned);
	if (fd < 0) {
		fuse_reply_err(req, -fd);
		return;
	}
	n = readlinkat(fd, "", buf, sizeof(buf));
	if (n < 0)
		n = -errno;
	if (owned)
		close(fd);
	if (n < 0) {
		fuse_reply_err(req, (int)-n);
		return;
	}
	if ((size_t)n >= sizeof(buf)) {
		fuse_reply_err(req, ENAMETOOLONG);
		return;
	}
	buf[n] = '\0';
	fuse_reply_readlink(req, buf);
}

/* Fills the caller's identity into M. */
static void set_caller(fuse_req_t req, struct mutation *m)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);

	m->uid = ctx->uid;
	m->gid = ctx->gid;
	m->umask = ctx->umask;
}

/* Runs a namespace mutation that creates NAME in DIR and replies with its entry. */
static void make_and_reply(fuse_req_t req, struct mutation *m)
{
	struct fuse_entry_param e;
	ssize_t ret;

	set_caller(req, m);
	ret = fs_mutate(fs_of(req), m);
	if (!ret)
		ret = inode_lookup(fs_of(req), m->dir, m->name, &e);
	if (ret)
		fuse_reply_err(req, (int)-ret);
	else
		fuse_reply_entry(req, &e);
}

static void drfs_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		       dev_t rdev)
{
	struct mutation m = { .type = MUT_MKNOD, .name = name, .mode = mode, .rdev = rdev };

	if ((m.dir = node_or_reply(req, parent)))
		make_and_reply(req, &m);
}

static void drfs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	struct mutation m = { .type = MUT_MKDIR, .name = name, .mode = mode | S_IFDIR };

	if ((m.dir = node_or_reply(req, parent)))
		make_and_reply(req, &m);
}

static void drfs_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	struct mutation m = { .type = MUT_SYMLINK, .name = name, .target = link };

	if ((m.dir = node_or_reply(req, parent)))
		make_and_reply(req, &m);
}

static void drfs_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	struct mutation m = { .type = MUT_LINK, .name = newname };

	if (!(m.node = node_or_reply(req, ino)) || !(m.dir = node_or_reply(req, newparent)))
		return;
	make_and_reply(req, &m);
}

static void drfs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct mutation m = { .type = MUT_UNLINK, .name = name };

	if ((m.dir = node_or_reply(req, parent)))
		fuse_reply_err(req, (int)-fs_mutate(fs_of(req), &m));
}

static void drfs_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct mutation m = { .type = MUT_RMDIR, .name = name };

	if ((m.dir = node_or_reply(req, parent)))
		fuse_reply_err(req, (int)-fs_mutate(fs_of(req), &m));
}

static void drfs_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
			fuse_ino_t newparent, const char *newname, unsigned int flags)
{
	struct mutation m = { .type = MUT_RENAME, .name = name, .newname = newname,
			      .flags = (int)flags };

	if (!(m.dir = node_or_reply(req, parent)) || !(m.newdir = node_or_reply(req, newparent)))
		return;
	fuse_reply_err(req, (int)-fs_mutate(fs_of(req), &m));
}

/*
 * Flags for the backing open.  With the writeback cache the kernel may read
 * from a file opened write-only (to fill partial pages) and it implements
 * O_APPEND itself; O_DIRECT would demand aligned buffers the kernel does not
 * promise us, and the backing page cache is ours anyway.
 */
static int backing_flags(int flags)
{
	if ((flags & O_ACCMODE) == O_WRONLY)
		flags = (flags & ~O_ACCMODE) | O_RDWR;
	/* atime moves by drfs's rule at open only (times.c), never by our reads */
	return (flags & ~(O_APPEND | O_DIRECT | O_NOCTTY)) | O_NOATIME;
}

static void set_open_reply(struct fuse_file_info *fi, int fd)
{
	fi->fh = (uint64_t)fd;
	fi->keep_cache = 1;
}

static bool can_write(int flags)
{
	return (flags & O_ACCMODE) != O_RDONLY;
}

/* A handle was opened on IN: counted when it can write (undone by writer_released). */
static void writer_opened(struct drfs_inode *in, int flags)
{
	if (in && can_write(flags))
		atomic_fetch_add(&in->writers, 1);
}

/* A handle of node INO was released; only one that can write needs its inode found. */
static void writer_released(fuse_req_t req, fuse_ino_t ino, int flags)
{
	struct drfs_inode *in = can_write(flags) ? inode_get(fs_of(req), ino) : NULL;
	uint32_t n = in ? atomic_load(&in->writers) : 0;

	/* never below zero, should the node id have gone to another file meanwhile */
	while (n && !atomic_compare_exchange_weak(&in->writers, &n, n - 1))
		;
}

static void drfs_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
			struct fuse_file_info *fi)
{
	/* O_TMPFILE comes as a CREATE of "/" (uring.c, docs/design.md "O_TMPFILE") */
	bool tmp = furing_is_tmpfile();
	struct mutation m = { .type = tmp ? MUT_TMPFILE : MUT_CREATE, .name = name,
			      .mode = mode, .open_flags = backing_flags(fi->flags) };
	struct fuse_entry_param e;
	bool kill = furing_kills_setid();
	ssize_t fd;
	int ret;

	if (!(m.dir = node_or_reply(req, parent)))
		return;
	set_caller(req, &m);
	fd = fs_mutate(fs_of(req), &m);
	if (fd < 0) {
		fuse_reply_err(req, (int)-fd);
		return;
	}
	ret = tmp ? inode_lookup_anon(fs_of(req), (int)fd, &e)
		      : inode_lookup(fs_of(req), m.dir, name, &e);
	/* an existing file opened with O_TRUNC by a caller without CAP_FSETID */
	if (!ret && !m.created && kill) {
		struct drfs_inode *in = inode_get(fs_of(req), e.ino);

		ret = in ? clear_setid(req, in, e.ino, (int)fd) : -ESTALE;
		if (!ret && fstat((int)fd, &e.attr) < 0)
			ret = -errno;
		if (ret && in)
			inode_forget(fs_of(req), in, 1);   /* the kernel gets no entry */
	}
	if (ret) {
		close((int)fd);
		fuse_reply_err(req, -ret);
		return;
	}
	writer_opened(can_write(fi->flags) ? inode_get(fs_of(req), e.ino) : NULL, fi->flags);
	set_open_reply(fi, (int)fd);
	if (fuse_reply_create(req, &e, fi)) {
		close((int)fd);
		writer_released(req, e.ino, fi->flags);
	}
}

static void drfs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct drfs_inode *in = node_or_reply(req, ino);
	int fd;

	if (!in)
		return;
	/* O_TRUNC (atomic_o_trunc) is a data change: it goes through the journal */
	fd = inode_open(fs_of(req), in, backing_flags(fi->flags) & ~O_TRUNC);
	if (fd < 0) {
		fuse_reply_err(req, -fd);
		return;
	}
	if ((fi->flags & O_TRUNC) && in->type == S_IFREG) {
		struct mutation m = { .type = MUT_SETATTR, .node = in, .fd = fd,
				      .valid = FUSE_SET_ATTR_SIZE };
		struct stat st;
		ssize_t ret;

		/* the size to truncate is the file's with its acknowledged writes in */
		pending_wait(fs_of(req), in->ino, false);
		ret = fstat(fd, &st) < 0 ? -errno : 0;
		if (!ret && st.st_size > 0)
			ret = fs_mutate(fs_of(req), &m);
		if (!ret && furing_kills_setid())
			ret = clear_setid(req, in, ino, fd);
		if (ret < 0) {
			close(fd);
			fuse_reply_err(req, (int)-ret);
			return;
		}
	}
	atime_opened(fs_of(req), in, ino, fd, fi->flags);
	writer_opened(in, fi->flags);
	set_open_reply(fi, fd);
	if (fuse_reply_open(req, fi)) {
		close(fd);
		writer_released(req, ino, fi->flags);
	}
}

static void drfs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		      struct fuse_file_info *fi)
{
	struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);

	/* a regular file's node id is its backing inode number */
	int err = pending_wait(fs_of(req), ino, true);

	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	/* over io_uring: read straight into the buffer the reply goes out of */
	size_t cap;
	char *direct = furing_reply_buffer(&cap);
	if (direct && size <= cap) {
		ssize_t n = pread_upto((int)fi->fh, direct, size, off);

		if (n < 0)
			fuse_reply_err(req, (int)-n);
		else
			fuse_reply_buf(req, direct, (size_t)n);
		return;
	}
	buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	buf.buf[0].fd = (int)fi->fh;
	buf.buf[0].pos = off;
	fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
}

static void drfs_write(fuse_req_t req, fuse_ino_t ino, const char *data, size_t size,
		       off_t off, struct fuse_file_info *fi)
{
	struct mutation m = { .type = MUT_WRITE, .fd = (int)fi->fh, .offset = off,
			      .data = data, .size = size };
	ssize_t ret;

	if (!(m.node = node_or_reply(req, ino)))
		return;
	/* a write that bypassed the page cache, by a caller without CAP_FSETID */
	ret = furing_kills_setid() ? clear_setid(req, m.node, ino, m.fd) : 0;
	if (!ret)
		ret = fs_mutate(fs_of(req), &m);
	if (ret < 0)
		fuse_reply_err(req, (int)-ret);
	else
		fuse_reply_write(req, (size_t)ret);
}

static void drfs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	close((int)fi->fh);
	writer_released(req, ino, fi->flags);
	fuse_reply_err(req, 0);
}

/*
 * fsync, fdatasync, O_SYNC/O_DSYNC writes (the kernel follows them with an
 * fsync) and directory fsync: every change is journaled, and the journal
 * makes them durable; the backing tree is made durable at checkpoints.
 */
static void drfs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct drfs_inode *in = node_or_reply(req, ino);
	int ret;

	(void)fi;
	if (!in)
		return;
	ret = fs_sync(fs_of(req), in, datasync);
	fuse_reply_err(req, -ret);
}

static void drfs_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset,
			   off_t length, struct fuse_file_info *fi)
{
	struct mutation m = { .type = MUT_FALLOCATE, .fd = (int)fi->fh, .flags = mode,
			      .offset = offset, .size = (size_t)length };
	ssize_t ret;

	if (!(m.node = node_or_reply(req, ino)))
		return;
	/* no flag here: the kernel dropped its own clearing (KILLPRIV_V2); root keeps them */
	ret = fuse_req_ctx(req)->uid != 0 ? clear_setid(req, m.node, ino, m.fd) : 0;
	if (!ret)
		ret = fs_mutate(fs_of(req), &m);
	fuse_reply_err(req, (int)-ret);
}

static void drfs_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
				 struct fuse_file_info *fi_in, fuse_ino_t ino_out,
				 off_t off_out, struct fuse_file_info *fi_out, size_t len,
				 int flags)
{
	struct mutation m = { .type = MUT_COPY_RANGE, .fd = (int)fi_out->fh,
			      .offset = off_out, .src_fd = (int)fi_in->fh,
			      .src_offset = off_in, .size = len };
	ssize_t ret;

	if (flags) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (!(m.src = node_or_reply(req, ino_in)) || !(m.node = node_or_reply(req, ino_out)))
		return;
	ret = fuse_req_ctx(req)->uid != 0 ? clear_setid(req, m.node, ino_out, m.fd) : 0;
	if (!ret)
		ret = fs_mutate(fs_of(req), &m);
	if (ret < 0)
		fuse_reply_err(req, (int)-ret);
	else
		fuse_reply_write(req, (size_t)ret);
}

/*
 * SEEK_DATA and SEEK_HOLE (the kernel does SEEK_SET, SEEK_CUR and SEEK_END
 * itself) by the allocation map, as a snapshot reads the file; EINVAL while a
 * handle that can write is open, since the kernel may hold written pages we
 * have not been sent (docs/design.md "Holes").
 */
static void drfs_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		       struct fuse_file_info *fi)
{
	struct drfs_inode *in = node_or_reply(req, ino);
	uint64_t ds, de;
	struct stat st;
	int ret;

	if (!in)
		return;
	if ((whence != SEEK_DATA && whence != SEEK_HOLE) || atomic_load(&in->writers)) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if ((ret = pending_wait(fs_of(req), in->ino, false)) ||
	    (ret = fstat((int)fi->fh, &st) < 0 ? -errno : 0)) {
		fuse_reply_err(req, -ret);
		return;
	}
	if (off < 0 || off >= st.st_size) {
		fuse_reply_err(req, ENXIO);
		return;
	}
	ret = file_extent_next((int)fi->fh, (uint64_t)off, (uint64_t)st.st_size, &ds, &de);
	if (ret < 0)
		fuse_reply_err(req, -ret);
	else if (whence == SEEK_DATA && ret)
		fuse_reply_err(req, ENXIO);
	else if (whence == SEEK_DATA)
		fuse_reply_lseek(req, (off_t)ds);
	else   /* the hole is at OFF unless an extent covers it; the end of the file is one */
		fuse_reply_lseek(req, ret || ds > (uint64_t)off ? off : (off_t)de);
}

/* Directory handles. */
struct dir_handle {
	DIR *dp;
	struct dirent *entry;  /* read but not yet returned to the kernel */
	off_t offset;
};

static void drfs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct drfs_inode *in = node_or_reply(req, ino);
	struct dir_handle *d;
	int fd;

	if (!in)
		return;
	d = calloc(1, sizeof(*d));
	if (!d) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	fd = inode_open(fs_of(req), in, O_RDONLY | O_DIRECTORY | O_NOATIME);
	if (fd < 0) {
		free(d);
		fuse_reply_err(req, -fd);
		return;
	}
	atime_opened(fs_of(req), in, ino, fd, fi->flags);
	d->dp = fdopendir(fd);
	if (!d->dp) {
		int err = errno;
		close(fd);
		free(d);
		fuse_reply_err(req, err);
		return;
	}
	fi->fh = (uintptr_t)d;
	fi->cache_readdir = 0;
	if (fuse_reply_open(req, fi)) {
		closedir(d->dp);
		free(d);
	}
}

static bool is_dot_or_dotdot(const char *name)
{
	return name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'));
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset,
		       struct fuse_file_info *fi, bool plus)
{
	struct drfs_fs *fs = fs_of(req);
	struct dir_handle *d = (struct dir_handle *)(uintptr_t)fi->fh;
	struct drfs_inode *dir = node_or_reply(req, ino);
	char *buf, *p;
	size_t rem = size;
	int err = 0;

	if (!dir)
		return;
	buf = malloc(size);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	p = buf;
	if (offset != d->offset) {
		seekdir(d->dp, offset);
		d->entry = NULL;
		d->offset = offset;
	}
	for (;;) {
		struct fuse_entry_param e;
		const char *name;
		off_t next;
		size_t n;

		if (!d->entry) {
			errno = 0;
			d->entry = readdir(d->dp);
			if (!d->entry) {
				err = errno;
				break;
			}
		}
		name = d->entry->d_name;
		next = d->entry->d_off;
		if (fs_is_hidden(fs, dir, name)) {
			d->entry = NULL;
			d->offset = next;
			continue;
		}
		memset(&e, 0, sizeof(e));
		e.attr.st_ino = d->entry->d_ino;
		e.attr.st_mode = (mode_t)d->entry->d_type << 12;
		if (plus) {
			if (!is_dot_or_dotdot(name)) {
				int r = inode_lookup(fs, dir, name, &e);
				if (r) {
					/* Gone since readdir saw it: skip it. */
					d->entry = NULL;
					d->offset = next;
					continue;
				}
			}
			n = fuse_add_direntry_plus(req, p, rem, name, &e, next);
			if (n > rem) {
				if (e.ino)
					inode_forget(fs, inode_get(fs, e.ino), 1);
				break;
			}
		} else {
			n = fuse_add_direntry(req, p, rem, name, &e.attr, next);
			if (n > rem)
				break;
		}
		p += n;
		rem -= n;
		d->entry = NULL;
		d->offset = next;
	}
	/* An error after some entries were returned is reported on the next call. */
	if (err && rem == size)
		fuse_reply_err(req, err);
	else
		fuse_reply_buf(req, buf, size - rem);
	free(buf);
}

static void drfs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset,
			 struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, offset, fi, false);
}

static void drfs_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset,
			     struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, offset, fi, true);
}

static void drfs_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct dir_handle *d = (struct dir_handle *)(uintptr_t)fi->fh;

	(void)ino;
	closedir(d->dp);
	free(d);
	fuse_reply_err(req, 0);
}

static void drfs_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync,
			  struct fuse_file_info *fi)
{
	(void)ino;
	(void)datasync;
	(void)fi;
	fuse_reply_err(req, -fs_sync(fs_of(req), NULL, false));
}

static void drfs_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs sv;

	(void)ino;
	if (fstatvfs(fs_of(req)->backing_fd, &sv) < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_statfs(req, &sv);
}

static void drfs_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			  const char *value, size_t size, int flags)
{
	struct mutation m = { .type = MUT_SETXATTR, .xname = name, .data = value,
			      .size = size, .flags = flags };
	struct stat st;
	ssize_t ret;

	if (!(m.node = node_or_reply(req, ino)))
		return;
	ret = fs_mutate(fs_of(req), &m);
	/*
	 * Setting an access ACL rewrites the mode; like chmod, it clears the
	 * setgid bit when the caller is neither in the file's group nor
	 * privileged.  The daemon (root) set the ACL, so the backing filesystem
	 * kept the bit: clear it here.
	 */
	if (!ret && !strcmp(name, "system.posix_acl_access") && fuse_req_ctx(req)->uid != 0 &&
	    inode_stat(fs_of(req), m.node, &st) == 0 && (st.st_mode & S_ISGID) &&
	    !caller_in_group(req, st.st_gid)) {
		struct mutation c = { .type = MUT_SETATTR, .node = m.node, .fd = -1,
				      .valid = FUSE_SET_ATTR_MODE };
		c.attr.st_mode = st.st_mode & ~S_ISGID;
		ret = fs_mutate(fs_of(req), &c);
	}
	fuse_reply_err(req, (int)-ret);
}

static void drfs_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	struct mutation m = { .type = MUT_REMOVEXATTR, .xname = name };

	if ((m.node = node_or_reply(req, ino)))
		fuse_reply_err(req, (int)-fs_mutate(fs_of(req), &m));
}

/*
 * getxattr and listxattr share their shape: SIZE 0 asks for the length,
 * otherwise the value.  NAME is NULL for listxattr.
 */
static void xattr_read(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct drfs_inode *in = node_or_reply(req, ino);
	char path[32], *buf = NULL;
	bool owned;
	ssize_t n;
	int fd;

	if (!in)
		return;
	fd = inode_fd(fs_of(req), in, O_PATH, &owned);
	if (fd < 0) {
		fuse_reply_err(req, -fd);
		return;
	}
	proc_fd_path(path, fd);
	if (size && !(buf = malloc(size))) {
		n = -ENOMEM;
		goto out;
	}
	n = name ? getxattr(path, name, buf, size) : listxattr(path, buf, size);
	if (n < 0)
		n = -errno;
out:
	if (owned)
		close(fd);
	if (n < 0)
		fuse_reply_err(req, (int)-n);
	else if (size == 0)
		fuse_reply_xattr(req, (size_t)n);
	else
		fuse_reply_buf(req, buf, (size_t)n);
	free(buf);
}

static void drfs_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	xattr_read(req, ino, name, size);
}

static void drfs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	xattr_read(req, ino, NULL, size);
}

const struct fuse_lowlevel_ops drfs_ops = {
	.init = drfs_init,
	.lookup = drfs_lookup,
	.forget = drfs_forget,
	.forget_multi = drfs_forget_multi,
	.getattr = drfs_getattr,
	.setattr = drfs_setattr,
	.readlink = drfs_readlink,
	.mknod = drfs_mknod,
	.mkdir = drfs_mkdir,
	.symlink = drfs_symlink,
	.link = drfs_link,
	.unlink = drfs_unlink,
	.rmdir = drfs_rmdir,
	.rename = drfs_rename,
	.create = drfs_create,
	.open = drfs_open,
	.read = drfs_read,
	.write = drfs_write,
	/*
	 * No flush: close(2) has nothing for us to do (the kernel writes dirty
	 * pages back itself and keeps locks locally), and without the operation
	 * the kernel stops sending it, saving a round trip per close.
	 */
	.release = drfs_release,
	.fsync = drfs_fsync,
	.fallocate = drfs_fallocate,
	.copy_file_range = drfs_copy_file_range,
	.lseek = drfs_lseek,
	.opendir = drfs_opendir,
	.readdir = drfs_readdir,
	.readdirplus = drfs_readdirplus,
	.releasedir = drfs_releasedir,
	.fsyncdir = drfs_fsyncdir,
	.statfs = drfs_statfs,
	.setxattr = drfs_setxattr,
	.getxattr = drfs_getxattr,
	.listxattr = drfs_listxattr,
	.removexattr = drfs_removexattr,
};
