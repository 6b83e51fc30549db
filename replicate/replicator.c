/*
 * replicator.c - the mount daemon's replicator (docs/replication-design.md).
 *
 * Two threads: the journal shipper sends the durable log since what the
 * replica holds as one piece every ship interval; the repository shipper
 * sends what the local repository has and the replica lacks, in the order
 * of docs/format.md "The remote" (config, packs, index files, snapshots,
 * then head).  Both retry failures with backoff for as long as they run.
 * What the replica holds is remembered in STATE/replica/ (state, shipped),
 * and the figures `drfs status` shows go to STATE/replica/status.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../journal/journal.h"
#include "../store/store.h"
#include "replicate_i.h"

#define PIECE_MAX (16u << 20)
#define HEARTBEAT_S 60
#define BACKOFF_MIN_S 1.0
#define BACKOFF_MAX_S 60.0
#define REPO_RESCAN_S 60
#define LAG_RING 4096                 /* pieces whose lag the status summarises */

struct strset {                       /* keys known to be on the replica */
	char **v;
	size_t n, cap;
	bool sorted;
};

struct replicator {
	struct replicator_config cfg;
	struct backend *be;
	char *dir;                    /* STATE/replica */
	pthread_t jthread, rthread;
	bool jstarted, rstarted;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stop, kicked, journal_gone;
	struct journal *journal;      /* protected by lock; NULL once detached */
	int hold;                     /* journal hold id, -1 */
	/* what the replica holds (lock) */
	uint32_t timeline;
	uint64_t shipped_lsn;
	struct strset shipped;
	char head_snap[65];
	uint64_t head_snap_lsn;
	/* status (lock) */
	uint64_t durable_lsn, pieces, objects, retries, queue_objects, queue_bytes;
	int64_t oldest_unshipped_ns;
	double last_success, failing_since;
	struct backend_err last_err;
	double last_err_time;
	int shipped_fd;               /* STATE/replica/shipped, append */
	/* how old the oldest record of each recent piece was when the piece landed (ms) */
	uint32_t piece_lag[LAG_RING];
	uint64_t nlag;
	double bw_next;               /* -o replica_bwlimit: when the next upload may start */
	double durable_at;            /* when durable_lsn was read from the journal */
};

static double wall_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- the set of shipped keys ---- */

static int cmp_strp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int set_add(struct strset *s, const char *key)
{
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 256;
		char **v = realloc(s->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		s->v = v;
		s->cap = cap;
	}
	if (!(s->v[s->n] = strdup(key)))
		return -ENOMEM;
	s->n++;
	s->sorted = false;
	return 0;
}

static bool set_has(struct strset *s, const char *key)
{
	if (!s->sorted && s->n) {
		qsort(s->v, s->n, sizeof(*s->v), cmp_strp);
		s->sorted = true;
	}
	return s->n && bsearch(&key, s->v, s->n, sizeof(*s->v), cmp_strp);
}

static void set_free(struct strset *s)
{
	for (size_t i = 0; i < s->n; i++)
		free(s->v[i]);
	free(s->v);
	memset(s, 0, sizeof(*s));
}

/* ---- remembered state ---- */

static int save_state(struct replicator *r)
{
	char buf[512];
	int fd = open(r->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), ret;

	if (fd < 0)
		return -errno;
	pthread_mutex_lock(&r->lock);
	int n = snprintf(buf, sizeof(buf), "url=%s\ntimeline=%u\njournal_lsn=%llu\n",
			 backend_url(r->be), r->timeline, (unsigned long long)r->shipped_lsn);
	pthread_mutex_unlock(&r->lock);
	ret = write_file_durable(fd, "state", buf, (size_t)n);
	close(fd);
	return ret;
}

static void mark_shipped(struct replicator *r, const char *key)
{
	char line[PATH_MAX + 2];
	int n = snprintf(line, sizeof(line), "%s\n", key);

	pthread_mutex_lock(&r->lock);
	set_add(&r->shipped, key);
	r->objects++;
	pthread_mutex_unlock(&r->lock);
	/* losing a line costs an upload again, not correctness: no fsync per line */
	if (r->shipped_fd >= 0 && write_all(r->shipped_fd, line, (size_t)n))
		log_warn("replica: cannot record %s as shipped in %s/shipped", key, r->dir);
}

static int list_add(void *arg, const char *key, uint64_t size)
{
	struct replicator *r = arg;
	return set_add(&r->shipped, key);
}

/*
 * Loads STATE/replica/ for the configured URL; a different URL, or none,
 * starts afresh: the journal from START_LSN, the shipped set from a listing
 * of the replica (which may already hold objects).  0 or -errno.
 */
