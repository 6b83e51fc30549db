/*
 * tools_i.h - private to tools/: the subcommands of the drfs command and the
 * helpers they share (backing-directory configuration, mount records).
 *
 * Exit codes follow CLI.md: 0 success, 1 reported failure, 2 bad usage.
 * Every failure prints one line naming the object and what to do.
 */
#ifndef DRFS_TOOLS_I_H
#define DRFS_TOOLS_I_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define EXIT_OK 0
#define EXIT_FAIL 1
#define EXIT_USAGE 2

/* Prints "drfs: MESSAGE" on stderr. */
void say_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A backing directory and its configuration. */
struct backing {
	char *path;        /* absolute */
	char *conf_dir;    /* PATH/.drfs: configuration, always inside the backing root */
	char *state_dir;   /* journal, store, lock, log: conf_dir unless --state moved it */
	int format;
	uint64_t journal_segment_size; /* drfs.conf journal_segment_size, 0: default */
	unsigned int journal_seal_age;  /* drfs.conf journal_seal_age in seconds, 0: default */
	char *replica;     /* drfs.conf replica=URL (drfs init --replica), or NULL */
};

/*
 * Opens the backing directory at PATH: it must exist, be a directory and be
 * initialised.  On failure prints the reason and returns EXIT_FAIL.
 */
int backing_load(const char *path, struct backing *b);
void backing_release(struct backing *b);

/*
 * The record of a live mount, kept in the state directory as "mount":
 * "pid=N", "mountpoint=PATH", "backing=PATH", "started=TIME".  A pointer
 * file in /run/drfs maps the mount point back to the backing directory.
 */
struct mount_record {
	pid_t pid;
	char *mountpoint;
	char *backing;
	char *started;
};
int mount_record_read(const char *state_dir, struct mount_record *r);
/* "/run/drfs/HASH.mount" for MOUNTPOINT (absolute) into BUF (64 bytes suffice). */
void mount_record_run_path(const char *mountpoint, char *buf, size_t len);
/* /run/drfs/HASH.journal: the mounted journal's counters, rewritten about once a second. */
void journal_stats_path(const char *mountpoint, char *buf, size_t len);
/* /run/drfs/HASH.transport: how the mount's requests reach its daemon (one line). */
void transport_path(const char *mountpoint, char *buf, size_t len);
int mount_record_for_mountpoint(const char *mountpoint, struct mount_record *r);
void mount_record_release(struct mount_record *r);
bool pid_alive(pid_t pid);
/*
 * Removes /run/drfs files (journal counters, transport line) left by mounts
 * that are gone: killed (their record names a dead process), or recordless
 * for over a minute; and the logs of snapshot mounts that ended over a week
 * ago.  Records themselves stay: status reports them.
 */
void run_dir_sweep(void);
/* Whether PATH (absolute) is a mount point right now; *FSTYPE gets its type (caller frees). */
bool is_mount_point(const char *path, char **fstype);

