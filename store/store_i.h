/*
 * store_i.h - private declarations shared by the files of store/.  The
 * public interface is store.h; this header holds only what more than one
 * file of store/ needs and no other module may use.  Keep it small.
 */
#ifndef DRFS_STORE_I_H
#define DRFS_STORE_I_H

#include <errno.h>

#include "../common/common.h"
#include "store.h"

/* pread of exactly LEN bytes at OFF: 0, -errno, or -EBADMSG when the file is short (damage). */
static inline int store_pread(int fd, void *buf, size_t len, off_t off)
{
	int ret = pread_all(fd, buf, len, off);
	return ret == -ENODATA ? -EBADMSG : ret;
}

/* The largest chunk_max a repository may use (docs/format.md "config"). */
#define CHUNK_MAX_LIMIT (4u << 20)

/* ---- a map from inode number to a pointer (imap.c) ---- */

struct imap_slot {
	uint64_t ino;                 /* 0: empty (no file has inode 0) */
	void *val;
};
struct imap {
	struct imap_slot *s;
	size_t cap, n;
};
/*
 * The value slot of INO, made (NULL-valued) when CREATE and missing.  NULL
 * when absent (or out of memory while making it).  Free M->s when done.
 */
void **imap_slot(struct imap *m, uint64_t ino, bool create);
/* The value of INO, or NULL. */
void *imap_get(struct imap *m, uint64_t ino);

/* ---- packs and index files (pack.c; docs/format.md "Pack", "Index") ---- */

/*
 * Where one blob is: the layout of an index entry, and the in-memory form
 * of the repository index (repo.c).  PACK is the position in the pack list
 * of an index file, or in memory the repository's pack number.
 */
struct pack_blob {
	struct store_id id;
	uint32_t pack;
	uint32_t offset;              /* of the stored blob in the pack */
	uint32_t stored_len;
	uint32_t raw;                 /* plaintext length | PACK_RAW_ZSTD | PACK_RAW_TREE */
};
_Static_assert(sizeof(struct pack_blob) == 48, "pack_blob is an index entry");
#define PACK_RAW_ZSTD 0x80000000u
#define PACK_RAW_TREE 0x40000000u
#define PACK_RAW_LEN_MAX 0x3fffffffu  /* the largest plaintext a blob may have */
#define PACK_HEADER_LEN 16u
#define PACK_FOOTER_LEN 24u
#define PACK_ENTRY_LEN 48u

/* One open pack of one blob type, built in memory (a header, then the stored blobs). */
struct pack_writer {
	enum blob_type type;
	unsigned char *buf;           /* the pack file's bytes so far */
	size_t len, cap;
	struct pack_blob *ent;        /* the blobs in it, in the order stored */
	uint32_t n, ent_cap;
};
void pack_writer_init(struct pack_writer *w, enum blob_type type);
void pack_writer_release(struct pack_writer *w);
/*
 * Encodes LEN bytes at DATA (blob_encode at LEVEL) and appends them as blob
 * ID.  *OUT gets its entry (pack 0).  0, -EFBIG (too large), -ENOMEM.
 */
/* pack_writer_add for a blob its caller already encoded (STORED_LEN bytes, ENC, RAW_LEN plaintext). */
int pack_writer_add_encoded(struct pack_writer *w, const struct store_id *id, const void *stored,
			    size_t stored_len, enum blob_enc enc, size_t raw_len,
			    struct pack_blob *out);
int pack_writer_add(struct pack_writer *w, const struct store_id *id, const void *data,
		    size_t len, int level, struct pack_blob *out);
/*
 * Appends the table and footer and writes the pack durably as
 * XX/ID.pack under PACKS_DIRFD.  *PACK_ID gets ID, *BYTES the file length.
 * On success W is empty again (its blobs stay in W->ent until the next
 * add); on failure it is as before.  0 or -errno.
 */
int pack_writer_finish(struct pack_writer *w, int packs_dirfd, struct store_id *pack_id,
		       uint64_t *bytes);

/*
 * Reads and checks the header, footer and table of the pack open at FD
 * (pread only).  *TYPE the blob type, *OUT (malloc'd, caller frees) its *N
 * entries in the order stored, pack 0, the tree flag set from the type.
 * 0, -EBADMSG with *WHY (a static string) when damaged, or -errno.
 * Rebuilding an index from packs (fsck) uses it.
 */
int pack_read_table(int fd, enum blob_type *type, struct pack_blob **out, uint32_t *n,
		    const char **why);

/*
 * An index file of the NPACKS PACKS and N entries E (sorted here, in place;
 * E[i].pack a position in PACKS).  *OUT malloc'd (caller frees).  0 or -ENOMEM.
 */
int pack_index_encode(const struct store_id *packs, uint32_t npacks, struct pack_blob *e,
		      uint32_t n, void **out, size_t *len);
/*
 * Decodes the index file NAME (for the log line) of LEN bytes at BUF.
 * *PACKS and *E malloc'd (caller frees).  0; -EBADMSG (logged naming the
 * file) when damaged; -EPROTONOSUPPORT (logged) for another version; -ENOMEM.
 */
int pack_index_decode(const char *name, const void *buf, size_t len, struct store_id **packs,
		      uint32_t *npacks, struct pack_blob **e, uint32_t *n);

#endif /* DRFS_STORE_I_H */
