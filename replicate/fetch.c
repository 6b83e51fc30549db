/*
 * fetch.c - reading a replica's journal back: the chain of pieces from an
 * LSN (docs/format.md "Journal pieces") written into segment files that the
 * local journal reader reads, for point-in-time restores from a replica.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
	if (!ret && cur != from && cur < max_end) {
		/* later pieces exist: the primary recycled this stretch before it was shipped */
		uint64_t next = max_end;
		for (size_t i = 0; i < p.n; i++)
			if (p.v[i].first > cur && p.v[i].first < next)
				next = p.v[i].first;
		backend_err_set(err, false, 0, NULL,
				"the journal on %s has a gap from LSN %" PRIu64 " to %" PRIu64
				" (the primary recycled it before it was shipped); a snapshot taken after the gap restores later moments",
				backend_url(b), cur, next);
		ret = -EBADMSG;
	}
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

/* ---- a local copy of a replica's repository ---- */

struct mirror {
	struct backend *b;
	const char *dir;
	uint64_t fetched, bytes;
	int ret;
	struct backend_err *err;
};

static int mirror_one(void *arg, const char *key, uint64_t size)
{
	struct mirror *m = arg;
	char path[PATH_MAX], tmp[PATH_MAX + 8];
	struct stat st;

	/* the journal is read piece by piece when needed; head changes: always fetched */
	if (!strncmp(key, "journal/", 8) || strstr(key, ".."))
		return 0;
	if (snprintf(path, sizeof(path), "%s/%s", m->dir, key) >= (int)sizeof(path))
		return 0;
	if (strcmp(key, "head") && stat(path, &st) == 0 && (uint64_t)st.st_size == size)
		return 0;       /* objects are immutable: one of the right size is the one */
	for (char *p = strchr(path + strlen(m->dir) + 1, '/'); p; p = strchr(p + 1, '/')) {
		*p = 0;
		mkdir(path, 0755);
		*p = '/';
	}
	void *data;
	size_t len;
	int ret = backend_get(m->b, key, &data, &len, m->err);
	if (ret)
		return ret;
	snprintf(tmp, sizeof(tmp), "%s.part", path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	ret = fd < 0 ? -errno : write_all(fd, data, len);
	if (fd >= 0)
		close(fd);
	free(data);
	if (!ret && rename(tmp, path))
		ret = -errno;
	if (ret) {
		unlink(tmp);
		backend_err_set(m->err, false, 0, NULL, "cannot write %s: %s", path, strerror(-ret));
		return ret;
	}
	m->fetched++;
	m->bytes += len;
	return 0;
}

int replica_mirror(struct backend *b, const char *dir, uint64_t *fetched, uint64_t *bytes,
		   struct backend_err *err)
{
	struct mirror m = { .b = b, .dir = dir, .err = err };
	int ret;

	if (mkdir(dir, 0700) && errno != EEXIST) {
		backend_err_set(err, false, 0, NULL, "cannot make %s: %s", dir, strerror(errno));
		return -errno;
	}
	ret = backend_list(b, "", mirror_one, &m, err);
	if (fetched)
		*fetched = m.fetched;
	if (bytes)
		*bytes = m.bytes;
	return ret;
}
