/*
 * pending.c - WRITEs acknowledged before they are applied.
 *
 * A WRITE's record is appended and the kernel gets its reply at once; the
 * data reaches the backing file later, from the applier thread, once the
 * record is durable.  So the backing tree's data is still never ahead of
 * the durable journal (invariant 1), but close(2) of a written file, which
 * makes the kernel write its dirty pages back and wait, no longer waits for
 * a disk flush; nor does a writer that has not asked for durability.
 *
 * What must see the data waits for the file's pending applies first:
 * READ, LSEEK, a LOOKUP that finds the file (the kernel takes size and times
 * from it when it no longer caches the inode; for a cached one it keeps its
 * own, so GETATTR does not wait), and the file's size changes, fallocate
 * and copies (so that data changes reach the file in LSN order); READ reports a write of the file
 * that could not be applied.  fsync waits for durability only: the records
 * are enough to recover.  A write that cannot be applied (a full disk)
 * stops the journal, which is then not marked clean, so the next mount
 * applies it again; nothing acknowledged is dropped.
 *
 * The checkpoint asks pending_min() for the oldest record not yet applied.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/common.h"
#include "fs_i.h"

#define INO_BUCKETS 1024
#define PENDING_LIMIT (64u << 20)   /* bytes waiting to be applied before writers wait */

struct pend_item {
	struct pend_item *next;
	uint64_t ino, lsn, end;
	int fd;                     /* a dup of the request's fd: outlives RELEASE */
	bool times;                 /* set times TV (else write DATA) */
	bool has_ctime;             /* with TIMES: the kernel's CTIME came along */
	struct timespec tv[2], ctime;
	off_t off;
	size_t len;
	char data[];
};

struct pend_ino {
	struct pend_ino *next;
	uint64_t ino;
	unsigned count;
	int err;                    /* first failed apply */
};

struct pending {
	pthread_mutex_t lock;
	pthread_cond_t work, done;
	struct pend_item *head, **tail;
	uint64_t bytes;
	struct pend_ino *tab[INO_BUCKETS];
	pthread_t thread;
	bool stop;
	struct drfs_fs *fs;
};

/* Caller holds p->lock. */
static struct pend_ino *ino_get(struct pending *p, uint64_t ino, bool make)
{
	struct pend_ino **pp = &p->tab[(ino * 0x9E3779B97F4A7C15ull) >> 54 & (INO_BUCKETS - 1)];
	struct pend_ino *e;

	for (e = *pp; e; e = e->next)
		if (e->ino == ino)
			return e;
	if (!make || !(e = calloc(1, sizeof(*e))))
		return NULL;
	e->ino = ino;
	e->next = *pp;
	*pp = e;
	return e;
}

/* Caller holds p->lock.  Frees E once nothing is pending and no error is kept. */
static void ino_put(struct pending *p, struct pend_ino *e)
{
	struct pend_ino **pp = &p->tab[(e->ino * 0x9E3779B97F4A7C15ull) >> 54 & (INO_BUCKETS - 1)];

	if (e->count || e->err)
		return;
	while (*pp != e)
		pp = &(*pp)->next;
	*pp = e->next;
	free(e);
}

