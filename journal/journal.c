/*
 * journal.c - the live journal: appending, the journal thread (io_uring,
 * group commit, segment switching), the checkpoint thread (checkpoints,
 * recycling, spare segments, counters) and opening/closing.
 *
 * Locking: one mutex (j->lock) protects the queue, the LSN counters, the
 * segment list, holds and the error.  The journal thread owns the current
 * segment fd and the ring; the checkpoint thread owns spare preparation.
 * No system call that waits for the disk runs under the mutex.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "../common/common.h"
#include "journal_i.h"

#define SEAL_LEN JREC_HEADER
#define NSLOTS 1100   /* more than the most worker threads drfs mount allows */
#define NHOLDS 16
#define SPARES_WANTED 1
#define SPARES_KEPT 2
#define BLK 4096u                 /* direct writes are whole, aligned blocks of this size */
#define STAGE_SIZE (4u << 20)
#define SQE_BYTES (1u << 20)       /* bytes per write submission */
#define RING_DEPTH 64
#define WRITE_EARLY (256u << 10)   /* queued bytes that wake the journal thread */

struct qrec {
	struct qrec *next;
	uint64_t lsn;
	uint32_t len;
	uint16_t type;
	const void *data;          /* borrowed data (WRITE/COPY), else NULL */
	size_t data_len, head_len;
	unsigned char buf[];       /* head_len encoded bytes */
};

struct hold {
	bool used;
	unsigned yields;           /* JHOLD_YIELD_*: the pressures it gives way to; 0: never */
	char name[32];
	uint64_t lsn;
};

struct journal {
	struct journal_config cfg;
	char *dir;
	int dirfd;
	uint32_t timeline;
	uint64_t seg_size;

	pthread_mutex_t lock;
	pthread_cond_t work, durable_cv, space_cv, tick;
	struct qrec *qhead, **qtail;
	uint64_t queued_bytes;
	uint64_t head, written, durable, checkpoint;
	uint64_t seg_first, seg_end;   /* producers' view of the current segment */
	uint64_t seg_started_ns;
	int error;
	uint64_t want;                 /* the highest LSN anyone has waited for */
	bool writing;                  /* the journal thread is writing a batch */
	bool stop, want_spare;
	struct jseg *segs;             /* in use, sorted */
	size_t nseg, segcap;
	unsigned spares, spare_seq;
	struct hold holds[NHOLDS];
	uint64_t yielded, yielded_at;
	char yielded_holds[64], yield_reason[96];
	uint64_t yield_warned_at;      /* when that was last logged (seconds since the epoch) */
	uint64_t flushes, records, writes_done, flushes_done, direct_tries;
	uint64_t last_flush_ns;

	/* journal thread */
	int cur_fd;
	bool direct;                   /* cur_fd is O_DIRECT */
	bool direct_refused;           /* a direct write failed with EINVAL: not again */
	uint64_t cur_first;
	struct io_uring ring;
	unsigned char *stage;          /* STAGE_SIZE bytes, BLK-aligned: the segment from stage_off on */
	off_t stage_off;               /* a multiple of BLK */
	size_t fill;                   /* bytes of the stage that hold the log */
	bool staged;                   /* bytes were staged since the last write */

	pthread_mutex_t ckpt_lock;     /* one checkpoint at a time */
	struct jsuper sb;
	pthread_t jthread, cthread;
	bool threads, ring_ok, recovered;
	struct replay_result rr;

	_Atomic uint64_t slots[NSLOTS];
	atomic_uint nslots;
};

static __thread int slot_index = -1;

