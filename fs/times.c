/*
 * times.c - the times drfs keeps itself (docs/design.md, "Times: who keeps
 * them").
 *
 * atime: FUSE inodes are S_NOATIME and cached pages are read without the
 * daemon, so the kernel never moves atime.  drfs does it when a file is
 * opened for reading or a directory for listing, by the rule of the mount as
 * it is now (statmount: a remount counts).  The update itself is a one-byte
 * read (one directory entry) through a detached strictatime clone of the
 * backing mount: that moves atime alone, where utimensat would move ctime
 * too.  Every other backing read is O_NOATIME.
 *
 * mtime: with the writeback cache the kernel keeps a regular file's mtime
 * and sends it in SETATTR; applying data puts back the mtime the file had.
 *
 * ctime: cannot be set.  Per regular file, the ctime the kernel shows (K)
 * and the backing ctime after drfs's last change (B); attribute replies show
 * K while the backing still has B.  Kept in STATE/ctimes across mounts.
 *
 * No stat between a change and the next: once a file's entry knows the
 * mtime to put back (M), applying data or the kernel's times does not read
 * the backing file's times, and B becomes "stale" (drfs changed the file
 * since B was read; K stands) until STATE/ctimes is written.  A stat that
 * asks for ctime, followed by a change of that file, makes the kernel take
 * a fine-grained timestamp and raise the time every later change gets (the
 * multigrain timestamps of Linux 6.13+); the journal's next write then
 * dirties its segment's inode, and on ext4 without a journal every flush
 * writes that inode's block too (docs/design.md, "Times: who keeps them").
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <linux/mount.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "../common/common.h"
#include "../journal/journal.h"
#include "fs_i.h"

/* Linux 6.8+; the headers of Debian 12 predate them. */
#ifndef __NR_statmount
#define __NR_statmount 457
#endif
#define MNT_ID_UNIQUE 0x4000U      /* STATX_MNT_ID_UNIQUE */
#define SM_SB_BASIC 0x1U           /* STATMOUNT_SB_BASIC */
#define SM_MNT_BASIC 0x2U          /* STATMOUNT_MNT_BASIC */
#define SB_RDONLY_FLAG 0x1U

struct mnt_req {
	uint32_t size, spare;
	uint64_t mnt_id, param;
};

/* The head of struct statmount; the kernel fills at least 512 bytes. */
struct mnt_info {
	uint32_t size, mnt_opts;
	uint64_t mask;
	uint32_t sb_dev_major, sb_dev_minor;
	uint64_t sb_magic;
	uint32_t sb_flags, fs_type;
	uint64_t mnt_id, mnt_parent_id;
	uint32_t mnt_id_old, mnt_parent_id_old;
	uint64_t mnt_attr;
	uint64_t more[120];
};

enum atime_rule { ATIME_NEVER, ATIME_RELATIVE, ATIME_ALWAYS };

static void atime_setup(struct drfs_fs *fs)
{
	struct mount_attr attr = { .attr_set = MOUNT_ATTR_STRICTATIME, .attr_clr = MOUNT_ATTR__ATIME };
	struct statx sx;
	int fd, err;

	if (statx(AT_FDCWD, fs->cfg.mountpoint, AT_STATX_DONT_SYNC | AT_NO_AUTOMOUNT, MNT_ID_UNIQUE,
		  &sx) == 0 && (sx.stx_mask & MNT_ID_UNIQUE))
		fs->mnt_id = sx.stx_mnt_id;
	else
		log_warn("cannot read the flags of %s (Linux 6.8 or later needed); access times follow relatime",
			 fs->cfg.mountpoint);
	fd = (int)syscall(SYS_open_tree, fs->mount_fd, "",
			  OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH);
	err = errno;
	if (fd >= 0) {
		/* open_by_handle_at wants a real fd on the mount, not an O_PATH one */
		int dfd = syscall(SYS_mount_setattr, fd, "", AT_EMPTY_PATH, &attr, sizeof(attr)) < 0
				  ? -1
				  : openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		err = errno;
		close(fd);
		fd = dfd;
	}
	if (fd < 0) {
		log_warn("access times will not change: cannot clone the mount of %s (%s)",
			 fs->cfg.backing, strerror(err));
		return;
	}
	fs->atime_fd = fd;
}

