/*
 * snapshot.c - the snapshot mount: one snapshot of a repository served as a
 * read-only FUSE filesystem, file data read on demand.  What it reads is
 * described in docs/format.md "The snapshot repository"; how the mount works
 * in docs/design.md "The snapshot mount".
 *
 * Invariants:
 * - Nothing ever changes.  The kernel may cache entries, attributes, pages
 *   and directory listings for a day, and every change is refused (EROFS).
 * - A node holds its own copy of its tree entry and lives while the kernel's
 *   lookup count is non-zero (LOOKUP and READDIRPLUS add one, FORGET takes
 *   them back).  Its FUSE node id is its address; the root is FUSE_ROOT_ID.
 *   Names of one object (hard links: one ident, same attributes and data)
 *   share one node, and st_ino is the entry's ident, so hard links look like
 *   hard links.
 * - Decoded trees are kept in a cache of SNAP_TREES trees, least recently
 *   used first out.  A tree somebody uses (a request, an open directory) is
 *   pinned and only freed once nobody does.
 * - File data goes through one chunk cache of SNAP_CHUNK_CACHE bytes shared
 *   by every reader.  A damaged or missing blob is EIO to the reader and a
 *   log line naming the path, the chunk and its pack.
 */
#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "../common/common.h"
#include "../store/store.h"
#include "fs.h"

#define SNAP_TIMEOUT 86400.0          /* nothing changes: cache for a day */
#define SNAP_TREES 256                /* decoded trees kept when unused */
#define SNAP_TREE_BUCKETS 512
#define SNAP_CHUNK_CACHE (64u << 20)
#define SNAP_THREADS 8

struct snode {
	struct tree_entry e;          /* owned copy; the root's is made from the snap_info */
	char *path;                   /* "/a/b" for messages: the first name it was found by */
	uint64_t ino;                 /* st_ino: the entry's ident (the root: FUSE_ROOT_ID) */
	uint64_t parent_ino;          /* st_ino of the directory it was first found in */
	uint64_t blocks;              /* 512-byte units of data held (holes hold none) */
	uint64_t nlookup;             /* protected by snapfs.lock */
	struct snode *next;           /* ident hash chain; protected by snapfs.lock */
};

struct ctree {
	struct store_id id;
	struct tree t;
	unsigned int refs;            /* users; protected by snapfs.lock, as are the links */
	struct ctree *prev, *next;    /* LRU list, most recent first */
	struct ctree *hnext;          /* hash chain */
};

struct snapfs {
	struct repo *r;
	const struct snap_info *s;
	struct chunk_cache *chunks;
	struct snode root;
	pthread_mutex_t lock;
	struct snode **nodes;         /* by ident; protected by lock */
	size_t nnodes, nbuckets;      /* protected by lock */
	struct ctree *tbucket[SNAP_TREE_BUCKETS]; /* protected by lock, as is below */
	struct ctree *lru_head, *lru_tail;
	size_t ntrees;
};

static struct snapfs *snapfs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static struct snode *node_of(fuse_req_t req, fuse_ino_t ino)
{
	struct snapfs *fs = snapfs_of(req);

	return ino == FUSE_ROOT_ID ? &fs->root : (struct snode *)(uintptr_t)ino;
}

static fuse_ino_t node_id(struct snapfs *fs, struct snode *n)
{
	return n == &fs->root ? FUSE_ROOT_ID : (fuse_ino_t)(uintptr_t)n;
}

/* Every error a damaged repository gives is EIO to the reader. */
static int reader_errno(int ret)
{
	return ret == -ENOENT || ret == -EBADMSG || ret == -EPROTONOSUPPORT ? -EIO : ret;
}

/* ---- the tree cache ---- */

static size_t tree_bucket(const struct store_id *id)
{
	uint64_t h;

	memcpy(&h, id->b, sizeof(h));
	return (size_t)(h % SNAP_TREE_BUCKETS);
}

static void lru_unlink(struct snapfs *fs, struct ctree *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		fs->lru_head = c->next;
	if (c->next)
		c->next->prev = c->prev;
	else
		fs->lru_tail = c->prev;
	c->prev = c->next = NULL;
}

static void lru_push(struct snapfs *fs, struct ctree *c)
{
	c->prev = NULL;
	c->next = fs->lru_head;
	if (fs->lru_head)
		fs->lru_head->prev = c;
	fs->lru_head = c;
	if (!fs->lru_tail)
		fs->lru_tail = c;
}