static uint64_t now_ns(int clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Caller holds j->lock.  Records the first error and wakes everyone. */
static void fail_locked(struct journal *j, int err, const char *what, const char *obj)
{
	if (j->error)
		return;
	j->error = err;
	log_error("journal: %s %s/%s failed: %s; nothing more is acknowledged, "
		  "unmount and mount again after fixing the cause",
		  what, j->dir, obj, strerror(-err));
	pthread_cond_broadcast(&j->durable_cv);
	pthread_cond_broadcast(&j->space_cv);
	pthread_cond_broadcast(&j->work);
}

static void fail(struct journal *j, int err, const char *what, const char *obj)
{
	pthread_mutex_lock(&j->lock);
	fail_locked(j, err, what, obj);
	pthread_mutex_unlock(&j->lock);
}

void journal_fail(struct journal *j, int err, const char *what)
{
	pthread_mutex_lock(&j->lock);
	if (!j->error) {
		j->error = err;
		log_error("journal: %s failed: %s; nothing more is acknowledged; the record is kept "
			  "and applied at the next mount, after fixing the cause", what, strerror(-err));
		pthread_cond_broadcast(&j->durable_cv);
		pthread_cond_broadcast(&j->space_cv);
		pthread_cond_broadcast(&j->work);
	}
	pthread_mutex_unlock(&j->lock);
}

/* ---- appending ---- */

static void enqueue_locked(struct journal *j, struct qrec *q)
{
	q->next = NULL;
	*j->qtail = q;
	j->qtail = &q->next;
	j->queued_bytes += q->len;
	__atomic_store_n(&j->head, j->head + q->len, __ATOMIC_RELEASE);
	j->records++;
	/*
	 * Nobody waits for this record yet: the journal thread picks it up at
	 * its next tick (or when someone waits), which spares a wake-up per
	 * change of a metadata-heavy workload.  A large queue is started early.
	 */
	if (j->want > j->durable || j->queued_bytes >= WRITE_EARLY)
		pthread_cond_signal(&j->work);
}

/* Caller holds j->lock.  Ends the current segment with a SEAL. */
static int seal_locked(struct journal *j)
{
	struct jrec r = { .type = JR_SEAL, .lsn = j->head, .time_ns = now_ns(CLOCK_REALTIME) };
	struct qrec *q = malloc(sizeof(*q) + SEAL_LEN);

	if (!q)
		return -ENOMEM;
	q->lsn = j->head;
	q->len = SEAL_LEN;
	q->type = JR_SEAL;
	q->data = NULL;
	q->data_len = 0;
	q->head_len = SEAL_LEN;
	jrec_encode(&r, q->buf);
	enqueue_locked(j, q);
	j->seg_first = j->head;
	j->seg_end = j->head + j->seg_size - JSEG_HEADER;
	j->seg_started_ns = now_ns(CLOCK_MONOTONIC);
	return 0;
}

uint64_t journal_append(struct journal *j, struct jrec *r, bool borrow, int *err)
{
	size_t len, head_len;
	struct qrec *q;
	uint64_t end;

	r->lsn = 0;
	r->time_ns = now_ns(CLOCK_REALTIME);
	borrow = borrow && (r->type == JR_WRITE || r->type == JR_COPY);
	len = jrec_size(r);
	if (!len || len + SEAL_LEN > j->seg_size - JSEG_HEADER) {
		*err = -EINVAL;
		return 0;
	}
	q = malloc(sizeof(*q) + (borrow ? JREC_HEADER + 64 : len));
	if (!q) {
		*err = -ENOMEM;
		return 0;
	}
	q->len = (uint32_t)len;
	q->type = r->type;
	if (borrow) {
		jrec_encode_head(r, q->buf, &head_len);
		q->head_len = head_len;
		q->data = r->data;
		q->data_len = r->data_len;
	} else {
		jrec_encode(r, q->buf);
		q->head_len = len;
		q->data = NULL;
		q->data_len = 0;
	}

	pthread_mutex_lock(&j->lock);
	while (!j->error && j->queued_bytes && j->queued_bytes + len > j->cfg.queue_limit) {
		pthread_cond_signal(&j->work);
		pthread_cond_wait(&j->space_cv, &j->lock);
	}
	if (!j->error && j->head + len + SEAL_LEN > j->seg_end)
		*err = seal_locked(j);
	else
		*err = 0;
	if (j->error || *err) {
		if (!*err)
			*err = j->error;
		pthread_mutex_unlock(&j->lock);
		free(q);
		return 0;
	}
	q->lsn = r->lsn = j->head;
	jrec_set_lsn(q->buf, q->lsn);
	enqueue_locked(j, q);
	end = j->head;
	pthread_mutex_unlock(&j->lock);
	return end;
}

/*
 * Caller holds j->lock.  Raises the LSN the journal thread works towards;
 * the thread is woken only when that changes (it reads want before it
 * sleeps, so an LSN already wanted is already being worked on).
 */
static void want_locked(struct journal *j, uint64_t lsn)
{
	if (j->durable < lsn && lsn > j->want) {
		j->want = lsn;
		pthread_cond_signal(&j->work);
	}
}

int journal_wait(struct journal *j, uint64_t lsn)
{
	int ret;

	pthread_mutex_lock(&j->lock);
	if (j->durable < lsn && !j->error) {
		want_locked(j, lsn);
		while (j->durable < lsn && !j->error)
			pthread_cond_wait(&j->durable_cv, &j->lock);
	}
	/*
	 * A failed journal answers at once, but a batch the thread took before
	 * the failure may still be on its way to the segment, reading records
	 * whose data the caller lends (a WRITE's buffer, a pending write's
	 * copy).  The caller frees that data when this returns: not before the
	 * thread is done with it, or the segment gets garbage between valid
	 * records and the next mount refuses to replay.
	 */
	while (j->error && j->writing)
		pthread_cond_wait(&j->durable_cv, &j->lock);
	ret = j->durable >= lsn ? 0 : (j->error ? -EIO : 0);
	pthread_mutex_unlock(&j->lock);
	return ret;
}

void journal_want(struct journal *j, uint64_t lsn)
{
	pthread_mutex_lock(&j->lock);
	want_locked(j, lsn);
	pthread_mutex_unlock(&j->lock);
}

uint64_t journal_head(struct journal *j)
{
	uint64_t h;

	pthread_mutex_lock(&j->lock);
	h = j->head;
	pthread_mutex_unlock(&j->lock);
	return h;
}

int journal_error(struct journal *j)
{
	int err;

	pthread_mutex_lock(&j->lock);
	err = j->error;
	pthread_mutex_unlock(&j->lock);
	return err;
}

void journal_apply_begin(struct journal *j)
{
	if (slot_index < 0) {
		unsigned i = atomic_fetch_add(&j->nslots, 1);
		if (i >= NSLOTS) {
			log_error("journal: more than %d threads append; raise NSLOTS", NSLOTS);
			abort();
		}
		slot_index = (int)i;
	}
	/*
	 * Any LSN this change gets is at least the head read here, and the slot
	 * is set before the record is appended (under the lock), so a checkpoint
	 * that sees the record also sees the slot.
	 */
	atomic_store(&j->slots[slot_index], __atomic_load_n(&j->head, __ATOMIC_ACQUIRE));
}

void journal_apply_end(struct journal *j)
{
	atomic_store(&j->slots[slot_index], UINT64_MAX);
}

/* ---- the journal thread ---- */

static bool fault(unsigned *at, uint64_t count)
{
	return *at && count == *at;
}

/*
 * Waits for N completions; returns the first error, or -EAGAIN on a short
 * or interrupted write (the caller writes the whole batch again the plain
 * way: the same bytes at the same offsets).  A signal that interrupts the
 * wait is no error: the wait goes on.
 */
static int reap(struct journal *j, unsigned n, const size_t *want)
{
	int ret = 0;

	for (unsigned i = 0; i < n; i++) {
		struct io_uring_cqe *cqe;
		int r;
		while ((r = io_uring_wait_cqe(&j->ring, &cqe)) == -EINTR)
			;
		if (r < 0)
			return r;
		if (!ret) {
			if (cqe->res == -EINTR || cqe->res == -EAGAIN)
				ret = -EAGAIN;
			else if (cqe->res < 0)
				ret = cqe->res;
			else if (want[cqe->user_data] != SIZE_MAX && (size_t)cqe->res != want[cqe->user_data])
				ret = -EAGAIN;
		}
		io_uring_cqe_seen(&j->ring, cqe);
	}
	return ret;
}

/*
 * Writes LEN bytes of BUF (contiguous) at OFF of the current segment through
 * the ring, in submissions of SQE_BYTES (with pwrite(2) while the journal is
 * being opened, before the ring exists), then, when FLUSH, makes the segment
 * durable.  The flush is an fdatasync(2) from this thread: the ring's
 * IORING_OP_FSYNC always runs in an io-wq worker, and the extra hand-offs
 * cost a quarter of the single-writer fsync rate here (docs/benchmarks.md).
 * 0 or -errno.
 */
static int write_and_flush(struct journal *j, const unsigned char *buf, size_t len, off_t off, bool flush)
{
	size_t want[RING_DEPTH], done = 0;
	int ret = j->ring_ok ? 0 : -EAGAIN;   /* before journal_start: no ring yet */

	if (!ret && j->direct && len && fault(&j->cfg.refuse_direct_at, ++j->direct_tries))
		ret = -EINVAL;
	while (!ret && done < len) {
		unsigned sq = 0;

		while (done < len && sq < RING_DEPTH) {
			size_t k = len - done < SQE_BYTES ? len - done : SQE_BYTES;
			struct io_uring_sqe *sqe = io_uring_get_sqe(&j->ring);

			io_uring_prep_write(sqe, j->cur_fd, buf + done, (unsigned)k, (uint64_t)(off + (off_t)done));
			sqe->user_data = sq;
			want[sq++] = k;
			done += k;
		}
		while ((ret = io_uring_submit(&j->ring)) == -EINTR)
			;
		if (ret >= 0)
			ret = reap(j, sq, want);
	}
	if (ret == -EINVAL && j->direct) {
		/* the device wants larger blocks than BLK: through the page cache from now on */
		int fl = fcntl(j->cur_fd, F_GETFL);
		if (fl >= 0 && fcntl(j->cur_fd, F_SETFL, fl & ~O_DIRECT) == 0) {
			log_warn("journal: direct writes of %u-byte blocks refused; writing through the page cache",
				 BLK);
			j->direct = false;
			j->direct_refused = true;
			ret = -EAGAIN;
		}
	}
	if (ret == -EAGAIN)     /* a short or interrupted write: the same bytes again, the plain way */
		ret = pwrite_all(j->cur_fd, buf, len, off);
	if (len && fault(&j->cfg.fail_write_at, ++j->writes_done))
		ret = -EIO;
	if (!ret && flush) {
		int r;
		while ((r = fdatasync(j->cur_fd)) < 0 && errno == EINTR)
			;
		if (r < 0)
			ret = -errno;
		else if (fault(&j->cfg.fail_flush_at, ++j->flushes_done))
			ret = -EIO;
		else
			j->flushes++;
	}
	return ret;
}

/*
 * Writes what was staged since the last write (whole blocks, zeros after
 * the end of the log) and flushes when FLUSH; then the block that holds the
 * end becomes the front of the stage, to be written again with what
 * follows (docs/journal-design.md, "Direct, whole-block writes").
 */
static int stage_write(struct journal *j, bool flush)
{
	size_t len = (j->fill + BLK - 1) & ~(size_t)(BLK - 1), keep = j->fill % BLK;
	size_t done = keep ? len - BLK : len;     /* the blocks that are full */
	int ret;

	if (!j->staged)
		return write_and_flush(j, j->stage, 0, j->stage_off, flush);
	memset(j->stage + j->fill, 0, len - j->fill);
	ret = write_and_flush(j, j->stage, len, j->stage_off, flush);
	if (ret)
		return ret;
	memmove(j->stage, j->stage + done, keep);
	j->stage_off += (off_t)done;
	j->fill = keep;
	j->staged = false;
	return 0;
}

/* Appends LEN bytes of P (zeros when P is NULL) to the stage, writing it out whenever it is full. */
static int stage_put(struct journal *j, const void *p, size_t len)
{
	while (len) {
		size_t k = STAGE_SIZE - j->fill < len ? STAGE_SIZE - j->fill : len;

		if (p) {
			memcpy(j->stage + j->fill, p, k);
			p = (const char *)p + k;
		} else {
			memset(j->stage + j->fill, 0, k);
		}
		j->fill += k;
		j->staged = true;
		len -= k;
		if (j->fill == STAGE_SIZE) {
			int ret = stage_write(j, false);
			if (ret)
				return ret;
		}
	}
	return 0;
}

/*
 * Makes FD, open for reading and writing, the current segment (its first
 * LSN FIRST), the log in it ending at file offset END: direct writes where
 * the filesystem takes them, and a stage that begins with END's block.
 */
static int use_segment(struct journal *j, int fd, uint64_t first, off_t end)
{
	int fl = fcntl(fd, F_GETFL);

	j->direct = !j->direct_refused && fl >= 0 && fcntl(fd, F_SETFL, fl | O_DIRECT) == 0;
	/*
	 * The segment was written through the page cache when it was made (and
	 * read by the replay): a direct write over cached pages cannot be
	 * issued without waiting, so the ring would hand every write to a
	 * worker thread.  The pages are clean; drop them.
	 */
	if (j->direct)
		posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	j->stage_off = end - end % BLK;
	j->fill = (size_t)(end % BLK);
	j->staged = false;
	if (j->fill) {
		int ret = pread_all(fd, j->stage, BLK, j->stage_off);
		if (ret)
			return ret;
	}
	if (j->cur_fd >= 0)
		close(j->cur_fd);
	j->cur_fd = fd;
	j->cur_first = first;
	return 0;
}

/* Takes a spare (or makes a new file) and makes it segment FIRST.  0 or -errno. */
static int switch_segment(struct journal *j, uint64_t first)
{
	unsigned char h[JSEG_HEADER];
	char spare[40], name[40];
	struct jseg seg;
	int fd, ret = 0;
	bool have;

	jseg_name(name, j->timeline, first);
	/* spare names are taken and given under the lock (a rename does not wait for the disk) */
	pthread_mutex_lock(&j->lock);
	have = j->spares > 0;
	if (have) {
		snprintf(spare, sizeof(spare), "spare-%u.seg", j->spares - 1);
		if (renameat(j->dirfd, spare, j->dirfd, name) < 0) {
			ret = -errno;
			pthread_mutex_unlock(&j->lock);
			return ret;
		}
		j->spares--;
	}
	j->want_spare = true;
	pthread_cond_broadcast(&j->tick);
	pthread_mutex_unlock(&j->lock);
	if (have) {
		fd = openat(j->dirfd, name, O_RDWR | O_CLOEXEC);
		if (fd < 0)
			return -errno;
		jseg_header(h, j->timeline, first, j->seg_size);
		if (pwrite(fd, h, JSEG_HEADER, 0) != JSEG_HEADER || fdatasync(fd) < 0 ||
		    fsync(j->dirfd) < 0)
			ret = errno ? -errno : -EIO;
	} else {
		log_debug("journal: no spare segment ready, writing %s in place", name);
		ret = jseg_create(j->dirfd, name, j->timeline, first, j->seg_size);
		fd = ret ? -1 : openat(j->dirfd, name, O_RDWR | O_CLOEXEC);
		if (!ret && (fd < 0 || fsync(j->dirfd) < 0))
			ret = -errno;
	}
	if (ret) {
		if (fd >= 0)
			close(fd);
		return ret;
	}
	ret = use_segment(j, fd, first, JSEG_HEADER);
	if (ret) {
		close(fd);
		return ret;
	}
	seg.first_lsn = first;
	seg.timeline = j->timeline;
	memcpy(seg.name, name, sizeof(seg.name));
	pthread_mutex_lock(&j->lock);
	if (j->nseg == j->segcap) {
		struct jseg *ns = realloc(j->segs, (j->segcap = j->segcap * 2 + 8) * sizeof(*ns));
		if (!ns) {
			pthread_mutex_unlock(&j->lock);
			return -ENOMEM;
		}
		j->segs = ns;
	}
	j->segs[j->nseg++] = seg;
	pthread_mutex_unlock(&j->lock);
	return 0;
}

/*
 * Writes the records of list Q (in LSN order) to the segment files,
 * flushing at every segment switch and at the end when FLUSH.  Returns 0
 * or -errno; *FLUSHED says whether everything written is now durable.
 */
static int write_batch(struct journal *j, struct qrec *q, bool flush, bool *flushed)
{
	int ret = 0;

	*flushed = false;
	while (q && !ret) {
		if (j->stage_off + (off_t)j->fill != (off_t)(JSEG_HEADER + (q->lsn - j->cur_first))) {
			log_error("journal: record at LSN %" PRIu64 " does not follow the end of the log", q->lsn);
			return -EIO;
		}
		ret = stage_put(j, q->buf, q->head_len);
		if (!ret)
			ret = stage_put(j, q->data, q->data_len);
		if (!ret)
			ret = stage_put(j, NULL, q->len - q->head_len - q->data_len);
		if (!ret && q->type == JR_SEAL) {
			ret = stage_write(j, true);
			if (!ret)
				ret = switch_segment(j, q->lsn + q->len);
		}
		q = q->next;
	}
	if (!ret && (j->staged || flush)) {
		ret = stage_write(j, flush);
		*flushed = flush;
	}
	return ret;
}

static void free_list(struct qrec *q)
{
	while (q) {
		struct qrec *next = q->next;
		free(q);
		q = next;
	}
}

static void *journal_thread(void *arg)
{
	struct journal *j = arg;
	uint64_t interval = (uint64_t)j->cfg.flush_interval_ms * 1000000ull;

	pthread_mutex_lock(&j->lock);
	for (;;) {
		uint64_t now = now_ns(CLOCK_MONOTONIC), end, bytes;
		bool flush, flushed, due;
		struct qrec *batch;
		int ret;

		due = j->written > j->durable && now - j->last_flush_ns >= interval;
		if (!j->error && !j->qhead && j->head > j->seg_first && j->cfg.seal_age_ms &&
		    now - j->seg_started_ns >= (uint64_t)j->cfg.seal_age_ms * 1000000ull)
			seal_locked(j);
		if (j->error) {
			batch = j->qhead;
			j->qhead = NULL;
			j->qtail = &j->qhead;
			j->queued_bytes = 0;
			pthread_cond_broadcast(&j->space_cv);
			pthread_mutex_unlock(&j->lock);
			free_list(batch);
			pthread_mutex_lock(&j->lock);
			if (j->stop)
				break;
			pthread_cond_wait(&j->work, &j->lock);
			continue;
		}
		if (!j->qhead && !(j->want > j->durable) && !due) {
			if (j->stop)
				break;
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 50 * 1000000L;
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&j->work, &j->lock, &ts);
			continue;
		}
		batch = j->qhead;
		j->qhead = NULL;
		j->qtail = &j->qhead;
		end = j->head;
		bytes = 0;
		for (struct qrec *q = batch; q; q = q->next)
			bytes += q->len;
		/*
		 * Flush for a waiter whose LSN is not durable yet, not merely
		 * because a waiter exists: those woken by the last flush have not
		 * run yet, and a record queued meanwhile that nobody waits for (the
		 * times the kernel sends between a WRITE and its FSYNC) would cost
		 * a flush of its own.
		 */
		flush = j->want > j->durable || due || j->stop;
		j->writing = true;
		pthread_mutex_unlock(&j->lock);

		if (j->cfg.batch_hook)
			j->cfg.batch_hook(j->cfg.batch_hook_arg);
		ret = write_batch(j, batch, flush, &flushed);
		free_list(batch);

		pthread_mutex_lock(&j->lock);
		j->writing = false;
		if (j->error)   /* the waiters of a failed journal wait for the batch to end */
			pthread_cond_broadcast(&j->durable_cv);
		j->queued_bytes -= bytes;
		pthread_cond_broadcast(&j->space_cv);
		if (ret) {
			char name[40];
			jseg_name(name, j->timeline, j->cur_first);
			fail_locked(j, ret, flush ? "writing or flushing" : "writing", name);
			continue;
		}
		j->written = end;
		if (flushed) {
			j->durable = end;
			j->last_flush_ns = now_ns(CLOCK_MONOTONIC);
			pthread_cond_broadcast(&j->durable_cv);
		}
	}
	pthread_mutex_unlock(&j->lock);
	return NULL;
}