/* The rule of our mount as it is now, for a directory when DIR. */
static enum atime_rule current_rule(struct drfs_fs *fs, bool dir)
{
	struct mnt_req req = { .size = 24, .mnt_id = fs->mnt_id,
			       .param = SM_SB_BASIC | SM_MNT_BASIC };
	struct mnt_info mi;

	if (!fs->mnt_id || syscall(__NR_statmount, &req, &mi, sizeof(mi), 0) < 0 ||
	    (mi.mask & (SM_SB_BASIC | SM_MNT_BASIC)) != (SM_SB_BASIC | SM_MNT_BASIC))
		return ATIME_RELATIVE;
	if ((mi.sb_flags & SB_RDONLY_FLAG) || (mi.mnt_attr & (MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOATIME)) ||
	    (dir && (mi.mnt_attr & MOUNT_ATTR_NODIRATIME)))
		return ATIME_NEVER;
	if ((mi.mnt_attr & MOUNT_ATTR__ATIME) == MOUNT_ATTR_STRICTATIME)
		return ATIME_ALWAYS;
	return ATIME_RELATIVE;
}

static bool not_after(const struct timespec *a, const struct timespec *b)
{
	return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec <= b->tv_nsec);
}

/* relatime: atime not later than mtime or ctime, or a day old. */
static bool relatime_due(const struct stat *st)
{
	struct timespec now;

	clock_gettime(CLOCK_REALTIME, &now);
	return not_after(&st->st_atim, &st->st_mtim) || not_after(&st->st_atim, &st->st_ctim) ||
	       now.tv_sec - st->st_atim.tv_sec >= 24 * 3600;
}

void atime_opened(struct drfs_fs *fs, struct drfs_inode *inode, fuse_ino_t ino, int fd, int flags)
{
	bool dir = S_ISDIR(inode->type);
	enum atime_rule rule;
	struct stat st;
	char buf[512];
	int afd;

	if (fs->atime_fd < 0 || (flags & O_NOATIME) || (flags & O_ACCMODE) == O_WRONLY)
		return;
	rule = current_rule(fs, dir);
	if (rule == ATIME_NEVER || fstat(fd, &st) < 0 ||
	    (rule == ATIME_RELATIVE && !relatime_due(&st)))
		return;
	afd = inode_open_via(fs, inode, fs->atime_fd,
			     O_RDONLY | O_NONBLOCK | (dir ? O_DIRECTORY : 0));
	if (afd < 0)
		return;
	if (dir)
		(void)syscall(SYS_getdents64, afd, buf, sizeof(buf));
	else
		(void)pread(afd, buf, 1, 0);
	close(afd);
	fuse_lowlevel_notify_inval_inode(fs->se, ino, -1, 0);
}

/* ---- the kernel's ctimes ---- */

#define CT_BUCKETS (1u << 16)
#define CT_MAX (1u << 20)
#define CT_MAGIC "DRFSCTM1"
#define CT_ENTRY 40

struct ct_ent {
	struct ct_ent *next;
	uint64_t ino;
	struct timespec k, b;
	struct timespec m;         /* the mtime a data apply puts back, when m_known */
	bool b_stale;              /* drfs changed the file since B was read: K stands, B is unknown */
	bool m_known;
};

struct ctimes {
	pthread_mutex_t lock;
	struct ct_ent *tab[CT_BUCKETS];
	size_t count;
	bool full_said;
};

static size_t ct_slot(uint64_t ino)
{
	return (size_t)((ino * 0x9E3779B97F4A7C15ull) >> 48) & (CT_BUCKETS - 1);
}

static bool ts_eq(const struct timespec *a, const struct timespec *b)
{
	return a->tv_sec == b->tv_sec && a->tv_nsec == b->tv_nsec;
}