static struct ctree *tree_cached(struct snapfs *fs, const struct store_id *id)
{
	for (struct ctree *c = fs->tbucket[tree_bucket(id)]; c; c = c->hnext)
		if (!memcmp(c->id.b, id->b, STORE_ID_LEN))
			return c;
	return NULL;
}

/*
 * Unlinks unused trees, oldest first, while more than SNAP_TREES are
 * cached; returns them as a list on ->next for the caller to free without
 * the lock.  Called with fs->lock held.
 */
static struct ctree *tree_evict(struct snapfs *fs)
{
	struct ctree *out = NULL, *c = fs->lru_tail;

	while (c && fs->ntrees > SNAP_TREES) {
		struct ctree *prev = c->prev;
		if (!c->refs) {
			struct ctree **pp = &fs->tbucket[tree_bucket(&c->id)];
			while (*pp != c)
				pp = &(*pp)->hnext;
			*pp = c->hnext;
			lru_unlink(fs, c);
			fs->ntrees--;
			c->next = out;
			out = c;
		}
		c = prev;
	}
	return out;
}

static void tree_free_list(struct ctree *c)
{
	while (c) {
		struct ctree *next = c->next;
		tree_release(&c->t);
		free(c);
		c = next;
	}
}

/*
 * The decoded tree ID, pinned: the caller owns one reference and gives it
 * back with tree_unpin().  Trees are loaded without the lock held; two
 * threads loading the same tree keep the first.  0 or -errno (the store
 * has logged which tree).
 */
static int tree_pin(struct snapfs *fs, const struct store_id *id, struct ctree **out)
{
	struct ctree *c, *other;
	int ret;

	pthread_mutex_lock(&fs->lock);
	c = tree_cached(fs, id);
	if (c) {
		c->refs++;
		lru_unlink(fs, c);
		lru_push(fs, c);
		pthread_mutex_unlock(&fs->lock);
		*out = c;
		return 0;
	}
	pthread_mutex_unlock(&fs->lock);

	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->id = *id;
	ret = tree_load(fs->r, id, &c->t);
	if (ret) {
		free(c);
		return ret;
	}
	c->refs = 1;
	pthread_mutex_lock(&fs->lock);
	other = tree_cached(fs, id);
	if (other) {
		other->refs++;
		pthread_mutex_unlock(&fs->lock);
		tree_release(&c->t);
		free(c);
		*out = other;
		return 0;
	}
	size_t b = tree_bucket(id);
	c->hnext = fs->tbucket[b];
	fs->tbucket[b] = c;
	lru_push(fs, c);
	fs->ntrees++;
	struct ctree *gone = tree_evict(fs);
	pthread_mutex_unlock(&fs->lock);
	tree_free_list(gone);
	*out = c;
	return 0;
}

static void tree_unpin(struct snapfs *fs, struct ctree *c)
{
	struct ctree *gone;

	pthread_mutex_lock(&fs->lock);
	c->refs--;
	gone = tree_evict(fs);
	pthread_mutex_unlock(&fs->lock);
	tree_free_list(gone);
}

/* Pins the tree of directory node DIR; logs the path on failure. */
static int dir_pin(struct snapfs *fs, struct snode *dir, struct ctree **out)
{
	int ret;

	if (dir->e.type != TT_DIR)
		return -ENOTDIR;
	ret = tree_pin(fs, &dir->e.subtree, out);
	if (ret) {
		char hex[65];
		store_id_hex(&dir->e.subtree, hex);
		log_error("snapshot mount: cannot read directory %s (tree %s): %s", dir->path, hex,
			  strerror(-ret));
	}
	return reader_errno(ret);
}

/* ---- nodes ---- */

