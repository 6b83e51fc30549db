/*
 * record.c - CRC-32C and the record encoding of docs/format.md.
 */
#include <string.h>

#include "journal.h"

/* ---- CRC-32C ---- */

static uint32_t crc_table[8][256];

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
		crc_table[0][i] = c;
	}
	for (uint32_t i = 0; i < 256; i++)
		for (int t = 1; t < 8; t++)
			crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^
					  crc_table[0][crc_table[t - 1][i] & 0xff];
}

static uint32_t crc_soft(uint32_t crc, const unsigned char *p, size_t len)
{
	while (len >= 8) {
		uint64_t v;
		memcpy(&v, p, 8);
		v ^= crc;
		crc = crc_table[7][v & 0xff] ^ crc_table[6][(v >> 8) & 0xff] ^
		      crc_table[5][(v >> 16) & 0xff] ^ crc_table[4][(v >> 24) & 0xff] ^
		      crc_table[3][(v >> 32) & 0xff] ^ crc_table[2][(v >> 40) & 0xff] ^
		      crc_table[1][(v >> 48) & 0xff] ^ crc_table[0][v >> 56];
		p += 8;
		len -= 8;
	}
	while (len--)
		crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xff];
	return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t crc_hw(uint32_t crc, const unsigned char *p, size_t len)
{
	uint64_t c = crc;

	while (len >= 8) {
		uint64_t v;
		memcpy(&v, p, 8);
		c = __builtin_ia32_crc32di(c, v);
		p += 8;
		len -= 8;
	}
	crc = (uint32_t)c;
	while (len--)
		crc = __builtin_ia32_crc32qi(crc, *p++);
	return crc;
}
#endif

static uint32_t (*crc_impl)(uint32_t, const unsigned char *, size_t);

__attribute__((constructor))
static void crc_choose(void)
{
	crc_init();
	crc_impl = crc_soft;
#if defined(__x86_64__)
	__builtin_cpu_init();
	if (__builtin_cpu_supports("sse4.2"))
		crc_impl = crc_hw;
#endif
}

uint32_t crc32c(uint32_t crc, const void *buf, size_t len)
{
	return ~crc_impl(~crc, buf, len);
}

/* ---- little-endian helpers (the build targets little-endian machines) ---- */

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the journal encoder assumes a little-endian machine"
#endif

struct wbuf {
	unsigned char *p;
};

static void put(struct wbuf *w, const void *v, size_t n)
{
	if (n)
		memcpy(w->p, v, n);
	w->p += n;
}
static void put32(struct wbuf *w, uint32_t v) { put(w, &v, 4); }
static void put64(struct wbuf *w, uint64_t v) { put(w, &v, 8); }
static void put_fid(struct wbuf *w, struct jfid f)
{
	put64(w, f.ino);
	put32(w, f.gen);
	put32(w, 0);
}
static void put_time(struct wbuf *w, struct timespec t)
{
	put64(w, (uint64_t)t.tv_sec);
	put32(w, (uint32_t)t.tv_nsec);
	put32(w, 0);
}
static void put_str(struct wbuf *w, const char *s, uint16_t n)
{
	put(w, &n, 2);
	put(w, s, n);
}

struct rbuf {
	const unsigned char *p, *end;
	bool bad;
};

static const void *get(struct rbuf *r, size_t n)
{
	const void *at = r->p;

	if (r->bad || (size_t)(r->end - r->p) < n) {
		r->bad = true;
		return NULL;
	}
	r->p += n;
	return at;
}
static uint32_t get32(struct rbuf *r)
{
	uint32_t v = 0;
	const void *p = get(r, 4);
	if (p)
		memcpy(&v, p, 4);
	return v;
}
static uint64_t get64(struct rbuf *r)
{
	uint64_t v = 0;
	const void *p = get(r, 8);
	if (p)
		memcpy(&v, p, 8);
	return v;
}
static struct jfid get_fid(struct rbuf *r)
{
	struct jfid f;

	f.ino = get64(r);
	f.gen = get32(r);
	if (get32(r) != 0)
		r->bad = true;
	return f;
}
static struct timespec get_time(struct rbuf *r)
{
	struct timespec t;

