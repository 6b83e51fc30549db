/*
 * journal/ - the write-ahead journal (byte layout: docs/format.md "The
 * journal"; reasoning: docs/journal-design.md).
 *
 * Producers (the FUSE worker threads) describe each change as a struct jrec
 * and append it: the record is checksummed, given an LSN and queued in
 * memory.  One journal thread owns the segment files and an io_uring ring:
 * it writes queued records sequentially, makes them durable with one
 * fdatasync per batch (group commit) and wakes everyone whose LSN the flush
 * covered.  A checkpoint thread makes the backing tree durable from time to
 * time and records how far; segments behind the checkpoint and behind every
 * registered consumer are recycled.
 *
 * Records are encoded and decoded here too (jrec_encode, jrec_decode), and
 * replayed (journal_replay) with the apply code in apply.c that the live
 * filesystem uses as well.
 */
#ifndef DRFS_JOURNAL_H
#define DRFS_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum jrec_type {
	JR_WRITE = 1,
	JR_SETATTR = 2,
	JR_CREATE = 3,
	JR_LINK = 4,
	JR_UNLINK = 5,
	JR_RENAME = 6,
	JR_FALLOCATE = 7,
	JR_COPY = 8,
	JR_SETXATTR = 9,
	JR_REMOVEXATTR = 10,
	JR_ABORT = 11,
	JR_SEAL = 12,
	JR_RECOVERED = 13,
};
#define JR_TYPE_MAX JR_RECOVERED

#define JR_UNLINK_DIR 1                /* UNLINK flag: the entry was a directory */
#define JR_RECOVERED_REBOOT 1          /* RECOVERED flag: the machine restarted */

/* SETATTR mask bits */
#define JA_MODE  1u
#define JA_UID   2u
#define JA_GID   4u
#define JA_SIZE  8u
#define JA_ATIME 16u
#define JA_MTIME 32u

#define JREC_HEADER 40u
#define JREC_MAX_DATA (1u << 20)       /* WRITE/COPY data per record */
#define JSEG_HEADER 4096u

struct jfid {
	uint64_t ino;
	uint32_t gen;
};
#define JFID_ROOT ((struct jfid){ 0, 0 })

/*
 * One record, decoded.  Which fields mean something depends on the type
 * (docs/format.md); pointers reference the caller's memory (append) or the
 * decoded buffer (decode).
 */
struct jrec {
	uint16_t type, flags;
	uint64_t lsn, time_ns;
	struct jfid fid, fid2, fid3, fid4;  /* object, parent/new parent, moved, target */
	uint32_t mask, mode, uid, gid, xflags;
	uint64_t size, offset, offset2, rdev, lsn2;
	struct timespec atime, mtime;
	const char *name, *name2;          /* not NUL-terminated: see name_len */
	uint16_t name_len, name2_len;
	const void *data;
	size_t data_len;
};

/*
 * Field use by type:
 *  WRITE       fid, offset, data
 *  SETATTR     fid, mask, mode, uid, gid, size, atime, mtime
 *  CREATE      fid2 = parent, fid = new object, mode, uid, gid, rdev, name, name2 = symlink target
 *  LINK        fid = object, fid2 = new parent, name
 *  UNLINK      fid2 = parent, fid = removed object, name, flags
 *  RENAME      fid = old parent, fid2 = new parent, fid3 = moved, fid4 = target before,
 *              xflags = renameat2 flags, name = old name, name2 = new name
 *  FALLOCATE   fid, xflags = mode, offset, size = length
 *  COPY        fid = destination, offset, fid2 = source, offset2, data
 *  SETXATTR    fid, xflags, name, data = value
 *  REMOVEXATTR fid, name
 *  ABORT       lsn2 = the aborted record's LSN
 *  SEAL        nothing
 *  RECOVERED   lsn2 = replay start, offset = replay end, xflags
 */

/* Encoded size of R (header, payload, padding); 0 when R cannot be encoded. */
size_t jrec_size(const struct jrec *r);
/*
 * Encodes R with LSN R->lsn into BUF (jrec_size(R) bytes, zeroed padding
 * included).  Returns the size.
 */
size_t jrec_encode(const struct jrec *r, void *buf);
/*
 * Decodes the record at BUF (AVAIL bytes available) that must carry LSN
 * EXPECT.  Returns its length when it is valid (docs/format.md), 0 when
 * not; *WHY (may be NULL) then says why.
 */
size_t jrec_decode(const void *buf, size_t avail, uint64_t expect, struct jrec *out,
		   const char **why);
const char *jrec_type_name(unsigned type);
uint32_t crc32c(uint32_t crc, const void *buf, size_t len);

/* ---- the live journal ---- */

struct journal;