static int load_state(struct replicator *r, uint64_t start_lsn, struct backend_err *err)
{
	char *path = path_join(r->dir, "state");
	struct kv *kv = NULL;
	bool same = false;

	if (path && kv_load(path, &kv) == 0) {
		const char *url = kv_get(kv, "url"), *lsn = kv_get(kv, "journal_lsn");
		const char *tl = kv_get(kv, "timeline");
		if (url && lsn && !strcmp(url, backend_url(r->be))) {
			same = true;
			r->shipped_lsn = strtoull(lsn, NULL, 10);
			r->timeline = tl ? (uint32_t)strtoul(tl, NULL, 10) : 0;
		}
		kv_free(kv);
	}
	free(path);
	path = path_join(r->dir, "shipped");
	if (!path)
		return -ENOMEM;
	if (same) {
		char *text;
		size_t len;
		if (read_file_small(path, &text, &len) == 0) {
			for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"))
				set_add(&r->shipped, line);
			free(text);
		} else {
			same = false;
		}
	}
	if (!same) {
		r->shipped_lsn = start_lsn;
		set_free(&r->shipped);
		int ret = backend_list(r->be, "", list_add, r, err);
		if (ret) {
			free(path);
			return ret;
		}
		/* the listing becomes the file */
		FILE *f = fopen(path, "w");
		for (size_t i = 0; f && i < r->shipped.n; i++)
			fprintf(f, "%s\n", r->shipped.v[i]);
		if (f)
			fclose(f);
	}
	r->shipped_fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	free(path);
	return save_state(r);
}

/* ---- failures ---- */

static void note_failure(struct replicator *r, const struct backend_err *e)
{
	double now = wall_s();
	bool changed;

	pthread_mutex_lock(&r->lock);
	changed = strcmp(r->last_err.msg, e->msg) || now - r->last_err_time > 60;
	r->last_err = *e;
	if (changed)
		r->last_err_time = now;
	if (!r->failing_since)
		r->failing_since = now;
	r->retries++;
	pthread_mutex_unlock(&r->lock);
	if (changed)
		log_error("replica %s: %s", backend_url(r->be), e->msg);
}

static void note_success(struct replicator *r)
{
	pthread_mutex_lock(&r->lock);
	if (r->failing_since)
		log_info("replica %s: working again after %.0f s", backend_url(r->be),
			 wall_s() - r->failing_since);
	r->failing_since = 0;
	r->last_success = wall_s();
	pthread_mutex_unlock(&r->lock);
}

/* Waits up to SECONDS or until stopped (or kicked, when KICKABLE).  false once stopping. */
static bool nap(struct replicator *r, double seconds, bool kickable)
{
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	double t = until.tv_sec + until.tv_nsec / 1e9 + seconds;
	until.tv_sec = (time_t)t;
	until.tv_nsec = (long)((t - (double)until.tv_sec) * 1e9);
	pthread_mutex_lock(&r->lock);
	while (!r->stop && !(kickable && r->kicked))
		if (pthread_cond_timedwait(&r->cond, &r->lock, &until) == ETIMEDOUT)
			break;
	bool go = !r->stop;
	pthread_mutex_unlock(&r->lock);
	return go;
}

static void write_status(struct replicator *r);
static void update_lag(struct replicator *r, uint64_t durable);
static uint64_t durable_lsn(struct replicator *r);

/* nap() in slices of a second, keeping the status current meanwhile. */
static bool nap_status(struct replicator *r, double seconds)
{
	while (seconds > 0) {
		double slice = seconds > 1 ? 1 : seconds;
		if (!nap(r, slice, false))
			return false;
		seconds -= slice;
		update_lag(r, durable_lsn(r));
		write_status(r);
	}
	return true;
}

static double backoff(double *cur)
{
	double d = *cur;
	*cur = d * 2 > BACKOFF_MAX_S ? BACKOFF_MAX_S : d * 2;
	/* +-25 % so that many mounts do not retry in step */
	return d * (0.75 + 0.5 * ((double)rand() / RAND_MAX));
}

/*
 * -o replica_bwlimit: an upload of BYTES waits its turn so that uploads
 * average at most the limit (all threads share one schedule).
 */
static bool nap_status(struct replicator *r, double seconds);

static void throttle(struct replicator *r, uint64_t bytes)
{
	if (!r->cfg.bwlimit)
		return;
	pthread_mutex_lock(&r->lock);
	double now = wall_s(), start = r->bw_next > now ? r->bw_next : now;
	double until = start + (double)bytes / (double)r->cfg.bwlimit;
	r->bw_next = until;
	pthread_mutex_unlock(&r->lock);
	/* the upload goes when its share of the rate is spent: the average stays below */
	nap_status(r, until - now);
}

/* ---- the journal shipper ---- */

