/*
 * uring.c - FUSE requests over io_uring (Linux 6.14+, fuse.enable_uring).
 *
 * Over /dev/fuse, any idle worker takes a request, so on a small machine a
 * request and its reply each wake a thread on another CPU; in a virtual
 * machine such a wake-up costs more than the work.  Over io_uring the kernel
 * keeps one queue per CPU and hands a request to the queue of the CPU its
 * caller runs on; the threads serving queue Q are pinned to CPU Q, so the
 * caller and the worker take turns on one CPU.  docs/design.md "FUSE over
 * io_uring" has the numbers.
 *
 * libfuse 3.14 predates this transport, so it stays the request decoder:
 *  - the session runs on custom I/O (fuse_session_custom_io), whichever the
 *    transport: our read and writev see every request and reply of the
 *    /dev/fuse path.  The INIT reply gets FUSE_HANDLE_KILLPRIV_V2 (always,
 *    when offered) and FUSE_OVER_IO_URING (when offered and wanted); the
 *    set-id flags of WRITE, OPEN and CREATE, which libfuse does not pass
 *    on, are noted for the thread that serves the request
 *    (furing_kills_setid; docs/design.md "Set-id bits");
 *  - then each ring thread registers one entry: a header buffer and a payload
 *    buffer.  A request arrives split in three (in header, per-operation
 *    header, payload); it is put back together in front of the payload, in
 *    the layout /dev/fuse gives, and passed to fuse_session_process_buf();
 *  - the reply comes back through our writev on the same thread: it is
 *    copied into the entry (a READ served straight into the payload buffer
 *    is not copied) and committed with the fetch of the next request.
 * FORGET and INTERRUPT still come over /dev/fuse, served by the workers.
 * When registration fails the kernel falls back to /dev/fuse by itself.
 */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <linux/fuse.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "../common/common.h"
#include "fs_i.h"

/* The kernel's interface (include/uapi/linux/fuse.h, 7.42); older headers lack it. */
#define URING_FLAG_FUSE_OVER_IO_URING (1ULL << 41)
#define URING_HDR_IN_OUT 128
#define URING_HDR_OP 128
#define URING_CMD_REGISTER 1
#define URING_CMD_COMMIT_AND_FETCH 2

struct uring_ent_in_out {
	uint64_t flags;
	uint64_t commit_id;
	uint32_t payload_sz;
	uint32_t padding;
	uint64_t reserved;
};

struct uring_req_header {
	char in_out[URING_HDR_IN_OUT];
	char op_in[URING_HDR_OP];
	struct uring_ent_in_out ent;
};

struct uring_cmd_req {
	uint64_t flags;
	uint64_t commit_id;
	uint16_t qid;
	uint8_t padding[6];
};

_Static_assert(sizeof(struct uring_req_header) == 288, "fuse_uring_req_header");
_Static_assert(sizeof(struct uring_cmd_req) == 24, "fuse_uring_cmd_req");

#define ENABLE_PARAM "/sys/module/fuse/parameters/enable_uring"

struct ring_thread {
	struct furing *fu;
	pthread_t thread;
	unsigned qid;
	bool started, ring_ok;
	struct io_uring ring;
	struct uring_req_header *hdr;
	char *base, *payload;        /* payload = base + 4096: room for the headers in front */
	uint64_t unique;             /* the request being served */
	bool replied;
};

struct furing {
	struct drfs_fs *fs;
	int fd;                      /* /dev/fuse */
	bool off;                    /* fuse_uring=off: custom I/O only */
	bool want;                   /* ask for the ring at INIT */
	uint64_t init_unique;
	uint64_t init_flags;         /* what the kernel offered (flags | flags2 << 32) */
	unsigned per_queue, nqueues, nthreads;
	struct ring_thread *threads;
	pthread_mutex_t lock;
	pthread_cond_t go;
	enum { WAIT, GO, QUIT } state; /* set once INIT is answered; under lock */
	unsigned registered, failed; /* entries; under lock */
};

/* Payload buffer: the largest request or reply (max_write and max_pages are 1 MiB). */
#define PAYLOAD_SIZE ((size_t)1 << 20)

static __thread struct ring_thread *self;
/* The request this thread serves asks for set-id bits to be cleared. */
static __thread bool kills_setid;
/* The request this thread serves came as FUSE_TMPFILE (relabelled CREATE). */
static __thread bool is_tmpfile;

