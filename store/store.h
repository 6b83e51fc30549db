/*
 * store/ - the snapshot repository (byte layout: docs/format.md "The
 * snapshot repository"; reasoning: docs/snapshot-design.md).
 *
 * A repository is a directory of immutable, content-addressed objects:
 * packs of blobs (file data chunks, encoded trees), index files that say
 * where each blob is, and snapshot objects naming a root tree.  Snapshots
 * are built by scanning a tree, or from a parent snapshot plus the journal
 * range since it (only what the journal says changed is read again), and
 * read back by restore and by the read-only snapshot mount.
 *
 * Conventions: functions that act return 0 or -errno; predicates return
 * bool.  Messages naming the damaged object go to the log (log_error).
 */
#ifndef DRFS_STORE_H
#define DRFS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- ids, hashing, blob encoding (blob.c) ---- */

#define STORE_ID_LEN 32
struct store_id {
	unsigned char b[STORE_ID_LEN];
};

/* SHA-256 of LEN bytes at DATA into *ID (OpenSSL libcrypto). */
void store_hash(const void *data, size_t len, struct store_id *id);
/* 64 lower-case hex digits and a NUL into HEX (65 bytes). */
void store_id_hex(const struct store_id *id, char *hex);
/* Parses exactly 64 hex digits.  0 or -EINVAL. */
int store_id_parse(const char *hex, struct store_id *id);
bool store_id_is_zero(const struct store_id *id);

enum blob_enc { BLOB_RAW = 0, BLOB_ZSTD = 1 };
/*
 * Encodes LEN plaintext bytes for storage: one zstd frame at LEVEL when
 * shorter than the plaintext, else the plaintext.  *OUT is malloc'd (the
 * caller frees), *OUT_LEN its length, *ENC the encoding.  0 or -ENOMEM.
 */
int blob_encode(const void *data, size_t len, int level, void **out, size_t *out_len,
		enum blob_enc *enc);
/*
 * Decodes a stored blob of STORED_LEN bytes into BUF of exactly RAW_LEN
 * bytes.  0, or -EBADMSG when it does not decode to exactly RAW_LEN bytes.
 */
int blob_decode(const void *stored, size_t stored_len, enum blob_enc enc, void *buf,
		size_t raw_len);

/* ---- content-defined chunking (chunker.c) ---- */

struct chunker_params {
	uint32_t min, avg, max;       /* avg a power of two, min < avg < max <= 4 MiB */
};
#define CHUNK_MIN_DEFAULT (16u << 10)
#define CHUNK_AVG_DEFAULT (64u << 10)
#define CHUNK_MAX_DEFAULT (256u << 10)
#define CHUNK_REGION_MAX (1ull << 30) /* regions longer than this are split */

/* 0 when P is usable, else -EINVAL. */
int chunker_check(const struct chunker_params *p);
/*
 * The length of the chunk that starts at BUF (gear-fastcdc-1,
 * docs/format.md), given LEN bytes from the chunk start.  The caller passes
 * min(P->max, bytes left in the region), so a result of LEN means "cut at
 * LEN" (the region ends or the chunk reached max).  Returns 1..LEN; 0 only
 * when LEN is 0.
 */
size_t chunker_cut(const struct chunker_params *p, const unsigned char *buf, size_t len);

/* ---- the repository (repo.c, pack.c) ---- */

enum blob_type { BLOB_DATA = 1, BLOB_TREE = 2 };

struct repo_config {
	struct chunker_params chunk;
	int zstd_level;               /* default 5 */
	uint64_t pack_size;           /* default 16 MiB */
};
/* The defaults of docs/format.md into *CFG. */
void repo_config_default(struct repo_config *cfg);

struct repo;

/*
 * Makes an empty repository in DIR (created if missing; must not hold a
 * config).  CFG NULL: the defaults.  0 or -errno (-EEXIST: one is there).
 */
