/*
 * tree.c - tree blobs: one per directory, entries sorted by name, encoded
 * as docs/format.md "Tree" describes.  The encoding is canonical (one byte
 * string per tree), so equal directories get equal ids in every snapshot.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "store.h"

#define TREE_MAGIC "DRFSTREE"
#define TREE_VERSION 1u

/* ---- a growing output buffer ---- */

struct obuf {
	unsigned char *p;
	size_t len, cap;
	bool oom;
};

static void ob_room(struct obuf *b, size_t n)
{
	if (b->oom || b->len + n <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 512;
	while (cap < b->len + n)
		cap *= 2;
	unsigned char *p = realloc(b->p, cap);
	if (!p) {
		b->oom = true;
		return;
	}
	b->p = p;
	b->cap = cap;
}

static void ob_put(struct obuf *b, const void *src, size_t n)
{
	ob_room(b, n);
	if (b->oom)
		return;
	memcpy(b->p + b->len, src, n);
	b->len += n;
}

static void ob_u8(struct obuf *b, uint8_t v) { ob_put(b, &v, 1); }

static void ob_u16(struct obuf *b, uint16_t v)
{
	unsigned char x[2] = { v, v >> 8 };
	ob_put(b, x, 2);
}

static void ob_u32(struct obuf *b, uint32_t v)
{
	unsigned char x[4] = { v, v >> 8, v >> 16, v >> 24 };
	ob_put(b, x, 4);
}

static void ob_u64(struct obuf *b, uint64_t v)
{
	ob_u32(b, (uint32_t)v);
	ob_u32(b, (uint32_t)(v >> 32));
}

static void ob_str(struct obuf *b, const char *s)
{
	size_t n = strlen(s);
	ob_u16(b, (uint16_t)n);
	ob_put(b, s, n);
}

/* ---- a bounded input cursor ---- */

struct ibuf {
	const unsigned char *p;
	size_t len, pos;
	bool bad;
};

static const unsigned char *ib_take(struct ibuf *b, size_t n)
{
	if (b->bad || b->len - b->pos < n) {
		b->bad = true;
		return NULL;
	}
	const unsigned char *p = b->p + b->pos;
	b->pos += n;
	return p;
}

static uint8_t ib_u8(struct ibuf *b)
{
	const unsigned char *p = ib_take(b, 1);
	return p ? p[0] : 0;
}

static uint16_t ib_u16(struct ibuf *b)
{
	const unsigned char *p = ib_take(b, 2);
	return p ? (uint16_t)(p[0] | p[1] << 8) : 0;
}

static uint32_t ib_u32(struct ibuf *b)
{
	const unsigned char *p = ib_take(b, 4);
	return p ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
			   (uint32_t)p[3] << 24
		 : 0;
}

static uint64_t ib_u64(struct ibuf *b)
{
	uint64_t lo = ib_u32(b);
	return lo | (uint64_t)ib_u32(b) << 32;
}

/* A malloc'd NUL-terminated copy of a u16-length string; NULL when bad. */
static char *ib_str(struct ibuf *b, bool allow_empty)
{
	uint16_t n = ib_u16(b);
	const unsigned char *p = ib_take(b, n);
	if (!p || (!n && !allow_empty) || memchr(p, 0, n)) {
		b->bad = true;
		return NULL;
	}
	char *s = malloc(n + 1u);
	if (!s) {
		b->bad = true;
		return NULL;
	}
	memcpy(s, p, n);
	s[n] = 0;
	return s;
}

/* ---- entries ---- */

static int entry_cmp(const void *a, const void *b)
{
	return strcmp(((const struct tree_entry *)a)->name, ((const struct tree_entry *)b)->name);
}

void tree_sort(struct tree *t)
{
	if (t->n > 1)
		qsort(t->e, t->n, sizeof(*t->e), entry_cmp);
}

struct tree_entry *tree_find(const struct tree *t, const char *name)
{
	size_t lo = 0, hi = t->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(name, t->e[mid].name);
		if (!c)
			return &t->e[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

void tree_entry_release(struct tree_entry *e)
{
	free(e->name);
	for (uint32_t i = 0; i < e->nxattr; i++) {
		free(e->xattr[i].name);
		free(e->xattr[i].value);
	}
	free(e->xattr);
	free(e->chunk);
	free(e->target);
	memset(e, 0, sizeof(*e));
}

void tree_release(struct tree *t)
{
	for (uint32_t i = 0; i < t->n; i++)
		tree_entry_release(&t->e[i]);
	free(t->e);
	memset(t, 0, sizeof(*t));
}

int tree_encode(const struct tree *t, void **out, size_t *len)
{
	struct obuf b = { 0 };

	ob_put(&b, TREE_MAGIC, 8);
	ob_u32(&b, TREE_VERSION);
	ob_u32(&b, t->n);
	for (uint32_t i = 0; i < t->n; i++) {
		const struct tree_entry *e = &t->e[i];

		ob_str(&b, e->name);
		ob_u8(&b, e->type);
		ob_u8(&b, 0);
		ob_u16(&b, 0);
		ob_u32(&b, e->mode & 07777);
		ob_u32(&b, e->uid);
		ob_u32(&b, e->gid);
		ob_u32(&b, e->type == TT_DIR ? 0 : e->nlink);
		ob_u64(&b, e->size);
		ob_u64(&b, (uint64_t)e->mtime_sec);
		ob_u32(&b, e->mtime_nsec);
		ob_u32(&b, 0);
		ob_u64(&b, e->ident);
		ob_u64(&b, e->rdev);
		ob_u32(&b, e->nxattr);
		for (uint32_t x = 0; x < e->nxattr; x++) {
			ob_str(&b, e->xattr[x].name);
			ob_u32(&b, e->xattr[x].len);
			ob_put(&b, e->xattr[x].value, e->xattr[x].len);
		}
		switch (e->type) {
		case TT_REG:
			ob_u32(&b, e->nchunk);
			for (uint32_t c = 0; c < e->nchunk; c++) {
				ob_u64(&b, e->chunk[c].offset);
				ob_u32(&b, e->chunk[c].len);
				ob_u32(&b, 0);
				ob_put(&b, e->chunk[c].id.b, STORE_ID_LEN);
			}
			break;
		case TT_DIR:
			ob_put(&b, e->subtree.b, STORE_ID_LEN);
			break;
		case TT_SYMLINK:
			ob_str(&b, e->target ? e->target : "");
			break;
		}
	}
	if (b.oom) {
		free(b.p);
		return -ENOMEM;
	}
	*out = b.p;
	*len = b.len;
	return 0;
}

static bool name_ok(const char *n)
{
	return strlen(n) <= 255 && !strchr(n, '/') && strcmp(n, ".") && strcmp(n, "..");
}

static int decode_entry(struct ibuf *b, struct tree_entry *e)
{
	e->name = ib_str(b, false);
	if (!e->name || !name_ok(e->name))
		return -EBADMSG;
	e->type = ib_u8(b);
	if (ib_u8(b) || ib_u16(b))
		return -EBADMSG;
	if (e->type < TT_REG || e->type > TT_SOCK)
		return -EBADMSG;
	e->mode = ib_u32(b);
	e->uid = ib_u32(b);
	e->gid = ib_u32(b);
	e->nlink = ib_u32(b);
	e->size = ib_u64(b);
	e->mtime_sec = (int64_t)ib_u64(b);
	e->mtime_nsec = ib_u32(b);
	if (ib_u32(b) || e->mode & ~07777u || e->mtime_nsec >= 1000000000u)
		return -EBADMSG;
	e->ident = ib_u64(b);
	e->rdev = ib_u64(b);
	uint32_t nx = ib_u32(b);
	if (b->bad || nx > (b->len - b->pos) / 6)
		return -EBADMSG;
	if (nx) {
		e->xattr = calloc(nx, sizeof(*e->xattr));
		if (!e->xattr)
			return -ENOMEM;
	}
	/* counted as they are made, so that a failure frees only what exists */
	e->nxattr = nx;
	for (uint32_t x = 0; x < e->nxattr; x++) {
		struct tree_xattr *xa = &e->xattr[x];
		xa->name = ib_str(b, false);
		xa->len = ib_u32(b);
		const unsigned char *v = ib_take(b, xa->len);
		if (!xa->name || !v)
			return -EBADMSG;
		xa->value = malloc(xa->len ? xa->len : 1);
		if (!xa->value)
			return -ENOMEM;
		memcpy(xa->value, v, xa->len);
		if (x && strcmp(e->xattr[x - 1].name, xa->name) >= 0)
			return -EBADMSG;
	}
	switch (e->type) {
	case TT_REG:
		e->nchunk = ib_u32(b);
		if (b->bad || e->nchunk > (b->len - b->pos) / 48)
			return -EBADMSG;
		if (e->nchunk) {
			e->chunk = calloc(e->nchunk, sizeof(*e->chunk));
			if (!e->chunk)
				return -ENOMEM;
		}
		for (uint32_t c = 0; c < e->nchunk; c++) {
			struct tree_chunk *ch = &e->chunk[c];
			ch->offset = ib_u64(b);
			ch->len = ib_u32(b);
			if (ib_u32(b))
				return -EBADMSG;
			const unsigned char *id = ib_take(b, STORE_ID_LEN);
			if (!id || !ch->len || ch->offset + ch->len > e->size ||
			    (c && ch->offset < e->chunk[c - 1].offset + e->chunk[c - 1].len))
				return -EBADMSG;
			memcpy(ch->id.b, id, STORE_ID_LEN);
		}
		break;
	case TT_DIR: {
		const unsigned char *id = ib_take(b, STORE_ID_LEN);
		if (!id)
			return -EBADMSG;
		memcpy(e->subtree.b, id, STORE_ID_LEN);
		break;
	}
	case TT_SYMLINK:
		e->target = ib_str(b, true);
		if (!e->target)
			return -EBADMSG;
		break;
	}
	return b->bad ? -EBADMSG : 0;
}

int tree_decode(const void *buf, size_t len, struct tree *t)
{
	struct ibuf b = { .p = buf, .len = len };
	struct tree out = { 0 };
	int ret = -EBADMSG;

	const unsigned char *magic = ib_take(&b, 8);
	if (!magic || memcmp(magic, TREE_MAGIC, 8) || ib_u32(&b) != TREE_VERSION)
		return -EBADMSG;
	uint32_t n = ib_u32(&b);
	/* an entry takes at least 67 bytes: refuse counts the buffer cannot hold */
	if (b.bad || n > (len - b.pos) / 67)
		return -EBADMSG;
	if (n) {
		out.e = calloc(n, sizeof(*out.e));
		if (!out.e)
			return -ENOMEM;
	}
	out.cap = n;
	for (uint32_t i = 0; i < n; i++) {
		out.n = i + 1;
		ret = decode_entry(&b, &out.e[i]);
		if (ret)
			goto out_free;
		if (i && strcmp(out.e[i - 1].name, out.e[i].name) >= 0) {
			ret = -EBADMSG;
			goto out_free;
		}
	}
	if (b.pos != len) {
		ret = -EBADMSG;
		goto out_free;
	}
	*t = out;
	return 0;

out_free:
	tree_release(&out);
	return ret;
}

int tree_load(struct repo *r, const struct store_id *id, struct tree *t)
{
	void *buf;
	size_t len;
	char hex[65];
	int ret = repo_get(r, id, &buf, &len);

	if (ret) {
		store_id_hex(id, hex);
		if (ret == -ENOENT)
			log_error("tree %s is missing from the repository %s", hex, repo_dir(r));
		return ret;
	}
	ret = tree_decode(buf, len, t);
	free(buf);
	if (ret == -EBADMSG) {
		store_id_hex(id, hex);
		log_error("tree %s in %s does not decode: damaged", hex, repo_dir(r));
	}
	return ret;
}