static uint64_t durable_lsn(struct replicator *r)
{
	uint64_t lsn = 0;

	pthread_mutex_lock(&r->lock);
	if (r->journal) {
		struct journal_stats st;
		journal_get_stats(r->journal, &st);
		lsn = st.durable_lsn;
		r->durable_lsn = lsn;
		r->durable_at = wall_s();
	} else {
		lsn = r->durable_lsn;
	}
	pthread_mutex_unlock(&r->lock);
	return lsn;
}

/*
 * Reads whole records of the log from FROM, up to TO and PIECE_MAX bytes,
 * into *BUF.  *LEN the bytes, *TL the timeline.  0 or -errno.
 */
static int read_piece(struct replicator *r, uint64_t from, uint64_t to, unsigned char **buf,
		      size_t *len, uint32_t *tl)
{
	size_t want = to - from > PIECE_MAX ? PIECE_MAX : (size_t)(to - from), got = 0;
	unsigned char *b = malloc(want);

	if (!b)
		return -ENOMEM;
	while (got < want) {
		ssize_t n = jlog_read(r->cfg.journal_dir, from + got, b + got, want - got, tl);
		if (n <= 0) {
			free(b);
			return n < 0 ? (int)n : -EIO;
		}
		got += (size_t)n;
	}
	/* whole, valid records only: never ship what recovery would not take */
	size_t at = 0;
	while (at + JREC_HEADER <= got) {
		struct jrec rec;
		const char *why;
		size_t l = jrec_decode(b + at, got - at, from + at, &rec, &why);
		if (!l)
			break;
		at += l;
	}
	if (!at) {
		free(b);
		log_error("replica: the journal at LSN %llu does not hold a valid record; not shipped",
			  (unsigned long long)from);
		return -EBADMSG;
	}
	*buf = b;
	*len = at;
	return 0;
}

static void update_lag(struct replicator *r, uint64_t durable)
{
	unsigned char h[JREC_HEADER];
	int64_t t = 0;

	pthread_mutex_lock(&r->lock);
	uint64_t shipped = r->shipped_lsn;
	pthread_mutex_unlock(&r->lock);
	if (durable > shipped &&
	    jlog_read(r->cfg.journal_dir, shipped, h, sizeof(h), NULL) == (ssize_t)sizeof(h))
		memcpy(&t, h + 16, 8);
	pthread_mutex_lock(&r->lock);
	r->oldest_unshipped_ns = durable > shipped ? (t ? t : 1) : 0;
	pthread_mutex_unlock(&r->lock);
}

/* Ships one piece when the durable log is ahead.  1 shipped, 0 nothing to do, -errno. */
static int ship_journal_once(struct replicator *r, struct backend_err *err)
{
	uint64_t durable = durable_lsn(r);
	unsigned char *buf = NULL;
	size_t len = 0;
	uint32_t tl = 0;
	char key[96];

	pthread_mutex_lock(&r->lock);
	uint64_t from = r->shipped_lsn;
	pthread_mutex_unlock(&r->lock);
	update_lag(r, durable);
	if (durable <= from)
		return 0;
	int ret = read_piece(r, from, durable, &buf, &len, &tl);
	if (ret == -ENOENT) {
		/*
		 * Recycled while nothing replicated (a mount without the replica):
		 * the snapshots cover that stretch; the journal goes on from the
		 * oldest record kept.
		 */
		struct jreader *rd;
		struct jrec rec;
		if (jreader_open(r->cfg.journal_dir, from, &rd) == 0) {
			if (jreader_next(rd, &rec) == 1 && rec.lsn > from) {
				log_warn("replica %s: the journal from LSN %llu to %llu was recycled before it was shipped; the replica's journal goes on from %llu (its snapshots cover the gap)",
					 backend_url(r->be), (unsigned long long)from,
					 (unsigned long long)rec.lsn, (unsigned long long)rec.lsn);
				pthread_mutex_lock(&r->lock);
				r->shipped_lsn = rec.lsn;
				pthread_mutex_unlock(&r->lock);
				jreader_close(rd);
				save_state(r);
				return 1;
			}
			jreader_close(rd);
		}
	}
	if (ret) {
		backend_err_set(err, false, 0, NULL, "cannot read the journal at LSN %llu in %s: %s",
				(unsigned long long)from, r->cfg.journal_dir, strerror(-ret));
		return ret;
	}
	snprintf(key, sizeof(key), "journal/%08x/%016llx-%016llx.log", tl,
		 (unsigned long long)from, (unsigned long long)(from + len));
	throttle(r, len);
	ret = backend_put(r->be, key, buf, len, err);
	int64_t first_ns;
	memcpy(&first_ns, buf + 16, 8);
	free(buf);
	if (ret)
		return ret;
	double lag = wall_s() - first_ns / 1e9;
	pthread_mutex_lock(&r->lock);
	r->piece_lag[r->nlag++ % LAG_RING] = lag < 0 ? 0 : (uint32_t)(lag * 1000);
	r->shipped_lsn = from + len;
	r->timeline = tl;
	r->pieces++;
	if (r->journal && r->hold >= 0)
		journal_release(r->journal, r->hold, r->shipped_lsn);
	pthread_mutex_unlock(&r->lock);
	if (save_state(r))
		log_warn("replica: cannot write %s/state; a restart will ship some journal again",
			 r->dir);
	update_lag(r, durable);
	return 1;
}