/* Writes LINE (how requests reach the daemon) where 'drfs status' reads it. */
static void furing_report(struct drfs_fs *fs, const char *line)
{
	char text[256];
	int n = snprintf(text, sizeof(text), "%s\n", line);

	if (fs->cfg.transport_path && n > 0 && n < (int)sizeof(text))
		write_file_replace(fs->cfg.transport_path, text, (size_t)n);
}

/*
 * Notes, for the thread that goes on to serve it, whether request BUF (LEN
 * bytes as the kernel sent it) carries a set-id flag libfuse drops, and
 * relabels a TMPFILE as the CREATE it is laid out as (docs/design.md
 * "O_TMPFILE"), which libfuse 3.14 would refuse as unknown.
 */
static void note_request(void *buf, size_t len)
{
	struct fuse_in_header *in = buf;
	const char *arg = (const char *)(in + 1);

	kills_setid = false;
	is_tmpfile = false;
	if (len < sizeof(*in))
		return;
	len -= sizeof(*in);
	if (in->opcode == FUSE_TMPFILE && len >= sizeof(struct fuse_create_in)) {
		in->opcode = FUSE_CREATE;
		is_tmpfile = true;
	}
	if (in->opcode == FUSE_WRITE && len >= sizeof(struct fuse_write_in))
		kills_setid = ((const struct fuse_write_in *)arg)->write_flags & FUSE_WRITE_KILL_SUIDGID;
	else if (in->opcode == FUSE_OPEN && len >= sizeof(struct fuse_open_in))
		kills_setid = ((const struct fuse_open_in *)arg)->open_flags & FUSE_OPEN_KILL_SUIDGID;
	else if (in->opcode == FUSE_CREATE && len >= sizeof(struct fuse_create_in))
		kills_setid = ((const struct fuse_create_in *)arg)->open_flags & FUSE_OPEN_KILL_SUIDGID;
}

bool furing_is_tmpfile(void)
{
	return is_tmpfile;
}

bool furing_kills_setid(void)
{
	return kills_setid;
}

static ssize_t io_read(int fd, void *buf, size_t len, void *userdata)
{
	struct furing *fu = ((struct drfs_fs *)userdata)->uring;
	ssize_t n = read(fd, buf, len);

	if (n > 0)
		note_request(buf, (size_t)n);
	if (n >= (ssize_t)(sizeof(struct fuse_in_header) + sizeof(struct fuse_init_in))) {
		const struct fuse_in_header *in = buf;

		if (in->opcode == FUSE_INIT) {
			const struct fuse_init_in *ii = (const void *)(in + 1);
			uint64_t flags = ii->flags;

			/* flags2 exists from 7.36 on, announced by FUSE_INIT_EXT */
			if ((flags & FUSE_INIT_EXT) &&
			    n >= (ssize_t)(sizeof(*in) + offsetof(struct fuse_init_in, flags2) + 4))
				flags |= (uint64_t)ii->flags2 << 32;
			fu->init_unique = in->unique;
			fu->init_flags = flags;
		}
	}
	return n;
}

static void release_threads(struct furing *fu, bool on);

/* Whether the kernel's largest payload (max_write, max_pages) fits an entry. */
static bool payload_fits(const struct fuse_init_out *out)
{
	long psz = sysconf(_SC_PAGESIZE);
	size_t pages = (size_t)out->max_pages * (size_t)(psz > 0 ? psz : 4096);

	return out->max_write <= PAYLOAD_SIZE && pages <= PAYLOAD_SIZE;
}