	t.tv_sec = (time_t)get64(r);
	t.tv_nsec = get32(r);
	if (get32(r) != 0 || t.tv_nsec >= 1000000000L)
		r->bad = true;
	return t;
}
static const char *get_str(struct rbuf *r, uint16_t *n)
{
	const void *p = get(r, 2);

	*n = 0;
	if (!p)
		return NULL;
	memcpy(n, p, 2);
	return get(r, *n);
}

/* ---- records ---- */

static const char *const type_names[] = {
	[JR_WRITE] = "WRITE", [JR_SETATTR] = "SETATTR", [JR_CREATE] = "CREATE",
	[JR_LINK] = "LINK", [JR_UNLINK] = "UNLINK", [JR_RENAME] = "RENAME",
	[JR_FALLOCATE] = "FALLOCATE", [JR_COPY] = "COPY", [JR_SETXATTR] = "SETXATTR",
	[JR_REMOVEXATTR] = "REMOVEXATTR", [JR_ABORT] = "ABORT", [JR_SEAL] = "SEAL",
	[JR_RECOVERED] = "RECOVERED",
};

const char *jrec_type_name(unsigned type)
{
	return type >= 1 && type <= JR_TYPE_MAX ? type_names[type] : "?";
}

/* Payload size of R, or SIZE_MAX when it cannot be encoded. */
static size_t payload_size(const struct jrec *r)
{
	switch (r->type) {
	case JR_WRITE:
		return r->data_len > JREC_MAX_DATA ? SIZE_MAX : 16 + 8 + r->data_len;
	case JR_SETATTR:
		return 16 + 4 * 4 + 8 + 16 + 16;
	case JR_CREATE:
		return 16 + 16 + 4 * 4 + 8 + 2 + r->name_len + 2 + r->name2_len;
	case JR_LINK:
		return 16 + 16 + 2 + r->name_len;
	case JR_UNLINK:
		return 16 + 16 + 2 + r->name_len;
	case JR_RENAME:
		return 4 * 16 + 8 + 2 + r->name_len + 2 + r->name2_len;
	case JR_FALLOCATE:
		return 16 + 8 + 16;
	case JR_COPY:
		return r->data_len > JREC_MAX_DATA ? SIZE_MAX : 16 + 8 + 16 + 8 + r->data_len;
	case JR_SETXATTR:
		return r->data_len > UINT32_MAX ? SIZE_MAX : 16 + 8 + 2 + r->name_len + 4 + r->data_len;
	case JR_REMOVEXATTR:
		return 16 + 2 + r->name_len;
	case JR_ABORT:
		return 8;
	case JR_SEAL:
		return 0;
	case JR_RECOVERED:
		return 8 + 8 + 8;
	default:
		return SIZE_MAX;
	}
}

size_t jrec_size(const struct jrec *r)
{
	size_t p = payload_size(r);

	if (p == SIZE_MAX)
		return 0;
	return (JREC_HEADER + p + 7) & ~(size_t)7;
}

static void encode_payload(const struct jrec *r, struct wbuf *w)
{
	switch (r->type) {
	case JR_WRITE:
		put_fid(w, r->fid);
		put64(w, r->offset);
		put(w, r->data, r->data_len);
		break;
	case JR_SETATTR:
		put_fid(w, r->fid);
		put32(w, r->mask);
		put32(w, r->mode);
		put32(w, r->uid);
		put32(w, r->gid);
		put64(w, r->size);
		put_time(w, r->atime);
		put_time(w, r->mtime);
		break;
	case JR_CREATE:
		put_fid(w, r->fid2);
		put_fid(w, r->fid);
		put32(w, r->mode);
		put32(w, r->uid);
		put32(w, r->gid);
		put32(w, 0);
		put64(w, r->rdev);
		put_str(w, r->name, r->name_len);
		put_str(w, r->name2, r->name2_len);
		break;
	case JR_LINK:
		put_fid(w, r->fid);
		put_fid(w, r->fid2);
		put_str(w, r->name, r->name_len);
		break;
	case JR_UNLINK:
		put_fid(w, r->fid2);
		put_fid(w, r->fid);
		put_str(w, r->name, r->name_len);
		break;
	case JR_RENAME:
		put_fid(w, r->fid);
		put_fid(w, r->fid2);
		put_fid(w, r->fid3);
		put_fid(w, r->fid4);
		put32(w, r->xflags);
		put32(w, 0);
		put_str(w, r->name, r->name_len);
		put_str(w, r->name2, r->name2_len);
		break;
	case JR_FALLOCATE:
		put_fid(w, r->fid);
		put32(w, r->xflags);
		put32(w, 0);
		put64(w, r->offset);
		put64(w, r->size);
		break;
	case JR_COPY:
		put_fid(w, r->fid);
		put64(w, r->offset);
		put_fid(w, r->fid2);
		put64(w, r->offset2);
		put(w, r->data, r->data_len);
		break;
	case JR_SETXATTR:
		put_fid(w, r->fid);
		put32(w, r->xflags);
		put32(w, 0);
		put_str(w, r->name, r->name_len);
		put32(w, (uint32_t)r->data_len);
		put(w, r->data, r->data_len);
		break;
	case JR_REMOVEXATTR:
		put_fid(w, r->fid);
		put_str(w, r->name, r->name_len);
		break;
	case JR_ABORT:
		put64(w, r->lsn2);
		break;
	case JR_SEAL:
		break;
	case JR_RECOVERED:
		put64(w, r->lsn2);
		put64(w, r->offset);
		put32(w, r->xflags);
		put32(w, 0);
		break;
	}
}