/* ---- checkpoints, recycling, spares, counters ---- */

static int write_super(struct journal *j, uint64_t lsn, uint32_t flags)
{
	struct jsuper sb = j->sb;
	int ret;

	sb.seq++;
	sb.checkpoint_lsn = lsn;
	sb.flags = flags;
	sb.time_ns = now_ns(CLOCK_REALTIME);
	boot_id(sb.boot_id);
	ret = jsuper_write(j->dirfd, &sb);
	if (!ret)
		j->sb = sb;
	return ret;
}

static int checkpoint_to(struct journal *j, uint64_t lsn, uint32_t flags)
{
	int ret = journal_wait(j, lsn);

	if (ret)
		return ret;
	if (syncfs(j->cfg.backing_fd) < 0) {
		ret = -errno;
		fail(j, ret, "syncfs of the backing tree for a checkpoint at", "super");
		return ret;
	}
	ret = write_super(j, lsn, flags);
	if (ret) {
		fail(j, ret, "writing the checkpoint", "super");
		return ret;
	}
	pthread_mutex_lock(&j->lock);
	if (lsn > j->checkpoint)
		j->checkpoint = lsn;
	pthread_mutex_unlock(&j->lock);
	return 0;
}

int journal_checkpoint(struct journal *j)
{
	uint64_t frontier;
	int ret;

	pthread_mutex_lock(&j->ckpt_lock);
	pthread_mutex_lock(&j->lock);
	frontier = j->head;
	for (unsigned i = 0; i < NSLOTS && i < atomic_load(&j->nslots); i++) {
		uint64_t s = atomic_load(&j->slots[i]);
		if (s < frontier)
			frontier = s;
	}
	pthread_mutex_unlock(&j->lock);
	/* asked outside the journal lock: the caller appends under its own lock */
	if (j->cfg.unapplied_min) {
		uint64_t u = j->cfg.unapplied_min(j->cfg.unapplied_arg);
		if (u < frontier)
			frontier = u;
	}
	ret = checkpoint_to(j, frontier, 0);
	pthread_mutex_unlock(&j->ckpt_lock);
	return ret;
}

