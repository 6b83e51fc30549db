/*
 * imap.c - a map from inode number to a pointer (open addressing), used by
 * the builder and the point-in-time replay.
 */
#include <stdlib.h>

#include "store_i.h"

static size_t imap_hash(uint64_t ino, size_t cap)
{
	ino *= 0x9E3779B97F4A7C15ull;
	return (size_t)(ino >> 17) & (cap - 1);
}

void **imap_slot(struct imap *m, uint64_t ino, bool create)
{
	if (create && (m->n + 1) * 4 > m->cap * 3) {
		size_t cap = m->cap ? m->cap * 2 : 256;
		struct imap_slot *s = calloc(cap, sizeof(*s));
		if (!s)
			return NULL;
		for (size_t i = 0; i < m->cap; i++) {
			if (!m->s[i].ino)
				continue;
			size_t h = imap_hash(m->s[i].ino, cap);
			while (s[h].ino)
				h = (h + 1) & (cap - 1);
			s[h] = m->s[i];
		}
		free(m->s);
		m->s = s;
		m->cap = cap;
	}
	if (!m->cap)
		return NULL;
	size_t h = imap_hash(ino, m->cap);
	while (m->s[h].ino) {
		if (m->s[h].ino == ino)
			return &m->s[h].val;
		h = (h + 1) & (m->cap - 1);
	}
	if (!create)
		return NULL;
	m->s[h].ino = ino;
	m->n++;
	return &m->s[h].val;
}

void *imap_get(struct imap *m, uint64_t ino)
{
	void **v = imap_slot(m, ino, false);
	return v ? *v : NULL;
}

