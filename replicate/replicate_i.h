/*
 * replicate_i.h - private to replicate/: the backend operations table that
 * file.c and s3.c implement, and what the replicator's files share.
 */
#ifndef DRFS_REPLICATE_I_H
#define DRFS_REPLICATE_I_H

#include <stdatomic.h>

#include "../common/common.h"
#include "replicate.h"

struct backend_ops {
	int (*put_fd)(struct backend *b, const char *key, int fd, off_t off, size_t len,
		      struct backend_err *err);
	int (*put)(struct backend *b, const char *key, const void *data, size_t len,
		   struct backend_err *err);
	ssize_t (*get_range)(struct backend *b, const char *key, uint64_t off, size_t len,
			     void *buf, struct backend_err *err);
	int (*get)(struct backend *b, const char *key, void **data, size_t *len,
		   struct backend_err *err);
	int (*head)(struct backend *b, const char *key, uint64_t *size, struct backend_err *err);
	int (*list)(struct backend *b, const char *prefix, backend_list_fn fn, void *arg,
		    struct backend_err *err);
	int (*del)(struct backend *b, const char *key, struct backend_err *err);
	void (*close)(struct backend *b);
};

/* Every backend starts with this; the scheme's own state follows in PRIV. */
struct backend {
	const struct backend_ops *ops;
	char *url;                    /* without credentials */
	void *priv;
	_Atomic uint64_t requests, put_bytes, get_bytes;
};

/* Fills ERR (may be NULL) with a printf-style one-line message. */
void backend_err_set(struct backend_err *err, bool retry, int http, const char *code,
		     const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* file.c and s3.c: open a backend of their scheme for URL (the whole URL). */
int file_backend_open(const char *url, struct backend **out, struct backend_err *err);
int s3_backend_open(const char *url, struct backend **out, struct backend_err *err);

#endif /* DRFS_REPLICATE_I_H */