int repo_create(const char *dir, const struct repo_config *cfg);
bool repo_exists(const char *dir);
/*
 * Opens the repository in DIR and loads its index.  WRITABLE takes
 * REPO/lock (flock, non-blocking: -EWOULDBLOCK when another writer holds
 * it).  A damaged config or index file is logged naming the file and gives
 * -EBADMSG; an unknown format -EPROTONOSUPPORT.  *OUT freed by repo_close.
 */
int repo_open(const char *dir, bool writable, struct repo **out);
/* Frees R.  Blobs put since the last repo_flush are not in any index (harmless, docs/format.md). */
void repo_close(struct repo *r);
const struct repo_config *repo_get_config(const struct repo *r);
const char *repo_dir(const struct repo *r);

/*
 * Stores a blob of TYPE unless the repository already has it.  *ID gets
 * its id; *ADDED (may be NULL) whether it was new.  Blobs go into the open
 * pack of their type, which is written out (durably) when it reaches the
 * pack size.  0 or -errno.  Not thread-safe: one writer.
 */
int repo_put(struct repo *r, enum blob_type type, const void *data, size_t len,
	     struct store_id *id, bool *added);
/* Like repo_put for a blob whose id the caller already computed. */
int repo_put_id(struct repo *r, enum blob_type type, const void *data, size_t len,
		const struct store_id *id, bool *added);
/*
 * Like repo_put_id for a blob the caller encoded with blob_encode() at the
 * repository's level (STORED_LEN bytes, encoding ENC, RAW_LEN plaintext), so
 * that several threads can encode while one puts.  The caller vouches that
 * ID is the SHA-256 of the plaintext.
 */
int repo_put_encoded(struct repo *r, enum blob_type type, const struct store_id *id,
		     const void *stored, size_t stored_len, enum blob_enc enc, size_t raw_len,
		     bool *added);
/* Whether the repository has blob ID (in an index, or in an open pack). */
bool repo_has(struct repo *r, const struct store_id *id);
/*
 * Reads and verifies blob ID (docs/format.md "A blob read is valid if and
 * only if").  *DATA is malloc'd (caller frees), *LEN its length.  0,
 * -ENOENT (not in the index), -EBADMSG (damaged: logged with the blob and
 * pack), or -errno.  Thread-safe for concurrent readers.
 */
int repo_get(struct repo *r, const struct store_id *id, void **data, size_t *len);
/* The plaintext length of blob ID, or -ENOENT. */
int64_t repo_blob_size(struct repo *r, const struct store_id *id);
/* The pack holding ID as hex into PACK_HEX (65 bytes), for messages.  0 or -ENOENT. */
int repo_blob_pack(struct repo *r, const struct store_id *id, char *pack_hex);
/*
 * Writes out the open packs and one index file for every pack written since
 * the last flush.  After it returns 0 every blob put so far is durable and
 * findable.  *ADDED_BYTES (may be NULL) gets the bytes of packs written since
 * the repository was opened.
 */
int repo_flush(struct repo *r, uint64_t *added_bytes);

struct repo_stats {
	uint64_t blobs, packs, index_files;
	uint64_t index_mem_bytes;     /* memory the in-memory index takes */
};
void repo_get_stats(struct repo *r, struct repo_stats *st);

/* ---- snapshot objects (repo.c) ---- */