/* The 40-byte header of R at B, for a record of LEN bytes with a PLEN-byte payload. */
static void put_header(unsigned char *b, const struct jrec *r, size_t len, size_t plen,
		       uint32_t pcrc)
{
	struct wbuf w = { b };

	put32(&w, (uint32_t)len);
	put(&w, &r->type, 2);
	put(&w, &r->flags, 2);
	put64(&w, r->lsn);
	put64(&w, r->time_ns);
	put32(&w, (uint32_t)plen);
	put32(&w, pcrc);
	put32(&w, 0);
	put32(&w, crc32c(0, b, 36));
}

size_t jrec_encode_head(const struct jrec *r, void *buf, size_t *head_len)
{
	struct jrec h = *r;
	size_t len = jrec_size(r), plen = payload_size(r);
	unsigned char *b = buf;
	struct wbuf w;
	uint32_t pcrc;

	if (!len || (r->type != JR_WRITE && r->type != JR_COPY))
		return 0;
	h.data_len = 0;
	w.p = b + JREC_HEADER;
	encode_payload(&h, &w);
	*head_len = (size_t)(w.p - b);
	pcrc = crc32c(0, b + JREC_HEADER, *head_len - JREC_HEADER);
	pcrc = crc32c(pcrc, r->data, r->data_len);
	put_header(b, r, len, plen, pcrc);
	return len;
}

void jrec_set_lsn(void *buf, uint64_t lsn)
{
	unsigned char *b = buf;
	uint32_t hcrc;

	memcpy(b + 8, &lsn, 8);
	hcrc = crc32c(0, b, 36);
	memcpy(b + 36, &hcrc, 4);
}

size_t jrec_encode(const struct jrec *r, void *buf)
{
	size_t len = jrec_size(r), plen = payload_size(r);
	unsigned char *b = buf;
	struct wbuf w = { b + JREC_HEADER };
	uint32_t pcrc;

	if (!len)
		return 0;
	encode_payload(r, &w);
	memset(w.p, 0, (size_t)(b + len - w.p));
	pcrc = crc32c(0, b + JREC_HEADER, plen);
	put_header(b, r, len, plen, pcrc);
	return len;
}

