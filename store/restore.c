/*
 * restore.c - reading snapshots back: restore of a whole snapshot into a
 * directory, and reading file ranges through a bounded chunk cache (the
 * snapshot mount and diff use it).
 *
 * Restore walks the trees on one thread, making directories, links,
 * symlinks and special files as it goes, and hands regular files to worker
 * threads that write their chunks (holes stay holes: the file is sized
 * with ftruncate and only chunks are written).  Attributes go on in the
 * order that keeps them: owner, then mode (chown clears set-id bits), then
 * xattrs (an ACL carries its own mode bits), then times; directories get
 * their times last, deepest first, once everything inside them is written.
 * The repository is only read.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <dirent.h>

#include "../common/common.h"
#include "store.h"

/* ---- the chunk cache: decoded chunks by id, least recently used out ---- */

struct cached {
	struct store_id id;
	void *data;
	size_t len;
	struct cached *hnext;         /* hash chain */
	struct cached *prev, *next;   /* LRU list, most recent first */
};

struct chunk_cache {
	pthread_mutex_t lock;
	size_t max_bytes, bytes;
	size_t nbuckets;
	struct cached **bucket;       /* protected by lock, as is everything below */
	struct cached *head, *tail;
};

struct chunk_cache *chunk_cache_new(size_t max_bytes)
{
	struct chunk_cache *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->nbuckets = 4096;
	c->bucket = calloc(c->nbuckets, sizeof(*c->bucket));
	if (!c->bucket) {
		free(c);
		return NULL;
	}
	c->max_bytes = max_bytes;
	pthread_mutex_init(&c->lock, NULL);
	return c;
}

void chunk_cache_free(struct chunk_cache *c)
{
	if (!c)
		return;
	for (struct cached *x = c->head, *n; x; x = n) {
		n = x->next;
		free(x->data);
		free(x);
	}
	free(c->bucket);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

static size_t bucket_of(const struct chunk_cache *c, const struct store_id *id)
{
	uint64_t h;
	memcpy(&h, id->b, sizeof(h));
	return (size_t)(h % c->nbuckets);
}

static void lru_unlink(struct chunk_cache *c, struct cached *x)
{
	if (x->prev)
		x->prev->next = x->next;
	else
		c->head = x->next;
	if (x->next)
		x->next->prev = x->prev;
	else
		c->tail = x->prev;
	x->prev = x->next = NULL;
}

static void lru_push(struct chunk_cache *c, struct cached *x)
{
	x->next = c->head;
	x->prev = NULL;
	if (c->head)
		c->head->prev = x;
	c->head = x;
	if (!c->tail)
		c->tail = x;
}

/* Copies [OFF, OFF+LEN) of cached chunk ID into BUF; false when not cached. */
static bool cache_copy(struct chunk_cache *c, const struct store_id *id, void *buf, size_t off,
		       size_t len)
{
	bool hit = false;

	pthread_mutex_lock(&c->lock);
	for (struct cached *x = c->bucket[bucket_of(c, id)]; x; x = x->hnext)
		if (!memcmp(x->id.b, id->b, STORE_ID_LEN) && off + len <= x->len) {
			memcpy(buf, (char *)x->data + off, len);
			lru_unlink(c, x);
			lru_push(c, x);
			hit = true;
			break;
		}
	pthread_mutex_unlock(&c->lock);
	return hit;
}

/* Takes ownership of DATA (freed when it does not fit). */
static void cache_put(struct chunk_cache *c, const struct store_id *id, void *data, size_t len)
{
	struct cached *x = calloc(1, sizeof(*x));

	if (!x || len > c->max_bytes) {
		free(x);
		free(data);
		return;
	}
	x->id = *id;
	x->data = data;
	x->len = len;
	pthread_mutex_lock(&c->lock);
	size_t b = bucket_of(c, id);
	for (struct cached *y = c->bucket[b]; y; y = y->hnext)
		if (!memcmp(y->id.b, id->b, STORE_ID_LEN)) {
			pthread_mutex_unlock(&c->lock);
			free(data);
			free(x);
			return;
		}
	x->hnext = c->bucket[b];
	c->bucket[b] = x;
	lru_push(c, x);
	c->bytes += len;
	while (c->bytes > c->max_bytes && c->tail) {
		struct cached *old = c->tail;
		lru_unlink(c, old);
		struct cached **pp = &c->bucket[bucket_of(c, &old->id)];
		while (*pp != old)
			pp = &(*pp)->hnext;
		*pp = old->hnext;
		c->bytes -= old->len;
		free(old->data);
		free(old);
	}
	pthread_mutex_unlock(&c->lock);
}

ssize_t snap_read_file(struct repo *r, struct chunk_cache *c, const struct tree_entry *e,
		       void *buf, size_t len, uint64_t offset)
{
	if (offset >= e->size)
		return 0;
	if (len > e->size - offset)
		len = (size_t)(e->size - offset);
	memset(buf, 0, len);

	/* the first chunk that ends after OFFSET */
	size_t lo = 0, hi = e->nchunk;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (e->chunk[mid].offset + e->chunk[mid].len <= offset)
			lo = mid + 1;
		else
			hi = mid;
	}
	for (size_t i = lo; i < e->nchunk && e->chunk[i].offset < offset + len; i++) {
		const struct tree_chunk *ch = &e->chunk[i];
		uint64_t s = ch->offset > offset ? ch->offset : offset;
		uint64_t end = ch->offset + ch->len < offset + len ? ch->offset + ch->len : offset + len;
		char *dst = (char *)buf + (s - offset);
		size_t in = (size_t)(s - ch->offset), n = (size_t)(end - s);

		if (c && cache_copy(c, &ch->id, dst, in, n))
			continue;
		void *data;
		size_t dlen;
		int ret = repo_get(r, &ch->id, &data, &dlen);
		if (ret)
			return ret;
		if (dlen != ch->len) {
			char hex[65];
			store_id_hex(&ch->id, hex);
			log_error("chunk %s is %zu bytes, its tree says %u", hex, dlen, ch->len);
			free(data);
			return -EBADMSG;
		}
		memcpy(dst, (char *)data + in, n);
		if (c)
			cache_put(c, &ch->id, data, dlen);
		else
			free(data);
	}
	return (ssize_t)len;
}

