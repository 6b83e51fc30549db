/*
 * build.c - building a snapshot of a tree (docs/snapshot-design.md).
 *
 * Both ways of building walk the tree's metadata (one fstatat, the xattrs
 * and, for symlinks, readlinkat per entry) and encode every directory as a
 * tree blob; they differ only in which file data they read:
 *
 *  - a scan reads and chunks every regular file;
 *  - an incremental build first reads the journal range (parent LSN, LSN]
 *    and notes, per inode, the byte ranges that WRITE, COPY, FALLOCATE and
 *    size changes touched and the objects CREATE made.  A file the journal
 *    did not touch keeps the parent's chunk list without being read; a
 *    touched file is re-chunked from the last old cut point before each
 *    touched range until the chunker cuts again at an old cut point after
 *    it (content-defined cuts resynchronise), so only the touched ranges
 *    and at most a chunk or two around each are read.
 *
 * Invariant 4: both give the same root tree id for the same tree.  This
 * holds because chunking restarts at every data extent (docs/format.md
 * "Chunking"), so the cuts of an untouched range depend only on its bytes
 * and on the position of the cut before it.  A range the journal cannot
 * vouch for (a RECOVERED record, records no longer kept) makes the build a
 * scan.
 *
 * Hard links: a file with a link count above 1 is read once per build; its
 * other names reuse the chunk list.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>

#include "../common/common.h"
#include "../journal/journal.h"
#include "store_i.h"

/* ---- the ranges the journal says changed, per inode ---- */

#define WHOLE_FILE UINT64_MAX

struct range {
	uint64_t start, end;          /* [start, end) */
};
struct dirty {
	bool all;                     /* made in the range: read it whole */
	size_t n, cap;
	struct range *r;
};

static int dirty_add(struct imap *m, uint64_t ino, uint64_t start, uint64_t end)
{
	void **slot = imap_slot(m, ino, true);
	if (!slot)
		return -ENOMEM;
	struct dirty *d = *slot;
	if (!d) {
		d = calloc(1, sizeof(*d));
		if (!d)
			return -ENOMEM;
		*slot = d;
	}
	if (start == WHOLE_FILE) {
		d->all = true;
		return 0;
	}
	if (end <= start)
		end = start + 1;
	/* merge with the last range when they touch (writes usually go forward) */
	if (d->n && d->r[d->n - 1].end >= start && d->r[d->n - 1].start <= end) {
		struct range *l = &d->r[d->n - 1];
		l->start = l->start < start ? l->start : start;
		l->end = l->end > end ? l->end : end;
		return 0;
	}
	if (d->n == d->cap) {
		size_t cap = d->cap ? d->cap * 2 : 4;
		struct range *r = realloc(d->r, cap * sizeof(*r));
		if (!r)
			return -ENOMEM;
		d->r = r;
		d->cap = cap;
	}
	d->r[d->n++] = (struct range){ start, end };
	return 0;
}

static int range_cmp(const void *a, const void *b)
{
	const struct range *x = a, *y = b;
	return x->start < y->start ? -1 : x->start > y->start;
}

/* Sorts and merges the ranges of D. */
static void dirty_finish(struct dirty *d)
{
	size_t out = 0;

	qsort(d->r, d->n, sizeof(*d->r), range_cmp);
	for (size_t i = 0; i < d->n; i++) {
		if (out && d->r[out - 1].end >= d->r[i].start) {
			if (d->r[i].end > d->r[out - 1].end)
				d->r[out - 1].end = d->r[i].end;
		} else {
			d->r[out++] = d->r[i];
		}
	}
	d->n = out;
}

/*
 * Reads the journal in DIR over [FROM, TO) into M.  Returns 0, or 1 when
 * the range cannot be used (WHY says why), or -errno.
 */
/*
 * What a journal range says: per inode, the data ranges touched (M); every
 * object a record changes (TOUCHED: its attributes or its entries may
 * differ); and for objects linked into a directory in the range, that
 * directory (UP: inode -> parent inode).  The journal names the root by
 * inode 0; here it is ROOT_INO, the backing root's inode number.
 */
struct jrange {
	struct imap *m;
	struct imap *touched;
	struct imap *up;
	uint64_t root_ino;
};

static uint64_t jino(const struct jrange *jr, const struct jfid *f)
{
	return f->ino ? f->ino : jr->root_ino;
}

static int touch(struct jrange *jr, const struct jfid *f)
{
	void **v = imap_slot(jr->touched, jino(jr, f), true);
	if (!v)
		return -ENOMEM;
	*v = (void *)1;
	return 0;
}

static int link_up(struct jrange *jr, const struct jfid *f, const struct jfid *parent)
{
	void **v = imap_slot(jr->up, jino(jr, f), true);
	if (!v)
		return -ENOMEM;
	*v = (void *)(uintptr_t)jino(jr, parent);
	return 0;
}