/*
 * Caller holds j->lock.  The pressures on the journal now (JHOLD_YIELD_*):
 * the segments in use pass cfg.max_bytes (CAP), the journal's filesystem
 * has less than cfg.min_free bytes free (FULL).  WHY (LEN bytes) says which.
 */
static unsigned pressure(struct journal *j, char *why, size_t len)
{
	struct statvfs sv;
	unsigned p = 0;

	if (j->cfg.max_bytes && j->nseg * j->seg_size > j->cfg.max_bytes) {
		snprintf(why, len,
			 "the journal passed its cap of %" PRIu64 " MiB (journal_max)",
			 j->cfg.max_bytes >> 20);
		p |= JHOLD_YIELD_CAP;
	}
	if (j->cfg.min_free && fstatvfs(j->dirfd, &sv) == 0 &&
	    (uint64_t)sv.f_bavail * sv.f_frsize < j->cfg.min_free) {
		snprintf(why, len,
			 "its disk has %" PRIu64 " MiB free, under journal_min_free (%" PRIu64 " MiB)",
			 ((uint64_t)sv.f_bavail * sv.f_frsize) >> 20, j->cfg.min_free >> 20);
		p |= JHOLD_YIELD_FULL;
	}
	return p;
}

/*
 * Caller holds j->lock.  Segment 0 is going although the holds named in
 * NAMES, which give way to the pressures P (WHY), wanted it: they move past
 * it, and the stats say so.
 */
