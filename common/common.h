/*
 * common/ - small helpers shared by every drfs module: logging, error text,
 * path and option-string utilities, durable file writes.
 *
 * Nothing here knows about FUSE, the journal or the store; every other module
 * may depend on this one and it depends on nothing but libc.
 *
 * Conventions (see STYLE.md): functions that act return 0 or a negative errno.
 */
#ifndef DRFS_COMMON_H
#define DRFS_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define DRFS_VERSION "0.1.0"
#define DRFS_STATE_NAME ".drfs"      /* hidden state directory at the backing root */
#define DRFS_CONF_NAME "drfs.conf"   /* configuration file inside the state directory */
#define DRFS_FORMAT_VERSION 1

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Logging.  Messages go to stderr (a daemon points stderr at its log file). */
enum log_level { LOG_LVL_ERROR, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };
void log_set_level(enum log_level level);
void log_set_timestamps(bool on);
void log_msg(enum log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/*
 * For commands that end with one line: while ON, errors and warnings are not
 * printed; the last error is kept (the outermost report of a failure, which
 * names the most), and log_last_error() gives it ("see the log" when there
 * was none) for that line.
 */
void log_capture_errors(bool on);
const char *log_last_error(void);
#define log_error(...) log_msg(LOG_LVL_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_LVL_DEBUG, __VA_ARGS__)

/*
 * Paths.  path_join() returns a malloc'd "a/b" (caller frees) or NULL on
 * allocation failure.  path_absolute() resolves PATH against the current
 * directory without following symlinks in its last component; caller frees.
 */
char *path_join(const char *a, const char *b);
char *path_absolute(const char *path);

/*
 * Option strings ("a,b=c,d").  opt_next() splits off the next option from
 * *cursor (which it advances) into KEY and VALUE (VALUE NULL when there is no
 * '='); both point into BUF, which must hold at least strlen(*cursor)+1 bytes.
 * Returns false when the string is exhausted.
 */
bool opt_next(const char **cursor, char *buf, char **key, char **value);

/* Parses a non-negative decimal with an optional K/M/G/T suffix (powers of 1024). */
int parse_size(const char *s, uint64_t *out);
/* SECS since the epoch as 2026-11-28T17:05:00Z into BUF (LEN >= 21). */
void utc_time(int64_t secs, char *buf, size_t len);
/* Parses a duration: seconds, or a number with s, m, h or d.  0 or -EINVAL/-ERANGE. */
int parse_duration(const char *s, uint64_t *secs);

/*
 * Key/value files ("key=value" lines, '#' comments), used for drfs.conf.
 * kv_get() returns the value for KEY (owned by KV), or NULL when absent.
 */
struct kv;
int kv_load(const char *path, struct kv **out);
const char *kv_get(const struct kv *kv, const char *key);
void kv_free(struct kv *kv);

/*
 * Durable file creation: write DATA to a temporary file in DIR, fsync it,
 * rename it to NAME and fsync DIR.  Returns 0 or -errno.
 */
int write_file_durable(int dirfd, const char *name, const void *data, size_t len);

/*
 * Replaces PATH with DATA for readers (PATH.tmp, then a rename), not
 * durably: for status files others read while a daemon runs.  0 or -errno.
 */
int write_file_replace(const char *path, const void *data, size_t len);

/* Reads a whole small file into a malloc'd NUL-terminated buffer. */
int read_file_small(const char *path, char **out, size_t *len);

/* "/proc/self/fd/N" for FD into BUF (at least 32 bytes): a path that reaches the fd's object. */
void proc_fd_path(char *buf, int fd);

/*
 * The first data extent of the file at FD at or after POS and below SIZE, by
 * the rule of docs/format.md "Chunking": every extent of the allocation map
 * (FS_IOC_FIEMAP) is data, written, unwritten or delayed, and touching
 * extents merge; on file systems without FIEMAP, by SEEK_DATA and SEEK_HOLE.
 * 0 with [*DS, *DE), *DE <= SIZE; 1: no data there; -errno.
 */
int file_extent_next(int fd, uint64_t pos, uint64_t size, uint64_t *ds, uint64_t *de);

/* Full-length write/read loops over EINTR and short transfers; 0 or -errno. */
int write_all(int fd, const void *buf, size_t len);
/* The same at offset OFF with pwrite(2); a write of nothing gives -ENOSPC. */
int pwrite_all(int fd, const void *buf, size_t len, off_t off);
/* pread(2) of exactly LEN bytes at OFF; -ENODATA when the file ends first. */
int pread_all(int fd, void *buf, size_t len, off_t off);
/* pread(2) of up to LEN bytes at OFF, fewer only at the end of the file: the count or -errno. */
ssize_t pread_upto(int fd, void *buf, size_t len, off_t off);

#endif /* DRFS_COMMON_H */
