/*
 * mutate.c - fs_mutate(): the one place where the backing tree changes.
 *
 * Every FUSE operation that modifies anything describes the change as a
 * struct mutation and calls fs_mutate(), which journals it and applies it:
 *
 *  - data (WRITE, COPY, FALLOCATE, a size change): the record is appended,
 *    the worker waits until it is durable, then applies it, so the backing
 *    tree's data is never ahead of the durable journal.  With the writeback
 *    cache the application does not wait: the kernel holds the page.  A
 *    change that then fails to apply gets an ABORT record.
 *  - namespace and attributes: applied first, then the record of what
 *    resulted (the new object's fid, the mode after umask and ACLs, times
 *    set to "now") is appended before the reply.  fsync and friends wait
 *    for it to be durable; docs/format.md "Replay" says what recovery does
 *    about a change applied just before a crash.
 *
 * Objects are created by the daemon (root) and then given the caller's
 * ownership.  The group is left as the backing filesystem chose it when the
 * parent directory is setgid, so setgid inheritance behaves as natively.
 * The caller's umask is applied per worker thread (each worker has its own
 * fs_struct after unshare(CLONE_FS)), which lets the backing filesystem
 * ignore it where the parent carries a default ACL, as POSIX requires.
 */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "../common/common.h"
#include "fs_i.h"

static ssize_t apply(struct drfs_fs *fs, struct mutation *m);
static ssize_t journaled(struct drfs_fs *fs, struct mutation *m);

static __thread bool thread_fs_private;

/* Gives the calling worker thread its own umask and sets it to MASK. */
static void thread_umask(mode_t mask)
{
	if (!thread_fs_private) {
		if (unshare(CLONE_FS) == 0)
			thread_fs_private = true;
		else
			log_warn("unshare(CLONE_FS) failed: %s; umask handling is approximate",
				 strerror(errno));
	}
	if (thread_fs_private)
		umask(mask);
}

/*
 * Gives a freshly created object the caller's ownership.  FD (with NAME
 * relative to it, or "" and AT_EMPTY_PATH) names the object, DIR_ST is the
 * parent's attributes.  chown clears set-id bits, so they are put back.
 */
static int set_owner(int fd, const char *name, const struct mutation *m,
		     const struct stat *dir_st)
{
	gid_t gid = (dir_st->st_mode & S_ISGID) ? (gid_t)-1 : m->gid;
	int flags = AT_SYMLINK_NOFOLLOW | (*name ? 0 : AT_EMPTY_PATH);
	struct stat st;

	if (m->uid == 0 && (gid == (gid_t)-1 || gid == 0) && dir_st->st_gid == 0)
		return 0;
	if (fstatat(fd, name, &st, flags) < 0)
		return -errno;
	if (st.st_uid == m->uid && (gid == (gid_t)-1 || st.st_gid == gid))
		return 0;
	if (fchownat(fd, name, m->uid, gid, flags) < 0)
		return -errno;
	if (S_ISREG(st.st_mode) && (st.st_mode & (S_ISUID | S_ISGID))) {
		char path[32];
		int pfd = *name ? openat(fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC) : fd;

		if (pfd < 0)
			return -errno;
		proc_fd_path(path, pfd);
		if (chmod(path, st.st_mode & 07777) < 0) {
			int err = -errno;
			if (pfd != fd)
				close(pfd);
			return err;
		}
		if (pfd != fd)
			close(pfd);
	}
	return 0;
}

/* Opens flags for the backing file: see ops.c open for why. */
static ssize_t do_create(struct drfs_fs *fs, struct mutation *m, int dirfd)
{
	struct stat dir_st;
	int fd, ret, flags = m->open_flags | O_CLOEXEC | O_NOFOLLOW;
	bool created = true;

	(void)fs;
	if (fstat(dirfd, &dir_st) < 0)
		return -errno;
	thread_umask(m->umask);
	if (m->type == MUT_TMPFILE) {
		/* linkable in the backing: the kernel enforces the caller's O_EXCL */
		flags &= ~(O_TMPFILE | O_CREAT | O_EXCL | O_TRUNC | O_NOFOLLOW);
		fd = openat(dirfd, ".", flags | O_TMPFILE, m->mode);
	} else {
		fd = openat(dirfd, m->name, flags | O_CREAT | O_EXCL, m->mode);
	}
	if (fd < 0 && errno == EEXIST && !(m->open_flags & O_EXCL) && m->type == MUT_CREATE) {
		created = false;
		fd = openat(dirfd, m->name, flags & ~O_CREAT, m->mode);
	}
	if (fd < 0)
		return -errno;
	m->created = created;
	if (created) {
		ret = set_owner(fd, "", m, &dir_st);
		if (ret) {
			close(fd);
			if (m->type == MUT_CREATE)
				unlinkat(dirfd, m->name, 0);
			return ret;
		}
	}
	return fd;
}