/* Caller holds c->lock. */
static struct ct_ent *ct_find(struct ctimes *c, uint64_t ino)
{
	for (struct ct_ent *e = c->tab[ct_slot(ino)]; e; e = e->next)
		if (e->ino == ino)
			return e;
	return NULL;
}

/* INO's entry, made when missing (NULL when the table is full).  Caller holds c->lock. */
static struct ct_ent *ct_get(struct ctimes *c, uint64_t ino)
{
	struct ct_ent *e = ct_find(c, ino);

	if (e)
		return e;
	if (c->count >= CT_MAX) {
		if (!c->full_said)
			log_warn("change times of more than %u files tracked; files written from now on "
				 "show the backing ctime after a remount", CT_MAX);
		c->full_said = true;
		return NULL;
	}
	if (!(e = calloc(1, sizeof(*e))))
		return NULL;
	e->ino = ino;
	e->next = c->tab[ct_slot(ino)];
	c->tab[ct_slot(ino)] = e;
	c->count++;
	return e;
}

/* Sets INO's pair to (K, B), B as read just now.  Returns the entry or NULL.  Caller holds c->lock. */
static struct ct_ent *ct_put(struct ctimes *c, uint64_t ino, const struct timespec *k,
			     const struct timespec *b)
{
	struct ct_ent *e = ct_get(c, ino);

	if (e) {
		e->k = *k;
		e->b = *b;
		e->b_stale = false;
	}
	return e;
}

/* Unlinks and frees the entry *PP points at.  Caller holds c->lock. */
static void ct_unlink(struct ctimes *c, struct ct_ent **pp)
{
	struct ct_ent *e = *pp;

	*pp = e->next;
	free(e);
	c->count--;
}

/* Drops INO's entry.  Caller holds c->lock. */
static void ct_drop(struct ctimes *c, uint64_t ino)
{
	for (struct ct_ent **pp = &c->tab[ct_slot(ino)]; *pp; pp = &(*pp)->next)
		if ((*pp)->ino == ino) {
			ct_unlink(c, pp);
			return;
		}
}

static void put_le64(unsigned char *p, uint64_t v)
{
	v = htole64(v);
	memcpy(p, &v, 8);
}

static void put_le32(unsigned char *p, uint32_t v)
{
	v = htole32(v);
	memcpy(p, &v, 4);
}

static uint64_t get_le64(const unsigned char *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
	return le64toh(v);
}

static uint32_t get_le32(const unsigned char *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return le32toh(v);
}

static void put_time(unsigned char *p, const struct timespec *t)
{
	put_le64(p, (uint64_t)t->tv_sec);
	put_le32(p + 8, (uint32_t)t->tv_nsec);
	put_le32(p + 12, 0);
}

static void get_time(const unsigned char *p, struct timespec *t)
{
	t->tv_sec = (time_t)get_le64(p);
	t->tv_nsec = (long)(get_le32(p + 8) % 1000000000u);
}

static char *ct_path(struct drfs_fs *fs)
{
	return fs->cfg.state_dir ? path_join(fs->cfg.state_dir, "ctimes") : NULL;
}

static void ct_load(struct drfs_fs *fs)
{
	char *path = ct_path(fs), *buf = NULL;
	struct ctimes *c = fs->ctimes;
	size_t len = 0;
	uint64_t n;

	if (!path)
		return;
	int ret = read_file_small(path, &buf, &len);

	if (ret) {
		if (ret != -ENOENT)
			log_warn("cannot read %s (%s); change times of files written before show the backing's",
				 path, strerror(-ret));
		goto out;
	}
	n = len >= 20 ? get_le64((unsigned char *)buf + 8) : 0;
	if (len < 20 || memcmp(buf, CT_MAGIC, 8) || n > CT_MAX || len != 20 + n * CT_ENTRY ||
	    crc32c(0, buf, len - 4) != get_le32((unsigned char *)buf + len - 4)) {
		log_warn("%s is damaged; ignored: change times of files written before show the backing's",
			 path);
		goto out;
	}
	for (uint64_t i = 0; i < n; i++) {
		const unsigned char *p = (unsigned char *)buf + 16 + i * CT_ENTRY;
		struct timespec k, b;

		get_time(p + 8, &k);
		get_time(p + 24, &b);
		ct_put(c, get_le64(p), &k, &b);
	}
out:
	free(buf);
	free(path);
}