static void note_yield(struct journal *j, unsigned p, const char *why, const char *names)
{
	uint64_t to = j->segs[0].first_lsn;

	for (int i = 0; i < NHOLDS; i++)
		if (j->holds[i].used && (j->holds[i].yields & p) && j->holds[i].lsn < to)
			j->holds[i].lsn = to;
	j->yielded++;
	j->yielded_at = now_ns(CLOCK_REALTIME) / 1000000000ull;
	snprintf(j->yielded_holds, sizeof(j->yielded_holds), "%s", names);
	snprintf(j->yield_reason, sizeof(j->yield_reason), "%s", why);
	/* the first time, then once an hour while it goes on: a cap reached is a steady state */
	if (!j->yield_warned_at || j->yielded_at >= j->yield_warned_at + 3600) {
		j->yield_warned_at = j->yielded_at;
		log_warn("journal: %s: recycling segments that the %s hold%s kept (from LSN %" PRIu64
			 " on now); point-in-time restore and the replica's journal lose that stretch, the snapshots still cover it",
			 j->yield_reason, names, strchr(names, ',') ? "s" : "", to);
	}
}

/*
 * Recycles segments that every reader is done with: below the checkpoint and
 * every hold, except holds that give way to a pressure there is now.  A
 * segment recycled that way is unlinked, not kept as a spare.
 */
static void recycle(struct journal *j)
{
	for (;;) {
		uint64_t limit, wanted;
		char name[40], spare[40], names[64] = "", why[sizeof(j->yield_reason)] = "";
		bool keep, forced;
		unsigned p;

		pthread_mutex_lock(&j->lock);
		if (j->nseg < 2) {
			pthread_mutex_unlock(&j->lock);
			return;
		}
		p = pressure(j, why, sizeof(why));
		limit = wanted = j->checkpoint;
		for (int i = 0; i < NHOLDS; i++) {
			if (!j->holds[i].used)
				continue;
			if (!(j->holds[i].yields & p) && j->holds[i].lsn < limit)
				limit = j->holds[i].lsn;
			if (j->holds[i].lsn < wanted)
				wanted = j->holds[i].lsn;
		}
		if (j->segs[1].first_lsn > limit) {
			pthread_mutex_unlock(&j->lock);
			return;
		}
		forced = j->segs[1].first_lsn > wanted;
		for (int i = 0; forced && i < NHOLDS; i++)
			if (j->holds[i].used && (j->holds[i].yields & p) &&
			    j->holds[i].lsn < j->segs[1].first_lsn &&
			    strlen(names) + strlen(j->holds[i].name) + 2 < sizeof(names))
				snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s",
					 *names ? "," : "", j->holds[i].name);
		memcpy(name, j->segs[0].name, sizeof(name));
		memmove(j->segs, j->segs + 1, (j->nseg - 1) * sizeof(*j->segs));
		j->nseg--;
		if (forced)
			note_yield(j, p, why, names);
		keep = !forced && !(p & JHOLD_YIELD_FULL) && j->spares < SPARES_KEPT;
		if (keep) {
			snprintf(spare, sizeof(spare), "spare-%u.seg", j->spares);
			keep = renameat(j->dirfd, name, j->dirfd, spare) == 0;
			if (keep)
				j->spares++;
		}
		pthread_mutex_unlock(&j->lock);
		if (!keep)
			unlinkat(j->dirfd, name, 0);
		fsync(j->dirfd);
	}
}

