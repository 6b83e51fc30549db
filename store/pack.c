/*
 * pack.c - pack files and index files (docs/format.md "The snapshot
 * repository": "Pack" and "Index").
 *
 * A pack is written once, whole: the writer keeps it in memory (header,
 * then the stored blobs back to back), and when it is closed appends the
 * table and footer, names it by the SHA-256 of all its bytes and writes it
 * durably (temporary file, fsync, rename, fsync of the directory).  The
 * table makes a pack self-describing, so the index can be rebuilt from the
 * packs alone (pack_read_table).
 *
 * An index file lists packs and the blobs in them, sorted by blob id,
 * covered by one CRC-32C.  Every integer is little-endian; the build
 * targets little-endian machines (as the journal does).
 *
 * Nothing here keeps state between calls; a pack_writer belongs to one
 * thread at a time.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/common.h"
#include "../journal/journal.h"
#include "store_i.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the pack encoder assumes a little-endian machine"
#endif

#define PACK_MAGIC "DRFSPACK"
#define PACK_END_MAGIC "DRFSPEND"
#define PACK_VERSION 1u
#define INDEX_MAGIC "DRFSINDX"
#define INDEX_END_MAGIC "DRFSIEND"
#define INDEX_VERSION 1u
#define INDEX_HEADER_LEN 24u
#define INDEX_FOOTER_LEN 8u

static void put32(unsigned char *p, uint32_t v)
{
	memcpy(p, &v, 4);
}

static uint32_t get32(const unsigned char *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return v;
}

/* ---- the pack writer ---- */

void pack_writer_init(struct pack_writer *w, enum blob_type type)
{
	memset(w, 0, sizeof(*w));
	w->type = type;
}

void pack_writer_release(struct pack_writer *w)
{
	free(w->buf);
	free(w->ent);
	pack_writer_init(w, w->type);
}

/* Room for N more bytes in W->buf.  0 or -ENOMEM. */
static int writer_room(struct pack_writer *w, size_t n)
{
	size_t cap = w->cap ? w->cap : 64 << 10;
	unsigned char *p;

	if (w->len + n <= w->cap)
		return 0;
	while (cap < w->len + n)
		cap *= 2;
	p = realloc(w->buf, cap);
	if (!p)
		return -ENOMEM;
	w->buf = p;
	w->cap = cap;
	return 0;
}

int pack_writer_add_encoded(struct pack_writer *w, const struct store_id *id, const void *stored,
			    size_t stored_len, enum blob_enc enc, size_t raw_len,
			    struct pack_blob *out)
{
	int ret;

	if (raw_len > PACK_RAW_LEN_MAX)
		return -EFBIG;
	if (w->n == w->ent_cap) {
		uint32_t cap = w->ent_cap ? w->ent_cap * 2 : 64;
		struct pack_blob *e = realloc(w->ent, cap * sizeof(*e));

		if (!e)
			return -ENOMEM;
		w->ent = e;
		w->ent_cap = cap;
	}
	if (w->len == 0) {
		/* a new pack (or the first blob after a finish): the header */
		ret = writer_room(w, PACK_HEADER_LEN);
		if (ret)
			return ret;
		memcpy(w->buf, PACK_MAGIC, 8);
		put32(w->buf + 8, PACK_VERSION);
		put32(w->buf + 12, (uint32_t)w->type);
		w->len = PACK_HEADER_LEN;
		w->n = 0;
	}
	/* offsets are u32: a pack may not grow past 4 GiB (pack_size is at most 1 GiB) */
	if (w->len + stored_len > UINT32_MAX)
		return -EFBIG;
	ret = writer_room(w, stored_len);
	if (ret)
		return ret;
	if (stored_len)
		memcpy(w->buf + w->len, stored, stored_len);

	struct pack_blob *e = &w->ent[w->n++];
	e->id = *id;
	e->pack = 0;
	e->offset = (uint32_t)w->len;
	e->stored_len = (uint32_t)stored_len;
	e->raw = (uint32_t)raw_len | (enc == BLOB_ZSTD ? PACK_RAW_ZSTD : 0) |
		 (w->type == BLOB_TREE ? PACK_RAW_TREE : 0);
	w->len += stored_len;
	*out = *e;
	return 0;
}