static ssize_t io_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	struct furing *fu = ((struct drfs_fs *)userdata)->uring;
	struct fuse_out_header *oh = iov[0].iov_base;
	struct ring_thread *t = self;
	ssize_t n;

	if (t && oh->unique == t->unique && !t->replied) {
		size_t off = 0;

		for (int i = 1; i < count; i++) {
			if (iov[i].iov_len > PAYLOAD_SIZE - off)
				return -1;   /* larger than the kernel allows: cannot happen */
			if (iov[i].iov_base != t->payload + off)
				memmove(t->payload + off, iov[i].iov_base, iov[i].iov_len);
			off += iov[i].iov_len;
		}
		memcpy(t->hdr->in_out, oh, sizeof(*oh));
		t->hdr->ent.payload_sz = (uint32_t)off;
		t->replied = true;
		return (ssize_t)(sizeof(*oh) + off);
	}
	if (oh->unique && oh->unique == fu->init_unique) {
		struct fuse_init_out *out = count == 2 ? iov[1].iov_base : NULL;
		bool ok = out && oh->error == 0 &&
			  iov[1].iov_len >= offsetof(struct fuse_init_out, flags2) + 4;
		bool on = ok && fu->want && (fu->init_flags & URING_FLAG_FUSE_OVER_IO_URING) &&
			  payload_fits(out);

		/* the daemon clears set-id bits: no GETXATTR before each write(2) */
		if (ok && (fu->init_flags & FUSE_HANDLE_KILLPRIV_V2))
			out->flags |= FUSE_HANDLE_KILLPRIV_V2;
		if (on) {
			out->flags |= FUSE_INIT_EXT;
			out->flags2 |= (uint32_t)(URING_FLAG_FUSE_OVER_IO_URING >> 32);
		}
		n = writev(fd, iov, count);
		if (fu->want)
			release_threads(fu, on && n >= 0);
		return n;
	}
	return writev(fd, iov, count);
}

/* Queues the command OP for T's entry (REGISTER or COMMIT_AND_FETCH of T->unique). */
static int queue_cmd(struct ring_thread *t, uint32_t op, struct iovec *iov)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&t->ring);
	struct uring_cmd_req *req;

	if (!sqe)
		return -EBUSY;
	memset(sqe, 0, 128);
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = t->fu->fd;
	sqe->cmd_op = op;
	if (iov) {
		sqe->addr = (uint64_t)(uintptr_t)iov;
		sqe->len = 2;
	}
	req = (struct uring_cmd_req *)sqe->cmd;
	req->qid = (uint16_t)t->qid;
	req->commit_id = op == URING_CMD_COMMIT_AND_FETCH ? t->unique : 0;
	return 0;
}

static void note_registered(struct furing *fu, int err)
{
	char line[160];

	pthread_mutex_lock(&fu->lock);
	if (err && !fu->failed++) {
		log_warn("FUSE over io_uring: the kernel refused a queue entry (%s); "
			 "requests go through /dev/fuse", strerror(-err));
		snprintf(line, sizeof(line), "/dev/fuse (the kernel refused io_uring: %s)", strerror(-err));
		furing_report(fu->fs, line);
	}
	if (!err && ++fu->registered == fu->nthreads && !fu->failed) {
		snprintf(line, sizeof(line), "io_uring, %u queues (one per CPU), %u threads each",
			 fu->nqueues, fu->per_queue);
		log_info("requests over %s", line);
		furing_report(fu->fs, line);
	}
	pthread_mutex_unlock(&fu->lock);
}