static void make_spare(struct journal *j)
{
	char spare[40];
	int ret;

	pthread_mutex_lock(&j->lock);
	if (j->spares >= SPARES_WANTED || j->error) {
		j->want_spare = false;
		pthread_mutex_unlock(&j->lock);
		return;
	}
	pthread_mutex_unlock(&j->lock);
	unlinkat(j->dirfd, "spare.tmp", 0);
	ret = jseg_create(j->dirfd, "spare.tmp", j->timeline, UINT64_MAX, j->seg_size);
	if (!ret) {
		pthread_mutex_lock(&j->lock);
		snprintf(spare, sizeof(spare), "spare-%u.seg", j->spares);
		if (renameat(j->dirfd, "spare.tmp", j->dirfd, spare) == 0) {
			j->spares++;
			j->want_spare = j->spares < SPARES_WANTED;
		} else {
			ret = -errno;
		}
		pthread_mutex_unlock(&j->lock);
	}
	if (!ret && fsync(j->dirfd) < 0)
		ret = -errno;
	if (ret) {
		/* asked again at the next segment switch, not retried in a loop */
		log_warn("journal: cannot prepare a spare segment in %s: %s", j->dir, strerror(-ret));
		pthread_mutex_lock(&j->lock);
		j->want_spare = false;
		pthread_mutex_unlock(&j->lock);
	}
}

static void write_stats(struct journal *j)
{
	struct journal_stats st;
	char text[900];
	int n;

	if (!j->cfg.stats_path)
		return;
	journal_get_stats(j, &st);
	n = snprintf(text, sizeof(text),
		     "head=%" PRIu64 "\nwritten=%" PRIu64 "\ndurable=%" PRIu64
		     "\ncheckpoint=%" PRIu64 "\nsegments=%" PRIu64 "\nsegment_bytes=%" PRIu64
		     "\nflushes=%" PRIu64 "\nrecords=%" PRIu64 "\nerror=%s\nyielded=%" PRIu64
		     "\nyielded_at=%" PRIu64 "\nyielded_holds=%s\nyield_reason=%s\n"
		     "max_bytes=%" PRIu64 "\nmin_free=%" PRIu64 "\n",
		     st.head_lsn, st.written_lsn, st.durable_lsn, st.checkpoint_lsn, st.segments,
		     st.segment_bytes, st.flushes, st.records, st.error ? strerror(-st.error) : "none",
		     st.yielded, st.yielded_at, st.yielded_holds, st.yield_reason,
		     st.max_bytes, st.min_free);
	write_file_replace(j->cfg.stats_path, text, (size_t)n);
}

static void *checkpoint_thread(void *arg)
{
	struct journal *j = arg;
	uint64_t last = now_ns(CLOCK_MONOTONIC);
	uint64_t interval = (uint64_t)j->cfg.checkpoint_interval_ms * 1000000ull;

	for (;;) {
		struct timespec ts;
		bool stop, want_spare, due;

		pthread_mutex_lock(&j->lock);
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 1;
		if (!j->stop && !j->want_spare)
			pthread_cond_timedwait(&j->tick, &j->lock, &ts);
		stop = j->stop;
		want_spare = j->want_spare;
		due = !j->error && (now_ns(CLOCK_MONOTONIC) - last >= interval ||
				    j->head - j->checkpoint >= j->cfg.checkpoint_bytes);
		pthread_mutex_unlock(&j->lock);
		if (stop)
			break;
		if (due) {
			journal_checkpoint(j);
			last = now_ns(CLOCK_MONOTONIC);
			recycle(j);
		}
		if (want_spare)
			make_spare(j);
		write_stats(j);
	}
	return NULL;
}

/* ---- holds and counters ---- */

static int add_hold(struct journal *j, const char *name, uint64_t lsn, unsigned yields)
{
	int id = -ENOSPC;

	pthread_mutex_lock(&j->lock);
	for (int i = 0; i < NHOLDS; i++)
		if (!j->holds[i].used) {
			j->holds[i].used = true;
			j->holds[i].yields = yields;
			j->holds[i].lsn = lsn;
			snprintf(j->holds[i].name, sizeof(j->holds[i].name), "%s", name);
			id = i;
			break;
		}
	pthread_mutex_unlock(&j->lock);
	return id;
}

int journal_hold(struct journal *j, const char *name, uint64_t lsn)
{
	return add_hold(j, name, lsn, 0);
}

int journal_hold_soft(struct journal *j, const char *name, uint64_t lsn, unsigned yields)
{
	return add_hold(j, name, lsn, yields);
}

void journal_release(struct journal *j, int id, uint64_t lsn)
{
	if (id < 0 || id >= NHOLDS)
		return;
	pthread_mutex_lock(&j->lock);
	if (lsn == UINT64_MAX)
		j->holds[id].used = false;
	else
		j->holds[id].lsn = lsn;
	pthread_mutex_unlock(&j->lock);
}

void journal_get_stats(struct journal *j, struct journal_stats *st)
{
	pthread_mutex_lock(&j->lock);
	st->head_lsn = j->head;
	st->written_lsn = j->written;
	st->durable_lsn = j->durable;
	st->checkpoint_lsn = j->checkpoint;
	st->segments = j->nseg;
	st->segment_bytes = j->nseg * j->seg_size;
	st->flushes = j->flushes;
	st->records = j->records;
	st->error = j->error;
	st->direct = j->direct;
	st->max_bytes = j->cfg.max_bytes;
	st->min_free = j->cfg.min_free;
	st->yielded = j->yielded;
	st->yielded_at = j->yielded_at;
	memcpy(st->yielded_holds, j->yielded_holds, sizeof(st->yielded_holds));
	memcpy(st->yield_reason, j->yield_reason, sizeof(st->yield_reason));
	pthread_mutex_unlock(&j->lock);
}

