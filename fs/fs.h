/*
 * fs/ - the drfs FUSE filesystem: a low-level libfuse3 server that presents a
 * backing directory as a mount.  Every change to the backing tree goes through
 * one internal mutation interface (fs_i.h: struct mutation, fs_mutate()), the
 * single point where the journal hooks in.
 *
 * Lifecycle: fs_open() opens the journal (replaying it after an unclean
 * stop), creates the session and mounts it (so errors are reported before a
 * caller daemonizes), fs_serve() starts the journal's threads and runs the
 * multi-threaded request loop until the filesystem is unmounted or a signal
 * arrives, and fs_close() unmounts, closes the journal cleanly and frees
 * everything.
 */
#ifndef DRFS_FS_H
#define DRFS_FS_H

#include <stdbool.h>

struct drfs_fs;

struct fs_config {
	const char *backing;      /* absolute path of the backing directory */
	const char *mountpoint;   /* absolute path of the mount point */
	const char *fsname;       /* shown as the source in /proc/mounts */
	const char *kernel_opts;  /* comma list passed to the kernel mount (allow_other, ro, dev, ...) */
	bool debug;               /* log every FUSE request */
	unsigned int max_threads; /* worker threads (0: default) */
	const char *journal_dir;  /* STATE/journal; NULL: no journal (unit tests only) */
	const char *journal_stats;/* file the journal counters are written to, or NULL */
	unsigned int flush_interval_ms; /* journal flush interval (0: default) */
	unsigned int seal_age_ms; /* journal segment age limit (0: default) */
	bool journal_truncate;    /* replay up to damage even when valid records follow */
	bool full_replay;         /* replay namespace records too, as after a machine restart */
	unsigned int fail_flush_at; /* test aid: the Nth journal flush fails (0: never) */
};

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

#endif /* DRFS_FS_H */
