/*
 * fetch.c - reading a replica's journal back: the chain of pieces from an
 * LSN (docs/format.md "Journal pieces") written into segment files that the
 * local journal reader reads, for point-in-time restores from a replica.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../journal/journal.h"
#include "replicate_i.h"

struct piece {
	uint32_t timeline;
	uint64_t first, end;
	char key[96];
};
struct pieces {
	struct piece *v;
	size_t n, cap;
};

static int add_piece(void *arg, const char *key, uint64_t size)
{
	struct pieces *p = arg;
	struct piece x;
	unsigned long long f, e;
	unsigned tl;
	int used = 0;

	if (sscanf(key, "journal/%8x/%16llx-%16llx.log%n", &tl, &f, &e, &used) != 3 ||
	    key[used] || e <= f || size != e - f)
		return 0;       /* not a piece, or not whole: ignored */
	x.timeline = tl;
	x.first = f;
	x.end = e;
	snprintf(x.key, sizeof(x.key), "%s", key);
	if (p->n == p->cap) {
		size_t cap = p->cap ? p->cap * 2 : 64;
		struct piece *v = realloc(p->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		p->v = v;
		p->cap = cap;
	}
	p->v[p->n++] = x;
	return 0;
}

/* The segment being rebuilt: records from FIRST on, cut after every SEAL. */
struct segbuf {
	const char *dir;
	uint32_t timeline;
	uint64_t first;
	unsigned char *b;
	size_t len, cap;
};

static int seg_flush(struct segbuf *s)
{
	int ret = 0;

	if (s->len)
		ret = jseg_write_records(s->dir, s->timeline, s->first, s->b, s->len);
	s->first += s->len;
	s->len = 0;
	return ret;
}

/* Appends the records of DATA (LEN bytes, first LSN AT) to S.  Bytes taken, or -errno. */
static ssize_t seg_take(struct segbuf *s, const unsigned char *data, size_t len, uint64_t at)
{
	size_t off = 0;

	while (off < len) {
		struct jrec r;
		const char *why;
		size_t l = jrec_decode(data + off, len - off, at + off, &r, &why);
		if (!l)
			break;
		if (s->len + l > s->cap) {
			size_t cap = s->cap ? s->cap : 1 << 20;
			while (cap < s->len + l)
				cap *= 2;
			unsigned char *b = realloc(s->b, cap);
			if (!b)
				return -ENOMEM;
			s->b = b;
			s->cap = cap;
		}
		memcpy(s->b + s->len, data + off, l);
		s->len += l;
		off += l;
		if (r.type == JR_SEAL) {
			int ret = seg_flush(s);
			if (ret)
				return ret;
		}
	}
	return (ssize_t)off;
}

int replica_fetch_journal(struct backend *b, uint64_t from, const char *dir, uint64_t *end,
			  struct backend_err *err)
{
	struct pieces p = { 0 };
	struct segbuf s = { .dir = dir, .first = from };
	uint64_t cur = from, max_end = 0;
	int ret = backend_list(b, "journal/", add_piece, &p, err);

	if (ret)
		goto out;
	for (size_t i = 0; i < p.n; i++)
		if (p.v[i].end > max_end)
			max_end = p.v[i].end;
	for (;;) {
		struct piece *best = NULL;
		for (size_t i = 0; i < p.n; i++)
			if (p.v[i].first <= cur && cur < p.v[i].end && (!best || p.v[i].end > best->end))
				best = &p.v[i];
		if (!best)
			break;
		void *data;
		size_t len;
		ret = backend_get(b, best->key, &data, &len, err);
		if (ret)
			goto out;
		s.timeline = best->timeline;
		ssize_t took = seg_take(&s, (unsigned char *)data + (cur - best->first),
					len - (size_t)(cur - best->first), cur);
		free(data);
		if (took < 0) {
			ret = (int)took;
			backend_err_set(err, false, 0, NULL, "cannot write the journal into %s: %s", dir,
					strerror(-ret));
			goto out;
		}
		if (cur + (uint64_t)took != best->end) {
			backend_err_set(err, false, 0, NULL,
					"%s/%s is damaged at LSN %" PRIu64 " (a record does not check); the journal after it is not used",
					backend_url(b), best->key, cur + (uint64_t)took);
			cur += (uint64_t)took;
			ret = -EBADMSG;
			break;
		}
		cur = best->end;
	}
	int fret = seg_flush(&s);
	if (!ret)
		ret = fret;
	if (!ret && cur == from && max_end > from) {
		backend_err_set(err, false, 0, NULL,
				"the journal on %s does not reach back to LSN %" PRIu64, backend_url(b),
				from);
		ret = 1;
	}
	*end = cur;
out:
	free(s.b);
	free(p.v);
	return ret;
}