struct journal_config {
	const char *dir;              /* STATE/journal */
	int backing_fd;               /* the backing root (O_RDONLY dir fd): syncfs, replay */
	uint64_t segment_size;        /* 0: the journal's own (or 64 MiB when new) */
	unsigned flush_interval_ms;   /* 0: 200 */
	unsigned seal_age_ms;         /* 0: 60000 */
	unsigned checkpoint_interval_ms; /* 0: 30000 */
	uint64_t checkpoint_bytes;    /* 0: 2 segments of log since the last checkpoint */
	uint64_t queue_limit;         /* bytes queued in memory before appenders wait; 0: 64 MiB */
	const char *stats_path;       /* rewritten with the counters about once a second; may be NULL */
	bool full_replay;             /* replay namespace records even when the machine did not restart */
	/* the oldest LSN the caller has journaled but not yet applied (UINT64_MAX: none); may be NULL */
	uint64_t (*unapplied_min)(void *arg);
	void *unapplied_arg;
	bool truncate_damaged;        /* replay up to damage even when valid records follow it */
	/*
	 * Where soft holds give way (journal_hold_soft): the segments in use
	 * past MAX_BYTES, less than MIN_FREE bytes free on the journal's
	 * filesystem.  0: no such limit.
	 */
	uint64_t max_bytes, min_free;
	/* fault injection for tests: fail the Nth segment write / flush (1-based; 0: never) */
	unsigned fail_write_at, fail_flush_at;
	/*
	 * Test aid: the Nth direct write on the ring is refused before anything
	 * is written, with EINVAL, as by a device whose blocks are larger than
	 * 4 KiB (1-based; 0: never).
	 */
	unsigned refuse_direct_at;
	/* Test aid: called by the journal thread with a batch in hand, before writing it. */
	void (*batch_hook)(void *arg);
	void *batch_hook_arg;
};

struct journal_stats {
	uint64_t head_lsn;            /* end of the last appended record */
	uint64_t written_lsn;         /* end of what reached the segment files */
	uint64_t durable_lsn;         /* end of what is flushed */
	uint64_t checkpoint_lsn;
	uint64_t segments, segment_bytes; /* segment files in use (spares excluded) and their size */
	uint64_t flushes, records;
	int error;                    /* 0, or the -errno that stopped the journal */
	bool direct;                  /* segment writes bypass the page cache (O_DIRECT) */
	uint64_t max_bytes, min_free; /* the limits soft holds give way at (0: none) */
	uint64_t yielded;             /* segments recycled although a soft hold wanted them */
	uint64_t yielded_at;          /* when the last of them went (seconds since the epoch) */
	char yielded_holds[64];       /* the holds that gave way, comma-separated */
	char yield_reason[96];        /* the cap passed, or the free space left */
};

/*
 * Creates an empty journal in DIR (which must not hold one) whose first
 * record will have LSN FIRST_LSN (0 normally).  0 or -errno.
 */
int journal_create(const char *dir, uint64_t segment_size, uint64_t first_lsn);
/* Whether DIR holds a journal. */
bool journal_exists(const char *dir);

struct replay_result {
	uint64_t from, to;            /* LSN range replayed */
	uint64_t records, applied, skipped;
	bool unclean, reboot;
	char stop_reason[160];        /* why reading stopped, when not at a clean end */
};

/*
 * Opens the journal in CFG->dir.  After an unclean stop it first replays the
 * log onto the tree at CFG->backing_fd (see docs/format.md "Replay"), with
 * what happened in *RR (may be NULL), and makes the tree durable.  Starts
 * no thread (the caller may still fork).  Returns 0 or -errno (logged,
 * naming the file).
 */
int journal_open(const struct journal_config *cfg, struct journal **out,
		 struct replay_result *rr);
/*
 * Starts the journal and checkpoint threads and the io_uring ring; after a
 * recovery it then appends the RECOVERED record and waits for it.  Nothing
 * may be appended before.  0 or -errno.
 */
int journal_start(struct journal *j);

/*
 * Appends R (R->lsn and R->time_ns are set here).  The record's bytes are
 * copied unless R is a WRITE or COPY whose caller will journal_wait() for
 * the returned LSN before its buffer goes away (BORROW true).  Returns the
 * LSN just past the record (what to wait for), or 0 with *ERR set when the
 * journal has failed.  Segment boundaries are handled here.
 */
uint64_t journal_append(struct journal *j, struct jrec *r, bool borrow, int *err);
/* Waits until LSN is durable.  0, or -EIO when the journal has failed. */
int journal_wait(struct journal *j, uint64_t lsn);
/*
 * Asks for LSN to be made durable now, without waiting: what a later
 * journal_wait() for it would ask, sooner (the journal thread starts
 * writing and flushing before the waiter runs).
 */
void journal_want(struct journal *j, uint64_t lsn);
/* The LSN just past the last appended record. */
uint64_t journal_head(struct journal *j);
/* 0, or the -errno that stopped the journal. */
int journal_error(struct journal *j);

/*
 * Appending threads bracket append+apply with these, so that a checkpoint
 * knows how far every record has been applied.
 */
void journal_apply_begin(struct journal *j);
void journal_apply_end(struct journal *j);

/*
 * Stops the journal with error ERR (logged with WHAT): every waiter and
 * every later append fails, and the journal is not marked clean at close.
 */
void journal_fail(struct journal *j, int err, const char *what);

/* Makes the tree durable and records a checkpoint now.  0 or -errno. */
int journal_checkpoint(struct journal *j);