static void *journal_thread(void *arg)
{
	struct replicator *r = arg;
	double delay = BACKOFF_MIN_S, last_request = wall_s();

	for (;;) {
		struct backend_err err = { 0 };
		int ret = ship_journal_once(r, &err);
		if (ret > 0) {
			note_success(r);
			delay = BACKOFF_MIN_S;
			last_request = wall_s();
			write_status(r);
			continue;       /* more may be waiting: no pause between pieces */
		}
		if (ret == 0 && wall_s() - last_request >= HEARTBEAT_S) {
			/* idle: one request a minute, so an unreachable replica shows */
			ret = backend_head(r->be, "config", NULL, &err);
			last_request = wall_s();
			if (ret == -ENOENT)
				ret = 0;
			if (!ret)
				note_success(r);
		}
		write_status(r);
		if (ret < 0) {
			note_failure(r, &err);
			if (!nap_status(r, backoff(&delay)))
				break;
			continue;
		}
		delay = BACKOFF_MIN_S;
		if (!nap(r, r->cfg.ship_interval_ms / 1000.0, false))
			break;
	}
	return NULL;
}

/* ---- the repository shipper ---- */

struct local_obj {
	char key[PATH_MAX];
	uint64_t size;
};
struct objlist {
	struct local_obj *v;
	size_t n, cap;
};

static int objlist_add(struct objlist *l, const char *key, uint64_t size)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 64;
		struct local_obj *v = realloc(l->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		l->v = v;
		l->cap = cap;
	}
	snprintf(l->v[l->n].key, sizeof(l->v[l->n].key), "%s", key);
	l->v[l->n++].size = size;
	return 0;
}

/* Files under REPO/SUB (recursively) whose names end in SUFFIX and are not shipped yet. */
static int collect(struct replicator *r, const char *sub, const char *suffix, struct objlist *l)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/%s", r->cfg.repo_dir, sub);
	DIR *d = opendir(path);
	struct dirent *de;
	int ret = 0;

	if (!d)
		return errno == ENOENT ? 0 : -errno;
	while ((de = readdir(d)) && !ret) {
		char key[PATH_MAX];
		struct stat st;
		if (de->d_name[0] == '.')
			continue;
		if (snprintf(key, sizeof(key), "%s/%s", sub, de->d_name) >= (int)sizeof(key))
			continue;
		if (snprintf(path, sizeof(path), "%s/%s", r->cfg.repo_dir, key) >= (int)sizeof(path) ||
		    stat(path, &st))
			continue;
		if (S_ISDIR(st.st_mode)) {
			ret = collect(r, key, suffix, l);
			continue;
		}
		size_t nl = strlen(de->d_name), sl = strlen(suffix);
		if (nl <= sl || strcmp(de->d_name + nl - sl, suffix))
			continue;
		pthread_mutex_lock(&r->lock);
		bool have = set_has(&r->shipped, key);
		pthread_mutex_unlock(&r->lock);
		if (!have)
			ret = objlist_add(l, key, (uint64_t)st.st_size);
	}
	closedir(d);
	return ret;
}

/* Opens repository object KEY for reading.  The fd, or -errno with ERR filled. */
static int open_repo_file(struct replicator *r, const char *key, struct backend_err *err)
{
	char path[PATH_MAX];
	int fd = snprintf(path, sizeof(path), "%s/%s", r->cfg.repo_dir, key) < (int)sizeof(path)
			 ? open(path, O_RDONLY | O_CLOEXEC)
			 : (errno = ENAMETOOLONG, -1);

	if (fd < 0) {
		int e = errno;
		backend_err_set(err, false, 0, NULL, "cannot read %s/%s: %s", r->cfg.repo_dir, key,
				strerror(e));
		return -e;
	}
	return fd;
}

static int put_file(struct replicator *r, const char *key, struct backend_err *err)
{
	int fd = open_repo_file(r, key, err);
	struct stat st;

	if (fd < 0)
		return fd;
	if (fstat(fd, &st)) {
		int e = errno;
		close(fd);
		backend_err_set(err, false, 0, NULL, "cannot read %s/%s: %s", r->cfg.repo_dir, key,
				strerror(e));
		return -e;
	}
	throttle(r, (uint64_t)st.st_size);
	int ret = backend_put_fd(r->be, key, fd, 0, (size_t)st.st_size, err);
	close(fd);
	if (!ret)
		mark_shipped(r, key);
	return ret;
}