/* A deep copy of SRC into *DST.  0 or -ENOMEM (then *DST holds nothing to free). */
static int entry_copy(struct tree_entry *dst, const struct tree_entry *src)
{
	*dst = *src;
	dst->name = NULL;
	dst->xattr = NULL;
	dst->chunk = NULL;
	dst->target = NULL;
	dst->nxattr = 0;
	dst->nchunk = 0;
	if (!(dst->name = strdup(src->name)))
		goto out_nomem;
	if (src->target && !(dst->target = strdup(src->target)))
		goto out_nomem;
	if (src->nchunk) {
		dst->chunk = malloc(src->nchunk * sizeof(*dst->chunk));
		if (!dst->chunk)
			goto out_nomem;
		memcpy(dst->chunk, src->chunk, src->nchunk * sizeof(*dst->chunk));
		dst->nchunk = src->nchunk;
	}
	if (src->nxattr) {
		dst->xattr = calloc(src->nxattr, sizeof(*dst->xattr));
		if (!dst->xattr)
			goto out_nomem;
		for (uint32_t i = 0; i < src->nxattr; i++, dst->nxattr++) {
			struct tree_xattr *x = &dst->xattr[i];
			x->name = strdup(src->xattr[i].name);
			x->value = malloc(src->xattr[i].len ? src->xattr[i].len : 1);
			if (!x->name || !x->value) {
				free(x->name);
				free(x->value);
				goto out_nomem;
			}
			memcpy(x->value, src->xattr[i].value, src->xattr[i].len);
			x->len = src->xattr[i].len;
		}
	}
	return 0;

out_nomem:
	tree_entry_release(dst);
	memset(dst, 0, sizeof(*dst));
	return -ENOMEM;
}

/* Whether node N is the object entry E describes (another name of it). */
static bool node_is(const struct snode *n, const struct tree_entry *e)
{
	const struct tree_entry *a = &n->e;

	if (a->ident != e->ident || a->type != e->type || a->mode != e->mode ||
	    a->uid != e->uid || a->gid != e->gid || a->nlink != e->nlink || a->size != e->size ||
	    a->mtime_sec != e->mtime_sec || a->mtime_nsec != e->mtime_nsec || a->rdev != e->rdev ||
	    a->nchunk != e->nchunk || a->nxattr != e->nxattr)
		return false;
	if (a->type == TT_DIR && memcmp(a->subtree.b, e->subtree.b, STORE_ID_LEN))
		return false;
	if (a->type == TT_SYMLINK && strcmp(a->target, e->target))
		return false;
	for (uint32_t i = 0; i < a->nchunk; i++)
		if (a->chunk[i].offset != e->chunk[i].offset || a->chunk[i].len != e->chunk[i].len ||
		    memcmp(a->chunk[i].id.b, e->chunk[i].id.b, STORE_ID_LEN))
			return false;
	return true;
}

static struct snode *node_find(struct snapfs *fs, const struct tree_entry *e)
{
	for (struct snode *n = fs->nodes[e->ident % fs->nbuckets]; n; n = n->next)
		if (node_is(n, e))
			return n;
	return NULL;
}

/* Doubles the ident table when it is full; best effort.  Called with fs->lock held. */
static void node_table_grow(struct snapfs *fs)
{
	size_t nb = fs->nbuckets * 2;
	struct snode **t;

	if (fs->nnodes < fs->nbuckets || !(t = calloc(nb, sizeof(*t))))
		return;
	for (size_t i = 0; i < fs->nbuckets; i++)
		for (struct snode *n = fs->nodes[i], *next; n; n = next) {
			next = n->next;
			n->next = t[n->e.ident % nb];
			t[n->e.ident % nb] = n;
		}
	free(fs->nodes);
	fs->nodes = t;
	fs->nbuckets = nb;
}

static void node_free(struct snode *n)
{
	tree_entry_release(&n->e);
	free(n->path);
	free(n);
}

/*
 * The node for entry E found in directory DIR, with one more lookup: the
 * existing node of the same object, else a new one.  The caller hands the
 * reference to the kernel (or back with node_forget).  0 or -ENOMEM.
 */
static int node_get(struct snapfs *fs, struct snode *dir, const struct tree_entry *e,
		    struct snode **out)
{
	struct snode *n, *other;
	int ret;

	pthread_mutex_lock(&fs->lock);
	n = node_find(fs, e);
	if (n) {
		n->nlookup++;
		pthread_mutex_unlock(&fs->lock);
		*out = n;
		return 0;
	}
	pthread_mutex_unlock(&fs->lock);

	n = calloc(1, sizeof(*n));
	if (!n)
		return -ENOMEM;
	ret = entry_copy(&n->e, e);
	if (ret) {
		free(n);
		return ret;
	}
	if (asprintf(&n->path, "%s/%s", dir == &fs->root ? "" : dir->path, e->name) < 0) {
		n->path = NULL;
		node_free(n);
		return -ENOMEM;
	}
	n->ino = e->ident;
	n->parent_ino = dir->ino;
	for (uint32_t i = 0; i < e->nchunk; i++)
		n->blocks += e->chunk[i].len;
	n->blocks = (n->blocks + 511) / 512;
	n->nlookup = 1;