/* ---- open and close ---- */

static void free_journal(struct journal *j)
{
	if (j->cur_fd >= 0)
		close(j->cur_fd);
	if (j->dirfd >= 0)
		close(j->dirfd);
	if (j->ring_ok)
		io_uring_queue_exit(&j->ring);
	free(j->segs);
	free(j->stage);
	free(j->dir);
	pthread_mutex_destroy(&j->lock);
	pthread_mutex_destroy(&j->ckpt_lock);
	pthread_cond_destroy(&j->work);
	pthread_cond_destroy(&j->durable_cv);
	pthread_cond_destroy(&j->space_cv);
	pthread_cond_destroy(&j->tick);
	free(j);
}

/* Counts usable spares (right size) and removes the rest. */
static void scan_spares(struct journal *j)
{
	char name[40];
	struct stat st;

	unlinkat(j->dirfd, "spare.tmp", 0);
	j->spares = 0;
	for (unsigned i = 0; i < 8; i++) {
		snprintf(name, sizeof(name), "spare-%u.seg", i);
		if (fstatat(j->dirfd, name, &st, 0) < 0)
			continue;
		if ((uint64_t)st.st_size == j->seg_size && i == j->spares) {
			j->spares++;
		} else if ((uint64_t)st.st_size == j->seg_size) {
			char to[40];
			snprintf(to, sizeof(to), "spare-%u.seg", j->spares);
			if (renameat(j->dirfd, name, j->dirfd, to) == 0)
				j->spares++;
		} else {
			unlinkat(j->dirfd, name, 0);
		}
	}
}

/*
 * Finds the end of the valid log from the checkpoint and puts the journal
 * thread's state there.  After an unclean stop the segment is sealed at the
 * end (stale bytes after it are never read) and a new one begins.
 */