/*
 * Reads the B of every entry whose B is stale, now that no change is on its
 * way; an entry whose file cannot be reached (the kernel forgot it) is
 * dropped, and after the remount that file shows its backing ctime.
 */
static void ct_resolve(struct drfs_fs *fs, struct ctimes *c)
{
	for (size_t i = 0; i < CT_BUCKETS; i++)
		for (struct ct_ent **pp = &c->tab[i]; *pp;) {
			struct ct_ent *e = *pp;
			struct drfs_inode *in;
			struct stat st;

			if (e->b_stale) {
				in = inode_get(fs, e->ino);
				if (!in || inode_stat(fs, in, &st) < 0 || (uint64_t)st.st_ino != e->ino ||
				    !S_ISREG(st.st_mode)) {
					ct_unlink(c, pp);
					continue;
				}
				e->b = st.st_ctim;
				e->b_stale = false;
			}
			pp = &e->next;
		}
}

static void ct_save(struct drfs_fs *fs)
{
	struct ctimes *c = fs->ctimes;
	size_t len, at = 16;
	unsigned char *buf;
	char *dir = (char *)fs->cfg.state_dir;
	int dfd, ret;

	ct_resolve(fs, c);
	len = 20 + c->count * CT_ENTRY;
	if (!dir || !(buf = malloc(len)))
		return;
	memcpy(buf, CT_MAGIC, 8);
	put_le64(buf + 8, c->count);
	for (size_t i = 0; i < CT_BUCKETS; i++)
		for (struct ct_ent *e = c->tab[i]; e; e = e->next, at += CT_ENTRY) {
			put_le64(buf + at, e->ino);
			put_time(buf + at + 8, &e->k);
			put_time(buf + at + 24, &e->b);
		}
	put_le32(buf + at, crc32c(0, buf, at));
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	ret = dfd < 0 ? -errno : write_file_durable(dfd, "ctimes", buf, len);
	if (ret)
		log_warn("cannot write %s/ctimes (%s); after this remount, change times of recently "
			 "written files show the backing's", dir, strerror(-ret));
	if (dfd >= 0)
		close(dfd);
	free(buf);
}

void times_setup(struct drfs_fs *fs)
{
	atime_setup(fs);
}

void times_start(struct drfs_fs *fs, bool kernel_times)
{
	fs->kernel_times = kernel_times;
	if (!kernel_times || fs->ctimes || !(fs->ctimes = calloc(1, sizeof(*fs->ctimes))))
		return;
	pthread_mutex_init(&fs->ctimes->lock, NULL);
	ct_load(fs);
}

void times_release(struct drfs_fs *fs)
{
	struct ctimes *c = fs->ctimes;

	if (!c)
		return;
	ct_save(fs);
	for (size_t i = 0; i < CT_BUCKETS; i++)
		for (struct ct_ent *e = c->tab[i], *n; e; e = n) {
			n = e->next;
			free(e);
		}
	pthread_mutex_destroy(&c->lock);
	free(c);
	fs->ctimes = NULL;
}

void times_show(struct drfs_fs *fs, struct stat *st)
{
	struct ctimes *c = fs->ctimes;
	struct ct_ent *e;

	if (!c || !S_ISREG(st->st_mode))
		return;
	pthread_mutex_lock(&c->lock);
	e = ct_find(c, st->st_ino);
	if (e && (e->b_stale || ts_eq(&e->b, &st->st_ctim)))
		st->st_ctim = e->k;
	pthread_mutex_unlock(&c->lock);
}

void times_kernel_ctime(struct drfs_fs *fs, uint64_t ino, const struct timespec *k,
			const struct stat *after, const struct timespec *mtime, bool mtime_moved)
{
	struct ctimes *c = fs->ctimes;
	struct ct_ent *e;

	if (!c || !S_ISREG(after->st_mode))
		return;
	pthread_mutex_lock(&c->lock);
	if ((e = ct_put(c, ino, k, &after->st_ctim))) {
		if (mtime) {
			e->m = *mtime;
			e->m_known = true;
		} else if (mtime_moved) {
			e->m_known = false;
		}
	}
	pthread_mutex_unlock(&c->lock);
}