/* A batch of packs for backend_put_many, and what its callbacks update. */
struct pack_batch {
	struct replicator *r;
	struct local_obj *objs;
};

static void pack_start(void *arg, size_t i)
{
	struct pack_batch *pb = arg;
	throttle(pb->r, pb->objs[i].size);
}

static void pack_done(void *arg, size_t i, int ret, const struct backend_err *err)
{
	struct pack_batch *pb = arg;
	struct replicator *r = pb->r;

	(void)err;
	if (!ret)
		mark_shipped(r, pb->objs[i].key);
	pthread_mutex_lock(&r->lock);
	r->queue_objects--;
	r->queue_bytes -= pb->objs[i].size;
	pthread_mutex_unlock(&r->lock);
}

#define PACK_BATCH 64   /* packs open at a time */

/* Ships the packs of L, cfg.transfers (default 4) at a time.  0 or the first error. */
static int ship_packs(struct replicator *r, struct objlist *l, struct backend_err *err)
{
	unsigned n = r->cfg.transfers ? r->cfg.transfers : 4;
	struct put_item items[PACK_BATCH];
	int ret = 0;

	for (size_t at = 0; at < l->n && !ret; at += PACK_BATCH) {
		size_t cnt = l->n - at < PACK_BATCH ? l->n - at : PACK_BATCH, opened = 0;
		struct pack_batch pb = { .r = r, .objs = l->v + at };
		struct put_calls calls = { .start = pack_start, .done = pack_done, .arg = &pb };
		for (; opened < cnt; opened++) {
			int fd = open_repo_file(r, pb.objs[opened].key, err);
			if (fd < 0) {
				ret = fd;
				break;
			}
			items[opened] = (struct put_item){ .key = pb.objs[opened].key, .fd = fd,
							   .len = (size_t)pb.objs[opened].size };
		}
		if (!ret)
			ret = backend_put_many(r->be, items, cnt, n, &calls, err);
		for (size_t i = 0; i < opened; i++)
			close(items[i].fd);
	}
	return ret;
}

/* Writes head naming the newest shipped snapshot.  0 or -errno. */
static int put_head(struct replicator *r, struct backend_err *err)
{
	struct repo *repo;
	struct snap_info *s;
	size_t n;
	int ret = repo_open(r->cfg.repo_dir, false, &repo);

	if (ret) {
		backend_err_set(err, false, 0, NULL, "cannot open the repository %s: %s",
				r->cfg.repo_dir, strerror(-ret));
		return ret;
	}
	ret = snap_list(repo, &s, &n);
	repo_close(repo);
	if (ret || !n) {
		if (!ret)
			return 0;
		backend_err_set(err, false, 0, NULL, "cannot list the snapshots of %s: %s",
				r->cfg.repo_dir, strerror(-ret));
		return ret;
	}
	/* the newest snapshot whose object is on the replica */
	char hex[65], key[128], buf[1024], when[40], host[256] = "";
	ssize_t newest = -1;
	for (size_t i = 0; i < n; i++) {
		store_id_hex(&s[i].id, hex);
		snprintf(key, sizeof(key), "snapshots/%s.snap", hex);
		pthread_mutex_lock(&r->lock);
		if (set_has(&r->shipped, key))
			newest = (ssize_t)i;
		pthread_mutex_unlock(&r->lock);
	}
	if (newest < 0) {
		free(s);
		return 0;
	}
	store_id_hex(&s[newest].id, hex);
	uint64_t snap_lsn = s[newest].lsn;
	free(s);
	pthread_mutex_lock(&r->lock);
	bool same = !strcmp(r->head_snap, hex);
	uint64_t jend = r->shipped_lsn;
	uint32_t tl = r->timeline;
	pthread_mutex_unlock(&r->lock);
	if (same)
		return 0;
	gethostname(host, sizeof(host) - 1);
	utc_time((int64_t)wall_s(), when, sizeof(when));
	int len = snprintf(buf, sizeof(buf),
			   "format=1\nsnapshot=%s\nsnapshot_lsn=%llu\njournal_timeline=%u\n"
			   "journal_end=%llu\ntime=%s\nhost=%s\n",
			   hex, (unsigned long long)snap_lsn, tl, (unsigned long long)jend, when, host);
	ret = backend_put(r->be, "head", buf, (size_t)len, err);
	if (!ret) {
		pthread_mutex_lock(&r->lock);
		snprintf(r->head_snap, sizeof(r->head_snap), "%s", hex);
		r->head_snap_lsn = snap_lsn;
		pthread_mutex_unlock(&r->lock);
	}
	return ret;
}