	pthread_mutex_lock(&fs->lock);
	other = node_find(fs, e);
	if (other) {
		other->nlookup++;
		pthread_mutex_unlock(&fs->lock);
		node_free(n);
		*out = other;
		return 0;
	}
	size_t b = e->ident % fs->nbuckets;
	n->next = fs->nodes[b];
	fs->nodes[b] = n;
	fs->nnodes++;
	node_table_grow(fs);
	pthread_mutex_unlock(&fs->lock);
	*out = n;
	return 0;
}

/* Takes COUNT lookups from N and frees it at zero.  The root is never freed. */
static void node_forget(struct snapfs *fs, struct snode *n, uint64_t count)
{
	bool gone = false;

	if (n == &fs->root)
		return;
	pthread_mutex_lock(&fs->lock);
	n->nlookup = count < n->nlookup ? n->nlookup - count : 0;
	if (!n->nlookup) {
		struct snode **pp = &fs->nodes[n->e.ident % fs->nbuckets];
		while (*pp && *pp != n)
			pp = &(*pp)->next;
		if (*pp)
			*pp = n->next;
		fs->nnodes--;
		gone = true;
	}
	pthread_mutex_unlock(&fs->lock);
	if (gone)
		node_free(n);
}

static mode_t type_bits(uint8_t type)
{
	switch (type) {
	case TT_DIR: return S_IFDIR;
	case TT_SYMLINK: return S_IFLNK;
	case TT_CHR: return S_IFCHR;
	case TT_BLK: return S_IFBLK;
	case TT_FIFO: return S_IFIFO;
	case TT_SOCK: return S_IFSOCK;
	default: return S_IFREG;
	}
}

static void node_stat(const struct snode *n, struct stat *st)
{
	const struct tree_entry *e = &n->e;

	memset(st, 0, sizeof(*st));
	st->st_ino = n->ino;
	st->st_mode = type_bits(e->type) | (e->mode & 07777);
	/* Trees do not record how many subdirectories a directory has. */
	st->st_nlink = e->type == TT_DIR ? 2 : e->nlink ? e->nlink : 1;
	st->st_uid = e->uid;
	st->st_gid = e->gid;
	st->st_rdev = (dev_t)e->rdev;
	if (e->type == TT_DIR)
		st->st_size = 4096;
	else if (e->type == TT_SYMLINK && e->target)
		st->st_size = (off_t)strlen(e->target);
	else
		st->st_size = (off_t)e->size;
	st->st_blocks = e->type == TT_DIR ? 8 : (blkcnt_t)n->blocks;
	st->st_blksize = 4096;
	st->st_mtim.tv_sec = e->mtime_sec;
	st->st_mtim.tv_nsec = e->mtime_nsec;
	st->st_atim = st->st_mtim;
	st->st_ctim = st->st_mtim;
}

static void fill_entry(struct snapfs *fs, struct snode *n, struct fuse_entry_param *fe)
{
	memset(fe, 0, sizeof(*fe));
	fe->ino = node_id(fs, n);
	fe->generation = 1;
	fe->attr_timeout = SNAP_TIMEOUT;
	fe->entry_timeout = SNAP_TIMEOUT;
	node_stat(n, &fe->attr);
}

/* ---- requests ---- */

static void smnt_init(void *userdata, struct fuse_conn_info *conn)
{
	unsigned int want = FUSE_CAP_ASYNC_READ | FUSE_CAP_PARALLEL_DIROPS | FUSE_CAP_POSIX_ACL |
			    FUSE_CAP_CACHE_SYMLINKS | FUSE_CAP_READDIRPLUS |
			    FUSE_CAP_READDIRPLUS_AUTO;

	(void)userdata;
	conn->want |= want & conn->capable;
	/* Nothing changes: no writeback, no revalidating pages, no lock emulation needed. */
	conn->want &= ~(FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_AUTO_INVAL_DATA);
	conn->max_readahead = 1 << 20;
	/* max_write also sets max_pages, the size of READ requests: 1 MiB, several chunks. */
	conn->max_write = 1 << 20;
}

