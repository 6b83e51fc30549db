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
	/* optional: backend_put_many runs put_fd on threads without it */
	int (*put_many)(struct backend *b, const struct put_item *items, size_t n,
			unsigned parallel, const struct put_calls *calls, struct backend_err *err);
	ssize_t (*get_range)(struct backend *b, const char *key, uint64_t off, size_t len,
			     void *buf, struct backend_err *err);
	int (*get)(struct backend *b, const char *key, void **data, size_t *len,
		   struct backend_err *err);
	int (*head)(struct backend *b, const char *key, uint64_t *size, struct backend_err *err);
	int (*list)(struct backend *b, const char *prefix, backend_list_fn fn, void *arg,
		    struct backend_err *err);
	int (*del)(struct backend *b, const char *key, struct backend_err *err);
	/* optional: removes what interrupted writers left behind; the count removed */
	unsigned (*sweep)(struct backend *b, unsigned max_age_s);
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

/* ---- s3.c internals, exposed for the unit tests ---- */

struct s3_url {
	char endpoint[512];           /* scheme://host[:port] */
	char bucket[64];
	char prefix[1024];            /* "" or ending in '/' */
	char region[64];
	bool path_style;
	uint64_t multipart_threshold; /* objects over this go up in parts */
	uint64_t part_size;
};
/*
 * Parses s3://bucket/prefix?endpoint=&region=&path_style=&multipart_threshold=&part_size=.
 * 0 or -EINVAL (ERR says why).
 */
int s3_parse_url(const char *url, struct s3_url *u, struct backend_err *err);
/* The request URL for KEY (relative to the prefix; NULL: the bucket) and QUERY (encoded, sorted). */
void s3_object_url(const struct s3_url *u, const char *key, const char *query, char *out,
		   size_t len);
/* Percent-encodes IN (RFC 3986 unreserved kept, '/' too when KEEP_SLASH; upper-case hex). */
void s3_encode(const char *in, bool keep_slash, char *out, size_t len);
/* The text of the first <TAG> element at or after FROM, entities decoded; its end, or NULL. */
const char *s3_xml_tag(const char *from, const char *tag, char *out, size_t len);
/* Credentials of PROFILE in the INI file PATH.  0 or -ENOENT. */
int s3_credentials_file(const char *path, const char *profile, char **key_id, char **secret,
			char **token);

#endif /* DRFS_REPLICATE_I_H */
