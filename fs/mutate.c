/*
 * mutate.c - fs_mutate(): the one place where the backing tree changes.
 *
 * Every FUSE operation that modifies anything describes the change as a
 * struct mutation and calls fs_mutate().  The journal (journal/) hooks in
 * here: append the record, then apply it; the same apply code will serve
 * crash recovery and standby replay.
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
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "../common/common.h"
#include "fs_i.h"

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
	fd = openat(dirfd, m->name, flags | O_CREAT | O_EXCL, m->mode);
	if (fd < 0 && errno == EEXIST && !(m->open_flags & O_EXCL)) {
		created = false;
		fd = openat(dirfd, m->name, flags & ~O_CREAT, m->mode);
	}
	if (fd < 0)
		return -errno;
	if (created) {
		ret = set_owner(fd, "", m, &dir_st);
		if (ret) {
			close(fd);
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

ssize_t fs_mutate(struct drfs_fs *fs, struct mutation *m)
{
	struct drfs_inode *pathnode = m->node ? m->node : m->dir;
	bool owned = false, owned2 = false;
	int fd = -1, fd2 = -1;
	char path[32];
	ssize_t ret;

	/* The hidden state directory can be neither created nor touched by name. */
	if ((m->dir && m->name && fs_is_hidden(fs, m->dir, m->name)) ||
	    (m->newdir && m->newname && fs_is_hidden(fs, m->newdir, m->newname)))
		return -EPERM;

	/* Data operations on an open file need no path fd. */
	if (m->type == MUT_WRITE) {
		ret = pwrite(m->fd, m->data, m->size, m->offset);
		return ret < 0 ? -errno : ret;
	}
	if (m->type == MUT_FALLOCATE)
		return fallocate(m->fd, m->flags, m->offset, (off_t)m->size) < 0 ? -errno : 0;
	if (m->type == MUT_COPY_RANGE) {
		off_t in = m->src_offset, out = m->offset;

		ret = copy_file_range(m->src_fd, &in, m->fd, &out, m->size, 0);
		return ret < 0 ? -errno : ret;
	}

	if (m->type == MUT_SETATTR && m->fd >= 0)
		return do_setattr(m, -1);

	fd = inode_fd(fs, pathnode, O_PATH, &owned);
	if (fd < 0)
		return fd;

	switch (m->type) {
	case MUT_CREATE:
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