static void *ring_main(void *arg)
{
	struct ring_thread *t = arg;
	struct furing *fu = t->fu;
	struct fuse_session *se = fu->fs->se;
	struct iovec iov[2] = { { t->hdr, sizeof(*t->hdr) }, { t->payload, PAYLOAD_SIZE } };
	struct io_uring_cqe *cqe;
	cpu_set_t cpus;
	int ret;

	self = t;
	CPU_ZERO(&cpus);
	CPU_SET(t->qid, &cpus);
	/* best effort: a CPU outside our set still gets its queue served */
	pthread_setaffinity_np(pthread_self(), sizeof(cpus), &cpus);
	pthread_mutex_lock(&fu->lock);
	while (fu->state == WAIT)
		pthread_cond_wait(&fu->go, &fu->lock);
	ret = fu->state == GO ? 0 : -ECANCELED;
	pthread_mutex_unlock(&fu->lock);
	if (!ret)
		ret = queue_cmd(t, URING_CMD_REGISTER, iov);
	if (!ret) {
		/*
		 * The kernel answers a REGISTER it refuses at once; one it takes
		 * completes with the entry's first request.
		 */
		ret = io_uring_submit(&t->ring);
		if (ret >= 0) {
			ret = 0;
			if (io_uring_peek_cqe(&t->ring, &cqe) == 0 && cqe->res < 0) {
				ret = cqe->res;
				io_uring_cqe_seen(&t->ring, cqe);
			}
		}
		note_registered(fu, ret);
	}
	while (!ret) {
		struct __kernel_timespec tick = { .tv_sec = 1 };

		/*
		 * One system call: the commit of the previous request, if any, and
		 * the wait.  liburing 2.3 may return the number submitted without
		 * a completion: that is a wait that timed out.
		 */
		do {
			cqe = NULL;
			ret = io_uring_submit_and_wait_timeout(&t->ring, &cqe, 1, &tick, NULL);
			if (ret >= 0)
				ret = cqe ? 0 : -ETIME;
		} while ((ret == -ETIME || ret == -EINTR) && !fuse_session_exited(se));
		if (ret < 0)
			break;
		ret = cqe->res;
		io_uring_cqe_seen(&t->ring, cqe);
		if (ret)
			break;   /* -ENOTCONN: unmounted */

		const struct fuse_in_header *in = (const void *)t->hdr->in_out;
		uint32_t payload = t->hdr->ent.payload_sz;
		size_t op_len;

		t->unique = in->unique;
		t->replied = false;
		if (in->len < sizeof(*in) + payload || in->len - sizeof(*in) - payload > URING_HDR_OP ||
		    payload > PAYLOAD_SIZE) {
			log_error("FUSE over io_uring: request %llu of %u bytes does not fit its entry",
				  (unsigned long long)in->unique, in->len);
		} else {
			op_len = in->len - sizeof(*in) - payload;
			char *front = t->payload - op_len - sizeof(*in);
			struct fuse_buf buf = { .mem = front, .size = in->len };
			uint32_t opcode = in->opcode;

			memcpy(front, in, sizeof(*in));
			memcpy(front + sizeof(*in), t->hdr->op_in, op_len);
			note_request(front, in->len);
			fuse_session_process_buf(se, &buf);
			if (!t->replied)
				log_error("FUSE over io_uring: request %llu (opcode %u) got no reply",
					  (unsigned long long)t->unique, opcode);
		}
		if (!t->replied) {
			/* the caller must not wait forever: it gets EIO */
			struct fuse_out_header oh = { .len = sizeof(oh), .error = -EIO, .unique = t->unique };

			memcpy(t->hdr->in_out, &oh, sizeof(oh));
			t->hdr->ent.payload_sz = 0;
		}
		ret = queue_cmd(t, URING_CMD_COMMIT_AND_FETCH, NULL);
	}
	self = NULL;
	return NULL;
}

static void release_threads(struct furing *fu, bool on)
{
	if (!on)
		furing_report(fu->fs, "/dev/fuse (this kernel does not offer io_uring: it needs "
				      "Linux 6.14+ and the fuse module's enable_uring)");
	pthread_mutex_lock(&fu->lock);
	fu->state = on ? GO : QUIT;
	pthread_cond_broadcast(&fu->go);
	pthread_mutex_unlock(&fu->lock);
}

/*
 * Everything a ring thread needs is made before INIT is answered: once the
 * reply asks for io_uring the kernel holds every request until each queue
 * has an entry, so nothing may fail after it but the registration itself
 * (which the kernel answers by falling back to /dev/fuse).
 */
static int create_threads(struct furing *fu)
{
	fu->nthreads = fu->nqueues * fu->per_queue;
	fu->threads = calloc(fu->nthreads, sizeof(*fu->threads));
	if (!fu->threads)
		return -ENOMEM;
	for (unsigned i = 0; i < fu->nthreads; i++) {
		struct ring_thread *t = &fu->threads[i];
		struct io_uring_params p = { .flags = IORING_SETUP_SQE128 };
		int ret;

		t->fu = fu;
		t->qid = i % fu->nqueues;
		t->hdr = aligned_alloc(64, sizeof(*t->hdr));
		/* the payload starts on a page, the request's headers just before it */
		t->base = aligned_alloc(4096, 4096 + PAYLOAD_SIZE);
		if (!t->hdr || !t->base)
			return -ENOMEM;
		t->payload = t->base + 4096;
		ret = io_uring_queue_init_params(4, &t->ring, &p);
		if (ret < 0)
			return ret;
		t->ring_ok = true;
		if (pthread_create(&t->thread, NULL, ring_main, t))
			return -EAGAIN;
		t->started = true;
	}
	return 0;
}