/* Notes what record R changes in JR.  0 or -ENOMEM. */
static int note_objects(struct jrange *jr, const struct jrec *r)
{
	static const struct jfid none = { 0, 0 };
	int ret = 0;

	switch (r->type) {
	case JR_WRITE: case JR_SETATTR: case JR_FALLOCATE: case JR_COPY:
	case JR_SETXATTR: case JR_REMOVEXATTR:
		return touch(jr, &r->fid);
	case JR_CREATE:
	case JR_LINK:
		if (!(ret = touch(jr, &r->fid)) && !(ret = touch(jr, &r->fid2)))
			ret = link_up(jr, &r->fid, &r->fid2);
		return ret;
	case JR_UNLINK:
		if (!(ret = touch(jr, &r->fid)))
			ret = touch(jr, &r->fid2);
		return ret;
	case JR_RENAME:
		if (!(ret = touch(jr, &r->fid)) && !(ret = touch(jr, &r->fid2)) &&
		    !(ret = touch(jr, &r->fid3)))
			ret = link_up(jr, &r->fid3, &r->fid2);
		if (!ret && memcmp(&r->fid4, &none, sizeof(none)) && (r->fid4.ino || r->fid4.gen)) {
			ret = touch(jr, &r->fid4);
			if (!ret && (r->xflags & RENAME_EXCHANGE))
				ret = link_up(jr, &r->fid4, &r->fid);
		}
		return ret;
	}
	return 0;
}

static int read_journal_range(const char *dir, uint64_t from, uint64_t to, struct jrange *jr,
			      char *why, size_t whylen)
{
	struct imap *m = jr->m;
	struct jreader *rd;
	struct jrec r;
	int ret = jreader_open(dir, from, &rd);

	if (ret) {
		snprintf(why, whylen, "the journal from LSN 0x%llx is not kept any more (%s)",
			 (unsigned long long)from, strerror(-ret));
		return 1;
	}
	/*
	 * The reader starts at the segment holding FROM and skips what lies
	 * before it; when that segment is gone it starts at the oldest kept, so
	 * the first record must begin exactly at FROM (or the log end there).
	 */
	bool first = true;
	for (;;) {
		ret = jreader_next(rd, &r);
		if (ret < 0)
			goto out;
		if (ret == 0) {
			if (jreader_lsn(rd) == to && (!first || from == to))
				break;
			snprintf(why, whylen, "the journal ends at LSN 0x%llx, not at 0x%llx%s%s",
				 (unsigned long long)jreader_lsn(rd), (unsigned long long)to,
				 jreader_stop(rd) ? ": " : "", jreader_stop(rd) ? jreader_stop(rd) : "");
			ret = 1;
			goto out;
		}
		if (first && r.lsn != from) {
			snprintf(why, whylen, "the journal from LSN 0x%llx is not kept any more (it starts at 0x%llx)",
				 (unsigned long long)from, (unsigned long long)r.lsn);
			ret = 1;
			goto out;
		}
		first = false;
		if (r.lsn >= to) {
			if (r.lsn == to)
				break;
			snprintf(why, whylen, "LSN 0x%llx is not a record boundary", (unsigned long long)to);
			ret = 1;
			goto out;
		}
		ret = note_objects(jr, &r);
		if (ret)
			goto out;
		switch (r.type) {
		case JR_WRITE:
		case JR_COPY:
			ret = dirty_add(m, r.fid.ino, r.offset, r.offset + r.data_len);
			break;
		case JR_FALLOCATE:
			ret = dirty_add(m, r.fid.ino, r.offset, r.offset + r.size);
			break;
		case JR_SETATTR:
			ret = (r.mask & JA_SIZE) ? dirty_add(m, r.fid.ino, r.size, WHOLE_FILE - 1) : 0;
			break;
		case JR_CREATE:
			ret = S_ISREG(r.mode) ? dirty_add(m, r.fid.ino, WHOLE_FILE, 0) : 0;
			break;
		case JR_RECOVERED:
			snprintf(why, whylen,
				 "the journal holds a recovery at LSN 0x%llx (changes without records are possible)",
				 (unsigned long long)r.lsn);
			ret = 1;
			goto out;
		default:
			ret = 0;
		}
		if (ret)
			goto out;
		if (jreader_lsn(rd) == to)
			break;
	}
	ret = 0;
out:
	jreader_close(rd);
	return ret;
}

/* ---- hashing and encoding chunks on several threads ---- */

/*
 * The walk cuts a window of file data into chunks on one thread (the
 * chunker is fast); hashing and compressing them, the expensive part, is
 * shared with worker threads, one batch (a window) at a time.  The chunks
 * are then put into the repository in file order by the walk's thread.
 */
struct cjob {
	const unsigned char *data;
	size_t len;
	uint64_t pos;                 /* file offset */
	struct store_id id;
	bool known;                   /* the repository has it: not encoded */
	void *stored;                 /* malloc'd by blob_encode */
	size_t stored_len;
	enum blob_enc enc;
	int err;
};

#define POOL_MAX 16
struct pool {
	pthread_mutex_t lock;
	pthread_cond_t work, done;
	pthread_t th[POOL_MAX];
	unsigned nthreads;
	struct repo *r;
	int level;
	struct cjob *jobs;            /* protected by lock, as is everything below */
	size_t njobs, next, busy;
	uint64_t gen;
	bool stop;
};

static void cjob_run(struct pool *p, struct cjob *j)
{
	store_hash(j->data, j->len, &j->id);
	j->known = repo_has(p->r, &j->id);
	if (!j->known)
		j->err = blob_encode(j->data, j->len, p->level, &j->stored, &j->stored_len, &j->enc);
}

/* Takes jobs of the current batch until none is left.  Called with P->lock held. */
static void pool_drain(struct pool *p)
{
	while (p->next < p->njobs) {
		struct cjob *j = &p->jobs[p->next++];
		p->busy++;
		pthread_mutex_unlock(&p->lock);
		cjob_run(p, j);
		pthread_mutex_lock(&p->lock);
		p->busy--;
	}
	if (!p->busy)
		pthread_cond_broadcast(&p->done);
}