static void *applier(void *arg)
{
	struct pending *p = arg;
	struct journal *j = p->fs->journal;

	pthread_mutex_lock(&p->lock);
	for (;;) {
		struct pend_item *last;
		bool settle, done;
		int jerr;

		while (!p->head && !p->stop)
			pthread_cond_wait(&p->work, &p->lock);
		if (!p->head)
			break;
		/*
		 * One flush covers every WRITE queued now.  New times queued after
		 * the last of them need none: an attribute change may reach the
		 * tree before its record is durable (invariant 1), and waiting for
		 * it cost a second flush in every write + fdatasync (the kernel
		 * sends the times between the WRITE and the FSYNC).
		 */
		uint64_t need = 0;
		for (last = p->head;; last = last->next) {
			if (!last->times)
				need = last->end;
			if (!last->next)
				break;
		}
		pthread_mutex_unlock(&p->lock);
		jerr = need ? journal_wait(j, need) : 0;
		pthread_mutex_lock(&p->lock);
		for (;;) {
			struct pend_item *it = p->head;
			struct pend_ino *e;
			int err = jerr;

			pthread_mutex_unlock(&p->lock);
			if (!err && it->times) {
				/* no stat afterwards: times.c says why */
				err = utimensat(it->fd, "", it->tv, AT_EMPTY_PATH) < 0 ? -errno : 0;
				if (!err)
					times_kernel_applied(p->fs, it->ino, it->has_ctime ? &it->ctime : NULL,
							     &it->tv[1]);
			} else if (!err) {
				struct stat before;
				bool cached, keep = times_data_before(p->fs, it->ino, it->fd, &before, &cached);

				err = pwrite_all(it->fd, it->data, it->len, it->off);
				if (keep)
					times_data_after(p->fs, it->ino, it->fd, &before, cached);
			}
			if (err && !jerr) {
				/*
				 * The record is durable (fsync may have said so): it must
				 * not be dropped.  The journal stops, is not marked clean,
				 * and the next mount applies the record again.
				 */
				char what[96];
				snprintf(what, sizeof(what), "applying %s to inode %llu",
					 it->times ? "new times" : "a write", (unsigned long long)it->ino);
				journal_fail(j, err, what);
			}
			pthread_mutex_lock(&p->lock);
			p->head = it->next;
			if (!p->head)
				p->tail = &p->head;
			p->bytes -= it->len;
			settle = false;
			if ((e = ino_get(p, it->ino, false))) {
				e->count--;
				settle = !e->count;
				if (err && !e->err)
					e->err = err;
				ino_put(p, e);
			}
			pthread_cond_broadcast(&p->done);
			pthread_mutex_unlock(&p->lock);
			/*
			 * The last apply for a file the kernel has forgotten: its
			 * stale ctime pair is settled now, while the fd reaches it.
			 */
			if (settle && times_stale(p->fs, it->ino) && !inode_get(p->fs, it->ino))
				times_settle(p->fs, it->ino, it->fd);
			close(it->fd);
			done = it == last;
			free(it);
			pthread_mutex_lock(&p->lock);
			if (done)
				break;
		}
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

int pending_start(struct drfs_fs *fs)
{
	struct pending *p = calloc(1, sizeof(*p));

	if (!p)
		return -ENOMEM;
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->work, NULL);
	pthread_cond_init(&p->done, NULL);
	p->tail = &p->head;
	p->fs = fs;
	if (pthread_create(&p->thread, NULL, applier, p)) {
		free(p);
		return -EAGAIN;
	}
	fs->pending = p;
	return 0;
}

void pending_stop(struct drfs_fs *fs)
{
	struct pending *p = fs->pending;

	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	p->stop = true;
	pthread_cond_broadcast(&p->work);
	pthread_mutex_unlock(&p->lock);
	pthread_join(p->thread, NULL);
	for (size_t i = 0; i < INO_BUCKETS; i++)
		for (struct pend_ino *e = p->tab[i], *n; e; e = n) {
			n = e->next;
			free(e);
		}
	pthread_mutex_destroy(&p->lock);
	pthread_cond_destroy(&p->work);
	pthread_cond_destroy(&p->done);
	fs->pending = NULL;
	free(p);
}

/* Journals R and queues IT behind it; IT is freed on failure.  0 or -errno. */
static int enqueue(struct drfs_fs *fs, struct pend_item *it, struct jrec *r)
{
	struct pending *p = fs->pending;
	struct pend_ino *e;
	int err;

	it->next = NULL;
	pthread_mutex_lock(&p->lock);
	while (p->bytes && p->bytes + it->len > PENDING_LIMIT)
		pthread_cond_wait(&p->done, &p->lock);
	/* appended under the lock: the queue is in LSN order */
	it->end = journal_append(fs->journal, r, !it->times, &err);
	if (!it->end || !(e = ino_get(p, it->ino, true))) {
		/* a record without its queue entry would be applied by no one */
		pthread_mutex_unlock(&p->lock);
		if (it->end) {
			struct jrec a = { .type = JR_ABORT, .lsn2 = r->lsn };
			uint64_t end = journal_append(fs->journal, &a, false, &err);
			journal_wait(fs->journal, it->end > end ? it->end : end);
			err = -ENOMEM;
		}
		close(it->fd);
		free(it);
		return err;
	}
	/*
	 * The applier will wait for a write's record: have the journal thread
	 * start on it now rather than once the applier has run (on two CPUs,
	 * one hand-off less before an fdatasync's flush begins).
	 */
	if (!it->times)
		journal_want(fs->journal, it->end);
	it->lsn = r->lsn;
	e->count++;
	*p->tail = it;
	p->tail = &it->next;
	p->bytes += it->len;
	pthread_cond_signal(&p->work);
	pthread_mutex_unlock(&p->lock);
	return 0;
}

ssize_t pending_write(struct drfs_fs *fs, struct mutation *m, struct jrec *r)
{
	struct pend_item *it = calloc(1, sizeof(*it) + m->size);
	uint64_t seen, end;
	int err;

	if (!it)
		return -ENOMEM;
	memcpy(it->data, m->data, m->size);
	it->fd = fcntl(m->fd, F_DUPFD_CLOEXEC, 0);
	if (it->fd < 0) {
		err = -errno;
		free(it);
		return err;
	}
	it->ino = m->node->ino;
	it->off = m->offset;
	it->len = m->size;
	r->data = it->data;         /* the record borrows the copy: it lives until applied */
	err = enqueue(fs, it, r);
	if (err)
		return err;
	end = r->lsn + jrec_size(r);   /* not IT->end: the applier may have freed IT */
	seen = atomic_load(&m->node->data_lsn);
	while (seen < end && !atomic_compare_exchange_weak(&m->node->data_lsn, &seen, end))
		;
	return (ssize_t)m->size;
}

int pending_times(struct drfs_fs *fs, struct drfs_inode *node, int fd, struct jrec *r,
		  const struct timespec *ctime)
{
	struct pend_item *it = calloc(1, sizeof(*it));

	if (!it)
		return -ENOMEM;
	it->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	if (it->fd < 0) {
		int err = -errno;
		free(it);
		return err;
	}
	it->ino = node->ino;
	it->times = true;
	it->tv[0] = (r->mask & JA_ATIME) ? r->atime : (struct timespec){ .tv_nsec = UTIME_OMIT };
	it->tv[1] = (r->mask & JA_MTIME) ? r->mtime : (struct timespec){ .tv_nsec = UTIME_OMIT };
	if (ctime) {
		it->has_ctime = true;
		it->ctime = *ctime;
	}
	return enqueue(fs, it, r);
}

int pending_wait(struct drfs_fs *fs, uint64_t ino, bool take_error)
{
	struct pending *p = fs->pending;
	struct pend_ino *e;
	int err = 0;

	if (!p)
		return 0;
	pthread_mutex_lock(&p->lock);
	while ((e = ino_get(p, ino, false)) && e->count)
		pthread_cond_wait(&p->done, &p->lock);
	if (e && take_error) {
		err = e->err;
		e->err = 0;
		ino_put(p, e);
	}
	pthread_mutex_unlock(&p->lock);
	return err;
}

void pending_drain(struct drfs_fs *fs)
{
	struct pending *p = fs->pending;

	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	while (p->head)
		pthread_cond_wait(&p->done, &p->lock);
	pthread_mutex_unlock(&p->lock);
}

bool pending_busy(struct drfs_fs *fs, uint64_t ino)
{
	struct pending *p = fs->pending;
	struct pend_ino *e;
	bool busy;

	if (!p)
		return false;
	pthread_mutex_lock(&p->lock);
	e = ino_get(p, ino, false);
	busy = e && e->count;
	pthread_mutex_unlock(&p->lock);
	return busy;
}

uint64_t pending_min(void *arg)
{
	struct pending *p = ((struct drfs_fs *)arg)->pending;
	uint64_t min;

	if (!p)
		return UINT64_MAX;
	pthread_mutex_lock(&p->lock);
	min = p->head ? p->head->lsn : UINT64_MAX;
	pthread_mutex_unlock(&p->lock);
	return min;
}