#define SNAP_HOST_MAX 256
#define SNAP_TAGS_MAX 256
struct snap_info {
	struct store_id id;           /* set by snap_write */
	struct store_id tree;
	struct store_id parent;       /* zero: none */
	uint32_t timeline;
	uint64_t lsn;
	int64_t time_ns;              /* wall time, ns since the epoch */
	char host[SNAP_HOST_MAX];
	char tags[SNAP_TAGS_MAX];     /* comma-separated */
	uint64_t files, bytes, changed, added;
	char source[16];              /* "scan" or "journal" */
	/* the root directory's own attributes (key "root": MODE-octal:UID:GID:SEC.NSEC) */
	uint32_t root_mode, root_uid, root_gid;
	int64_t root_mtime_sec;
	uint32_t root_mtime_nsec;
};
/* Writes S as snapshots/ID.snap (durably) and sets S->id.  Call after repo_flush. */
int snap_write(struct repo *r, struct snap_info *s);
/* Every snapshot, oldest first (by time, then LSN).  *OUT malloc'd; caller frees. */
int snap_list(struct repo *r, struct snap_info **out, size_t *n);
/*
 * Finds a snapshot by SPEC: "latest", a unique id prefix of 8 or more hex
 * digits, or "@TIME" (the newest at or before TIME; TIME as ISO 8601 UTC
 * "2026-11-28T17:05:00Z" or seconds since the epoch).  0, -ENOENT (none),
 * -EINVAL (bad SPEC), -EEXIST (ambiguous prefix).
 */
int snap_resolve(struct repo *r, const char *spec, struct snap_info *out);
/* Parses an @TIME argument (without the '@') into ns since the epoch.  0 or -EINVAL. */
int snap_parse_time(const char *s, int64_t *ns);

/* ---- trees (tree.c) ---- */

enum tree_type {
	TT_REG = 1, TT_DIR = 2, TT_SYMLINK = 3, TT_CHR = 4, TT_BLK = 5, TT_FIFO = 6, TT_SOCK = 7,
};

struct tree_xattr {
	char *name;                   /* NUL-terminated */
	void *value;
	uint32_t len;
};
struct tree_chunk {
	uint64_t offset;
	uint32_t len;
	struct store_id id;
};
struct tree_entry {
	char *name;                   /* NUL-terminated */
	uint8_t type;                 /* enum tree_type */
	uint32_t mode, uid, gid, nlink;
	uint64_t size;
	int64_t mtime_sec;
	uint32_t mtime_nsec;
	uint64_t ident, rdev;
	uint32_t nxattr;
	struct tree_xattr *xattr;     /* sorted by name */
	uint32_t nchunk;              /* TT_REG */
	struct tree_chunk *chunk;
	struct store_id subtree;      /* TT_DIR */
	char *target;                 /* TT_SYMLINK */
};
struct tree {
	uint32_t n, cap;
	struct tree_entry *e;         /* sorted by name (strcmp) once finished */
};

/* Sorts the entries by name (call before encoding a tree built in any order). */
void tree_sort(struct tree *t);
/* Encodes T (sorted) into a malloc'd buffer *OUT of *LEN bytes.  0 or -ENOMEM. */
int tree_encode(const struct tree *t, void **out, size_t *len);
/* Decodes a tree blob.  0, or -EBADMSG when BUF is not a valid tree.  *T freed by tree_release. */
int tree_decode(const void *buf, size_t len, struct tree *t);
/* Reads and decodes tree ID from R.  0 or -errno (logged naming the tree). */
int tree_load(struct repo *r, const struct store_id *id, struct tree *t);
/* Frees what T's entries own and T's array (not T itself). */
void tree_release(struct tree *t);
void tree_entry_release(struct tree_entry *e);
/* Looks up NAME in a sorted tree: the entry or NULL. */
struct tree_entry *tree_find(const struct tree *t, const char *name);

/* ---- building snapshots (build.c) ---- */

struct snap_build {
	int backing_fd;               /* O_RDONLY directory fd of the tree root */
	const char *skip_name;        /* a root entry never snapshotted (".drfs"), or NULL */
	const char *journal_dir;      /* STATE/journal, or NULL: scan */
	const struct snap_info *parent; /* NULL: scan the whole tree */
	uint32_t timeline;
	uint64_t lsn;                 /* the LSN the tree is at (end of the journal) */
	const char *tags;             /* may be NULL */
	unsigned threads;             /* readers for file data; 0: 2 */
};