static void smnt_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct snapfs *fs = snapfs_of(req);
	struct snode *dir = node_of(req, parent), *n;
	struct fuse_entry_param fe;
	struct ctree *t;
	const struct tree_entry *e;
	int ret;

	ret = dir_pin(fs, dir, &t);
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	e = tree_find(&t->t, name);
	if (!e) {
		tree_unpin(fs, t);
		/* a negative entry, cached as long as the positive ones */
		memset(&fe, 0, sizeof(fe));
		fe.entry_timeout = SNAP_TIMEOUT;
		fuse_reply_entry(req, &fe);
		return;
	}
	ret = node_get(fs, dir, e, &n);
	tree_unpin(fs, t);
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	fill_entry(fs, n, &fe);
	if (fuse_reply_entry(req, &fe))
		node_forget(fs, n, 1);
}

static void smnt_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	node_forget(snapfs_of(req), node_of(req, ino), nlookup);
	fuse_reply_none(req);
}

static void smnt_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	for (size_t i = 0; i < count; i++)
		node_forget(snapfs_of(req), node_of(req, forgets[i].ino), forgets[i].nlookup);
	fuse_reply_none(req);
}

static void smnt_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;

	(void)fi;
	node_stat(node_of(req, ino), &st);
	fuse_reply_attr(req, &st, SNAP_TIMEOUT);
}

static void smnt_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct snapfs *fs = snapfs_of(req);
	struct ctree *t;
	int ret;

	if ((fi->flags & O_ACCMODE) != O_RDONLY) {
		fuse_reply_err(req, EROFS);
		return;
	}
	ret = dir_pin(fs, node_of(req, ino), &t);
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	/* the listing never changes: let the kernel keep it */
	fi->fh = (uint64_t)(uintptr_t)t;
	fi->keep_cache = 1;
	fi->cache_readdir = 1;
	if (fuse_reply_open(req, fi))
		tree_unpin(fs, t);
}

/*
 * Directory offsets: 0 is the start, "." ends at 1, ".." at 2 and tree
 * entry I at I + 3.  The tree is pinned by the open directory, so an
 * offset means the same entry for as long as it is open.
 */
static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi, bool plus)
{
	struct snapfs *fs = snapfs_of(req);
	struct snode *dir = node_of(req, ino);
	const struct tree *t = &((struct ctree *)(uintptr_t)fi->fh)->t;
	char *buf = malloc(size);
	size_t pos = 0;
	int ret = 0;

	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	for (uint64_t i = off < 0 ? 0 : (uint64_t)off; i < (uint64_t)t->n + 2; i++) {
		struct fuse_entry_param fe = { 0 };
		const struct tree_entry *e = NULL;
		struct snode *n = NULL;
		const char *name;
		size_t need;

		if (i < 2) {
			name = i ? ".." : ".";
			fe.attr.st_ino = i ? dir->parent_ino : dir->ino;
			fe.attr.st_mode = S_IFDIR;
		} else {
			e = &t->e[i - 2];
			name = e->name;
			fe.attr.st_ino = e->ident;
			fe.attr.st_mode = type_bits(e->type);
		}
		if (plus && e) {
			ret = node_get(fs, dir, e, &n);
			if (ret)
				break;
			fill_entry(fs, n, &fe);
		}
		if (plus)
			need = fuse_add_direntry_plus(req, buf + pos, size - pos, name, &fe,
						      (off_t)(i + 1));
		else
			need = fuse_add_direntry(req, buf + pos, size - pos, name, &fe.attr,
						 (off_t)(i + 1));
		if (need > size - pos) {
			if (n)
				node_forget(fs, n, 1);
			break;
		}
		pos += need;
	}
	if (ret && !pos)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_buf(req, buf, pos);
	free(buf);
}

static void smnt_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			 struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, fi, false);
}

static void smnt_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			     struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, fi, true);
}

