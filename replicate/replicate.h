/*
 * replicate/ - shipping the journal and the snapshot repository to a remote
 * site (layout: docs/format.md "The remote"; reasoning:
 * docs/replication-design.md).
 *
 * Two layers:
 *  - a backend: a flat store of named, immutable objects behind a URL
 *    (file:///path, s3://bucket/prefix?...), with put/get/head/list/delete;
 *  - the replicator: a thread of the mount daemon that ships the durable
 *    journal as pieces every ship interval, and every snapshot's packs,
 *    index, snapshot object and the head pointer, in an order that leaves
 *    the remote consistent at every moment.
 *
 * Conventions: functions return 0 or -errno.  A failed backend call fills
 * a struct backend_err (when given) with one line naming the object and
 * the cause, and whether trying again may help.
 */
#ifndef DRFS_REPLICATE_H
#define DRFS_REPLICATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- backends (backend.c, file.c, s3.c) ---- */

struct backend_err {
	int http;                     /* HTTP status (0: none, or not HTTP) */
	char code[64];                /* S3 error code ("AccessDenied", "NoSuchBucket"), or "" */
	bool retry;                   /* a later attempt may succeed (network, 5xx, 429, timeouts) */
	char msg[512];                /* one line: the operation, the object, the cause, what to do */
};

struct backend;

/*
 * Opens the backend for URL.  Schemes: file:///absolute/path (the
 * directory is made if missing) and s3://bucket/prefix with the query
 * parameters endpoint=, region=, path_style=1 (docs/format.md "The remote").
 * Credentials for s3 come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
 * AWS_SESSION_TOKEN, else the [default] (or $AWS_PROFILE) profile of
 * ~/.aws/credentials.  Opening does not talk to the remote.  -EINVAL for a
 * URL that cannot be used (ERR says why).
 */
int backend_open(const char *url, struct backend **out, struct backend_err *err);
void backend_close(struct backend *b);
/* The URL without credentials, for messages. */
const char *backend_url(const struct backend *b);

/*
 * Stores LEN bytes at DATA as object KEY ("packs/ab/ab12....pack"): the
 * object appears whole or not at all, and a put of a KEY that exists
 * replaces it.  Thread-safe: the replicator puts from several threads.
 */
int backend_put(struct backend *b, const char *key, const void *data, size_t len,
		struct backend_err *err);
/* Like backend_put, reading LEN bytes at OFF of FD (pread) instead of memory. */
int backend_put_fd(struct backend *b, const char *key, int fd, off_t off, size_t len,
		   struct backend_err *err);
/* One object of backend_put_many: LEN bytes at OFF of FD stored as KEY. */
struct put_item {
	const char *key;
	int fd;
	off_t off;
	size_t len;
};
/* What backend_put_many calls back, with ARG, one call at a time. */
struct put_calls {
	void (*start)(void *arg, size_t i);       /* may be NULL; may wait (a bandwidth limit) */
	void (*done)(void *arg, size_t i, int ret, const struct backend_err *err);
	void *arg;
};
/*
 * Puts the N ITEMS with up to PARALLEL transfers at a time (s3://: on one
 * curl multi handle; other backends: threads).  START is called before an
 * item begins, DONE when it ended (RET 0 or -errno with ERR).  After the
 * first failure no item begins; returns 0 or that first error (ERR filled).
 */
int backend_put_many(struct backend *b, const struct put_item *items, size_t n,
		     unsigned parallel, const struct put_calls *calls, struct backend_err *err);
/*
 * Removes what writers killed mid-put left behind (file://: NAME.tmpTID
 * files not touched for MAX_AGE_S seconds); the replicator calls it at
 * start.  The number removed; 0 for backends that leave nothing.
 */
unsigned backend_sweep(struct backend *b, unsigned max_age_s);
/* The whole object KEY into a malloc'd *DATA of *LEN bytes.  -ENOENT when absent. */
int backend_get(struct backend *b, const char *key, void **data, size_t *len,
		struct backend_err *err);
/* LEN bytes at OFF of KEY into BUF; the bytes read (short only at the object's end) or -errno. */
ssize_t backend_get_range(struct backend *b, const char *key, uint64_t off, size_t len,
			  void *buf, struct backend_err *err);
