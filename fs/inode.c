/*
 * inode.c - the inode table: backing inode number -> struct drfs_inode.
 *
 * See fs_i.h for the identity rules.  The table is a chained hash protected
 * by fs->lock; the lock is held only for table and lookup-count updates,
 * never across a system call.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/common.h"
#include "fs_i.h"

#define HANDLE_MAX 128
#define FILEID_INO32_GEN 1 /* the kernel's handle type for {u32 ino, u32 gen} */

static size_t hash_ino(uint64_t ino, size_t size)
{
	ino ^= ino >> 33;
	ino *= 0xff51afd7ed558ccdULL;
	ino ^= ino >> 33;
	return (size_t)(ino & (size - 1));
}

/* Whether the backing filesystem gives out file handles we may open. */
static bool probe_handles(int backing_fd, int mount_fd)
{
	struct {
		struct file_handle fh;
		unsigned char buf[HANDLE_MAX];
	} h;
	int mount_id, fd;

	h.fh.handle_bytes = HANDLE_MAX;
	if (name_to_handle_at(backing_fd, "", &h.fh, &mount_id, AT_EMPTY_PATH) < 0)
		return false;
	fd = open_by_handle_at(mount_fd, &h.fh, O_PATH | O_CLOEXEC);
	if (fd < 0)
		return false;
	close(fd);
	return true;
}

int inode_table_init(struct drfs_fs *fs)
{
	const char *backing = fs->cfg.backing;
	struct stat st;
	int ret;

	fs->mount_fd = -1;
	fs->atime_fd = -1;
	fs->backing_fd = open(backing, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fs->backing_fd < 0 || fstat(fs->backing_fd, &st) < 0) {
		ret = -errno;
		log_error("cannot open backing directory %s: %s", backing, strerror(-ret));
		goto out_close;
	}
	fs->mount_fd = open(backing, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fs->mount_fd < 0) {
		ret = -errno;
		log_error("cannot open backing directory %s: %s", backing, strerror(-ret));
		goto out_close;
	}
	fs->backing_dev = st.st_dev;
	fs->use_handles = probe_handles(fs->backing_fd, fs->mount_fd);
	if (!fs->use_handles)
		log_warn("%s has no usable file handles; keeping one fd per cached inode", backing);
	fs->table_size = 1 << 14;
	fs->table = calloc(fs->table_size, sizeof(*fs->table));
	fs->root = calloc(1, sizeof(*fs->root));
	if (!fs->table || !fs->root) {
		ret = -ENOMEM;
		goto out_free;
	}
	fs->root->ino = st.st_ino;
	fs->root->type = S_IFDIR;
	fs->root->nlookup = 2;
	fs->root->fd = fs->backing_fd;
	return 0;

out_free:
	free(fs->table);
	free(fs->root);
	fs->table = NULL;
	fs->root = NULL;
out_close:
	if (fs->mount_fd >= 0)
		close(fs->mount_fd);
	if (fs->backing_fd >= 0)
		close(fs->backing_fd);
	return ret;
}

static void inode_free(struct drfs_inode *inode)
{
	if (inode->fd >= 0)
		close(inode->fd);
	free(inode);
}

void inode_table_release(struct drfs_fs *fs)
{
	for (size_t i = 0; i < fs->table_size; i++) {
		struct drfs_inode *in = fs->table[i], *next;
		for (; in; in = next) {
			next = in->next;
			if (in != fs->root)
				inode_free(in);
		}
	}
	free(fs->table);
	fs->table = NULL;
	for (struct drfs_inode *in = fs->retired, *next; in; in = next) {
		next = in->next;
		inode_free(in);
	}
	fs->retired = NULL;
	free(fs->root);
	fs->root = NULL;
	close(fs->mount_fd);
	close(fs->backing_fd);
	if (fs->atime_fd >= 0)
		close(fs->atime_fd);
	fs->atime_fd = -1;
}

/* Caller holds fs->lock. */
static struct drfs_inode *table_find(struct drfs_fs *fs, uint64_t ino)
{
	struct drfs_inode *in = fs->table[hash_ino(ino, fs->table_size)];

	while (in && in->ino != ino)
		in = in->next;
	return in;
}

/* Caller holds fs->lock. */
static void table_grow(struct drfs_fs *fs)
{
	size_t nsize = fs->table_size * 2;
	struct drfs_inode **nt = calloc(nsize, sizeof(*nt));

	if (!nt)
		return; /* longer chains, still correct */
	for (size_t i = 0; i < fs->table_size; i++) {
		struct drfs_inode *in = fs->table[i], *next;
		for (; in; in = next) {
			size_t h = hash_ino(in->ino, nsize);
			next = in->next;
			in->next = nt[h];
			nt[h] = in;
		}
	}
	free(fs->table);
	fs->table = nt;
	fs->table_size = nsize;
}