static void smnt_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	tree_unpin(snapfs_of(req), (struct ctree *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

static void smnt_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct snode *n = node_of(req, ino);

	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (n->e.type == TT_DIR) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	fi->keep_cache = 1;
	fuse_reply_open(req, fi);
}

/*
 * Logs which chunk of node N in [OFF, OFF+LEN) made a read fail with RET:
 * the first one missing from the index or failing to read, with its pack.
 */
static void log_read_error(struct snapfs *fs, const struct snode *n, uint64_t off, size_t len,
			   int ret)
{
	const struct tree_entry *e = &n->e;

	for (uint32_t i = 0; i < e->nchunk; i++) {
		const struct tree_chunk *c = &e->chunk[i];
		char hex[65], pack[65];
		void *data;
		size_t dlen;
		int r;

		if (c->offset + c->len <= off || c->offset >= off + len)
			continue;
		store_id_hex(&c->id, hex);
		if (!repo_has(fs->r, &c->id)) {
			log_error("snapshot mount: %s: chunk %s (file offset %llu) is not in the repository",
				  n->path, hex, (unsigned long long)c->offset);
			return;
		}
		r = repo_get(fs->r, &c->id, &data, &dlen);
		if (!r && dlen != c->len)
			r = -EBADMSG;
		if (!r) {
			free(data);
			continue;
		}
		if (repo_blob_pack(fs->r, &c->id, pack))
			strcpy(pack, "(unknown)");
		log_error("snapshot mount: %s: chunk %s (file offset %llu) in pack %s cannot be read: %s",
			  n->path, hex, (unsigned long long)c->offset, pack, strerror(-r));
		return;
	}
	log_error("snapshot mount: %s: reading %zu bytes at %llu failed: %s", n->path, len,
		  (unsigned long long)off, strerror(-ret));
}

static void smnt_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		      struct fuse_file_info *fi)
{
	struct snapfs *fs = snapfs_of(req);
	struct snode *n = node_of(req, ino);
	char *buf;
	ssize_t got;

	(void)fi;
	if (off < 0 || n->e.type != TT_REG) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	buf = malloc(size ? size : 1);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	got = snap_read_file(fs->r, fs->chunks, &n->e, buf, size, (uint64_t)off);
	if (got < 0) {
		log_read_error(fs, n, (uint64_t)off, size, (int)got);
		fuse_reply_err(req, -reader_errno((int)got));
	} else {
		fuse_reply_buf(req, buf, (size_t)got);
	}
	free(buf);
}

/*
 * SEEK_DATA and SEEK_HOLE from the chunk list: chunks are the data, gaps
 * between them (and after the last) the holes.
 */
static void smnt_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		       struct fuse_file_info *fi)
{
	const struct tree_entry *e = &node_of(req, ino)->e;
	uint64_t pos = (uint64_t)off;
	size_t lo = 0, hi = e->nchunk;

	(void)fi;
	if (whence != SEEK_DATA && whence != SEEK_HOLE) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (off < 0 || pos >= e->size) {
		fuse_reply_err(req, ENXIO);
		return;
	}
	/* the first chunk that ends after POS */
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (e->chunk[mid].offset + e->chunk[mid].len <= pos)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (whence == SEEK_DATA) {
		if (lo == e->nchunk) {
			fuse_reply_err(req, ENXIO);
			return;
		}
		fuse_reply_lseek(req, (off_t)(e->chunk[lo].offset > pos ? e->chunk[lo].offset : pos));
		return;
	}
	if (lo == e->nchunk || e->chunk[lo].offset > pos) {
		fuse_reply_lseek(req, off);
		return;
	}
	uint64_t end = e->chunk[lo].offset + e->chunk[lo].len;
	for (size_t i = lo + 1; i < e->nchunk && e->chunk[i].offset == end; i++)
		end += e->chunk[i].len;
	fuse_reply_lseek(req, (off_t)(end < e->size ? end : e->size));
}

static void smnt_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

static void smnt_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct snode *n = node_of(req, ino);

	if (n->e.type != TT_SYMLINK || !n->e.target)
		fuse_reply_err(req, EINVAL);
	else
		fuse_reply_readlink(req, n->e.target);
}

static void smnt_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	const struct tree_entry *e = &node_of(req, ino)->e;

	for (uint32_t i = 0; i < e->nxattr; i++) {
		const struct tree_xattr *x = &e->xattr[i];
		if (strcmp(x->name, name))
			continue;
		if (!size)
			fuse_reply_xattr(req, x->len);
		else if (size < x->len)
			fuse_reply_err(req, ERANGE);
		else
			fuse_reply_buf(req, x->value, x->len);
		return;
	}
	fuse_reply_err(req, ENODATA);
}