struct snap_build_stats {
	uint64_t files, dirs, bytes;
	uint64_t dirs_skipped;        /* directories the journal says nothing under changed: not walked */
	uint64_t files_read;          /* files whose data was read (whole or in part) */
	uint64_t bytes_read;          /* file bytes read to chunk */
	uint64_t chunks_new, chunk_bytes_new; /* chunks the repository did not have, their plaintext bytes */
	uint64_t bytes_new_stored;
	bool fell_back_to_scan;       /* journal range unusable; why in the log */
};

/*
 * Builds a snapshot of the tree at B->backing_fd and writes it to R
 * (blobs, index, snapshot object).  With a parent and a journal, only the
 * objects and byte ranges the journal records in (parent LSN, B->lsn]
 * touched are read again; everything else comes from the parent.  The
 * result equals a scan of the same tree (invariant 4).  Falls back to a
 * scan (logged) when the range is not in the journal any more or holds a
 * RECOVERED record.  *OUT gets the written snapshot; *ST (may be NULL) what
 * the build did.  0 or -errno (logged naming the path).
 */
int snap_build(struct repo *r, const struct snap_build *b, struct snap_info *out,
	       struct snap_build_stats *st);

/* ---- reading snapshots back (restore.c) ---- */

struct restore_opts {
	unsigned threads;             /* 0: 4 */
	bool progress;                /* a progress line on stderr */
};
struct restore_stats {
	uint64_t files, dirs, others, bytes;
	uint64_t errors;
};
/*
 * Restores snapshot S of R into TARGET (an existing, empty directory, or
 * created): every entry with its type, mode, owner, mtime, xattrs (ACLs
 * included), hard links, symlinks, special files and holes.  0, or -errno
 * after the first damaged blob or failed write (logged naming the object
 * and the path).
 */
int snap_restore(struct repo *r, const struct snap_info *s, const char *target,
		 const struct restore_opts *o, struct restore_stats *st);

/*
 * Reads LEN bytes at OFFSET of file entry E (holes read as zeros) into BUF.
 * Returns the bytes read (short only at end of file) or -errno.  CACHE may
 * be NULL.  Used by restore, diff and the snapshot mount.
 */
struct chunk_cache;
struct chunk_cache *chunk_cache_new(size_t max_bytes);
void chunk_cache_free(struct chunk_cache *c);
ssize_t snap_read_file(struct repo *r, struct chunk_cache *c, const struct tree_entry *e,
		       void *buf, size_t len, uint64_t offset);

/* ---- point-in-time restore (pitr.c) ---- */

struct snap_replay_stats {
	uint64_t applied, skipped;    /* records applied; skipped (aborted, or for unlinked objects) */
	uint64_t last_lsn;            /* the LSN just past the last record replayed */
	int64_t last_time_ns;         /* when that record was made; 0: none replayed */
	uint64_t journal_end;         /* where the kept journal ends */
	bool more;                    /* the journal holds records made after the time asked for */
	char why[768];                /* why it failed, or why the journal cannot be used */
	char stop[256];               /* the journal ends at damage (not a clean end) before the time asked for: why */
};
/*
 * Replays onto TARGET, where snapshot S of R has just been restored, the
 * records of the journal in JOURNAL_DIR from S->lsn on that were made at
 * or before UNTIL_NS (docs/snapshot-design.md "Point-in-time restore").
 * Returns 0; 1 when the journal does not reach back to S->lsn (ST->why);
 * or -errno when a record cannot be applied (ST->why names it; TARGET
 * keeps what was applied before it).
 */
int snap_replay(struct repo *r, const struct snap_info *s, const char *journal_dir,
		int64_t until_ns, const char *target, struct snap_replay_stats *st);
/*
 * Whether the journal in JOURNAL_DIR holds the log from FROM on (checked
 * before a restore that would need it).  0; 1 when not (WHY says why);
 * -errno when it cannot be read (WHY too).
 */
int snap_replay_check(const char *journal_dir, uint64_t from, char *why, size_t len);

#endif /* DRFS_STORE_H */