static void *pool_worker(void *arg)
{
	struct pool *p = arg;
	uint64_t seen = 0;

	pthread_mutex_lock(&p->lock);
	for (;;) {
		while (!p->stop && p->gen == seen)
			pthread_cond_wait(&p->work, &p->lock);
		if (p->stop)
			break;
		seen = p->gen;
		pool_drain(p);
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

/* Runs the N jobs at JOBS on the pool and this thread; returns when all are done. */
static void pool_run(struct pool *p, struct cjob *jobs, size_t n)
{
	pthread_mutex_lock(&p->lock);
	p->jobs = jobs;
	p->njobs = n;
	p->next = 0;
	p->gen++;
	pthread_cond_broadcast(&p->work);
	pool_drain(p);
	while (p->busy || p->next < p->njobs)
		pthread_cond_wait(&p->done, &p->lock);
	pthread_mutex_unlock(&p->lock);
}

/* Starts NTHREADS - 1 workers (the caller is the last one). */
static void pool_start(struct pool *p, struct repo *r, unsigned nthreads)
{
	memset(p, 0, sizeof(*p));
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->work, NULL);
	pthread_cond_init(&p->done, NULL);
	p->r = r;
	p->level = repo_get_config(r)->zstd_level;
	if (nthreads > POOL_MAX)
		nthreads = POOL_MAX;
	for (unsigned i = 0; i + 1 < nthreads; i++) {
		if (pthread_create(&p->th[p->nthreads], NULL, pool_worker, p))
			break;   /* fewer helpers: slower, not wrong */
		p->nthreads++;
	}
}

static void pool_stop(struct pool *p)
{
	pthread_mutex_lock(&p->lock);
	p->stop = true;
	pthread_cond_broadcast(&p->work);
	pthread_mutex_unlock(&p->lock);
	for (unsigned i = 0; i < p->nthreads; i++)
		pthread_join(p->th[i], NULL);
	pthread_cond_destroy(&p->done);
	pthread_cond_destroy(&p->work);
	pthread_mutex_destroy(&p->lock);
}

/* ---- the builder ---- */

/* File data is read in windows of this size (a scan), or less near a change. */
#define READ_WINDOW (4u << 20)
/* A scan asks for the first PREFETCH_BYTES of the next PREFETCH_FILES files ahead. */
#define PREFETCH_FILES 32
#define PREFETCH_BYTES (1 << 20)

/* The chunk list of a file with several names, read once per build. */
struct linkinfo {
	uint64_t size;
	uint32_t n;
	struct tree_chunk c[];
};

struct builder {
	struct repo *r;
	const struct snap_build *b;
	struct chunker_params cp;
	bool incremental;
	struct imap dirty;            /* ino -> struct dirty (incremental) */
	struct imap old;              /* ino -> const struct tree_entry * of the parent */
	struct tree *old_trees;       /* the parent's trees, kept while building */
	size_t nold, capold;
	struct imap links;            /* ino -> struct linkinfo (nlink > 1), made this build */
	/*
	 * Which directories to walk (incremental): those on the way from the
	 * root to something the journal touched.  The others keep the parent's
	 * tree, unread.
	 */
	struct imap touched, up;      /* from the journal (struct jrange) */
	struct imap oldup;            /* ino -> parent directory ino, in the parent */
	struct imap olddirs;          /* directory ino -> struct olddir */
	struct imap marked;           /* directories to walk */
	struct { uint64_t ino, parent; } *multi; /* names of multi-link files in the parent */
	size_t nmulti, capmulti;
	uint64_t root_ino;
	bool walk_all;                /* an object with no known place: walk everything */
	unsigned char *buf;           /* read buffer */
	size_t buflen;
	struct pool pool;
	struct cjob *jobs;            /* one window's chunks */
	size_t jobcap;
	struct snap_build_stats st;
	uint64_t files_changed;
	char path[PATH_MAX];          /* the path being built, for messages */
	char failed_at[PATH_MAX];     /* where the build failed, once reported */
};

/* A directory of the parent snapshot: its tree and what is under it. */
struct olddir {
	struct store_id subtree;
	uint64_t files, dirs, bytes;
};

/*
 * Loads every tree of the parent snapshot under ID (the directory DIR_INO),
 * indexes its files by inode and notes where every object lives; *TOT gets
 * the files, directories and bytes under it.
 */
static int load_parent(struct builder *bd, const struct store_id *id, uint64_t dir_ino,
		       struct olddir *tot)
{
	if (bd->nold == bd->capold) {
		size_t cap = bd->capold ? bd->capold * 2 : 64;
		struct tree *t = realloc(bd->old_trees, cap * sizeof(*t));
		if (!t)
			return -ENOMEM;
		bd->old_trees = t;
		bd->capold = cap;
	}
	size_t slot = bd->nold;
	int ret = tree_load(bd->r, id, &bd->old_trees[slot]);
	if (ret)
		return ret;
	bd->nold++;
	/* the array may move while recursing: index entries through a copy of the tree */
	struct tree t = bd->old_trees[slot];
	tot->subtree = *id;
	for (uint32_t i = 0; i < t.n; i++) {
		struct tree_entry *e = &t.e[i];
		void **v = imap_slot(&bd->oldup, e->ident, true);
		if (!v)
			return -ENOMEM;
		*v = (void *)(uintptr_t)dir_ino;
		if (e->type != TT_DIR && e->nlink > 1) {
			if (bd->nmulti == bd->capmulti) {
				size_t cap = bd->capmulti ? bd->capmulti * 2 : 64;
				void *m = realloc(bd->multi, cap * sizeof(*bd->multi));
				if (!m)
					return -ENOMEM;
				bd->multi = m;
				bd->capmulti = cap;
			}
			bd->multi[bd->nmulti].ino = e->ident;
			bd->multi[bd->nmulti].parent = dir_ino;
			bd->nmulti++;
		}
		if (e->type == TT_REG) {
			v = imap_slot(&bd->old, e->ident, true);
			if (!v)
				return -ENOMEM;
			*v = e;
			tot->files++;
			tot->bytes += e->size;
		} else if (e->type == TT_DIR) {
			struct olddir *od = calloc(1, sizeof(*od));
			if (!od)
				return -ENOMEM;
			v = imap_slot(&bd->olddirs, e->ident, true);
			if (!v) {
				free(od);
				return -ENOMEM;
			}
			free(*v);
			*v = od;
			ret = load_parent(bd, &e->subtree, e->ident, od);
			if (ret)
				return ret;
			tot->files += od->files;
			tot->dirs += od->dirs + 1;
			tot->bytes += od->bytes;
		}
	}
	return 0;
}

/* Marks INO and the directories above it (in the parent, or linked in the range) to be walked. */
static int mark_up(struct builder *bd, uint64_t ino, int depth)
{
	while (!imap_get(&bd->marked, ino)) {
		void **v = imap_slot(&bd->marked, ino, true);
		if (!v)
			return -ENOMEM;
		*v = (void *)1;
		if (ino == bd->root_ino)
			return 0;
		/* every name of a multi-link file: each directory holds a copy of its entry */
		for (size_t i = 0; i < bd->nmulti; i++)
			if (bd->multi[i].ino == ino && depth < 64) {
				int ret = mark_up(bd, bd->multi[i].parent, depth + 1);
				if (ret)
					return ret;
			}
		uintptr_t p = (uintptr_t)imap_get(&bd->up, ino);
		if (!p)
			p = (uintptr_t)imap_get(&bd->oldup, ino);
		if (!p) {
			bd->walk_all = true;   /* cannot place it: look everywhere */
			return 0;
		}
		ino = p;
	}
	return 0;
}

static int map_type(mode_t m)
{
	switch (m & S_IFMT) {
	case S_IFREG: return TT_REG;
	case S_IFDIR: return TT_DIR;
	case S_IFLNK: return TT_SYMLINK;
	case S_IFCHR: return TT_CHR;
	case S_IFBLK: return TT_BLK;
	case S_IFIFO: return TT_FIFO;
	case S_IFSOCK: return TT_SOCK;
	}
	return 0;
}

static int xattr_cmp(const void *a, const void *b)
{
	return strcmp(((const struct tree_xattr *)a)->name, ((const struct tree_xattr *)b)->name);
}

/* Reads the xattrs of the object at PATH (not following a symlink) into E. */
static int read_xattrs(const char *path, struct tree_entry *e)
{
	char list[65536];
	ssize_t n = llistxattr(path, list, sizeof(list));

	if (n < 0)
		return (errno == ENOTSUP || errno == ENODATA) ? 0 : -errno;
	size_t count = 0;
	for (ssize_t i = 0; i < n; i += (ssize_t)strlen(list + i) + 1)
		count++;
	if (!count)
		return 0;
	e->xattr = calloc(count, sizeof(*e->xattr));
	if (!e->xattr)
		return -ENOMEM;
	for (ssize_t i = 0; i < n; i += (ssize_t)strlen(list + i) + 1) {
		const char *name = list + i;
		ssize_t vlen = lgetxattr(path, name, NULL, 0);
		if (vlen < 0) {
			if (errno == ENODATA)
				continue;
			return -errno;
		}
		struct tree_xattr *x = &e->xattr[e->nxattr];
		x->name = strdup(name);
		x->value = malloc(vlen ? (size_t)vlen : 1);
		if (!x->name || !x->value) {
			free(x->name);
			free(x->value);
			return -ENOMEM;
		}
		e->nxattr++;
		vlen = lgetxattr(path, name, x->value, (size_t)vlen);
		if (vlen < 0)
			return errno == ERANGE ? -EAGAIN : -errno;
		x->len = (uint32_t)vlen;
	}
	qsort(e->xattr, e->nxattr, sizeof(*e->xattr), xattr_cmp);
	return 0;
}

static int add_chunk(struct tree_entry *e, uint32_t *cap, uint64_t off, uint32_t len,
		     const struct store_id *id)
{
	if (e->nchunk == *cap) {
		uint32_t c = *cap ? *cap * 2 : 8;
		struct tree_chunk *p = realloc(e->chunk, c * sizeof(*p));
		if (!p)
			return -ENOMEM;
		e->chunk = p;
		*cap = c;
	}
	e->chunk[e->nchunk].offset = off;
	e->chunk[e->nchunk].len = len;
	e->chunk[e->nchunk].id = *id;
	e->nchunk++;
	return 0;
}

/* Makes sure BD->buf holds at least N bytes. */
static int want_buf(struct builder *bd, size_t n)
{
	if (bd->buflen >= n)
		return 0;
	unsigned char *p = realloc(bd->buf, n);
	if (!p)
		return -ENOMEM;
	bd->buf = p;
	bd->buflen = n;
	return 0;
}

/*
 * Chunks from START (a cut point: the chunker state is reset there) towards
 * REGION_END.  With OLD (the parent's chunks of this region from START on,
 * NOLD of them), stops as soon as a cut lands where an old chunk ends: from
 * there the old chunking holds again for bytes the journal did not touch.
 * *STOPPED gets the position reached.
 */
/* Hashes, encodes and puts the N chunks at BD->jobs, in order, into E. */
static int flush_jobs(struct builder *bd, struct tree_entry *e, uint32_t *cap, size_t n)
{
	int ret = 0;

	pool_run(&bd->pool, bd->jobs, n);
	for (size_t i = 0; i < n; i++) {
		struct cjob *j = &bd->jobs[i];
		bool added = false;
		if (!ret)
			ret = j->err;
		if (!ret && !j->known)
			ret = repo_put_encoded(bd->r, BLOB_DATA, &j->id, j->stored, j->stored_len,
					       j->enc, j->len, &added);
		if (!ret && added) {
			bd->st.chunks_new++;
			bd->st.chunk_bytes_new += j->len;
		}
		if (!ret)
			ret = add_chunk(e, cap, j->pos, (uint32_t)j->len, &j->id);
		free(j->stored);
		j->stored = NULL;
	}
	return ret;
}

static int chunk_span(struct builder *bd, int fd, struct tree_entry *e, uint32_t *cap,
		      uint64_t start, uint64_t region_end, const struct tree_chunk *old,
		      size_t nold, uint64_t *stopped)
{
	uint64_t pos = start;
	uint64_t wstart = start;      /* file offset of bd->buf[0] */
	size_t wlen = 0;              /* bytes of the file in bd->buf */
	size_t oi = 0, njobs = 0;
	bool resynced = false;
	/*
	 * A scan reads big windows; near a change a few chunks usually
	 * suffice before the cuts meet the old ones, so start small and grow.
	 */
	size_t wmax = READ_WINDOW > 2 * (size_t)bd->cp.max ? READ_WINDOW : 2 * (size_t)bd->cp.max;
	size_t win = old ? 2 * (size_t)bd->cp.avg : wmax;
	int ret = want_buf(bd, wmax);

	if (ret)
		return ret;
	if (bd->jobcap < wmax / bd->cp.min + 1) {
		size_t cap2 = wmax / bd->cp.min + 1;
		struct cjob *j = realloc(bd->jobs, cap2 * sizeof(*j));
		if (!j)
			return -ENOMEM;
		bd->jobs = j;
		bd->jobcap = cap2;
	}
	while (pos < region_end && !resynced) {
		size_t want = region_end - pos < bd->cp.max ? (size_t)(region_end - pos) : bd->cp.max;
		size_t cut = 0;
		for (;;) {
			size_t avail = (size_t)(wstart + wlen - pos);
			if (avail >= want) {
				cut = chunker_cut(&bd->cp, bd->buf + (pos - wstart), want);
				break;
			}
			/*
			 * Fewer bytes than a chunk may need: a cut found inside them
			 * is the cut (it depends only on the bytes before it); only
			 * when there is none must more be read.
			 */
			if (avail) {
				cut = chunker_cut(&bd->cp, bd->buf + (pos - wstart), avail);
				if (cut < avail)
					break;
			}
			/* the chunks cut so far point into the window: finish them first */
			ret = flush_jobs(bd, e, cap, njobs);
			njobs = 0;
			if (ret)
				return ret;
			/* slide the window: keep the unchunked bytes, read more */
			memmove(bd->buf, bd->buf + (pos - wstart), avail);
			wstart = pos;
			wlen = avail;
			/* never nothing: avail < want <= max <= wmax / 2 */
			size_t more = win > avail ? win - avail : win;
			if (more > wmax - avail)
				more = wmax - avail;
			win = win * 2 < wmax ? win * 2 : wmax;
			if (more > region_end - (pos + avail))
				more = (size_t)(region_end - (pos + avail));
			ret = pread_all(fd, bd->buf + avail, more, (off_t)(pos + avail));
			if (ret)
				return ret;
			wlen += more;
			bd->st.bytes_read += more;
#ifdef __SANITIZE_ADDRESS__
			/* in the tests: a cut computed on bytes not read comes out wrong */
			memset(bd->buf + wlen, 0x5a, wmax - wlen);
#endif
		}
		const unsigned char *p = bd->buf + (pos - wstart);
		bd->jobs[njobs++] = (struct cjob){ .data = p, .len = cut, .pos = pos };
		pos += cut;
		while (oi < nold && old[oi].offset + old[oi].len < pos)
			oi++;
		resynced = oi < nold && old[oi].offset + old[oi].len == pos;
	}
	ret = flush_jobs(bd, e, cap, njobs);
	*stopped = pos;
	return ret;
}

/* The index of the first old chunk ending after POS (O->nchunk when none). */
static size_t old_after(const struct tree_entry *o, uint64_t pos)
{
	size_t lo = 0, hi = o->nchunk;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (o->chunk[mid].offset + o->chunk[mid].len <= pos)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Whether old chunk I ended its region (the next one does not follow it, or a split). */
static bool old_region_last(const struct tree_entry *o, size_t i)
{
	uint64_t end = o->chunk[i].offset + o->chunk[i].len;
	return i + 1 == o->nchunk || o->chunk[i + 1].offset != end || end % CHUNK_REGION_MAX == 0;
}

/*
 * Chunks the region [RS, RE) of the file at FD into E.  OLD is the parent's
 * entry of the same file (NULL: none) and D what the journal says changed
 * (NULL: nothing).
 *
 * Every position POS the loop stands at is a cut point of a scan of the new
 * region, where the chunker state is reset: RS is one; an old chunk that
 * starts at POS (the old chunker was reset there too) and whose bytes the
 * journal did not touch is cut the same way now, unless it was cut short
 * by its old region's end and the new region does not end there; and
 * chunk_span cuts as a scan would.  chunk_span stops where a cut meets the
 * end of an old chunk, so that old chunks can be taken again from there.
 */
static int chunk_region(struct builder *bd, int fd, struct tree_entry *e, uint32_t *cap,
			uint64_t rs, uint64_t re, const struct tree_entry *old,
			const struct dirty *d)
{
	uint64_t pos = rs, stopped;
	size_t di = 0;

	if (!old || (d && d->all))
		return chunk_span(bd, fd, e, cap, rs, re, NULL, 0, &stopped);
	for (;;) {
		while (d && di < d->n && d->r[di].end <= pos)
			di++;
		uint64_t nd = re;
		if (d && di < d->n && d->r[di].start < re)
			nd = d->r[di].start > pos ? d->r[di].start : pos;
		size_t oi = old_after(old, pos);
		while (oi < old->nchunk && old->chunk[oi].offset == pos) {
			uint64_t cend = pos + old->chunk[oi].len;
			if (cend > nd || cend > re || (old_region_last(old, oi) && cend != re))
				break;
			int ret = add_chunk(e, cap, pos, old->chunk[oi].len, &old->chunk[oi].id);
			if (ret)
				return ret;
			pos = cend;
			oi++;
		}
		if (pos >= re)
			return 0;
		oi = old_after(old, pos);
		int ret = chunk_span(bd, fd, e, cap, pos, re, old->chunk + oi, old->nchunk - oi,
				     &stopped);
		if (ret)
			return ret;
		pos = stopped;
		if (pos >= re)
			return 0;
	}
}

/* Fills the chunk list of the regular file E from the file at FD. */
static int build_file(struct builder *bd, int fd, struct tree_entry *e,
		      const struct tree_entry *old, const struct dirty *d)
{
	uint32_t cap = 0;
	uint64_t size = e->size, pos = 0, ds = 0, de = 0;

	while (pos < size) {
		int ret = file_extent_next(fd, pos, size, &ds, &de);
		if (ret < 0)
			return ret;
		if (ret)
			break;
		for (uint64_t rs = ds, re; rs < de; rs = re) {
			re = (rs / CHUNK_REGION_MAX + 1) * CHUNK_REGION_MAX;
			if (re > de)
				re = de;
			ret = chunk_region(bd, fd, e, &cap, rs, re, old, d);
			if (ret)
				return ret;
		}
		pos = de;
	}
	return 0;
}

static int build_dir(struct builder *bd, int dirfd, uint64_t ino, size_t plen, struct store_id *out);

/* Makes the tree entry E for NAME in DIRFD (with ST its stat). */
static int build_entry(struct builder *bd, int dirfd, const char *name, const struct stat *st,
		       size_t plen, struct tree_entry *e)
{
	char p[64 + NAME_MAX];
	int ret;

	e->name = strdup(name);
	if (!e->name)
		return -ENOMEM;
	e->type = (uint8_t)map_type(st->st_mode);
	e->mode = st->st_mode & 07777;
	e->uid = st->st_uid;
	e->gid = st->st_gid;
	e->nlink = e->type == TT_DIR ? 0 : (uint32_t)st->st_nlink;
	e->mtime_sec = st->st_mtim.tv_sec;
	e->mtime_nsec = (uint32_t)st->st_mtim.tv_nsec;
	e->ident = st->st_ino;
	if (e->type == TT_CHR || e->type == TT_BLK)
		e->rdev = st->st_rdev;
	proc_fd_path(p, dirfd);
	strcat(p, "/");
	strcat(p, name);
	ret = read_xattrs(p, e);
	if (ret)
		return ret;

	switch (e->type) {
	case TT_SYMLINK: {
		char target[PATH_MAX + 1];
		ssize_t n = readlinkat(dirfd, name, target, PATH_MAX);
		if (n < 0)
			return -errno;
		target[n] = 0;
		e->target = strdup(target);
		if (!e->target)
			return -ENOMEM;
		e->size = (uint64_t)n;
		return 0;
	}
	case TT_DIR: {
		int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			return -errno;
		ret = build_dir(bd, fd, st->st_ino, plen, &e->subtree);
		close(fd);
		bd->st.dirs++;
		return ret;
	}
	case TT_REG:
		break;
	default:
		return 0;
	}

	e->size = (uint64_t)st->st_size;
	bd->st.files++;
	bd->st.bytes += e->size;
	if (st->st_nlink > 1) {
		const struct linkinfo *same = imap_get(&bd->links, st->st_ino);
		if (same && same->size == e->size) {
			if (same->n) {
				e->chunk = malloc(same->n * sizeof(*e->chunk));
				if (!e->chunk)
					return -ENOMEM;
				memcpy(e->chunk, same->c, same->n * sizeof(*e->chunk));
			}
			e->nchunk = same->n;
			return 0;
		}
	}

	const struct tree_entry *old = NULL;
	const struct dirty *d = NULL;
	if (bd->incremental) {
		old = imap_get(&bd->old, st->st_ino);
		d = imap_get(&bd->dirty, st->st_ino);
		if (old && !d && old->size == e->size) {
			/* untouched: the parent's chunks, unread */
			if (old->nchunk) {
				e->chunk = malloc(old->nchunk * sizeof(*e->chunk));
				if (!e->chunk)
					return -ENOMEM;
				memcpy(e->chunk, old->chunk, old->nchunk * sizeof(*e->chunk));
			}
			e->nchunk = old->nchunk;
			goto out_link;
		}
		if (old && !d)
			log_warn("%s: size changed without a journal record (%llu -> %llu); reading it whole",
				 bd->path, (unsigned long long)old->size, (unsigned long long)e->size);
		if (old && !d)
			old = NULL;
	}

	bd->files_changed++;
	bd->st.files_read++;
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOATIME);
	if (fd < 0 && errno == EPERM)
		fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ret = build_file(bd, fd, e, old, d);
	close(fd);
	if (ret)
		return ret;

out_link:
	if (st->st_nlink > 1) {
		void **v = imap_slot(&bd->links, st->st_ino, true);
		if (!v)
			return -ENOMEM;
		struct linkinfo *li = malloc(sizeof(*li) + e->nchunk * sizeof(li->c[0]));
		if (!li)
			return -ENOMEM;
		li->size = e->size;
		li->n = e->nchunk;
		if (e->nchunk)
			memcpy(li->c, e->chunk, e->nchunk * sizeof(li->c[0]));
		free(*v);
		*v = li;
	}
	return 0;
}

/*
 * Builds the tree of the directory at DIRFD (BD->path[0..PLEN) is its path)
 * and stores it; *OUT gets its id.
 */
static int build_dir(struct builder *bd, int dirfd, uint64_t ino, size_t plen, struct store_id *out)
{
	struct tree t = { 0 };
	int ret = 0;

	if (bd->incremental && !bd->walk_all && !imap_get(&bd->marked, ino)) {
		const struct olddir *od = imap_get(&bd->olddirs, ino);
		if (od) {
			/* nothing under it is touched: the parent's tree, unread */
			*out = od->subtree;
			bd->st.files += od->files;
			bd->st.dirs += od->dirs;
			bd->st.bytes += od->bytes;
			/* (the root is not counted in dirs) */
			bd->st.dirs_skipped += od->dirs + (ino == bd->root_ino ? 0 : 1);
			return 0;
		}
	}
	struct dname {
		char *name;
		unsigned char type;
	} *names = NULL;
	size_t nnames = 0, capnames = 0, pf = 0;
	int fd = dup(dirfd);

	if (fd < 0)
		return -errno;
	DIR *dir = fdopendir(fd);
	if (!dir) {
		close(fd);
		return -errno;
	}
	/* the dup shares the file position of DIRFD, which an earlier walk moved */
	rewinddir(dir);
	/* the names first, so that a scan can ask for the data of the files ahead */
	struct dirent *de;
	while ((errno = 0, de = readdir(dir))) {
		const char *name = de->d_name;
		if (!strcmp(name, ".") || !strcmp(name, ".."))
			continue;
		if (plen == 0 && bd->b->skip_name && !strcmp(name, bd->b->skip_name))
			continue;
		if (nnames == capnames) {
			size_t cap = capnames ? capnames * 2 : 32;
			struct dname *nn = realloc(names, cap * sizeof(*nn));
			if (!nn) {
				ret = -ENOMEM;
				goto out;
			}
			names = nn;
			capnames = cap;
		}
		names[nnames].name = strdup(name);
		names[nnames].type = de->d_type;
		if (!names[nnames].name) {
			ret = -ENOMEM;
			goto out;
		}
		nnames++;
	}
	if (errno) {
		ret = -errno;
		goto out;
	}
	for (size_t i = 0; i < nnames; i++) {
		const char *name = names[i].name;
		/*
		 * A scan reads file after file; without help each cold read waits
		 * for the disk.  Ask for the next files' first bytes now, so the
		 * disk works while this thread chunks.
		 */
		for (; !bd->incremental && pf < nnames && pf < i + PREFETCH_FILES; pf++) {
			if (names[pf].type != DT_REG)
				continue;
			int pfd = openat(dirfd, names[pf].name,
					 O_RDONLY | O_NOFOLLOW | O_NOATIME | O_NONBLOCK | O_CLOEXEC);
			if (pfd >= 0) {
				posix_fadvise(pfd, 0, PREFETCH_BYTES, POSIX_FADV_WILLNEED);
				close(pfd);
			}
		}
		if (t.n == t.cap) {
			uint32_t cap = t.cap ? t.cap * 2 : 16;
			struct tree_entry *e = realloc(t.e, cap * sizeof(*e));
			if (!e) {
				ret = -ENOMEM;
				goto out;
			}
			t.e = e;
			t.cap = cap;
		}
		memset(&t.e[t.n], 0, sizeof(t.e[t.n]));
		t.n++;
		struct stat st;
		if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW)) {
			ret = -errno;
			goto out;
		}
		size_t nl = strlen(name);
		if (plen + 1 + nl >= sizeof(bd->path)) {
			ret = -ENAMETOOLONG;
			goto out;
		}
		bd->path[plen] = '/';
		memcpy(bd->path + plen + 1, name, nl + 1);
		ret = build_entry(bd, dirfd, name, &st, plen + 1 + nl, &t.e[t.n - 1]);
		if (ret) {
			/* said once, where it happened (the levels above return the same) */
			if (ret != -ENOMEM && !bd->failed_at[0]) {
				snprintf(bd->failed_at, sizeof(bd->failed_at), "%s", bd->path);
				log_error("snapshot: %s: %s", bd->path, strerror(-ret));
			}
			goto out;
		}
		bd->path[plen] = 0;
	}
	tree_sort(&t);
	void *enc;
	size_t len;
	ret = tree_encode(&t, &enc, &len);
	if (ret)
		goto out;
	ret = repo_put(bd->r, BLOB_TREE, enc, len, out, NULL);
	free(enc);