static void smnt_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	const struct tree_entry *e = &node_of(req, ino)->e;
	size_t total = 0, pos = 0;
	char *buf;

	for (uint32_t i = 0; i < e->nxattr; i++)
		total += strlen(e->xattr[i].name) + 1;
	if (!size) {
		fuse_reply_xattr(req, total);
		return;
	}
	if (size < total) {
		fuse_reply_err(req, ERANGE);
		return;
	}
	buf = malloc(total ? total : 1);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	for (uint32_t i = 0; i < e->nxattr; i++) {
		size_t l = strlen(e->xattr[i].name) + 1;
		memcpy(buf + pos, e->xattr[i].name, l);
		pos += l;
	}
	fuse_reply_buf(req, buf, total);
	free(buf);
}

static void smnt_statfs(fuse_req_t req, fuse_ino_t ino)
{
	const struct snap_info *s = snapfs_of(req)->s;
	struct statvfs sv = { 0 };

	(void)ino;
	sv.f_bsize = 4096;
	sv.f_frsize = 4096;
	sv.f_blocks = (fsblkcnt_t)((s->bytes + 4095) / 4096);
	sv.f_files = (fsfilcnt_t)s->files;
	sv.f_namemax = NAME_MAX;
	fuse_reply_statfs(req, &sv);
}

static void smnt_access(fuse_req_t req, fuse_ino_t ino, int mask)
{
	(void)ino;
	fuse_reply_err(req, mask & W_OK ? EROFS : 0);
}

/* ---- every change: EROFS ---- */

static void smnt_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
			 struct fuse_file_info *fi)
{
	fuse_reply_err(req, EROFS);
}

static void smnt_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		       dev_t rdev)
{
	fuse_reply_err(req, EROFS);
}

static void smnt_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	fuse_reply_err(req, EROFS);
}

static void smnt_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	fuse_reply_err(req, EROFS);
}

static void smnt_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	fuse_reply_err(req, EROFS);
}

static void smnt_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
			fuse_ino_t newparent, const char *newname, unsigned int flags)
{
	fuse_reply_err(req, EROFS);
}

static void smnt_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	fuse_reply_err(req, EROFS);
}

static void smnt_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
			struct fuse_file_info *fi)
{
	fuse_reply_err(req, EROFS);
}

static void smnt_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	fuse_reply_err(req, EROFS);
}

static void smnt_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
			  size_t size, int flags)
{
	fuse_reply_err(req, EROFS);
}

static void smnt_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	fuse_reply_err(req, EROFS);
}

static void smnt_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
			   struct fuse_file_info *fi)
{
	fuse_reply_err(req, EROFS);
}

static const struct fuse_lowlevel_ops smnt_ops = {
	.init = smnt_init,
	.lookup = smnt_lookup,
	.forget = smnt_forget,
	.forget_multi = smnt_forget_multi,
	.getattr = smnt_getattr,
	.opendir = smnt_opendir,
	.readdir = smnt_readdir,
	.readdirplus = smnt_readdirplus,
	.releasedir = smnt_releasedir,
	.open = smnt_open,
	.read = smnt_read,
	.lseek = smnt_lseek,
	.release = smnt_release,
	.readlink = smnt_readlink,
	.getxattr = smnt_getxattr,
	.listxattr = smnt_listxattr,
	.statfs = smnt_statfs,
	.access = smnt_access,
	.setattr = smnt_setattr,
	.mknod = smnt_mknod,
	.mkdir = smnt_mkdir,
	.unlink = smnt_unlink,
	.rmdir = smnt_unlink,
	.symlink = smnt_symlink,
	.rename = smnt_rename,
	.link = smnt_link,
	.create = smnt_create,
	.write = smnt_write,
	.setxattr = smnt_setxattr,
	.removexattr = smnt_removexattr,
	.fallocate = smnt_fallocate,
};

/* ---- mounting and serving ---- */

static int snapfs_init(struct snapfs *fs, struct repo *r, const struct snap_info *s)
{
	memset(fs, 0, sizeof(*fs));
	fs->r = r;
	fs->s = s;
	fs->nbuckets = 1024;
	fs->nodes = calloc(fs->nbuckets, sizeof(*fs->nodes));
	fs->chunks = chunk_cache_new(SNAP_CHUNK_CACHE);
	fs->root.path = strdup("/");
	fs->root.e.name = strdup("");
	if (!fs->nodes || !fs->chunks || !fs->root.path || !fs->root.e.name) {
		free(fs->nodes);
		chunk_cache_free(fs->chunks);
		free(fs->root.path);
		free(fs->root.e.name);
		return -ENOMEM;
	}
	fs->root.e.type = TT_DIR;
	fs->root.e.mode = s->root_mode & 07777;
	fs->root.e.uid = s->root_uid;
	fs->root.e.gid = s->root_gid;
	fs->root.e.mtime_sec = s->root_mtime_sec;
	fs->root.e.mtime_nsec = s->root_mtime_nsec;
	fs->root.e.subtree = s->tree;
	fs->root.ino = FUSE_ROOT_ID;
	fs->root.parent_ino = FUSE_ROOT_ID;
	fs->root.nlookup = 1;
	pthread_mutex_init(&fs->lock, NULL);
	return 0;
}