/* ---- restore ---- */

struct rjob {
	char *path;                   /* absolute path of the file made by the walk */
	struct tree_entry e;          /* owned copy */
	struct rjob *next;
};

struct dirfix {
	char *path;
	struct tree_entry e;          /* attributes only (xattrs owned) */
};

struct restorer {
	struct repo *r;
	const struct restore_opts *o;
	struct restore_stats st;      /* protected by lock */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct rjob *head, *tail;     /* protected by lock */
	size_t queued;                /* protected by lock */
	bool done;                    /* protected by lock: no more jobs */
	int err;                      /* protected by lock: the first error */
	struct dirfix *dirs;          /* walk thread only */
	size_t ndirs, capdirs;
	struct {
		uint64_t ident;
		char *path;
	} *links;                     /* walk thread only: first path of multi-link files */
	size_t nlinks, caplinks;
};

static void set_err(struct restorer *rs, int err)
{
	pthread_mutex_lock(&rs->lock);
	if (!rs->err)
		rs->err = err;
	rs->st.errors++;
	pthread_cond_broadcast(&rs->cond);
	pthread_mutex_unlock(&rs->lock);
}

static int get_err(struct restorer *rs)
{
	pthread_mutex_lock(&rs->lock);
	int err = rs->err;
	pthread_mutex_unlock(&rs->lock);
	return err;
}