/* Caller holds fs->lock. */
static void table_insert(struct drfs_fs *fs, struct drfs_inode *in)
{
	size_t h;

	if (fs->table_count + 1 > fs->table_size)
		table_grow(fs);
	h = hash_ino(in->ino, fs->table_size);
	in->next = fs->table[h];
	fs->table[h] = in;
	fs->table_count++;
}

/* Caller holds fs->lock. */
static void table_remove(struct drfs_fs *fs, struct drfs_inode *in)
{
	struct drfs_inode **pp = &fs->table[hash_ino(in->ino, fs->table_size)];

	while (*pp && *pp != in)
		pp = &(*pp)->next;
	if (*pp) {
		*pp = in->next;
		fs->table_count--;
	}
}

struct drfs_inode *inode_get(struct drfs_fs *fs, fuse_ino_t ino)
{
	struct drfs_inode *in;

	if (ino == FUSE_ROOT_ID)
		return fs->root;
	pthread_mutex_lock(&fs->lock);
	in = table_find(fs, ino);
	pthread_mutex_unlock(&fs->lock);
	return in;
}

bool fs_is_hidden(struct drfs_fs *fs, struct drfs_inode *dir, const char *name)
{
	return dir == fs->root && !strcmp(name, DRFS_STATE_NAME);
}

struct handle_buf {
	struct file_handle fh;
	unsigned char buf[HANDLE_MAX];
};

/* The backing file handle of NAME in DIRFD (of DIRFD itself when NAME is ""); 0 or -errno. */
static int handle_of(int dirfd, const char *name, struct handle_buf *h)
{
	int mount_id;

	h->fh.handle_bytes = HANDLE_MAX;
	if (name_to_handle_at(dirfd, name, &h->fh, &mount_id, *name ? 0 : AT_EMPTY_PATH) < 0)
		return -errno;
	return h->fh.handle_bytes <= INODE_HANDLE_MAX ? 0 : -EOVERFLOW;
}

/* Caller holds fs->lock (or owns IN exclusively). */
static void set_handle(struct drfs_inode *in, const struct handle_buf *h)
{
	in->handle_type = h->fh.handle_type;
	in->handle_bytes = h->fh.handle_bytes;
	memcpy(in->handle, h->fh.f_handle, h->fh.handle_bytes);
	in->gen = 0;
	if (h->fh.handle_type == FILEID_INO32_GEN && h->fh.handle_bytes >= 8)
		memcpy(&in->gen, h->fh.f_handle + 4, 4);
}

/*
 * Builds a new inode for NAME in directory fd DIRFD (DIRFD itself when NAME is
 * "") with attributes ST; H is
 * its handle when HAVE_HANDLE.  Returns NULL on failure with errno set.
 */
static struct drfs_inode *inode_new(struct drfs_fs *fs, int dirfd, const char *name,
				    const struct stat *st, const struct handle_buf *h,
				    bool have_handle)
{
	struct drfs_inode *in = calloc(1, sizeof(*in));

	if (!in)
		return NULL;
	in->ino = st->st_ino;
	in->type = st->st_mode & S_IFMT;
	in->fd = -1;
	/*
	 * Directories keep an fd for lookups.  So do fifos, sockets and device
	 * nodes: their opens never reach us, so an fd is what keeps an open but
	 * unlinked one reachable for getattr, as on the backing filesystem.
	 */
	if (S_ISDIR(st->st_mode) || S_ISFIFO(st->st_mode) || S_ISSOCK(st->st_mode) ||
	    S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode) || !have_handle) {
		in->fd = *name ? openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC)
			       : fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
		if (in->fd < 0) {
			free(in);
			return NULL;
		}
		if (fs->use_handles) {
			struct jfid f;
			if (apply_fid_of(in->fd, "", &f) == 0)
				in->gen = f.gen;
		}
	} else {
		set_handle(in, h);
	}
	return in;
}

/*
 * Finds or makes the table entry for the object NAME in FD (FD itself when
 * NAME is "") whose attributes are in E->attr, adds a lookup reference and
 * completes E.  ANON: a file without a name (O_TMPFILE), which no handle
 * reaches reliably: its entry keeps an fd and is marked anonymous.
 * Returns 0 or -errno.
 */