/* One pass: everything the repository has and the replica lacks, in order. */
static int ship_repo_once(struct replicator *r, struct backend_err *err)
{
	struct objlist snaps = { 0 }, idx = { 0 }, packs = { 0 };
	int ret;

	/* listed newest-written kind first: whatever a listed snapshot needs is listed too */
	ret = collect(r, "snapshots", ".snap", &snaps);
	if (!ret)
		ret = collect(r, "index", ".idx", &idx);
	if (!ret)
		ret = collect(r, "packs", ".pack", &packs);
	if (ret) {
		backend_err_set(err, false, 0, NULL, "cannot read the repository %s: %s",
				r->cfg.repo_dir, strerror(-ret));
		goto out;
	}
	pthread_mutex_lock(&r->lock);
	r->queue_objects = snaps.n + idx.n + packs.n;
	r->queue_bytes = 0;
	for (size_t i = 0; i < packs.n; i++)
		r->queue_bytes += packs.v[i].size;
	bool have_config = set_has(&r->shipped, "config");
	pthread_mutex_unlock(&r->lock);
	if (!have_config && (ret = put_file(r, "config", err)))
		goto out;
	if ((ret = ship_packs(r, &packs, err)))
		goto out;
	for (size_t i = 0; i < idx.n && !ret; i++)
		if (!(ret = put_file(r, idx.v[i].key, err))) {
			pthread_mutex_lock(&r->lock);
			r->queue_objects--;
			pthread_mutex_unlock(&r->lock);
		}
	for (size_t i = 0; i < snaps.n && !ret; i++)
		if (!(ret = put_file(r, snaps.v[i].key, err))) {
			pthread_mutex_lock(&r->lock);
			r->queue_objects--;
			pthread_mutex_unlock(&r->lock);
		}
	if (!ret)
		ret = put_head(r, err);
out:
	free(snaps.v);
	free(idx.v);
	free(packs.v);
	return ret;
}

static void *repo_thread(void *arg)
{
	struct replicator *r = arg;
	double delay = BACKOFF_MIN_S;

	for (;;) {
		pthread_mutex_lock(&r->lock);
		r->kicked = false;
		pthread_mutex_unlock(&r->lock);
		struct backend_err err = { 0 };
		pthread_mutex_lock(&r->lock);
		uint64_t objects_before = r->objects;
		pthread_mutex_unlock(&r->lock);
		int ret = ship_repo_once(r, &err);
		if (ret) {
			note_failure(r, &err);
			if (!nap(r, backoff(&delay), false))
				break;
			continue;
		}
		pthread_mutex_lock(&r->lock);
		bool sent = r->objects != objects_before;
		pthread_mutex_unlock(&r->lock);
		if (sent)
			note_success(r);   /* only a pass that talked to the replica says it works */
		delay = BACKOFF_MIN_S;
		if (!nap(r, REPO_RESCAN_S, true))
			break;
	}
	return NULL;
}