/* Number of possible CPUs: the kernel keeps a queue for each. */
static unsigned possible_cpus(void)
{
	FILE *f = fopen("/sys/devices/system/cpu/possible", "re");
	unsigned lo, hi, n = 0;
	char sep;

	if (!f)
		return 0;
	/* "0-3" or "0" or "0-1,4-5": count every range */
	while (fscanf(f, "%u", &lo) == 1) {
		hi = lo;
		if (fscanf(f, "%c", &sep) == 1 && sep == '-') {
			if (fscanf(f, "%u", &hi) != 1)
				break;
			if (fscanf(f, "%c", &sep) != 1)
				sep = '\n';
		}
		n = hi + 1 > n ? hi + 1 : n;
		if (sep != ',')
			break;
	}
	fclose(f);
	return n;
}

/* Whether the fuse module lets servers use io_uring, turning it on if it can. */
static bool kernel_allows(void)
{
	char v = 'N';
	int fd = open(ENABLE_PARAM, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return false;
	if (read(fd, &v, 1) != 1)
		v = 'N';
	close(fd);
	if (v == 'Y' || v == '1')
		return true;
	fd = open(ENABLE_PARAM, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	bool ok = write(fd, "Y", 1) == 1;
	close(fd);
	if (ok)
		log_info("turned on FUSE over io_uring for this kernel (%s)", ENABLE_PARAM);
	return ok;
}

int furing_setup(struct drfs_fs *fs)
{
	struct furing *fu;
	int mode = fs->cfg.fuse_uring;

	fu = calloc(1, sizeof(*fu));
	if (!fu)
		return -ENOMEM;
	pthread_mutex_init(&fu->lock, NULL);
	pthread_cond_init(&fu->go, NULL);
	fu->fs = fs;
	fu->fd = -1;
	fs->uring = fu;
	if (mode == FS_URING_OFF) {
		fu->off = true;
		return 0;
	}
	fu->nqueues = possible_cpus();
	/* as many threads as the /dev/fuse pool, spread over the queues */
	fu->per_queue = (fs->cfg.max_threads ? fs->cfg.max_threads : 16) / (fu->nqueues ? fu->nqueues : 1);
	if (fu->per_queue < 2)
		fu->per_queue = 2;
	fu->want = fu->nqueues > 0 && fu->nqueues <= 1024 && kernel_allows();
	if (!fu->want && mode == FS_URING_ON)
		log_warn("FUSE over io_uring is not available here (needs Linux 6.14+ with %s); "
			 "requests go through /dev/fuse", ENABLE_PARAM);
	return 0;
}

int furing_attach(struct drfs_fs *fs)
{
	static const struct fuse_custom_io io = { .read = io_read, .writev = io_writev };
	struct furing *fu = fs->uring;


	if (!fu)
		return 0;
	fu->fd = fuse_session_fd(fs->se);
	return fuse_session_custom_io(fs->se, &io, fu->fd) ? -EINVAL : 0;
}

void furing_start(struct drfs_fs *fs)
{
	struct furing *fu = fs->uring;
	int ret;

	if (!fu)
		return;
	if (fu->off) {
		furing_report(fs, "/dev/fuse (fuse_uring=off)");
		return;
	}
	if (!fu->want) {
		release_threads(fu, false);   /* says so for status: INIT will not ask */
		return;
	}
	ret = create_threads(fu);
	if (ret < 0) {
		log_warn("FUSE over io_uring: cannot set up the ring threads (%s); "
			 "requests go through /dev/fuse", strerror(-ret));
		fu->want = false;
		release_threads(fu, false);
	}
}

void furing_stop(struct drfs_fs *fs)
{
	struct furing *fu = fs->uring;

	if (!fu)
		return;
	/* never served (INIT not answered): the threads still wait for it */
	pthread_mutex_lock(&fu->lock);
	if (fu->state == WAIT) {
		fu->state = QUIT;
		pthread_cond_broadcast(&fu->go);
	}
	pthread_mutex_unlock(&fu->lock);
	for (unsigned i = 0; fu->threads && i < fu->nthreads; i++) {
		struct ring_thread *t = &fu->threads[i];

		if (t->started)
			pthread_join(t->thread, NULL);
		if (t->ring_ok)
			io_uring_queue_exit(&t->ring);
		free(t->hdr);
		free(t->base);
	}
	free(fu->threads);
	pthread_cond_destroy(&fu->go);
	pthread_mutex_destroy(&fu->lock);
	free(fu);
	fs->uring = NULL;
}

void *furing_reply_buffer(size_t *size)
{
	struct ring_thread *t = self;

	if (!t || t->replied)
		return NULL;
	*size = PAYLOAD_SIZE;
	return t->payload;
}