out:
	closedir(dir);
	for (size_t i = 0; i < nnames; i++)
		free(names[i].name);
	free(names);
	tree_release(&t);
	return ret;
}

static void builder_release(struct builder *bd)
{
	for (size_t i = 0; i < bd->dirty.cap; i++)
		if (bd->dirty.s[i].ino) {
			struct dirty *d = bd->dirty.s[i].val;
			free(d->r);
			free(d);
		}
	free(bd->dirty.s);
	free(bd->old.s);
	free(bd->touched.s);
	free(bd->up.s);
	free(bd->oldup.s);
	free(bd->marked.s);
	for (size_t i = 0; i < bd->olddirs.cap; i++)
		free(bd->olddirs.s[i].val);
	free(bd->olddirs.s);
	free(bd->multi);
	for (size_t i = 0; i < bd->links.cap; i++)
		free(bd->links.s[i].val);
	free(bd->links.s);
	for (size_t i = 0; i < bd->nold; i++)
		tree_release(&bd->old_trees[i]);
	free(bd->old_trees);
	free(bd->buf);
	free(bd->jobs);
}

int snap_build(struct repo *r, const struct snap_build *b, struct snap_info *out,
	       struct snap_build_stats *st)
{
	struct builder bd = { .r = r, .b = b };
	struct snap_info s = { 0 };
	char why[256];
	int ret;