int cmd_init(int argc, char **argv);
int cmd_mount(int argc, char **argv);
int cmd_mount_helper(int argc, char **argv);
int cmd_umount(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_journal(int argc, char **argv);
int cmd_snapshot(int argc, char **argv);
int cmd_snapshots(int argc, char **argv);
int cmd_diff(int argc, char **argv);
int cmd_restore(int argc, char **argv);

struct snap_info;
/* STATE/repo of B, malloc'd. */
char *backing_repo_dir(const struct backing *b);
struct snapshot_request {
	const char *tags;             /* may be NULL */
	bool scan;                    /* read the whole tree, not the journal range */
	uint64_t lsn;                 /* the LSN the tree is at; UINT64_MAX: a closed journal's end */
	bool only_if_changed;         /* none when the latest snapshot is at that LSN (returns 1) */
};
/*
 * Takes a snapshot of the backing B, which nothing may change meanwhile
 * (the caller holds STATE/lock, or has frozen the mount): from the latest
 * snapshot and the journal since, or by reading the whole tree.  MSG gets
 * the one-line summary, or on failure what went wrong and what to do.
 * *OUT (may be NULL) gets the snapshot.  0, 1 (RQ->only_if_changed and
 * nothing changed: MSG says so) or -errno.
 */
int backing_snapshot(const struct backing *b, const struct snapshot_request *rq,
		     struct snap_info *out, char *msg, size_t msglen);
/* snapctl.c: snapshots of a live mount (control socket, timer) */
struct snapctl;
struct drfs_fs;
/*
 * Starts the daemon's snapshot thread for FS: it answers 'drfs snapshot' on
 * STATE/control.sock and, with INTERVAL_S, takes a snapshot that often when
 * the journal moved past LAST_LSN.  0 or -errno (logged).
 */
/* Calls FN(ARG) after every live snapshot (the replicator ships it). */
void snapctl_on_snapshot(struct snapctl *c, void (*fn)(void *), void *arg);
int snapctl_start(const struct backing *b, struct drfs_fs *fs, unsigned interval_s,
		  uint64_t retention_s, uint64_t last_lsn, uint64_t hold_lsn, struct snapctl **out);
void snapctl_stop(struct snapctl *c);
/*
 * Asks the daemon of STATE_DIR for a snapshot tagged TAGS; REPLY gets its
 * answer line ("ok SUMMARY" or "error MESSAGE").  0 or -errno (no daemon).
 */
int snapctl_request(const char *state_dir, const char *tags, char *reply, size_t len);

struct repo;
/*
 * Opens the repository of SOURCE for reading: a backing directory (its
 * STATE/repo), a repository directory, or file:///path.  *BACKING (may be
 * NULL) gets the backing's absolute path when SOURCE is one, else NULL.
 * 0 or -errno, after a one-line message.
 */
int source_open(const char *src, struct repo **r, char **backing);
/* snap_resolve() with a one-line message on failure.  0 or -errno. */
int source_resolve(struct repo *r, const char *spec, struct snap_info *s);
/* Where the (cleanly closed) journal in DIR ends, and its timeline; 0 and 0 when none.  0 or -errno. */
int journal_log_end(const char *dir, uint64_t *lsn, uint32_t *timeline);
/* The journal kept beside the repository R (STATE/journal for STATE/repo), or NULL. */
char *source_journal_dir(struct repo *r);

/* backing_snapshot() from a command: its line on stdout, or the failure on stderr.  An exit code. */
int backing_snapshot_say(const struct backing *b, const struct snapshot_request *rq);
/*
 * Where the journal of B must be kept from: *HOLD the LSN of the newest
 * snapshot taken at or before now - RETENTION_S (the base of the oldest
 * @TIME restore the retention promises; the latest snapshot when
 * RETENTION_S is 0), *LATEST the latest snapshot's LSN.  0 or -ENOENT (no
 * snapshot).
 */
int backing_hold_lsn(const struct backing *b, uint64_t retention_s, uint64_t *hold,
		     uint64_t *latest);
#define JOURNAL_RETENTION_DEFAULT 3600   /* seconds: -o journal_retention */
#define SNAPSHOT_INTERVAL_DEFAULT 600    /* seconds: -o snapshot_interval */
#define JOURNAL_MAX_PCT_DEFAULT 10       /* of the backing filesystem: -o journal_max */
#define JOURNAL_MIN_FREE_PCT_DEFAULT 5   /* of the backing filesystem: -o journal_min_free */

struct journal_stats;
/*
 * The journal counters of STATE_DIR: from the running daemon when
 * MOUNTPOINT is given and mounted, else from the files.  0 or -errno
 * (-ENOENT: no journal yet).
 */
int journal_status(const char *state_dir, const char *mountpoint, struct journal_stats *st);

#endif /* DRFS_TOOLS_I_H */