static int inode_bind(struct drfs_fs *fs, int fd, const char *name, struct fuse_entry_param *e,
		      bool anon)
{
	struct drfs_inode *in, *fresh = NULL;
	struct handle_buf h;
	bool have_handle = false;
	uint64_t carried = 0;

	if (e->attr.st_dev != fs->backing_dev)
		return -EXDEV; /* another filesystem mounted inside the backing tree */
	/* Directories keep an fd; everything else is known by its handle. */
	if (fs->use_handles && !S_ISDIR(e->attr.st_mode) && !anon) {
		int r = handle_of(fd, name, &h);
		if (r && r != -EOPNOTSUPP && r != -EOVERFLOW)
			return r;
		have_handle = r == 0;
	}
	pthread_mutex_lock(&fs->lock);
	in = e->attr.st_ino == fs->root->ino ? fs->root : table_find(fs, e->attr.st_ino);
	if (in && in->fd < 0 && have_handle &&
	    (in->handle_bytes != h.fh.handle_bytes ||
	     memcmp(in->handle, h.fh.f_handle, h.fh.handle_bytes))) {
		/* The inode number now names another object: rebind the entry. */
		set_handle(in, &h);
		in->type = e->attr.st_mode & S_IFMT;
	}
	if (in && (in->type != (e->attr.st_mode & S_IFMT) || (in->fd < 0 && !have_handle))) {
		/*
		 * Reused for an object that needs an fd: retire the old entry.
		 * The kernel still forgets its old inode by this node id, so the
		 * new entry takes over the old lookup count, as a rebind does;
		 * the old entry is kept (a request may still hold it) and freed
		 * with the table.
		 */
		table_remove(fs, in);
		carried = in->nlookup;
		in->nlookup = 0;
		in->ino = 0;
		in->next = fs->retired;
		fs->retired = in;
		in = NULL;
	}
	if (in)
		in->nlookup++;
	pthread_mutex_unlock(&fs->lock);

	if (!in) {
		fresh = inode_new(fs, fd, name, &e->attr, &h, have_handle);
		if (!fresh)
			return -errno;
		pthread_mutex_lock(&fs->lock);
		in = table_find(fs, e->attr.st_ino);
		if (in) {
			/* Another thread inserted it meanwhile. */
			in->nlookup += 1 + carried;
		} else {
			in = fresh;
			fresh = NULL;
			in->nlookup = 1 + carried;
			table_insert(fs, in);
		}
		pthread_mutex_unlock(&fs->lock);
		if (fresh)
			inode_free(fresh);
	}
	pthread_mutex_lock(&fs->lock);
	e->generation = in->gen;
	pthread_mutex_unlock(&fs->lock);
	if (anon)
		atomic_store(&in->anon, true);
	e->ino = in == fs->root ? FUSE_ROOT_ID : in->ino;
	times_show(fs, &e->attr);
	e->attr_timeout = fs->timeout;
	e->entry_timeout = fs->timeout;
	return 0;
}

int inode_lookup(struct drfs_fs *fs, struct drfs_inode *dir, const char *name,
		 struct fuse_entry_param *e)
{
	bool owned;
	int dirfd, ret;

