/*
 * backend.c - the backend interface: the URL's scheme picks the
 * implementation (file.c, s3.c); the calls go through its table.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "replicate_i.h"

void backend_err_set(struct backend_err *err, bool retry, int http, const char *code,
		     const char *fmt, ...)
{
	va_list ap;

	if (!err)
		return;
	err->retry = retry;
	err->http = http;
	snprintf(err->code, sizeof(err->code), "%s", code ? code : "");
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
}

int backend_open(const char *url, struct backend **out, struct backend_err *err)
{
	if (!strncmp(url, "file://", 7))
		return file_backend_open(url, out, err);
	if (!strncmp(url, "s3://", 5))
		return s3_backend_open(url, out, err);
	backend_err_set(err, false, 0, NULL,
			"replica URL '%s' is not one drfs knows: give file:///path or s3://bucket/prefix",
			url);
	return -EINVAL;
}

void backend_close(struct backend *b)
{
	if (b)
		b->ops->close(b);
}

const char *backend_url(const struct backend *b)
{
	return b->url;
}

int backend_put(struct backend *b, const char *key, const void *data, size_t len,
		struct backend_err *err)
{
	return b->ops->put(b, key, data, len, err);
}

unsigned backend_sweep(struct backend *b, unsigned max_age_s)
{
	return b->ops->sweep ? b->ops->sweep(b, max_age_s) : 0;
}

/* ---- put_many on threads, for backends without their own ---- */

struct many {
	struct backend *b;
	const struct put_item *items;
	size_t n, next;
	const struct put_calls *calls;
	int first;
	struct backend_err err;
	pthread_mutex_t lock;         /* NEXT, FIRST, ERR, and the callbacks */
};

static void *many_worker(void *arg)
{
	struct many *m = arg;

	for (;;) {
		pthread_mutex_lock(&m->lock);
		size_t i = m->next++;
		bool stop = m->first || i >= m->n;
		if (!stop && m->calls->start)
			m->calls->start(m->calls->arg, i);
		pthread_mutex_unlock(&m->lock);
		if (stop)
			break;
		const struct put_item *it = &m->items[i];
		struct backend_err e = { 0 };
		int ret = m->b->ops->put_fd(m->b, it->key, it->fd, it->off, it->len, &e);
		pthread_mutex_lock(&m->lock);
		m->calls->done(m->calls->arg, i, ret, &e);
		if (ret && !m->first) {
			m->first = ret;
			m->err = e;
		}
		pthread_mutex_unlock(&m->lock);
	}
	return NULL;
}

int backend_put_many(struct backend *b, const struct put_item *items, size_t n,
		     unsigned parallel, const struct put_calls *calls, struct backend_err *err)
{
	if (!parallel)
		parallel = 1;
	if (b->ops->put_many)
		return b->ops->put_many(b, items, n, parallel, calls, err);

	struct many m = { .b = b, .items = items, .n = n, .calls = calls };
	pthread_t t[16];
	unsigned started = 0;

	pthread_mutex_init(&m.lock, NULL);
	for (unsigned i = 0; i < parallel && i < 16 && i < n; i++)
		if (pthread_create(&t[started], NULL, many_worker, &m) == 0)
			started++;
	if (!started)
		many_worker(&m);
	for (unsigned i = 0; i < started; i++)
		pthread_join(t[i], NULL);
	pthread_mutex_destroy(&m.lock);
	if (m.first && err)
		*err = m.err;
	return m.first;
}

int backend_put_fd(struct backend *b, const char *key, int fd, off_t off, size_t len,
		   struct backend_err *err)
{
	return b->ops->put_fd(b, key, fd, off, len, err);
}

int backend_get(struct backend *b, const char *key, void **data, size_t *len,
		struct backend_err *err)
{
	return b->ops->get(b, key, data, len, err);
}

ssize_t backend_get_range(struct backend *b, const char *key, uint64_t off, size_t len,
			  void *buf, struct backend_err *err)
{
	return b->ops->get_range(b, key, off, len, buf, err);
}

int backend_head(struct backend *b, const char *key, uint64_t *size, struct backend_err *err)
{
	return b->ops->head(b, key, size, err);
}

int backend_list(struct backend *b, const char *prefix, backend_list_fn fn, void *arg,
		 struct backend_err *err)
{
	return b->ops->list(b, prefix, fn, arg, err);
}

int backend_delete(struct backend *b, const char *key, struct backend_err *err)
{
	return b->ops->del(b, key, err);
}

void backend_get_counters(struct backend *b, struct backend_counters *c)
{
	c->requests = atomic_load(&b->requests);
	c->put_bytes = atomic_load(&b->put_bytes);
	c->get_bytes = atomic_load(&b->get_bytes);
}
