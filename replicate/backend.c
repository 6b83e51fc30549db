/*
 * backend.c - the backend interface: the URL's scheme picks the
 * implementation (file.c, s3.c); the calls go through its table.
 */
#include <errno.h>
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