/* ---- status ---- */

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static void write_status(struct replicator *r)
{
	struct backend_counters c;
	char buf[2560], ok[40] = "", since[40] = "";
	int fd;

	backend_get_counters(r->be, &c);
	pthread_mutex_lock(&r->lock);
	double now = wall_s();
	if (r->last_success)
		utc_time((int64_t)r->last_success, ok, sizeof(ok));
	if (r->failing_since)
		utc_time((int64_t)r->failing_since, since, sizeof(since));
	uint64_t lag_bytes = r->durable_lsn > r->shipped_lsn ? r->durable_lsn - r->shipped_lsn : 0;
	size_t nl = r->nlag < LAG_RING ? (size_t)r->nlag : LAG_RING;
	uint32_t sorted[LAG_RING];
	memcpy(sorted, r->piece_lag, nl * sizeof(*sorted));
	double lag_s = r->oldest_unshipped_ns ? now - r->oldest_unshipped_ns / 1e9 : 0;
	if (lag_s < 0)
		lag_s = 0;
	int n = snprintf(buf, sizeof(buf),
			 "url=%s\nupdated=%.3f\ndurable_at=%.3f\nremote_lsn=%llu\ndurable_lsn=%llu\nlag_bytes=%llu\n"
			 "lag_seconds=%.3f\npieces=%llu\nobjects=%llu\nqueue_objects=%llu\n"
			 "queue_bytes=%llu\nretries=%llu\nrequests=%llu\nput_bytes=%llu\n"
			 "last_success=%s\nfailing_since=%s\nfailing_seconds=%.0f\n"
			 "last_error=%s\nlast_error_code=%s\nlast_error_http=%d\nhead_snapshot=%s\n",
			 backend_url(r->be), now, r->durable_at, (unsigned long long)r->shipped_lsn,
			 (unsigned long long)r->durable_lsn, (unsigned long long)lag_bytes, lag_s,
			 (unsigned long long)r->pieces, (unsigned long long)r->objects,
			 (unsigned long long)r->queue_objects, (unsigned long long)r->queue_bytes,
			 (unsigned long long)r->retries, (unsigned long long)c.requests,
			 (unsigned long long)c.put_bytes, ok, since,
			 r->failing_since ? now - r->failing_since : 0.0,
			 r->failing_since ? r->last_err.msg : "", r->failing_since ? r->last_err.code : "",
			 r->failing_since ? r->last_err.http : 0, r->head_snap);
	pthread_mutex_unlock(&r->lock);
	qsort(sorted, nl, sizeof(*sorted), cmp_u32);
	if (nl)
		n += snprintf(buf + n, sizeof(buf) - (size_t)n,
			      "piece_lag_count=%zu\npiece_lag_p50=%.3f\npiece_lag_p99=%.3f\npiece_lag_max=%.3f\n",
			      nl, sorted[nl / 2] / 1000.0, sorted[(nl * 99) / 100] / 1000.0,
			      sorted[nl - 1] / 1000.0);
	fd = open(r->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return;
	char tmp[40];
	snprintf(tmp, sizeof(tmp), "status.tmp%ld", (long)gettid());
	int out = openat(fd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (out >= 0) {
		if (write_all(out, buf, (size_t)n) == 0)
			renameat(fd, tmp, fd, "status");
		else
			unlinkat(fd, tmp, 0);
		close(out);
	}
	close(fd);
}

/* ---- starting and stopping ---- */

static void free_cfg(struct replicator *r)
{
	free((char *)r->cfg.url);
	free((char *)r->cfg.state_dir);
	free((char *)r->cfg.repo_dir);
	free((char *)r->cfg.journal_dir);
}

int replicator_start(const struct replicator_config *cfg, struct replicator **out)
{
	struct replicator *r = calloc(1, sizeof(*r));
	struct backend_err err = { 0 };
	int ret;

	if (!r)
		return -ENOMEM;
	r->cfg = *cfg;
	/* the caller's strings may go away */
	r->cfg.url = strdup(cfg->url);
	r->cfg.state_dir = strdup(cfg->state_dir);
	r->cfg.repo_dir = strdup(cfg->repo_dir);
	r->cfg.journal_dir = strdup(cfg->journal_dir);
	if (!r->cfg.url || !r->cfg.state_dir || !r->cfg.repo_dir || !r->cfg.journal_dir) {
		ret = -ENOMEM;
		goto fail;
	}
	r->cfg.ship_interval_ms = cfg->ship_interval_ms ? cfg->ship_interval_ms : 1000;
	r->hold = -1;
	r->shipped_fd = -1;
	r->journal = cfg->journal;
	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->cond, NULL);
	r->dir = path_join(cfg->state_dir, "replica");
	if (!r->dir) {
		ret = -ENOMEM;
		goto fail;
	}
	if (mkdir(r->dir, 0700) && errno != EEXIST) {
		ret = -errno;
		log_error("cannot make %s: %s", r->dir, strerror(errno));
		goto fail;
	}
	ret = backend_open(cfg->url, &r->be, &err);
	if (ret) {
		log_error("%s", err.msg);
		goto fail;
	}
	/*
	 * A put killed mid-way (this daemon's last run) leaves a temp file
	 * (file://) or an unfinished multipart upload (s3://); an hour is long
	 * past any upload of a live run.  Before the threads start: nothing of
	 * this run is in flight.  DRFS_SWEEP_AGE (seconds) shortens it in tests.
	 */
	const char *age = getenv("DRFS_SWEEP_AGE");
	unsigned swept = backend_sweep(r->be, age && *age ? (unsigned)strtoul(age, NULL, 10) : 3600);
	if (swept)
		log_info("replica %s: cleared %u uploads that an interrupted run left", cfg->url, swept);
	ret = load_state(r, cfg->start_lsn, &err);
	if (ret) {
		/* the replica cannot be listed now: start from the local record, retry later */
		note_failure(r, &err);
		r->shipped_lsn = cfg->start_lsn;
		if (r->shipped_fd < 0) {
			char *p = path_join(r->dir, "shipped");
			r->shipped_fd = p ? open(p, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644) : -1;
			free(p);
		}
	}
	if (r->journal) {
		r->hold = journal_hold_soft(r->journal, "replica", r->shipped_lsn, JHOLD_YIELD_FULL);
		if (r->hold < 0)
			log_warn("replica: cannot hold the journal; segments may be recycled before they are shipped");
	}
	write_status(r);
	if (pthread_create(&r->jthread, NULL, journal_thread, r) == 0)
		r->jstarted = true;
	if (pthread_create(&r->rthread, NULL, repo_thread, r) == 0)
		r->rstarted = true;
	if (!r->jstarted || !r->rstarted) {
		replicator_stop(r, 0);
		return -EAGAIN;
	}
	log_info("replicating to %s from LSN %llu", backend_url(r->be),
		 (unsigned long long)r->shipped_lsn);
	*out = r;
	return 0;
fail:
	if (r->be)
		backend_close(r->be);
	free_cfg(r);
	free(r->dir);
	pthread_mutex_destroy(&r->lock);
	pthread_cond_destroy(&r->cond);
	free(r);
	return ret;
}

void replicator_kick(struct replicator *r)
{
	if (!r)
		return;
	pthread_mutex_lock(&r->lock);
	r->kicked = true;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
}

void replicator_detach_journal(struct replicator *r, uint64_t end_lsn)
{
	if (!r)
		return;
	pthread_mutex_lock(&r->lock);
	r->journal = NULL;
	r->hold = -1;
	if (end_lsn > r->durable_lsn)
		r->durable_lsn = end_lsn;
	pthread_mutex_unlock(&r->lock);
}

void replicator_stop(struct replicator *r, unsigned drain_s)
{
	if (!r)
		return;
	pthread_mutex_lock(&r->lock);
	r->stop = true;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
	if (r->jstarted)
		pthread_join(r->jthread, NULL);
	if (r->rstarted)
		pthread_join(r->rthread, NULL);
	/* a last try at what is left, bounded: an unreachable replica must not hold up the unmount */
	double until = wall_s() + drain_s;
	while (drain_s && wall_s() < until) {
		struct backend_err err = { 0 };
		int j = ship_journal_once(r, &err);
		if (j < 0) {
			note_failure(r, &err);
			break;
		}
		if (j == 0) {
			int k = ship_repo_once(r, &err);
			if (k)
				note_failure(r, &err);
			break;
		}
	}
	write_status(r);
	if (r->shipped_fd >= 0)
		close(r->shipped_fd);
	set_free(&r->shipped);
	backend_close(r->be);
	free_cfg(r);
	free(r->dir);
	pthread_mutex_destroy(&r->lock);
	pthread_cond_destroy(&r->cond);
	free(r);
}

int replica_status_read(const char *state_dir, struct replica_status *st)
{
	char *path = path_join(state_dir, "replica/status");
	struct kv *kv;
	int ret = path ? kv_load(path, &kv) : -ENOMEM;

	free(path);
	memset(st, 0, sizeof(*st));
	if (ret)
		return ret;
#define S(k) (kv_get(kv, k) ? kv_get(kv, k) : "")
	snprintf(st->url, sizeof(st->url), "%s", S("url"));
	st->updated = strtod(S("updated"), NULL);
	st->durable_at = strtod(S("durable_at"), NULL);
	st->remote_lsn = strtoull(S("remote_lsn"), NULL, 10);
	st->durable_lsn = strtoull(S("durable_lsn"), NULL, 10);
	st->lag_bytes = strtoull(S("lag_bytes"), NULL, 10);
	st->lag_seconds = strtod(S("lag_seconds"), NULL);
	st->pieces = strtoull(S("pieces"), NULL, 10);
	st->objects = strtoull(S("objects"), NULL, 10);
	st->queue_objects = strtoull(S("queue_objects"), NULL, 10);
	st->queue_bytes = strtoull(S("queue_bytes"), NULL, 10);
	st->retries = strtoull(S("retries"), NULL, 10);
	st->requests = strtoull(S("requests"), NULL, 10);
	st->put_bytes = strtoull(S("put_bytes"), NULL, 10);
	snprintf(st->last_success, sizeof(st->last_success), "%s", S("last_success"));
	snprintf(st->failing_since, sizeof(st->failing_since), "%s", S("failing_since"));
	st->failing_seconds = strtod(S("failing_seconds"), NULL);
	snprintf(st->last_error, sizeof(st->last_error), "%s", S("last_error"));
	snprintf(st->last_error_code, sizeof(st->last_error_code), "%s", S("last_error_code"));
	st->last_error_http = atoi(S("last_error_http"));
	snprintf(st->head_snapshot, sizeof(st->head_snapshot), "%s", S("head_snapshot"));
	st->piece_lag_count = strtoull(S("piece_lag_count"), NULL, 10);
	st->piece_lag_p50 = strtod(S("piece_lag_p50"), NULL);
	st->piece_lag_p99 = strtod(S("piece_lag_p99"), NULL);
	st->piece_lag_max = strtod(S("piece_lag_max"), NULL);
#undef S
	kv_free(kv);
	return 0;
}