int pack_writer_add(struct pack_writer *w, const struct store_id *id, const void *data,
		    size_t len, int level, struct pack_blob *out)
{
	void *stored;
	size_t stored_len;
	enum blob_enc enc;
	int ret;

	if (len > PACK_RAW_LEN_MAX)
		return -EFBIG;
	ret = blob_encode(data, len, level, &stored, &stored_len, &enc);
	if (ret)
		return ret;
	ret = pack_writer_add_encoded(w, id, stored, stored_len, enc, len, out);
	free(stored);
	return ret;
}

/* Creates XX under PACKS_DIRFD when missing (durably) and opens it.  fd or -errno. */
static int open_fanout_dir(int packs_dirfd, const char *xx)
{
	int fd;

	if (mkdirat(packs_dirfd, xx, 0755) == 0) {
		if (fsync(packs_dirfd))
			return -errno;
	} else if (errno != EEXIST) {
		return -errno;
	}
	fd = openat(packs_dirfd, xx, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

int pack_writer_finish(struct pack_writer *w, int packs_dirfd, struct store_id *pack_id,
		       uint64_t *bytes)
{
	size_t table = (size_t)w->n * PACK_ENTRY_LEN, start = w->len;
	char hex[2 * STORE_ID_LEN + 1], name[2 * STORE_ID_LEN + 8], xx[3];
	struct store_id id;
	unsigned char *p;
	int ret, dirfd;

	if (w->len == 0)
		return -EINVAL;
	ret = writer_room(w, table + PACK_FOOTER_LEN);
	if (ret)
		return ret;
	p = w->buf + w->len;
	for (uint32_t i = 0; i < w->n; i++, p += PACK_ENTRY_LEN) {
		memcpy(p, w->ent[i].id.b, STORE_ID_LEN);
		put32(p + 32, w->ent[i].offset);
		put32(p + 36, w->ent[i].stored_len);
		put32(p + 40, w->ent[i].raw & PACK_RAW_LEN_MAX);
		p[44] = (w->ent[i].raw & PACK_RAW_ZSTD) ? BLOB_ZSTD : BLOB_RAW;
		p[45] = p[46] = p[47] = 0;
	}
	put32(p, w->n);
	put32(p + 4, crc32c(0, w->buf + start, table));
	put32(p + 8, crc32c(0, w->buf, PACK_HEADER_LEN));
	put32(p + 12, 0);
	memcpy(p + 16, PACK_END_MAGIC, 8);

	size_t total = start + table + PACK_FOOTER_LEN;
	store_hash(w->buf, total, &id);
	store_id_hex(&id, hex);
	memcpy(xx, hex, 2);
	xx[2] = '\0';
	snprintf(name, sizeof(name), "%s.pack", hex);
	dirfd = open_fanout_dir(packs_dirfd, xx);
	if (dirfd < 0) {
		ret = dirfd;
		goto out_err;
	}
	ret = write_file_durable(dirfd, name, w->buf, total);
	close(dirfd);
	if (ret)
		goto out_err;
	*pack_id = id;
	if (bytes)
		*bytes = total;
	w->len = 0;               /* the entries stay for the caller until the next add */
	return 0;

out_err:
	log_error("cannot write pack packs/%s/%s: %s", xx, name, strerror(-ret));
	return ret;
}

/* ---- reading a pack's table ---- */

int pack_read_table(int fd, enum blob_type *type, struct pack_blob **out, uint32_t *n,
		    const char **why)
{
	unsigned char head[PACK_HEADER_LEN], foot[PACK_FOOTER_LEN], *table;
	struct pack_blob *e;
	struct stat st;
	uint32_t count, t, version, btype;
	uint64_t size, end;
	int ret;

	if (fstat(fd, &st))
		return -errno;
	size = (uint64_t)st.st_size;
	if (size < PACK_HEADER_LEN + PACK_FOOTER_LEN) {
		*why = "shorter than a pack header and footer";
		return -EBADMSG;
	}
	ret = store_pread(fd, head, sizeof(head), 0);
	if (!ret)
		ret = store_pread(fd, foot, sizeof(foot), (off_t)(size - PACK_FOOTER_LEN));
	if (ret) {
		if (ret == -EBADMSG)
			*why = "the file changed size while read";
		return ret;
	}
	if (memcmp(foot + 16, PACK_END_MAGIC, 8)) {
		*why = "no pack footer (truncated or damaged)";
		return -EBADMSG;
	}
	if (get32(foot + 12) != 0) {
		*why = "footer damaged (nonzero reserved field)";
		return -EBADMSG;
	}
	if (crc32c(0, head, sizeof(head)) != get32(foot + 8)) {
		*why = "header CRC mismatch";
		return -EBADMSG;
	}
	version = get32(head + 8);
	btype = get32(head + 12);
	if (memcmp(head, PACK_MAGIC, 8)) {
		*why = "not a pack (bad magic)";
		return -EBADMSG;
	}
	if (version != PACK_VERSION) {
		*why = "unknown pack format version";
		return -EBADMSG;
	}
	if (btype != BLOB_DATA && btype != BLOB_TREE) {
		*why = "unknown blob type in the header";
		return -EBADMSG;
	}
	count = get32(foot);
	if ((uint64_t)count * PACK_ENTRY_LEN > size - PACK_HEADER_LEN - PACK_FOOTER_LEN) {
		*why = "table larger than the pack (entry count damaged)";
		return -EBADMSG;
	}
	end = size - PACK_FOOTER_LEN - (uint64_t)count * PACK_ENTRY_LEN;  /* T */
	if (end > UINT32_MAX) {
		*why = "blob area larger than 4 GiB";
		return -EBADMSG;
	}
	table = malloc((size_t)count * PACK_ENTRY_LEN + 1);
	e = malloc((size_t)count * sizeof(*e) + 1);
	if (!table || !e) {
		ret = -ENOMEM;
		goto out_free;
	}
	ret = store_pread(fd, table, (size_t)count * PACK_ENTRY_LEN, (off_t)end);
	if (ret) {
		if (ret == -EBADMSG)
			*why = "the file changed size while read";
		goto out_free;
	}
	ret = -EBADMSG;
	if (crc32c(0, table, (size_t)count * PACK_ENTRY_LEN) != get32(foot + 4)) {
		*why = "table CRC mismatch";
		goto out_free;
	}
	t = PACK_HEADER_LEN;
	for (uint32_t i = 0; i < count; i++) {
		const unsigned char *p = table + (size_t)i * PACK_ENTRY_LEN;
		uint32_t raw = get32(p + 40);

		memcpy(e[i].id.b, p, STORE_ID_LEN);
		e[i].pack = 0;
		e[i].offset = get32(p + 32);
		e[i].stored_len = get32(p + 36);
		if (e[i].offset != t || (uint64_t)t + e[i].stored_len > end) {
			*why = "table entry out of place (blobs not back to back)";
			goto out_free;
		}
		if (p[44] > BLOB_ZSTD || p[45] || p[46] || p[47] || raw > PACK_RAW_LEN_MAX ||
		    (p[44] == BLOB_RAW && raw != e[i].stored_len)) {
			*why = "table entry damaged";
			goto out_free;
		}
		e[i].raw = raw | (p[44] == BLOB_ZSTD ? PACK_RAW_ZSTD : 0) |
			   (btype == BLOB_TREE ? PACK_RAW_TREE : 0);
		t += e[i].stored_len;
	}
	if (t != end) {
		*why = "bytes between the last blob and the table";
		goto out_free;
	}
	free(table);
	*type = (enum blob_type)btype;
	*out = e;
	*n = count;
	return 0;

out_free:
	free(table);
	free(e);
	return ret;
}

/* ---- index files ---- */

static int blob_cmp(const void *a, const void *b)
{
	return memcmp(a, b, STORE_ID_LEN);
}

int pack_index_encode(const struct store_id *packs, uint32_t npacks, struct pack_blob *e,
		      uint32_t n, void **out, size_t *len)
{
	size_t total = INDEX_HEADER_LEN + (size_t)npacks * STORE_ID_LEN +
		       (size_t)n * PACK_ENTRY_LEN + INDEX_FOOTER_LEN;
	unsigned char *buf = malloc(total), *p;

	if (!buf)
		return -ENOMEM;
	if (n)
		qsort(e, n, sizeof(*e), blob_cmp);
	memcpy(buf, INDEX_MAGIC, 8);
	put32(buf + 8, INDEX_VERSION);
	put32(buf + 12, npacks);
	put32(buf + 16, n);
	put32(buf + 20, 0);
	p = buf + INDEX_HEADER_LEN;
	for (uint32_t i = 0; i < npacks; i++, p += STORE_ID_LEN)
		memcpy(p, packs[i].b, STORE_ID_LEN);
	for (uint32_t i = 0; i < n; i++, p += PACK_ENTRY_LEN) {
		memcpy(p, e[i].id.b, STORE_ID_LEN);
		put32(p + 32, e[i].pack);
		put32(p + 36, e[i].offset);
		put32(p + 40, e[i].stored_len);
		put32(p + 44, e[i].raw);
	}
	put32(p, crc32c(0, buf, (size_t)(p - buf)));
	memcpy(p + 4, INDEX_END_MAGIC, 4);
	*out = buf;
	*len = total;
	return 0;
}

int pack_index_decode(const char *name, const void *buf, size_t len, struct store_id **packs,
		      uint32_t *npacks, struct pack_blob **e, uint32_t *n)
{
	const unsigned char *b = buf, *p;
	struct store_id *pk;
	struct pack_blob *ent;
	uint32_t np, ne, version;
	const char *why;

	if (len < INDEX_HEADER_LEN + INDEX_FOOTER_LEN) {
		why = "shorter than a header and footer";
		goto bad;
	}
	if (memcmp(b, INDEX_MAGIC, 8) || memcmp(b + len - 4, INDEX_END_MAGIC, 4)) {
		why = "bad magic (not an index file, or truncated)";
		goto bad;
	}
	if (crc32c(0, b, len - INDEX_FOOTER_LEN) != get32(b + len - INDEX_FOOTER_LEN)) {
		why = "CRC mismatch";
		goto bad;
	}
	version = get32(b + 8);
	if (version != INDEX_VERSION) {
		log_error("index file %s: format version %u is not known to this drfs", name,
			  version);
		return -EPROTONOSUPPORT;
	}
	np = get32(b + 12);
	ne = get32(b + 16);
	if (get32(b + 20) != 0) {
		why = "reserved field not zero";
		goto bad;
	}
	if ((uint64_t)INDEX_HEADER_LEN + (uint64_t)np * STORE_ID_LEN +
	    (uint64_t)ne * PACK_ENTRY_LEN + INDEX_FOOTER_LEN != len) {
		why = "length does not match the pack and entry counts";
		goto bad;
	}
	pk = malloc((size_t)np * sizeof(*pk) + 1);
	ent = malloc((size_t)ne * sizeof(*ent) + 1);
	if (!pk || !ent) {
		free(pk);
		free(ent);
		return -ENOMEM;
	}
	p = b + INDEX_HEADER_LEN;
	for (uint32_t i = 0; i < np; i++, p += STORE_ID_LEN)
		memcpy(pk[i].b, p, STORE_ID_LEN);
	why = NULL;
	for (uint32_t i = 0; i < ne; i++, p += PACK_ENTRY_LEN) {
		memcpy(ent[i].id.b, p, STORE_ID_LEN);
		ent[i].pack = get32(p + 32);
		ent[i].offset = get32(p + 36);
		ent[i].stored_len = get32(p + 40);
		ent[i].raw = get32(p + 44);
		if (ent[i].pack >= np || ent[i].offset < PACK_HEADER_LEN)
			why = "entry names no pack or a place in a header";
		else if (!(ent[i].raw & PACK_RAW_ZSTD) &&
			 (ent[i].raw & PACK_RAW_LEN_MAX) != ent[i].stored_len)
			why = "raw entry whose stored and plaintext lengths differ";
		else if (i && memcmp(ent[i - 1].id.b, ent[i].id.b, STORE_ID_LEN) > 0)
			why = "entries not sorted by blob id";
		if (why)
			break;
	}
	if (why) {
		free(pk);
		free(ent);
		goto bad;
	}
	*packs = pk;
	*npacks = np;
	*e = ent;
	*n = ne;
	return 0;

bad:
	log_error("index file %s is damaged: %s", name, why);
	return -EBADMSG;
}