/* Owner, mode, xattrs, times of PATH (FD >= 0: through the fd). */
static int apply_attrs(const char *path, int fd, const struct tree_entry *e)
{
	struct timespec ts[2] = {
		{ .tv_sec = e->mtime_sec, .tv_nsec = e->mtime_nsec },
		{ .tv_sec = e->mtime_sec, .tv_nsec = e->mtime_nsec },
	};
	bool link = e->type == TT_SYMLINK;

	if (fd >= 0 ? fchown(fd, e->uid, e->gid) : lchown(path, e->uid, e->gid))
		return -errno;
	if (!link && (fd >= 0 ? fchmod(fd, e->mode) : chmod(path, e->mode)))
		return -errno;
	for (uint32_t i = 0; i < e->nxattr; i++) {
		const struct tree_xattr *x = &e->xattr[i];
		int rc = fd >= 0 ? fsetxattr(fd, x->name, x->value, x->len, 0)
				 : lsetxattr(path, x->name, x->value, x->len, 0);
		if (rc)
			return -errno;
	}
	if (fd >= 0 ? futimens(fd, ts) : utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW))
		return -errno;
	return 0;
}

static int copy_entry(const struct tree_entry *src, struct tree_entry *dst, bool with_body)
{
	*dst = *src;
	dst->name = NULL;
	dst->target = NULL;
	dst->xattr = NULL;
	dst->chunk = NULL;
	dst->nchunk = with_body ? src->nchunk : 0;
	if (src->nxattr) {
		dst->xattr = calloc(src->nxattr, sizeof(*dst->xattr));
		if (!dst->xattr)
			return -ENOMEM;
		for (uint32_t i = 0; i < src->nxattr; i++) {
			dst->xattr[i].name = strdup(src->xattr[i].name);
			dst->xattr[i].value = malloc(src->xattr[i].len ? src->xattr[i].len : 1);
			if (!dst->xattr[i].name || !dst->xattr[i].value)
				return -ENOMEM;
			memcpy(dst->xattr[i].value, src->xattr[i].value, src->xattr[i].len);
			dst->xattr[i].len = src->xattr[i].len;
		}
	}
	if (with_body && src->nchunk) {
		dst->chunk = malloc(src->nchunk * sizeof(*dst->chunk));
		if (!dst->chunk)
			return -ENOMEM;
		memcpy(dst->chunk, src->chunk, src->nchunk * sizeof(*dst->chunk));
	}
	return 0;
}

/* Writes the content of the regular file of JOB and its attributes. */
static int restore_file(struct restorer *rs, struct rjob *job)
{
	const struct tree_entry *e = &job->e;
	int fd = open(job->path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
	int ret = 0;

	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)e->size)) {
		ret = -errno;
		goto out;
	}
	for (uint32_t i = 0; i < e->nchunk; i++) {
		void *data;
		size_t len;
		ret = repo_get(rs->r, &e->chunk[i].id, &data, &len);
		if (ret) {
			char hex[65], pack[65] = "?";
			store_id_hex(&e->chunk[i].id, hex);
			repo_blob_pack(rs->r, &e->chunk[i].id, pack);
			log_error("restore: %s: chunk %s (pack %s) at offset %llu: %s", job->path, hex,
				  pack, (unsigned long long)e->chunk[i].offset,
				  ret == -ENOENT ? "missing" : ret == -EBADMSG ? "damaged" : strerror(-ret));
			goto out;
		}
		if (len != e->chunk[i].len) {
			free(data);
			ret = -EBADMSG;
			goto out;
		}
		ret = pwrite_all(fd, data, len, (off_t)e->chunk[i].offset);
		free(data);
		if (ret)
			goto out;
	}
	ret = apply_attrs(job->path, fd, e);
	pthread_mutex_lock(&rs->lock);
	rs->st.files++;
	rs->st.bytes += e->size;
	pthread_mutex_unlock(&rs->lock);
out:
	close(fd);
	if (ret && ret != -EBADMSG && ret != -ENOENT)
		log_error("restore: %s: %s", job->path, strerror(-ret));
	return ret;
}

