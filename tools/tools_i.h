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
int mount_record_for_mountpoint(const char *mountpoint, struct mount_record *r);
void mount_record_release(struct mount_record *r);
bool pid_alive(pid_t pid);
/* Whether PATH (absolute) is a mount point right now; *FSTYPE gets its type (caller frees). */
bool is_mount_point(const char *path, char **fstype);

int cmd_init(int argc, char **argv);
int cmd_mount(int argc, char **argv);
int cmd_mount_helper(int argc, char **argv);
int cmd_umount(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_journal(int argc, char **argv);

struct journal_stats;
/*
 * The journal counters of STATE_DIR: from the running daemon when
 * MOUNTPOINT is given and mounted, else from the files.  0 or -errno
 * (-ENOENT: no journal yet).
 */
int journal_status(const char *state_dir, const char *mountpoint, struct journal_stats *st);

#endif /* DRFS_TOOLS_I_H */