	bd.cp = repo_get_config(r)->chunk;
	pool_start(&bd.pool, r, b->threads ? b->threads : 2);
	struct stat rst;
	if (fstat(b->backing_fd, &rst)) {
		ret = -errno;
		goto out;
	}
	bd.root_ino = rst.st_ino;
	if (b->parent && b->journal_dir) {
		struct jrange jr = { .m = &bd.dirty, .touched = &bd.touched, .up = &bd.up,
				     .root_ino = rst.st_ino };
		if (b->parent->lsn > b->lsn) {
			snprintf(why, sizeof(why), "the parent snapshot is ahead of the journal (LSN 0x%llx > 0x%llx)",
				 (unsigned long long)b->parent->lsn, (unsigned long long)b->lsn);
			ret = 1;
		} else {
			ret = read_journal_range(b->journal_dir, b->parent->lsn, b->lsn, &jr, why,
						 sizeof(why));
		}
		if (ret < 0)
			goto out;
		if (ret == 0) {
			struct olddir *root = calloc(1, sizeof(*root));
			void **v = root ? imap_slot(&bd.olddirs, rst.st_ino, true) : NULL;
			if (!v) {
				free(root);
				ret = -ENOMEM;
				goto out;
			}
			*v = root;
			ret = load_parent(&bd, &b->parent->tree, rst.st_ino, root);
			if (ret)
				goto out;
			bd.incremental = true;
			for (size_t i = 0; i < bd.dirty.cap; i++)
				if (bd.dirty.s[i].ino)
					dirty_finish(bd.dirty.s[i].val);
			for (size_t i = 0; i < bd.touched.cap && !ret; i++)
				if (bd.touched.s[i].ino)
					ret = mark_up(&bd, bd.touched.s[i].ino, 0);
			if (ret)
				goto out;
			if (bd.walk_all)
				log_info("snapshot: an object the journal names has no known place; walking the whole tree");
		} else {
			log_info("snapshot: scanning the whole tree: %s", why);
			bd.st.fell_back_to_scan = true;
		}
	}