static void *worker(void *arg)
{
	struct restorer *rs = arg;

	for (;;) {
		pthread_mutex_lock(&rs->lock);
		while (!rs->head && !rs->done && !rs->err)
			pthread_cond_wait(&rs->cond, &rs->lock);
		struct rjob *job = rs->err ? NULL : rs->head;
		if (job) {
			rs->head = job->next;
			if (!rs->head)
				rs->tail = NULL;
			rs->queued--;
			pthread_cond_broadcast(&rs->cond);
		}
		pthread_mutex_unlock(&rs->lock);
		if (!job)
			return NULL;
		int ret = restore_file(rs, job);
		if (ret)
			set_err(rs, ret);
		free(job->path);
		tree_entry_release(&job->e);
		free(job);
	}
}

static int queue_file(struct restorer *rs, const char *path, const struct tree_entry *e)
{
	struct rjob *job = calloc(1, sizeof(*job));
	if (!job)
		return -ENOMEM;
	job->path = strdup(path);
	int ret = job->path ? copy_entry(e, &job->e, true) : -ENOMEM;
	if (ret) {
		free(job->path);
		tree_entry_release(&job->e);
		free(job);
		return ret;
	}
	pthread_mutex_lock(&rs->lock);
	while (rs->queued >= 1024 && !rs->err)
		pthread_cond_wait(&rs->cond, &rs->lock);
	if (rs->tail)
		rs->tail->next = job;
	else
		rs->head = job;
	rs->tail = job;
	rs->queued++;
	pthread_cond_broadcast(&rs->cond);
	pthread_mutex_unlock(&rs->lock);
	return 0;
}

static const char *first_link(struct restorer *rs, uint64_t ident)
{
	for (size_t i = 0; i < rs->nlinks; i++)
		if (rs->links[i].ident == ident)
			return rs->links[i].path;
	return NULL;
}

static int restore_tree(struct restorer *rs, const struct store_id *id, char *path, size_t plen);

static int restore_entry(struct restorer *rs, const struct tree_entry *e, char *path, size_t plen)
{
	int ret = 0;

	switch (e->type) {
	case TT_DIR: {
		if (mkdir(path, 0700) && errno != EEXIST)
			return -errno;
		ret = restore_tree(rs, &e->subtree, path, plen);
		if (ret)
			return ret;
		if (rs->ndirs == rs->capdirs) {
			size_t cap = rs->capdirs ? rs->capdirs * 2 : 64;
			struct dirfix *d = realloc(rs->dirs, cap * sizeof(*d));
			if (!d)
				return -ENOMEM;
			rs->dirs = d;
			rs->capdirs = cap;
		}
		struct dirfix *df = &rs->dirs[rs->ndirs];
		memset(df, 0, sizeof(*df));
		df->path = strdup(path);
		if (!df->path)
			return -ENOMEM;
		rs->ndirs++;
		ret = copy_entry(e, &df->e, false);
		pthread_mutex_lock(&rs->lock);
		rs->st.dirs++;
		pthread_mutex_unlock(&rs->lock);
		return ret;
	}
	case TT_REG: {
		if (e->nlink > 1) {
			const char *first = first_link(rs, e->ident);
			if (first) {
				if (link(first, path))
					return -errno;
				return 0;
			}
			if (rs->nlinks == rs->caplinks) {
				size_t cap = rs->caplinks ? rs->caplinks * 2 : 64;
				void *l = realloc(rs->links, cap * sizeof(*rs->links));
				if (!l)
					return -ENOMEM;
				rs->links = l;
				rs->caplinks = cap;
			}
			rs->links[rs->nlinks].ident = e->ident;
			rs->links[rs->nlinks].path = strdup(path);
			if (!rs->links[rs->nlinks].path)
				return -ENOMEM;
			rs->nlinks++;
		}
		int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
		if (fd < 0)
			return -errno;
		close(fd);
		return queue_file(rs, path, e);
	}
	case TT_SYMLINK:
		if (symlink(e->target, path))
			return -errno;
		break;
	case TT_CHR:
	case TT_BLK:
	case TT_FIFO:
	case TT_SOCK: {
		mode_t fmt = e->type == TT_CHR ? S_IFCHR : e->type == TT_BLK ? S_IFBLK :
			     e->type == TT_FIFO ? S_IFIFO : S_IFSOCK;
		if (mknod(path, fmt | 0600, (dev_t)e->rdev))
			return -errno;
		break;
	}
	default:
		return -EBADMSG;
	}
	ret = apply_attrs(path, -1, e);
	pthread_mutex_lock(&rs->lock);
	rs->st.others++;
	pthread_mutex_unlock(&rs->lock);
	return ret;
}