	if (fs_is_hidden(fs, dir, name))
		return -ENOENT;
	/* ".." of the root stays inside the backing tree. */
	if (dir == fs->root && !strcmp(name, ".."))
		name = ".";
	dirfd = inode_fd(fs, dir, O_PATH, &owned);
	if (dirfd < 0)
		return dirfd;
	memset(e, 0, sizeof(*e));
	ret = fstatat(dirfd, name, &e->attr, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
	/*
	 * A file the kernel no longer caches gets its size and times from this
	 * reply: writes still pending on it must be in the backing file first.
	 */
	if (!ret && S_ISREG(e->attr.st_mode) && pending_busy(fs, e->attr.st_ino)) {
		pending_wait(fs, e->attr.st_ino, false);
		ret = fstatat(dirfd, name, &e->attr, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
	}
	if (!ret)
		ret = inode_bind(fs, dirfd, name, e, false);
	if (owned)
		close(dirfd);
	return ret;
}

int inode_lookup_self(struct drfs_fs *fs, fuse_ino_t ino, struct fuse_entry_param *e)
{
	struct drfs_inode *in = inode_get(fs, ino);
	struct handle_buf h;
	bool owned = true;
	uint32_t ino32 = (uint32_t)ino, zero = 0;
	int fd, ret;

	if (in) {
		fd = inode_fd(fs, in, O_PATH, &owned);
	} else {
		/*
		 * Not cached (forgotten, or a handle from before a remount): the
		 * backing filesystem finds the inode by number when its handles are
		 * {32-bit inode, generation}; generation 0 skips its check, and the
		 * kernel compares the generation we return with the handle's.
		 */
		if (!fs->use_handles || ino > UINT32_MAX)
			return -ESTALE;
		h.fh.handle_type = FILEID_INO32_GEN;
		h.fh.handle_bytes = 8;
		memcpy(h.fh.f_handle, &ino32, 4);
		memcpy(h.fh.f_handle + 4, &zero, 4);
		fd = open_by_handle_at(fs->mount_fd, &h.fh, O_PATH | O_CLOEXEC);
		if (fd < 0)
			return -ESTALE;
	}
	if (fd < 0)
		return fd;
	memset(e, 0, sizeof(*e));
	if (fstatat(fd, "", &e->attr, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
		ret = -errno;
	else if (e->attr.st_ino != ino && ino != FUSE_ROOT_ID)
		ret = -ESTALE;
	else
		ret = inode_bind(fs, fd, "", e, false);
	if (owned)
		close(fd);
	return ret;
}

int inode_lookup_anon(struct drfs_fs *fs, int fd, struct fuse_entry_param *e)
{
	char path[32];
	int pfd, ret;

	memset(e, 0, sizeof(*e));
	if (fstat(fd, &e->attr) < 0)
		return -errno;
	/* the entry keeps an O_PATH fd of its own */
	proc_fd_path(path, fd);
	pfd = open(path, O_PATH | O_CLOEXEC);
	if (pfd < 0)
		return -errno;
	ret = inode_bind(fs, pfd, "", e, true);
	close(pfd);
	return ret;
}

void inode_forget(struct drfs_fs *fs, struct drfs_inode *inode, uint64_t n)
{
	bool release = false;

	if (inode == fs->root)
		return;
	pthread_mutex_lock(&fs->lock);
	if (inode->nlookup < n)
		n = inode->nlookup;
	inode->nlookup -= n;
	/* a retired entry (ino 0) is freed with the table: its count went to its successor */
	if (inode->nlookup == 0 && inode->ino) {
		table_remove(fs, inode);
		release = true;
	}
	pthread_mutex_unlock(&fs->lock);
	if (!release)
		return;
	/* the last chance to read a stale ctime pair's B through the table (times.c) */
	if (times_stale(fs, inode->ino) && !pending_busy(fs, inode->ino)) {
		bool owned;
		int fd = inode_fd(fs, inode, O_PATH, &owned);

		if (fd >= 0) {
			times_settle(fs, inode->ino, fd);
			if (owned)
				close(fd);
		}
	}
	inode_free(inode);
}

/* INODE's handle, from the table or, for an inode kept by fd, from the kernel.  0 or -errno. */
static int inode_handle(struct drfs_fs *fs, struct drfs_inode *inode, struct handle_buf *h)
{
	int mount_id;

	if (inode->fd >= 0) {
		h->fh.handle_bytes = HANDLE_MAX;
		return name_to_handle_at(inode->fd, "", &h->fh, &mount_id, AT_EMPTY_PATH) < 0 ? -errno
											: 0;
	}
	pthread_mutex_lock(&fs->lock);
	h->fh.handle_bytes = inode->handle_bytes;
	h->fh.handle_type = inode->handle_type;
	memcpy(h->fh.f_handle, inode->handle, inode->handle_bytes);
	pthread_mutex_unlock(&fs->lock);
	return 0;
}

int inode_fd(struct drfs_fs *fs, struct drfs_inode *inode, int flags, bool *owned)
{
	struct handle_buf h;
	int fd = inode->fd;

	if (fd >= 0) {
		*owned = false;
		return fd;
	}
	inode_handle(fs, inode, &h);
	fd = open_by_handle_at(fs->mount_fd, &h.fh, flags | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	*owned = true;
	return fd;
}

int inode_open_via(struct drfs_fs *fs, struct drfs_inode *inode, int mount_fd, int flags)
{
	struct handle_buf h;
	int ret = inode_handle(fs, inode, &h);

	if (ret)
		return ret;
	ret = open_by_handle_at(mount_fd, &h.fh, flags | O_CLOEXEC);
	return ret < 0 ? -errno : ret;
}

int inode_open(struct drfs_fs *fs, struct drfs_inode *inode, int flags)
{
	bool owned;
	int fd;

	flags &= ~(O_NOFOLLOW | O_CREAT | O_EXCL);
	for (;;) {
		if (inode->fd < 0) {
			fd = inode_fd(fs, inode, flags, &owned);
		} else {
			char path[32];

			proc_fd_path(path, inode->fd);
			fd = open(path, flags | O_CLOEXEC);
			if (fd < 0)
				fd = -errno;
		}
		/* O_NOATIME needs CAP_FOWNER or ownership: without it, open as asked */
		if (fd != -EPERM || !(flags & O_NOATIME))
			return fd;
		flags &= ~O_NOATIME;
	}
}

int inode_stat(struct drfs_fs *fs, struct drfs_inode *inode, struct stat *st)
{
	bool owned;
	int fd = inode_fd(fs, inode, O_PATH, &owned), ret = 0;

	if (fd < 0)
		return fd;
	if (fstatat(fd, "", st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
		ret = -errno;
	if (owned)
		close(fd);
	return ret;
}