/* Whether KEY exists: 0 with *SIZE (may be NULL), -ENOENT, or -errno. */
int backend_head(struct backend *b, const char *key, uint64_t *size, struct backend_err *err);
/*
 * Calls FN for every object whose key starts with PREFIX (in key order,
 * paged underneath), with the key and its size.  FN returning non-zero
 * stops the listing and is returned.
 */
typedef int (*backend_list_fn)(void *arg, const char *key, uint64_t size);
int backend_list(struct backend *b, const char *prefix, backend_list_fn fn, void *arg,
		 struct backend_err *err);
/* Removes KEY (absent is not an error). */
int backend_delete(struct backend *b, const char *key, struct backend_err *err);

struct backend_counters {
	uint64_t requests;            /* every request sent (retries included) */
	uint64_t put_bytes, get_bytes;
};
void backend_get_counters(struct backend *b, struct backend_counters *c);

/* ---- reading a replica's journal (fetch.c) ---- */

/*
 * Writes the replica's journal from LSN FROM on (the chain of pieces) into
 * DIR as segment files the local journal reader reads; *END gets where it
 * ends.  0; 1 when the replica's journal does not reach back to FROM (ERR
 * says so); -EBADMSG when a piece is damaged or the chain has a gap with
 * pieces after it (what comes before is written; ERR says where); or -errno.
 */
int replica_fetch_journal(struct backend *b, uint64_t from, const char *dir, uint64_t *end,
			  struct backend_err *err);

/*
 * Brings DIR up to date with the replica's repository (every object but
 * the journal; objects already there are kept, being immutable), so that
 * the local repository code reads it.  *FETCHED and *BYTES (may be NULL)
 * what was downloaded.  0 or -errno (ERR says why).
 */
int replica_mirror(struct backend *b, const char *dir, uint64_t *fetched, uint64_t *bytes,
		   struct backend_err *err);

/* ---- the replicator (replicator.c) ---- */

struct journal;
struct replicator;

struct replicator_config {
	const char *url;              /* the replica */
	const char *state_dir;        /* STATE: what was shipped is kept in STATE/replica/ */
	const char *repo_dir;         /* STATE/repo */
	const char *journal_dir;      /* STATE/journal */
	struct journal *journal;      /* the live journal: durable LSN, and a hold until shipped */
	uint64_t start_lsn;           /* where a new replica's journal starts (the latest snapshot) */
	unsigned ship_interval_ms;    /* 0: 1000 */
	unsigned transfers;           /* packs uploaded at once; 0: 4 */
	uint64_t bwlimit;             /* bytes per second over all uploads; 0: none */
};

/*
 * Starts shipping to CFG->url (docs/replication-design.md).  Failures to
 * reach the replica are not errors here: they are retried and shown in the
 * status.  0, or -errno when the URL or the state directory cannot be used
 * (logged).
 */
int replicator_start(const struct replicator_config *cfg, struct replicator **out);
/* A snapshot was written: ship the repository now rather than at the next rescan. */
void replicator_kick(struct replicator *r);
/*
 * The journal is about to close: stop using it; END_LSN is where the log
 * ends (everything before it durable).
 */
void replicator_detach_journal(struct replicator *r, uint64_t end_lsn);
/*
 * Stops the threads; then tries for at most DRAIN_S seconds to ship what is
 * left (journal, then repository), and frees R.
 */
void replicator_stop(struct replicator *r, unsigned drain_s);

/* What STATE/replica/status says (rewritten by the daemon about once a second). */
struct replica_status {
	char url[512];
	double updated;               /* when the daemon wrote it, seconds since the epoch */
	double durable_at;            /* when it read durable_lsn: the figures hold up to then */
	uint64_t remote_lsn, durable_lsn, lag_bytes;
	double lag_seconds;           /* age of the oldest record not on the replica; 0: none */
	uint64_t pieces, objects, queue_objects, queue_bytes, retries, requests, put_bytes;
	char last_success[40], failing_since[40];
	double failing_seconds;
	char last_error[512], last_error_code[64];
	int last_error_http;
	char head_snapshot[65];
	/* RPO at its worst moments: for each of the last pieces (up to 4096), how
	 * old its oldest record was when the piece reached the replica, seconds */
	uint64_t piece_lag_count;
	double piece_lag_p50, piece_lag_p99, piece_lag_max;
};
/* 0, -ENOENT (never replicated), or -errno. */
int replica_status_read(const char *state_dir, struct replica_status *st);

#endif /* DRFS_REPLICATE_H */