static void snapfs_release(struct snapfs *fs)
{
	/* nodes the kernel did not forget before the unmount */
	for (size_t i = 0; i < fs->nbuckets; i++)
		for (struct snode *n = fs->nodes[i], *next; n; n = next) {
			next = n->next;
			node_free(n);
		}
	free(fs->nodes);
	for (struct ctree *c = fs->lru_head, *next; c; c = next) {
		next = c->next;
		tree_release(&c->t);
		free(c);
	}
	chunk_cache_free(fs->chunks);
	tree_entry_release(&fs->root.e);
	free(fs->root.path);
	pthread_mutex_destroy(&fs->lock);
}

int fs_serve_snapshot(struct repo *r, const struct snap_info *s,
		      const struct snapmount_config *cfg)
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fuse_loop_config *loop = NULL;
	struct fuse_session *se;
	struct snapfs fs;
	struct ctree *t;
	char *opts = NULL, hex[65];
	int ret;

	ret = snapfs_init(&fs, r, s);
	if (ret)
		return ret;
	/* the root tree now: a snapshot whose root cannot be read is not mounted */
	ret = dir_pin(&fs, &fs.root, &t);
	if (ret)
		goto out_fs;
	tree_unpin(&fs, t);

	store_id_hex(&s->id, hex);
	if (asprintf(&opts, "ro,default_permissions,fsname=drfs-snapshot:%.16s,subtype=drfs%s%s",
		     hex, cfg->kernel_opts && *cfg->kernel_opts ? "," : "",
		     cfg->kernel_opts ? cfg->kernel_opts : "") < 0) {
		opts = NULL;
		ret = -ENOMEM;
		goto out_fs;
	}
	if (fuse_opt_add_arg(&args, "drfs") || fuse_opt_add_arg(&args, "-o") ||
	    fuse_opt_add_arg(&args, opts) || (cfg->debug && fuse_opt_add_arg(&args, "-d"))) {
		ret = -ENOMEM;
		goto out_args;
	}
	se = fuse_session_new(&args, &smnt_ops, sizeof(smnt_ops), &fs);
	if (!se) {
		log_error("cannot set up the FUSE session (options: %s)", opts);
		ret = -EINVAL;
		goto out_args;
	}
	if (fuse_session_mount(se, cfg->mountpoint)) {
		log_error("cannot mount on %s; check that /dev/fuse exists and the fuse module is loaded",
			  cfg->mountpoint);
		ret = -EIO;
		goto out_session;
	}
	if (cfg->ready)
		ret = cfg->ready(cfg->ready_arg);
	else if (!cfg->foreground)
		ret = fuse_daemonize(0) ? -EIO : 0;
	if (ret)
		goto out_unmount;
	if (fuse_set_signal_handlers(se)) {
		ret = -EIO;
		goto out_unmount;
	}
	loop = fuse_loop_cfg_create();
	if (!loop) {
		ret = -ENOMEM;
		goto out_signals;
	}
	/* a fixed pool: idle threads stay instead of ending after each request */
	fuse_loop_cfg_set_max_threads(loop, SNAP_THREADS);
	fuse_loop_cfg_set_idle_threads(loop, SNAP_THREADS);
	ret = fuse_session_loop_mt(se, loop);
	/* a signal's number when one ended the loop: that is a normal stop */
	if (ret > 0) {
		log_info("signal %d: unmounting %s", ret, cfg->mountpoint);
		ret = 0;
	}
	fuse_loop_cfg_destroy(loop);
out_signals:
	fuse_remove_signal_handlers(se);
out_unmount:
	fuse_session_unmount(se);
out_session:
	fuse_session_destroy(se);
out_args:
	fuse_opt_free_args(&args);
	free(opts);
out_fs:
	snapfs_release(&fs);
	return ret;
}