size_t jrec_decode(const void *buf, size_t avail, uint64_t expect, struct jrec *out,
		   const char **why)
{
	const unsigned char *b = buf;
	struct rbuf rb;
	uint32_t len, plen, pcrc, hcrc, zero;
	const char *dummy;

	if (!why)
		why = &dummy;
	memset(out, 0, sizeof(*out));
	if (avail < JREC_HEADER) {
		*why = "no room for a record header";
		return 0;
	}
	memcpy(&hcrc, b + 36, 4);
	if (crc32c(0, b, 36) != hcrc) {
		bool blank = true;
		for (size_t i = 0; i < JREC_HEADER && blank; i++)
			blank = b[i] == 0;
		*why = blank ? "end of log (zeros)" : "header checksum mismatch";
		return 0;
	}
	memcpy(&len, b, 4);
	memcpy(&out->type, b + 4, 2);
	memcpy(&out->flags, b + 6, 2);
	memcpy(&out->lsn, b + 8, 8);
	memcpy(&out->time_ns, b + 16, 8);
	memcpy(&plen, b + 24, 4);
	memcpy(&pcrc, b + 28, 4);
	memcpy(&zero, b + 32, 4);
	if (out->lsn != expect) {
		*why = "record LSN does not match its position (stale bytes)";
		return 0;
	}
	if (zero || len % 8 || len < JREC_HEADER || (uint64_t)plen + JREC_HEADER > len) {
		*why = "bad record length";
		return 0;
	}
	if (len > avail) {
		*why = "record runs past the end of the segment";
		return 0;
	}
	if (crc32c(0, b + JREC_HEADER, plen) != pcrc) {
		*why = "payload checksum mismatch";
		return 0;
	}
	for (size_t i = JREC_HEADER + plen; i < len; i++)
		if (b[i]) {
			*why = "padding is not zero";
			return 0;
		}
	if (out->type < 1 || out->type > JR_TYPE_MAX) {
		*why = "unknown record type";
		return 0;
	}
	rb.p = b + JREC_HEADER;
	rb.end = rb.p + plen;
	rb.bad = false;
	switch (out->type) {
	case JR_WRITE:
		out->fid = get_fid(&rb);
		out->offset = get64(&rb);
		out->data = rb.p;
		out->data_len = rb.bad ? 0 : (size_t)(rb.end - rb.p);
		rb.p = rb.end;
		break;
	case JR_SETATTR:
		out->fid = get_fid(&rb);
		out->mask = get32(&rb);
		out->mode = get32(&rb);
		out->uid = get32(&rb);
		out->gid = get32(&rb);
		out->size = get64(&rb);
		out->atime = get_time(&rb);
		out->mtime = get_time(&rb);
		break;
	case JR_CREATE:
		out->fid2 = get_fid(&rb);
		out->fid = get_fid(&rb);
		out->mode = get32(&rb);
		out->uid = get32(&rb);
		out->gid = get32(&rb);
		if (get32(&rb))
			rb.bad = true;
		out->rdev = get64(&rb);
		out->name = get_str(&rb, &out->name_len);
		out->name2 = get_str(&rb, &out->name2_len);
		break;
	case JR_LINK:
		out->fid = get_fid(&rb);
		out->fid2 = get_fid(&rb);
		out->name = get_str(&rb, &out->name_len);
		break;
	case JR_UNLINK:
		out->fid2 = get_fid(&rb);
		out->fid = get_fid(&rb);
		out->name = get_str(&rb, &out->name_len);
		break;
	case JR_RENAME:
		out->fid = get_fid(&rb);
		out->fid2 = get_fid(&rb);
		out->fid3 = get_fid(&rb);
		out->fid4 = get_fid(&rb);
		out->xflags = get32(&rb);
		if (get32(&rb))
			rb.bad = true;
		out->name = get_str(&rb, &out->name_len);
		out->name2 = get_str(&rb, &out->name2_len);
		break;
	case JR_FALLOCATE:
		out->fid = get_fid(&rb);
		out->xflags = get32(&rb);
		if (get32(&rb))
			rb.bad = true;
		out->offset = get64(&rb);
		out->size = get64(&rb);
		break;
	case JR_COPY:
		out->fid = get_fid(&rb);
		out->offset = get64(&rb);
		out->fid2 = get_fid(&rb);
		out->offset2 = get64(&rb);
		out->data = rb.p;
		out->data_len = rb.bad ? 0 : (size_t)(rb.end - rb.p);
		rb.p = rb.end;
		break;
	case JR_SETXATTR: {
		uint32_t vlen;
		out->fid = get_fid(&rb);
		out->xflags = get32(&rb);
		if (get32(&rb))
			rb.bad = true;
		out->name = get_str(&rb, &out->name_len);
		vlen = get32(&rb);
		out->data = get(&rb, vlen);
		out->data_len = vlen;
		break;
	}
	case JR_REMOVEXATTR:
		out->fid = get_fid(&rb);
		out->name = get_str(&rb, &out->name_len);
		break;
	case JR_ABORT:
		out->lsn2 = get64(&rb);
		break;
	case JR_SEAL:
		break;
	case JR_RECOVERED:
		out->lsn2 = get64(&rb);
		out->offset = get64(&rb);
		out->xflags = get32(&rb);
		if (get32(&rb))
			rb.bad = true;
		break;
	}
	if (rb.bad || rb.p != rb.end) {
		*why = "payload does not decode";
		return 0;
	}
	*why = NULL;
	return len;
}