static int position_at_end(struct journal *j, bool seal)
{
	struct jreader *rd;
	struct jrec r;
	uint64_t end;
	bool sealed;
	size_t i;
	int fd, ret;

	ret = jreader_open(j->dir, j->sb.checkpoint_lsn, &rd);
	if (ret)
		return ret;
	while ((ret = jreader_next(rd, &r)) == 1)
		;
	end = jreader_lsn(rd);
	sealed = jreader_sealed(rd);
	jreader_close(rd);
	if (ret < 0)
		return ret;
	ret = jseg_list(j->dirfd, &j->segs, &j->nseg);
	if (ret)
		return ret;
	j->segcap = j->nseg;
	if (!j->nseg)
		return -ENOENT;
	for (i = 0; i + 1 < j->nseg && j->segs[i + 1].first_lsn <= end; i++)
		;
	/* segments after the end were never reached: kept aside, not deleted */
	for (size_t k = i + 1; k < j->nseg; k++) {
		char aside[64];
		snprintf(aside, sizeof(aside), "unreached-%s", j->segs[k].name);
		renameat(j->dirfd, j->segs[k].name, j->dirfd, aside);
	}
	j->nseg = i + 1;
	j->head = j->written = j->durable = end;
	j->checkpoint = j->sb.checkpoint_lsn;
	if (sealed && j->segs[i].first_lsn < end) {
		/* sealed and the next segment was never made */
		j->nseg--;
		j->cur_fd = -1;
		j->seg_first = end;
		j->seg_end = end + j->seg_size - JSEG_HEADER;
		return switch_segment(j, end);
	}
	fd = openat(j->dirfd, j->segs[i].name, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ret = use_segment(j, fd, j->segs[i].first_lsn, (off_t)(JSEG_HEADER + end - j->segs[i].first_lsn));
	if (ret) {
		close(fd);
		return ret;
	}
	j->seg_first = j->cur_first;
	j->seg_end = j->cur_first + j->seg_size - JSEG_HEADER;
	if (seal) {
		unsigned char b[SEAL_LEN];
		struct jrec s = { .type = JR_SEAL, .lsn = end, .time_ns = now_ns(CLOCK_REALTIME) };
		jrec_encode(&s, b);
		ret = stage_put(j, b, SEAL_LEN);
		if (!ret)
			ret = stage_write(j, true);
		if (ret)
			return ret;
		end += SEAL_LEN;
		j->head = j->written = j->durable = end;
		j->seg_first = end;
		j->seg_end = end + j->seg_size - JSEG_HEADER;
		return switch_segment(j, end);
	}
	return 0;
}

/*
 * Before a replay: an invalid record with valid ones after it is damage, not
 * a torn tail, and replaying up to it would silently drop the rest.  Refuse
 * unless the operator accepts that loss (cfg->truncate_damaged).
 */
static int check_damage(struct journal *j, const struct journal_config *cfg)
{
	struct jreader *rd;
	struct jrec r;
	char why[200] = "";
	uint64_t end, found;
	int ret = jreader_open(cfg->dir, j->sb.checkpoint_lsn, &rd);

	if (ret)
		return ret;
	while ((ret = jreader_next(rd, &r)) == 1)
		;
	end = jreader_lsn(rd);
	if (jreader_stop(rd))
		snprintf(why, sizeof(why), "%s", jreader_stop(rd));
	jreader_close(rd);
	if (ret < 0)
		return ret;
	if (!why[0] || jlog_valid_after(cfg->dir, end, &found) != 1)
		return 0;
	if (cfg->truncate_damaged) {
		log_warn("journal: %s; discarding the records from LSN %" PRIu64
			 " on, as -o journal_truncate asks", why, end);
		return 0;
	}
	log_error("journal in %s is damaged: %s, and valid records follow (LSN %" PRIu64 "); nothing was replayed. "
		  "Inspect with 'drfs journal dump', then mount with -o journal_truncate to "
		  "accept losing the records after LSN %" PRIu64, cfg->dir, why, found, end);
	return -EBADMSG;
}

int journal_open(const struct journal_config *cfg, struct journal **out,
		 struct replay_result *rr)
{
	struct replay_result local;
	struct journal *j = calloc(1, sizeof(*j));
	bool clean;
	int ret;

	if (!rr)
		rr = &local;
	memset(rr, 0, sizeof(*rr));
	if (!j)
		return -ENOMEM;
	j->cfg = *cfg;
	if (!j->cfg.flush_interval_ms)
		j->cfg.flush_interval_ms = 200;
	if (!j->cfg.seal_age_ms)
		j->cfg.seal_age_ms = 60000;
	if (!j->cfg.checkpoint_interval_ms)
		j->cfg.checkpoint_interval_ms = 30000;
	if (!j->cfg.queue_limit)
		j->cfg.queue_limit = 64ull << 20;
	j->dirfd = -1;
	j->cur_fd = -1;
	if (posix_memalign((void **)&j->stage, BLK, STAGE_SIZE)) {
		free(j);
		return -ENOMEM;
	}
	j->qtail = &j->qhead;
	pthread_mutex_init(&j->lock, NULL);
	pthread_mutex_init(&j->ckpt_lock, NULL);
	pthread_cond_init(&j->work, NULL);
	pthread_cond_init(&j->durable_cv, NULL);
	pthread_cond_init(&j->space_cv, NULL);
	pthread_cond_init(&j->tick, NULL);
	for (int i = 0; i < NSLOTS; i++)
		atomic_init(&j->slots[i], UINT64_MAX);
	j->dir = strdup(cfg->dir);
	j->dirfd = open(cfg->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (!j->dir || j->dirfd < 0) {
		ret = -errno;
		log_error("journal: cannot open %s: %s", cfg->dir, strerror(-ret));
		goto fail;
	}
	ret = jsuper_read(cfg->dir, &j->sb);
	if (ret) {
		log_error("journal: %s/super: %s; the journal cannot be trusted, run drfs journal dump",
			  cfg->dir, ret == -EBADMSG ? "no valid superblock slot" : strerror(-ret));
		goto fail;
	}
	j->timeline = j->sb.timeline;
	j->seg_size = j->sb.segment_size;
	if (!j->cfg.checkpoint_bytes)
		j->cfg.checkpoint_bytes = 2 * j->seg_size;
	if (!apply_handles_supported(cfg->backing_fd)) {
		ret = -EOPNOTSUPP;
		log_error("journal: the backing filesystem does not give out {inode, generation} "
			  "file handles (ext4 does); the journal cannot find files again after a crash");
		goto fail;
	}
	clean = j->sb.flags & JSUPER_CLEAN;
	if (!clean) {
		unsigned char id[16];
		bool reboot;

		ret = check_damage(j, cfg);
		if (ret)
			goto fail;
		boot_id(id);
		reboot = memcmp(id, j->sb.boot_id, 16) != 0 || cfg->full_replay;
		ret = journal_replay_dir(cfg->dir, cfg->backing_fd, j->sb.checkpoint_lsn, reboot, rr);
		if (ret)
			goto fail;
		rr->unclean = true;
		rr->reboot = reboot;
	}
	scan_spares(j);
	ret = position_at_end(j, !clean);
	if (ret) {
		log_error("journal: cannot continue the log in %s: %s", cfg->dir, strerror(-ret));
		goto fail;
	}
	j->seg_started_ns = j->last_flush_ns = now_ns(CLOCK_MONOTONIC);
	if (!clean) {
		/* the tree holds everything replayed: make it durable before going on */
		if (syncfs(cfg->backing_fd) < 0) {
			ret = -errno;
			log_error("journal: syncfs of %s after replay: %s", cfg->dir, strerror(-ret));
			goto fail;
		}
	}
	/* from now on a crash is an unclean stop */
	ret = write_super(j, j->head, 0);
	if (ret) {
		log_error("journal: cannot write %s/super: %s", cfg->dir, strerror(-ret));
		goto fail;
	}
	j->checkpoint = j->head;
	unlinkat(j->dirfd, "replay.map", 0);   /* the checkpoint is past the replay */
	j->recovered = !clean;
	j->rr = *rr;
	*out = j;
	return 0;
fail:
	free_journal(j);
	return ret;
}

int journal_start(struct journal *j)
{
	int ret = io_uring_queue_init(RING_DEPTH, &j->ring, 0);

	if (ret < 0) {
		log_error("journal: cannot set up io_uring: %s", strerror(-ret));
		return ret;
	}
	j->ring_ok = true;
	if (pthread_create(&j->jthread, NULL, journal_thread, j))
		return -EAGAIN;
	if (pthread_create(&j->cthread, NULL, checkpoint_thread, j)) {
		pthread_mutex_lock(&j->lock);
		j->stop = true;
		pthread_cond_broadcast(&j->work);
		pthread_mutex_unlock(&j->lock);
		pthread_join(j->jthread, NULL);
		j->stop = false;
		return -EAGAIN;
	}
	j->threads = true;
	if (j->recovered) {
		struct jrec r = { .type = JR_RECOVERED, .lsn2 = j->rr.from, .offset = j->rr.to,
				  .xflags = j->rr.reboot ? JR_RECOVERED_REBOOT : 0 };
		int err;
		uint64_t lsn = journal_append(j, &r, false, &err);
		if (!lsn || (err = journal_wait(j, lsn)))
			return err ? err : -EIO;
	}
	pthread_mutex_lock(&j->lock);
	j->want_spare = j->spares < SPARES_WANTED;
	pthread_cond_broadcast(&j->tick);
	pthread_mutex_unlock(&j->lock);
	return 0;
}

int journal_close(struct journal *j)
{
	uint64_t head;
	int ret;

	if (!j)
		return 0;
	head = journal_head(j);
	ret = j->threads ? journal_wait(j, head) : 0;
	pthread_mutex_lock(&j->lock);
	j->stop = true;
	pthread_cond_broadcast(&j->work);
	pthread_cond_broadcast(&j->tick);
	pthread_mutex_unlock(&j->lock);
	if (j->threads) {
		pthread_join(j->jthread, NULL);
		pthread_join(j->cthread, NULL);
	}
	if (!ret && !j->error) {
		pthread_mutex_lock(&j->ckpt_lock);
		ret = checkpoint_to(j, head, JSUPER_CLEAN);
		pthread_mutex_unlock(&j->ckpt_lock);
		if (!ret)
			recycle(j);
	}
	if (!ret && j->error)
		ret = j->error;
	write_stats(j);
	free_journal(j);
	return ret;
}
