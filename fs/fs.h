/*
 * fs/ - the drfs FUSE filesystem: a low-level libfuse3 server that presents a
 * backing directory as a mount.  Every change to the backing tree goes through
 * one internal mutation interface (fs_i.h: struct mutation, fs_mutate()), the
 * single point where the journal hooks in.
 *
 * Lifecycle: fs_open() opens the journal (replaying it after an unclean
 * stop), creates the session and mounts it (so errors are reported before a
 * caller daemonizes), fs_serve() starts the journal's threads and runs the
 * multi-threaded request loop (requests over /dev/fuse, or over io_uring
 * with one queue per CPU: fs/uring.c) until the filesystem is unmounted or a
 * signal arrives, and fs_close() unmounts, closes the journal cleanly and
 * frees everything.
 */
#ifndef DRFS_FS_H
#define DRFS_FS_H

#include <stdbool.h>
#include <stdint.h>

struct drfs_fs;

struct fs_config {
	const char *backing;      /* absolute path of the backing directory */
	const char *mountpoint;   /* absolute path of the mount point */
	const char *fsname;       /* shown as the source in /proc/mounts */
	const char *kernel_opts;  /* comma list passed to the kernel mount (allow_other, ro, dev, ...) */
	bool debug;               /* log every FUSE request */
	unsigned int max_threads; /* worker threads (0: default) */
	const char *state_dir;    /* STATE (STATE/ctimes lives there), or NULL */
	const char *journal_dir;  /* STATE/journal; NULL: no journal (unit tests only) */
	const char *journal_stats;/* file the journal counters are written to, or NULL */
	unsigned int flush_interval_ms; /* journal flush interval (0: default) */
	unsigned int seal_age_ms; /* journal segment age limit (0: default) */
	bool journal_truncate;    /* replay up to damage even when valid records follow */
	bool full_replay;         /* replay namespace records too, as after a machine restart */
	unsigned int fail_flush_at; /* test aid: the Nth journal flush fails (0: never) */
	uint64_t journal_hold_lsn;  /* keep the journal from this LSN (snapshots, retention); UINT64_MAX: none */
	uint64_t journal_max, journal_min_free; /* where soft journal holds give way (0: never) */
	int fuse_uring;           /* FS_URING_*: requests over io_uring (fs/uring.c) */
	const char *transport_path; /* gets one line: how requests reach the daemon (drfs status), or NULL */
};

/* fs_config.fuse_uring */
enum { FS_URING_AUTO = 0, FS_URING_OFF = 1, FS_URING_ON = 2 };

/*
 * Mounts CFG->backing on CFG->mountpoint.  On success *OUT owns the session
 * (free it with fs_close()).  Returns 0 or -errno; a message naming the cause
 * has been logged on failure.
 */
int fs_open(const struct fs_config *cfg, struct drfs_fs **out);

/* Serves requests until unmounted or signalled; returns 0 or -errno. */
int fs_serve(struct drfs_fs *fs);

/* Unmounts (if still mounted) and frees FS. */
void fs_close(struct drfs_fs *fs);

/*
 * Holds every change to the tree back (requests that change it wait) until
 * fs_thaw(), once everything journaled so far is durable and applied: the
 * backing tree is then exactly the journal up to *LSN.  For a consistent
 * snapshot of a live mount.  0 or -errno (the journal failed: not frozen).
 */
int fs_freeze(struct drfs_fs *fs, uint64_t *lsn);
void fs_thaw(struct drfs_fs *fs);
/*
 * The journal before LSN is no longer needed by snapshots or point-in-time
 * restores: it may be recycled once checkpointed.
 */
void fs_journal_keep_from(struct drfs_fs *fs, uint64_t lsn);
/* The mount's journal (for the replicator: durable LSN, its own hold), NULL without one. */
struct journal *fs_journal(struct drfs_fs *fs);

/*
 * The snapshot mount (fs/snapshot.c): snapshot S of repository R served
 * read-only on CFG->mountpoint, file data read on demand through a 64 MiB
 * chunk cache.  Nothing is written anywhere.
 */
struct repo;
struct snap_info;
struct snapmount_config {
	const char *mountpoint;   /* absolute path of the mount point */
	const char *kernel_opts;  /* comma list added to the kernel mount (allow_other, ...), or NULL */
	bool debug;               /* log every FUSE request */
	bool foreground;          /* without READY: false detaches (fuse_daemonize) once mounted */
	/*
	 * Called once mounted, before serving, in the process that then serves
	 * (the caller detaches and records the mount here); a non-zero return
	 * (-errno) unmounts and is returned.  May be NULL.
	 */
	int (*ready)(void *arg);
	void *ready_arg;
};
/*
 * Mounts S, serves it until it is unmounted or SIGTERM/SIGINT/SIGHUP
 * arrives, unmounts.  R and S must outlive the call.  0 or -errno (a
 * message naming the cause has been logged).
 */
int fs_serve_snapshot(struct repo *r, const struct snap_info *s,
		      const struct snapmount_config *cfg);

#endif /* DRFS_FS_H */