bool times_stale(struct drfs_fs *fs, uint64_t ino)
{
	struct ctimes *c = fs->ctimes;
	struct ct_ent *e;
	bool stale;

	if (!c)
		return false;
	pthread_mutex_lock(&c->lock);
	stale = (e = ct_find(c, ino)) && e->b_stale;
	pthread_mutex_unlock(&c->lock);
	return stale;
}

void times_settle(struct drfs_fs *fs, uint64_t ino, int fd)
{
	struct ctimes *c = fs->ctimes;
	struct ct_ent *e;
	struct stat st;

	if (!c || fstat(fd, &st) < 0 || (uint64_t)st.st_ino != ino)
		return;
	pthread_mutex_lock(&c->lock);
	if ((e = ct_find(c, ino)) && e->b_stale) {
		e->b = st.st_ctim;
		e->b_stale = false;
	}
	pthread_mutex_unlock(&c->lock);
}

void times_kernel_applied(struct drfs_fs *fs, uint64_t ino, const struct timespec *k,
			  const struct timespec *mtime)
{
	struct ctimes *c = fs->ctimes;
	struct ct_ent *e;

	if (!c)
		return;
	pthread_mutex_lock(&c->lock);
	if (!k) {
		ct_drop(c, ino);   /* the backing ctime moved, and no K stands for it */
	} else if ((e = ct_get(c, ino))) {
		e->k = *k;
		e->b_stale = true;
		if (mtime && mtime->tv_nsec != UTIME_OMIT) {
			e->m = *mtime;
			e->m_known = true;
		}
	}
	pthread_mutex_unlock(&c->lock);
}

void times_forget(struct drfs_fs *fs, uint64_t ino)
{
	struct ctimes *c = fs->ctimes;

	if (!c)
		return;
	pthread_mutex_lock(&c->lock);
	ct_drop(c, ino);
	pthread_mutex_unlock(&c->lock);
}

bool times_data_before(struct drfs_fs *fs, uint64_t ino, int fd, struct stat *before, bool *cached)
{
	struct ctimes *c = fs->ctimes;
	struct ct_ent *e;

	*cached = false;
	if (!fs->kernel_times)
		return false;
	if (c) {
		pthread_mutex_lock(&c->lock);
		if ((e = ct_find(c, ino)) && e->m_known) {
			before->st_mtim = e->m;
			*cached = true;
		}
		pthread_mutex_unlock(&c->lock);
		if (*cached)
			return true;
	}
	return fstat(fd, before) == 0 && S_ISREG(before->st_mode);
}

void times_data_after(struct drfs_fs *fs, uint64_t ino, int fd, const struct stat *before, bool cached)
{
	struct timespec tv[2] = { { .tv_nsec = UTIME_OMIT }, before->st_mtim };
	struct ctimes *c = fs->ctimes;
	struct ct_ent *e;
	struct stat st;

	/* best effort: a failure leaves the apply's own mtime, as before drfs kept it */
	if (futimens(fd, tv) < 0 || !c)
		return;
	if (cached) {
		/* no stat: the kernel shows what it showed before this apply */
		pthread_mutex_lock(&c->lock);
		if ((e = ct_find(c, ino)))
			e->b_stale = true;
		pthread_mutex_unlock(&c->lock);
		return;
	}
	if (fstat(fd, &st) < 0)
		return;
	pthread_mutex_lock(&c->lock);
	e = ct_find(c, ino);
	/* the kernel shows what it showed before this apply */
	if (e && (e->b_stale || ts_eq(&e->b, &before->st_ctim))) {
		e->b = st.st_ctim;
		e->b_stale = false;
	} else {
		e = ct_put(c, ino, &before->st_ctim, &st.st_ctim);
	}
	if (e) {
		e->m = before->st_mtim;
		e->m_known = true;
	}
	pthread_mutex_unlock(&c->lock);
}