/*
 * Retention hook: a consumer that still needs records from LSN on holds it;
 * segments are recycled only below the checkpoint and below every hold.
 * Returns a hold id (>= 0) or -errno; journal_release() moves or (LSN ==
 * UINT64_MAX) drops it.
 */
int journal_hold(struct journal *j, const char *name, uint64_t lsn);
/*
 * A hold that gives way (its segments are recycled anyway, with a warning)
 * under the pressures in YIELDS: the segments in use past journal_config
 * max_bytes (JHOLD_YIELD_CAP), less than min_free free on the journal's
 * filesystem (JHOLD_YIELD_FULL).
 */
#define JHOLD_YIELD_CAP 1u
#define JHOLD_YIELD_FULL 2u
int journal_hold_soft(struct journal *j, const char *name, uint64_t lsn, unsigned yields);
void journal_release(struct journal *j, int id, uint64_t lsn);

void journal_get_stats(struct journal *j, struct journal_stats *st);

/*
 * Flushes everything, checkpoints, marks the journal clean and frees it.
 * Returns 0 or the error that kept it from closing cleanly (then the next
 * open replays).
 */
int journal_close(struct journal *j);

/* ---- reading, for replay, dump and status ---- */

struct jreader;
/* Opens the log of DIR for reading from LSN FROM (the checkpoint when FROM is UINT64_MAX). */
int jreader_open(const char *dir, uint64_t from, struct jreader **out);
/*
 * Next valid record into *R (its pointers valid until the next call).
 * Returns 1, 0 at the end of the valid log (jreader_stop() says why when the
 * end is not clean), or -errno on an I/O error.
 */
int jreader_next(struct jreader *rd, struct jrec *r);
/* NULL when the log ended cleanly (no more bytes written), else why reading stopped. */
const char *jreader_stop(struct jreader *rd);
uint64_t jreader_lsn(struct jreader *rd);  /* the position to read next */
void jreader_close(struct jreader *rd);

/*
 * Reads raw bytes of the logical log of DIR at LSN into BUF: at most LEN,
 * never past the end of the segment holding LSN (a shorter count means
 * "go on at the returned end"), and never past what the segment file holds.
 * The caller knows the bytes are records (below the durable LSN).
 * *TIMELINE (may be NULL) gets the segment's timeline.  The count, or
 * -ENOENT when no segment holds LSN any more, or -errno.
 */
ssize_t jlog_read(const char *dir, uint64_t lsn, void *buf, size_t len, uint32_t *timeline);
/*
 * Writes a segment file into DIR holding LEN bytes of records whose first
 * has LSN FIRST_LSN (the log rebuilt from a replica's journal pieces, to be
 * read with jreader).  The caller starts a new segment after every SEAL.
 * 0 or -errno.
 */
int jseg_write_records(const char *dir, uint32_t timeline, uint64_t first_lsn, const void *rec,
		       size_t len);

struct jsuper {
	uint32_t timeline;
	uint64_t seq, checkpoint_lsn, segment_size, time_ns;
	uint32_t flags;
	unsigned char boot_id[16];
};
#define JSUPER_CLEAN 1u
/* Reads the newest valid superblock slot of DIR.  0 or -errno (-EBADMSG: none valid). */
int jsuper_read(const char *dir, struct jsuper *sb);

/* ---- applying records to a tree: shared by the live filesystem and replay ---- */

/*
 * Handles for fids on the backing tree: {u32 ino, u32 gen}, the layout of
 * ext2/3/4 handles.  Returns true when the backing filesystem at DIRFD uses
 * it (the journal needs that to find objects again after a crash).
 */
bool apply_handles_supported(int dirfd);
/* The fid of the object NAME in DIRFD ("" for DIRFD itself).  0 or -errno. */
int apply_fid_of(int dirfd, const char *name, struct jfid *fid);

/*
 * Applies the absolute attributes of a SETATTR record R to the object at FD
 * (an O_PATH fd): owner, then mode, size and times.  1 or -errno.
 */
int apply_setattr_fd(int fd, const struct jrec *r);

struct replay_map;
/*
 * Applies R to the tree rooted at ROOT_FD (an O_RDONLY directory fd),
 * following the replay rules of docs/format.md.  MAP holds fid translations
 * for objects recreated by this replay (create with replay_map_new()).
 * Returns 1 applied, 0 skipped (already applied or superseded), -errno on
 * failure.
 */
int apply_record(int root_fd, struct replay_map *map, const struct jrec *r);
struct replay_map *replay_map_new(void);
void replay_map_free(struct replay_map *m);

/*
 * Replays the records of DIR from LSN FROM onto ROOT_FD: ABORTed records
 * skipped, the valid prefix applied.  FULL: namespace records too (after a
 * machine restart, when the tree may have lost anything since the
 * checkpoint); otherwise only the records of objects (data, attributes,
 * xattrs), since every namespace record describes a change already made.
 * Fills *RR.  0 or -errno.
 */
int journal_replay_dir(const char *dir, int root_fd, uint64_t from, bool full,
		       struct replay_result *rr);

#endif /* DRFS_JOURNAL_H */