static int restore_tree(struct restorer *rs, const struct store_id *id, char *path, size_t plen)
{
	struct tree t;
	int ret = tree_load(rs->r, id, &t);

	if (ret) {
		log_error("restore: the directory %s cannot be read from the snapshot", path);
		return ret;
	}
	for (uint32_t i = 0; i < t.n && !ret; i++) {
		size_t nl = strlen(t.e[i].name);
		if (plen + 1 + nl >= PATH_MAX) {
			ret = -ENAMETOOLONG;
			break;
		}
		path[plen] = '/';
		memcpy(path + plen + 1, t.e[i].name, nl + 1);
		ret = restore_entry(rs, &t.e[i], path, plen + 1 + nl);
		if (ret && ret != -ENOMEM && ret != -EBADMSG && ret != -ENOENT)
			log_error("restore: %s: %s", path, strerror(-ret));
		path[plen] = 0;
		if (!ret)
			ret = get_err(rs);
	}
	tree_release(&t);
	return ret;
}

int snap_restore(struct repo *r, const struct snap_info *s, const char *target,
		 const struct restore_opts *o, struct restore_stats *st)
{
	struct restorer rs = { .r = r, .o = o };
	unsigned nthreads = o && o->threads ? o->threads : 4;
	pthread_t th[64];
	unsigned started = 0;
	char *path = malloc(PATH_MAX);
	int ret;

	if (!path)
		return -ENOMEM;
	if (nthreads > ARRAY_SIZE(th))
		nthreads = ARRAY_SIZE(th);
	if (mkdir(target, 0700) && errno != EEXIST) {
		free(path);
		return -errno;
	}
	pthread_mutex_init(&rs.lock, NULL);
	pthread_cond_init(&rs.cond, NULL);
	for (; started < nthreads; started++)
		if (pthread_create(&th[started], NULL, worker, &rs))
			break;
	if (!started) {
		ret = -EAGAIN;
		goto out;
	}
	snprintf(path, PATH_MAX, "%s", target);
	ret = restore_tree(&rs, &s->tree, path, strlen(path));

	pthread_mutex_lock(&rs.lock);
	rs.done = true;
	pthread_cond_broadcast(&rs.cond);
	pthread_mutex_unlock(&rs.lock);
	for (unsigned i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	if (!ret)
		ret = rs.err;

	/* directories last, deepest first (the walk recorded them after their contents) */
	for (size_t i = 0; i < rs.ndirs && !ret; i++) {
		ret = apply_attrs(rs.dirs[i].path, -1, &rs.dirs[i].e);
		if (ret)
			log_error("restore: %s: %s", rs.dirs[i].path, strerror(-ret));
	}
	if (!ret) {
		struct tree_entry root = {
			.type = TT_DIR, .mode = s->root_mode, .uid = s->root_uid, .gid = s->root_gid,
			.mtime_sec = s->root_mtime_sec, .mtime_nsec = s->root_mtime_nsec,
		};
		if (s->root_mode || s->root_mtime_sec)
			ret = apply_attrs(target, -1, &root);
	}
	if (st)
		*st = rs.st;
out:
	/* a worker may still hold queued jobs when the walk failed */
	while (rs.head) {
		struct rjob *j = rs.head;
		rs.head = j->next;
		free(j->path);
		tree_entry_release(&j->e);
		free(j);
	}
	for (size_t i = 0; i < rs.ndirs; i++) {
		free(rs.dirs[i].path);
		tree_entry_release(&rs.dirs[i].e);
	}
	free(rs.dirs);
	for (size_t i = 0; i < rs.nlinks; i++)
		free(rs.links[i].path);
	free(rs.links);
	pthread_cond_destroy(&rs.cond);
	pthread_mutex_destroy(&rs.lock);
	free(path);
	return ret;
}