static int do_make(struct mutation *m, int dirfd)
{
	struct stat dir_st;
	int ret;

	if (fstat(dirfd, &dir_st) < 0)
		return -errno;
	switch (m->type) {
	case MUT_MKDIR:
		thread_umask(m->umask);
		ret = mkdirat(dirfd, m->name, m->mode);
		break;
	case MUT_MKNOD:
		thread_umask(m->umask);
		ret = mknodat(dirfd, m->name, m->mode, m->rdev);
		break;
	default: /* MUT_SYMLINK */
		ret = symlinkat(m->target, dirfd, m->name);
		break;
	}
	if (ret < 0)
		return -errno;
	ret = set_owner(dirfd, m->name, m, &dir_st);
	if (ret)
		unlinkat(dirfd, m->name, m->type == MUT_MKDIR ? AT_REMOVEDIR : 0);
	return ret;
}

/*
 * Applies a setattr through the open file M->fd when there is one (it reaches
 * the file even after its last name is gone), else through PATHFD, an O_PATH
 * fd of the object.
 */
static int do_setattr(struct mutation *m, int pathfd)
{
	char path[32];
	int valid = m->valid, fd = m->fd >= 0 ? m->fd : pathfd;

	proc_fd_path(path, pathfd);
	if (valid & FUSE_SET_ATTR_MODE) {
		int r = m->fd >= 0 ? fchmod(m->fd, m->attr.st_mode) : chmod(path, m->attr.st_mode);
		if (r < 0)
			return -errno;
	}
	if (valid & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
		uid_t uid = (valid & FUSE_SET_ATTR_UID) ? m->attr.st_uid : (uid_t)-1;
		gid_t gid = (valid & FUSE_SET_ATTR_GID) ? m->attr.st_gid : (gid_t)-1;

		if (fchownat(fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
			return -errno;
	}
	if (valid & FUSE_SET_ATTR_SIZE) {
		int r = m->fd >= 0 ? ftruncate(m->fd, m->attr.st_size) : truncate(path, m->attr.st_size);

		/* open(O_RDONLY | O_TRUNC), which Linux honours: through a writable reopen */
		if (r < 0 && errno == EINVAL && m->fd >= 0 && (fcntl(m->fd, F_GETFL) & O_ACCMODE) == O_RDONLY) {
			char again[32];

			proc_fd_path(again, m->fd);
			r = truncate(again, m->attr.st_size);
		}
		if (r < 0)
			return -errno;
	}
	if (valid & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) {
		struct timespec tv[2] = { { .tv_nsec = UTIME_OMIT }, { .tv_nsec = UTIME_OMIT } };

		if (valid & FUSE_SET_ATTR_ATIME_NOW)
			tv[0].tv_nsec = UTIME_NOW;
		else if (valid & FUSE_SET_ATTR_ATIME)
			tv[0] = m->attr.st_atim;
		if (valid & FUSE_SET_ATTR_MTIME_NOW)
			tv[1].tv_nsec = UTIME_NOW;
		else if (valid & FUSE_SET_ATTR_MTIME)
			tv[1] = m->attr.st_mtim;
		if (utimensat(fd, "", tv, AT_EMPTY_PATH) < 0)
			return -errno;
	}
	if (!(valid & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID |
		       FUSE_SET_ATTR_SIZE | FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME))) {
		/*
		 * Only ctime (or nothing) to change: what chown(f, -1, -1) asks
		 * for.  A no-op chown sets the backing ctime to now, as natively;
		 * otherwise the kernel's cached ctime would later go backwards.
		 */
		if (fchownat(fd, "", (uid_t)-1, (gid_t)-1, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
			return -errno;
	}
	return 0;
}

/* Applies M to the backing tree, without journaling. */
static ssize_t apply(struct drfs_fs *fs, struct mutation *m)
{
	struct drfs_inode *pathnode = m->node ? m->node : m->dir;
	bool owned = false, owned2 = false;
	int fd = -1, fd2 = -1;
	char path[32];
	ssize_t ret;

	/* Data operations on an open file need no path fd; they keep the mtime (times.c). */
	if (m->type == MUT_WRITE || m->type == MUT_FALLOCATE || m->type == MUT_COPY_RANGE) {
		struct stat before;
		bool cached = false;
		bool keep = m->node && times_data_before(fs, m->node->ino, m->fd, &before, &cached);
		off_t in = m->src_offset, out = m->offset;

		if (m->type == MUT_WRITE)
			ret = pwrite(m->fd, m->data, m->size, m->offset);
		else if (m->type == MUT_FALLOCATE)
			ret = fallocate(m->fd, m->flags, m->offset, (off_t)m->size);
		else
			ret = copy_file_range(m->src_fd, &in, m->fd, &out, m->size, 0);
		ret = ret < 0 ? -errno : ret;
		if (keep)
			times_data_after(fs, m->node->ino, m->fd, &before, cached);
		return ret;
	}

	if (m->type == MUT_SETATTR && m->fd >= 0)
		return do_setattr(m, -1);

	fd = inode_fd(fs, pathnode, O_PATH, &owned);
	if (fd < 0)
		return fd;

	switch (m->type) {
	case MUT_CREATE:
	case MUT_TMPFILE:
		ret = do_create(fs, m, fd);
		break;
	case MUT_MKNOD:
	case MUT_MKDIR:
	case MUT_SYMLINK:
		ret = do_make(m, fd);
		break;
	case MUT_LINK:
		fd2 = inode_fd(fs, m->dir, O_PATH, &owned2);
		if (fd2 < 0) {
			ret = fd2;
			break;
		}
		ret = linkat(fd, "", fd2, m->name, AT_EMPTY_PATH) < 0 ? -errno : 0;
		break;
	case MUT_UNLINK:
		ret = unlinkat(fd, m->name, 0) < 0 ? -errno : 0;
		break;
	case MUT_RMDIR:
		ret = unlinkat(fd, m->name, AT_REMOVEDIR) < 0 ? -errno : 0;
		break;
	case MUT_RENAME:
		fd2 = inode_fd(fs, m->newdir, O_PATH, &owned2);
		if (fd2 < 0) {
			ret = fd2;
			break;
		}
		ret = renameat2(fd, m->name, fd2, m->newname, (unsigned)m->flags) < 0 ? -errno : 0;
		break;
	case MUT_SETATTR:
		ret = do_setattr(m, fd);
		break;
	case MUT_SETXATTR:
		proc_fd_path(path, fd);
		ret = setxattr(path, m->xname, m->data, m->size, m->flags) < 0 ? -errno : 0;
		break;
	case MUT_REMOVEXATTR:
		proc_fd_path(path, fd);
		ret = removexattr(path, m->xname) < 0 ? -errno : 0;
		break;
	default:
		ret = -ENOSYS;
		break;
	}
	if (owned2)
		close(fd2);
	if (owned)
		close(fd);
	return ret;
}

/* ---- journaling ---- */

struct jfid fs_fid(struct drfs_fs *fs, struct drfs_inode *inode)
{
	struct jfid f;

	if (inode == fs->root)
		return JFID_ROOT;
	pthread_mutex_lock(&fs->lock);
	f.ino = inode->ino;
	f.gen = inode->gen;
	pthread_mutex_unlock(&fs->lock);
	return f;
}

int fs_sync(struct drfs_fs *fs, struct drfs_inode *inode, bool datasync)
{
	/* a file without a name does not outlive a crash: nothing to make durable */
	if (!fs->journal || (inode && atomic_load(&inode->anon)))
		return 0;
	if (datasync && inode)
		return journal_wait(fs->journal, atomic_load(&inode->data_lsn));
	return journal_wait(fs->journal, journal_head(fs->journal));
}

/* Appends R; WAIT: until durable.  Returns the end LSN or -errno. */
static int64_t log_rec(struct drfs_fs *fs, struct jrec *r, bool borrow, bool wait)
{
	int err;
	uint64_t end = journal_append(fs->journal, r, borrow, &err);

	if (!end)
		return err;
	if (wait && (err = journal_wait(fs->journal, end)))
		return err;
	return (int64_t)end;
}

/* Marks the record at LSN as not applied, durably. */
static void log_abort(struct drfs_fs *fs, uint64_t lsn)
{
	struct jrec a = { .type = JR_ABORT, .lsn2 = lsn };

	log_rec(fs, &a, false, true);
}

static void name_of(struct jrec *r, const char *name, bool second)
{
	size_t n = strlen(name);

	if (second) {
		r->name2 = name;
		r->name2_len = (uint16_t)n;
	} else {
		r->name = name;
		r->name_len = (uint16_t)n;
	}
}

/* The fid of NAME in directory DIR; zero fid when absent.  0 or -errno. */
static int fid_in(struct drfs_fs *fs, struct drfs_inode *dir, const char *name, struct jfid *f)
{
	bool owned;
	int fd = inode_fd(fs, dir, O_PATH, &owned), ret;

	*f = (struct jfid){ 0, 0 };
	if (fd < 0)
		return fd;
	ret = apply_fid_of(fd, name, f);
	if (owned)
		close(fd);
	return ret == -ENOENT ? 0 : ret;
}

static void stat_to_rec(struct jrec *r, const struct stat *st)
{
	r->mode = st->st_mode;
	r->uid = st->st_uid;
	r->gid = st->st_gid;
	r->size = (uint64_t)st->st_size;
	r->atime = st->st_atim;
	r->mtime = st->st_mtim;
}

/* A data change: record, wait until durable, apply; ABORT when applying fails. */
static ssize_t data_change(struct drfs_fs *fs, struct mutation *m, struct jrec *r, bool borrow)
{
	int64_t end = log_rec(fs, r, borrow, true);
	uint64_t seen;
	ssize_t ret;

	if (end < 0)
		return end;
	seen = atomic_load(&m->node->data_lsn);
	while (seen < (uint64_t)end &&
	       !atomic_compare_exchange_weak(&m->node->data_lsn, &seen, (uint64_t)end))
		;
	ret = apply(fs, m);
	if (ret < 0 || (m->type == MUT_WRITE && (size_t)ret < m->size)) {
		log_abort(fs, r->lsn);
		if (ret > 0) {
			/* a short write: record what did land */
			r->data_len = (size_t)ret;
			if ((end = log_rec(fs, r, borrow, true)) < 0)
				return end;
		}
	}
	return ret;
}

#define DEFER_LIMIT (1ull << 40)

static ssize_t journal_write(struct drfs_fs *fs, struct mutation *m)
{
	struct jrec r = { .type = JR_WRITE, .fid = fs_fid(fs, m->node),
			  .offset = (uint64_t)m->offset, .data = m->data, .data_len = m->size };
	size_t done = 0;

	/*
	 * Deferred unless it ends past 1 TiB: a write the backing filesystem
	 * must refuse (EFBIG past ext4's 16 TiB) has to fail now, not after it
	 * was acknowledged.
	 */
	if (fs->pending && m->size <= JREC_MAX_DATA &&
	    (uint64_t)m->offset + m->size <= DEFER_LIMIT)
		return pending_write(fs, m, &r);
	if (fs->pending)
		pending_wait(fs, m->node->ino, false);
	if (m->size <= JREC_MAX_DATA)
		return data_change(fs, m, &r, true);
	/* larger than one record: journal and apply it in pieces */
	while (done < m->size) {
		struct mutation piece = *m;
		ssize_t n;

		piece.data = (const char *)m->data + done;
		piece.offset = m->offset + (off_t)done;
		piece.size = m->size - done < JREC_MAX_DATA ? m->size - done : JREC_MAX_DATA;
		r.data = piece.data;
		r.offset = (uint64_t)piece.offset;
		r.data_len = piece.size;
		n = data_change(fs, &piece, &r, true);
		if (n < 0)
			return done ? (ssize_t)done : n;
		done += (size_t)n;
		if ((size_t)n < piece.size)
			break;
	}
	return (ssize_t)done;
}

/* copy_file_range: the bytes copied go into the record, up to one record's worth. */
static ssize_t journal_copy(struct drfs_fs *fs, struct mutation *m)
{
	size_t len = m->size < JREC_MAX_DATA ? m->size : JREC_MAX_DATA;
	char *buf = malloc(len ? len : 1);
	struct mutation w = *m;
	struct jrec r = { .type = JR_COPY, .fid = fs_fid(fs, m->node), .offset = (uint64_t)m->offset,
			  .fid2 = fs_fid(fs, m->src), .offset2 = (uint64_t)m->src_offset };
	ssize_t n = 0, got;

	if (!buf)
		return -ENOMEM;
	while ((size_t)n < len) {
		got = pread(m->src_fd, buf + n, len - (size_t)n, m->src_offset + n);
		if (got < 0) {
			free(buf);
			return -errno;
		}
		if (got == 0)
			break;
		n += got;
	}
	if (n == 0) {
		free(buf);
		return 0;
	}
	r.data = buf;
	r.data_len = (size_t)n;
	w.type = MUT_WRITE;
	w.data = buf;
	w.size = (size_t)n;
	n = data_change(fs, &w, &r, true);
	free(buf);
	return n;
}

/*
 * Times only, with writes still pending on the file: journaled with "now"
 * resolved, and set after those writes (whose apply would move the
 * modification time).
 */
static ssize_t deferred_times(struct drfs_fs *fs, struct mutation *m)
{
	struct jrec r = { .type = JR_SETATTR, .fid = fs_fid(fs, m->node) };
	struct timespec now;
	bool owned = false;
	int fd, ret;

	clock_gettime(CLOCK_REALTIME, &now);
	if (m->valid & FUSE_SET_ATTR_ATIME) {
		r.mask |= JA_ATIME;
		r.atime = (m->valid & FUSE_SET_ATTR_ATIME_NOW) ? now : m->attr.st_atim;
	}
	if (m->valid & FUSE_SET_ATTR_MTIME) {
		r.mask |= JA_MTIME;
		r.mtime = (m->valid & FUSE_SET_ATTR_MTIME_NOW) ? now : m->attr.st_mtim;
	}
	fd = m->fd >= 0 ? m->fd : inode_fd(fs, m->node, O_PATH, &owned);
	if (fd < 0)
		return fd;
	ret = pending_times(fs, m->node, fd, &r,
			    (m->valid & FUSE_SET_ATTR_CTIME) ? &m->attr.st_ctim : NULL);
	if (owned)
		close(fd);
	if (!ret) {
		/* the reply must show them before the backing file does */
		m->times_deferred = true;
		m->attr.st_atim = r.atime;
		m->attr.st_mtim = r.mtime;
	}
	return ret;
}

static ssize_t setattr_now(struct drfs_fs *fs, struct mutation *m);

/*
 * A SETATTR without a size change need not wait for the file's pending
 * writes: applying them changes no mode or owner, only the times, so times
 * set while writes are pending are queued behind them (what the kernel sends
 * at close, and what tar sends after writing a file); the rest is applied now.
 * When the kernel keeps a regular file's times, its times always take the
 * queue: a WRITE that reaches drfs after them (the kernel sends both at once)
 * is applied by the same thread, which puts back the mtime it finds.
 */
static ssize_t journal_setattr(struct drfs_fs *fs, struct mutation *m)
{
	const int times = FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME |
			  FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW | FUSE_SET_ATTR_CTIME;

	if (fs->pending && (m->valid & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) &&
	    !(m->valid & FUSE_SET_ATTR_SIZE) &&
	    ((fs->kernel_times && m->node->type == S_IFREG) || pending_busy(fs, m->node->ino))) {
		struct mutation rest = *m;
		ssize_t ret;

		rest.valid &= ~times;
		if (rest.valid & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
			ret = setattr_now(fs, &rest);
			if (ret < 0)
				return ret;
		}
		return deferred_times(fs, m);
	}
	return setattr_now(fs, m);
}

/* Applies the SETATTR in M and records the attributes it changed, as they now are. */
static ssize_t setattr_now(struct drfs_fs *fs, struct mutation *m)
{
	const int others = FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID |
			   FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME;
	struct jrec r = { .type = JR_SETATTR, .fid = fs_fid(fs, m->node) };
	struct stat st;
	bool owned = false;
	ssize_t ret;
	int fd;

	if (m->valid & FUSE_SET_ATTR_SIZE) {
		r.mask = JA_SIZE;
		r.size = (uint64_t)m->attr.st_size;
		ret = data_change(fs, m, &r, false);
	} else {
		ret = apply(fs, m);
	}
	if (ret < 0) {
		times_forget(fs, m->node->ino);   /* a part may have been applied */
		return ret;
	}
	/*
	 * A SETATTR of nothing but ctime is applied as a no-op chown (see
	 * do_setattr), which clears set-id bits as a chown does: what the
	 * kernel asks for when a write by a caller without CAP_FSETID must
	 * clear them (FUSE_HANDLE_KILLPRIV_V2).  The mode goes in the journal.
	 */
	bool ctime_only = !(m->valid & (others | FUSE_SET_ATTR_SIZE));
	if (!(m->valid & others) && !ctime_only) {
		times_forget(fs, m->node->ino);
		return ret;   /* a size change alone: data_change journaled it */
	}
	fd = m->fd >= 0 ? m->fd : inode_fd(fs, m->node, O_PATH, &owned);
	if (fd < 0)
		return fd;
	ret = fstat(fd, &st) < 0 ? -errno : 0;
	if (owned)
		close(fd);
	if (ret)
		return ret;
	/*
	 * The mtime a data apply puts back: the one set here; unknown after a
	 * size change or "now" without one (the stat may have caught a pending
	 * write's apply between its write and its restore); else unchanged.
	 */
	bool mtime_set = (m->valid & FUSE_SET_ATTR_MTIME) && !(m->valid & FUSE_SET_ATTR_MTIME_NOW);
	bool mtime_moved = (m->valid & (FUSE_SET_ATTR_SIZE | FUSE_SET_ATTR_MTIME)) != 0;

	if (m->valid & FUSE_SET_ATTR_CTIME)
		times_kernel_ctime(fs, m->node->ino, &m->attr.st_ctim, &st,
				   mtime_set ? &m->attr.st_mtim : NULL, mtime_moved);
	else
		times_forget(fs, m->node->ino);
	memset(&r, 0, sizeof(r));
	r.type = JR_SETATTR;
	r.fid = fs_fid(fs, m->node);
	stat_to_rec(&r, &st);
	r.mask = ((m->valid & FUSE_SET_ATTR_MODE) ? JA_MODE : 0) |
		 ((m->valid & FUSE_SET_ATTR_UID) ? JA_UID : 0) |
		 ((m->valid & FUSE_SET_ATTR_GID) ? JA_GID : 0) |
		 ((m->valid & FUSE_SET_ATTR_ATIME) ? JA_ATIME : 0) |
		 ((m->valid & FUSE_SET_ATTR_MTIME) ? JA_MTIME : 0);
	/* chown may have cleared set-id bits: the mode as it now is goes along */
	if ((r.mask & (JA_UID | JA_GID)) || ctime_only)
		r.mask |= JA_MODE;
	ret = log_rec(fs, &r, false, false);
	return ret < 0 ? ret : 0;
}

/* A create that opened an existing file with O_TRUNC: that truncation is a data change. */
static ssize_t create_existing(struct drfs_fs *fs, struct mutation *m, int fd, bool trunc)
{
	struct mutation t = { .type = MUT_SETATTR, .fd = fd, .valid = FUSE_SET_ATTR_SIZE };
	struct drfs_inode tmp = { 0 };
	struct jrec r = { .type = JR_SETATTR, .mask = JA_SIZE, .size = 0 };
	struct jfid f;
	struct stat st;
	ssize_t ret;

	if (!trunc || fstat(fd, &st) < 0)
		return fd;
	pending_wait(fs, (uint64_t)st.st_ino, false);
	if (fstat(fd, &st) < 0 || st.st_size == 0)
		return fd;
	if ((ret = apply_fid_of(fd, "", &f)) < 0)
		goto fail;
	r.fid = f;
	tmp.ino = f.ino;
	tmp.gen = f.gen;
	t.node = &tmp;
	ret = data_change(fs, &t, &r, false);
	times_forget(fs, f.ino);
	if (ret >= 0)
		return fd;
fail:
	close(fd);
	(void)m;
	return ret;
}

/* Records a namespace change that has just been applied. */
static ssize_t record_made(struct drfs_fs *fs, struct mutation *m, int newfd)
{
	struct jrec r = { .type = JR_CREATE, .fid2 = fs_fid(fs, m->dir) };
	int64_t end;
	struct stat st;
	bool owned;
	int dfd, ret;

	name_of(&r, m->name, false);
	if (newfd >= 0) {
		ret = apply_fid_of(newfd, "", &r.fid);
		if (!ret && fstat(newfd, &st) < 0)
			ret = -errno;
	} else {
		dfd = inode_fd(fs, m->dir, O_PATH, &owned);
		if (dfd < 0)
			return dfd;
		ret = apply_fid_of(dfd, m->name, &r.fid);
		if (!ret && fstatat(dfd, m->name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			ret = -errno;
		if (owned)
			close(dfd);
	}
	if (ret)
		return ret;
	/* a new object may have the number of a file deleted a moment ago: not its times */
	times_forget(fs, r.fid.ino);
	stat_to_rec(&r, &st);
	r.rdev = st.st_rdev;
	if (m->type == MUT_SYMLINK)
		name_of(&r, m->target, true);
	end = log_rec(fs, &r, false, false);
	return end < 0 ? end : 0;
}

/*
 * A data change reaches the file after the writes still pending on it; a
 * copy reads its source after the source's.
 */
static void wait_pending(struct drfs_fs *fs, const struct mutation *m)
{
	if (m->type == MUT_COPY_RANGE)
		pending_wait(fs, m->src->ino, false);
	if (m->type == MUT_COPY_RANGE || m->type == MUT_FALLOCATE ||
	    (m->type == MUT_SETATTR && (m->valid & FUSE_SET_ATTR_SIZE)))
		pending_wait(fs, m->node->ino, false);
}

static ssize_t journaled(struct drfs_fs *fs, struct mutation *m)
{
	struct jrec r = { 0 };
	struct jfid victim = { 0, 0 }, moved = { 0, 0 };
	ssize_t ret;
	bool trunc;
	int64_t end;

	wait_pending(fs, m);
	switch (m->type) {
	case MUT_WRITE:
		return journal_write(fs, m);
	case MUT_COPY_RANGE:
		return journal_copy(fs, m);
	case MUT_FALLOCATE:
		r.type = JR_FALLOCATE;
		r.fid = fs_fid(fs, m->node);
		r.xflags = (uint32_t)m->flags;
		r.offset = (uint64_t)m->offset;
		r.size = m->size;
		return data_change(fs, m, &r, false);
	case MUT_SETATTR:
		return journal_setattr(fs, m);
	default:
		break;
	}

	/* namespace and xattrs: applied first, recorded right after */
	if (journal_error(fs->journal))
		return -EIO;
	if (m->type == MUT_UNLINK || m->type == MUT_RMDIR) {
		if ((ret = fid_in(fs, m->dir, m->name, &victim)) < 0)
			return ret;
	} else if (m->type == MUT_RENAME) {
		if ((ret = fid_in(fs, m->dir, m->name, &moved)) < 0 ||
		    (ret = fid_in(fs, m->newdir, m->newname, &victim)) < 0)
			return ret;
	}
	trunc = m->type == MUT_CREATE && (m->open_flags & O_TRUNC);
	if (trunc)
		m->open_flags &= ~O_TRUNC;
	ret = apply(fs, m);
	if (ret < 0)
		return ret;
	/* a name is gone: the kernel resends the ctime of what it still has links to */
	if (victim.ino)
		times_forget(fs, victim.ino);
	if (moved.ino)
		times_forget(fs, moved.ino);   /* a rename moves the backing ctime */

	switch (m->type) {
	case MUT_CREATE:
		if (!m->created)
			return create_existing(fs, m, (int)ret, trunc);
		end = record_made(fs, m, (int)ret);
		if (end < 0) {
			close((int)ret);
			return end;
		}
		return ret;
	case MUT_MKNOD:
	case MUT_MKDIR:
	case MUT_SYMLINK:
		return record_made(fs, m, -1);
	case MUT_LINK:
		r.type = JR_LINK;
		r.fid = fs_fid(fs, m->node);
		r.fid2 = fs_fid(fs, m->dir);
		name_of(&r, m->name, false);
		break;
	case MUT_UNLINK:
	case MUT_RMDIR:
		r.type = JR_UNLINK;
		r.flags = m->type == MUT_RMDIR ? JR_UNLINK_DIR : 0;
		r.fid2 = fs_fid(fs, m->dir);
		r.fid = victim;
		name_of(&r, m->name, false);
		break;
	case MUT_RENAME:
		r.type = JR_RENAME;
		r.fid = fs_fid(fs, m->dir);
		r.fid2 = fs_fid(fs, m->newdir);
		r.fid3 = moved;
		r.fid4 = victim;
		r.xflags = (uint32_t)m->flags;
		name_of(&r, m->name, false);
		name_of(&r, m->newname, true);
		break;
	case MUT_SETXATTR:
		r.type = JR_SETXATTR;
		r.fid = fs_fid(fs, m->node);
		r.xflags = (uint32_t)m->flags;
		r.data = m->data;
		r.data_len = m->size;
		name_of(&r, m->xname, false);
		break;
	case MUT_REMOVEXATTR:
		r.type = JR_REMOVEXATTR;
		r.fid = fs_fid(fs, m->node);
		name_of(&r, m->xname, false);
		break;
	default:
		return ret;
	}
	end = log_rec(fs, &r, false, false);
	return end < 0 ? end : ret;
}

/*
 * The first link of a file made with O_TMPFILE (docs/design.md "O_TMPFILE"):
 * applied, then recorded as the create and writes it stands for: CREATE,
 * a WRITE per data extent and MiB, a SETXATTR per xattr, a SETATTR of size
 * and times.  The caller holds anon_lock, so nothing changes the file
 * meanwhile.
 */
static ssize_t first_link(struct drfs_fs *fs, struct mutation *m)
{
	struct jfid fid = fs_fid(fs, m->node);
	struct jrec r = { .type = JR_CREATE, .fid = fid, .fid2 = fs_fid(fs, m->dir) };
	char *buf = NULL, *names = NULL;
	int64_t end;
	ssize_t ret, n;
	struct stat st;
	int fd;

	if (journal_error(fs->journal))
		return -EIO;
	ret = apply(fs, m);
	if (ret < 0)
		return ret;
	fd = inode_open(fs, m->node, O_RDONLY | O_NOATIME);
	if (fd < 0)
		return fd;
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		goto out;
	}
	if (!(buf = malloc(JREC_MAX_DATA))) {
		ret = -ENOMEM;
		goto out;
	}
	name_of(&r, m->name, false);
	stat_to_rec(&r, &st);
	if ((end = log_rec(fs, &r, false, false)) < 0)
		goto fail;

	/* the data, extent by extent and at most a record's worth at a time: holes stay holes */
	for (uint64_t pos = 0, hole = 0, size = (uint64_t)st.st_size; pos < size; pos += (uint64_t)n) {
		if (pos == hole) {
			int more = file_extent_next(fd, pos, size, &pos, &hole);

			if (more == 1)
				break;
			if (more < 0) {
				ret = more;
				goto out;
			}
		}
		n = pread(fd, buf, hole - pos < JREC_MAX_DATA ? (size_t)(hole - pos) : JREC_MAX_DATA, (off_t)pos);
		if (n <= 0) {
			ret = n < 0 ? -errno : -EIO;
			goto out;
		}
		r = (struct jrec){ .type = JR_WRITE, .fid = fid, .offset = (uint64_t)pos, .data = buf,
				   .data_len = (size_t)n };
		if ((end = log_rec(fs, &r, false, false)) < 0)
			goto fail;
	}

	/* xattrs: ACLs, security labels, user attributes */
	n = flistxattr(fd, NULL, 0);
	if (n > 0 && (names = malloc((size_t)n)) && (n = flistxattr(fd, names, (size_t)n)) > 0) {
		for (char *x = names; x < names + n; x += strlen(x) + 1) {
			ssize_t len = fgetxattr(fd, x, buf, JREC_MAX_DATA);

			if (len < 0)
				continue;   /* removed meanwhile, or not ours to read */
			r = (struct jrec){ .type = JR_SETXATTR, .fid = fid, .data = buf,
					   .data_len = (size_t)len };
			name_of(&r, x, false);
			if ((end = log_rec(fs, &r, false, false)) < 0)
				goto fail;
		}
	}

	/* size (a hole at the end) and times, as the file has them */
	r = (struct jrec){ .type = JR_SETATTR, .fid = fid };
	stat_to_rec(&r, &st);
	r.mask = JA_SIZE | JA_ATIME | JA_MTIME;
	if ((end = log_rec(fs, &r, false, false)) < 0)
		goto fail;
	atomic_store(&m->node->data_lsn, (uint64_t)end);
	atomic_store(&m->node->anon, false);
	ret = 0;
	goto out;
fail:
	ret = end;
out:
	free(names);
	free(buf);
	close(fd);
	return ret;
}

/* Whether M changes a file without a name (or links it): not journaled as such. */
static bool anon_change(const struct mutation *m)
{
	return m->node && atomic_load(&m->node->anon) &&
	       (m->type == MUT_WRITE || m->type == MUT_FALLOCATE || m->type == MUT_COPY_RANGE ||
		m->type == MUT_SETATTR || m->type == MUT_SETXATTR || m->type == MUT_REMOVEXATTR ||
		m->type == MUT_LINK);
}

/*
 * The backing ctime of M's file moved in a way times.c does not follow: a
 * new name, an xattr, or (ANY: a file without a name, whose changes are
 * applied as they come) any change but data.
 */
static void forget_ctime(struct drfs_fs *fs, const struct mutation *m, ssize_t ret, bool any)
{
	bool data = m->type == MUT_WRITE || m->type == MUT_COPY_RANGE || m->type == MUT_FALLOCATE;

	if (ret >= 0 && m->node &&
	    (m->type == MUT_LINK || m->type == MUT_SETXATTR || m->type == MUT_REMOVEXATTR ||
	     (any && !data)))
		times_forget(fs, m->node->ino);
}

ssize_t fs_mutate(struct drfs_fs *fs, struct mutation *m)
{
	ssize_t ret;

	/* The hidden state directory can be neither created nor touched by name. */
	if ((m->dir && m->name && fs_is_hidden(fs, m->dir, m->name)) ||
	    (m->newdir && m->newname && fs_is_hidden(fs, m->newdir, m->newname)))
		return -EPERM;
	if (!fs->journal || m->type == MUT_TMPFILE) {
		struct statx sx;

		ret = apply(fs, m);
		/* as for any new object (record_made); statx of the number alone reads no times */
		if (m->type == MUT_TMPFILE && ret >= 0 &&
		    statx((int)ret, "", AT_EMPTY_PATH, STATX_INO, &sx) == 0)
			times_forget(fs, sx.stx_ino);
		return ret;
	}
	if (anon_change(m)) {
		pthread_mutex_lock(&fs->anon_lock);
		if (atomic_load(&m->node->anon)) {
			if (m->type == MUT_LINK) {
				pthread_rwlock_rdlock(&fs->freeze);
				journal_apply_begin(fs->journal);
				ret = first_link(fs, m);
				journal_apply_end(fs->journal);
				pthread_rwlock_unlock(&fs->freeze);
			} else {
				wait_pending(fs, m);
				ret = apply(fs, m);
			}
			pthread_mutex_unlock(&fs->anon_lock);
			forget_ctime(fs, m, ret, true);
			return ret;
		}
		pthread_mutex_unlock(&fs->anon_lock);   /* linked meanwhile: journaled below */
	}
	pthread_rwlock_rdlock(&fs->freeze);
	journal_apply_begin(fs->journal);
	ret = journaled(fs, m);
	journal_apply_end(fs->journal);
	pthread_rwlock_unlock(&fs->freeze);
	forget_ctime(fs, m, ret, false);
	return ret;
}