	bd.path[0] = 0;
	ret = build_dir(&bd, b->backing_fd, rst.st_ino, 0, &s.tree);
	if (ret)
		goto out;
	uint64_t added = 0;
	ret = repo_flush(r, &added);
	if (ret)
		goto out;

	if (b->parent)
		s.parent = b->parent->id;
	s.timeline = b->timeline;
	s.lsn = b->lsn;
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	s.time_ns = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
	if (gethostname(s.host, sizeof(s.host) - 1))
		strcpy(s.host, "unknown");
	snprintf(s.tags, sizeof(s.tags), "%s", b->tags ? b->tags : "");
	s.files = bd.st.files;
	s.bytes = bd.st.bytes;
	s.changed = bd.files_changed;
	s.added = added;
	snprintf(s.source, sizeof(s.source), "%s", bd.incremental ? "journal" : "scan");
	s.root_mode = rst.st_mode & 07777;
	s.root_uid = rst.st_uid;
	s.root_gid = rst.st_gid;
	s.root_mtime_sec = rst.st_mtim.tv_sec;
	s.root_mtime_nsec = (uint32_t)rst.st_mtim.tv_nsec;
	ret = snap_write(r, &s);
	if (ret)
		goto out;
	bd.st.bytes_new_stored = added;
	*out = s;
	if (st)
		*st = bd.st;
out:
	pool_stop(&bd.pool);
	builder_release(&bd);
	return ret;
}
