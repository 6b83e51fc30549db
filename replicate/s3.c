/*
 * s3.c - the s3:// backend: S3-compatible object storage over libcurl,
 * requests signed with AWS Signature Version 4 (CURLOPT_AWS_SIGV4).
 *
 * Every PUT carries the SHA-256 of its payload in x-amz-content-sha256,
 * which the signature covers, so the server verifies the bytes it stores;
 * Content-Length is always sent.  Query parameters are sorted and
 * percent-encoded before signing, and so are object keys: the canonical
 * request is built from the URL as sent.  Objects over the multipart
 * threshold go up in parts (each part checked the same way), and an upload
 * that fails part-way is aborted.  Calls are blocking and thread-safe;
 * connections are shared among them (a curl share handle).  put_many runs
 * several PUTs at once on one curl multi handle.  Nothing is retried here:
 * the replicator above retries with backoff, and err->retry says whether
 * that may help.
 */
#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../store/store.h"
#include "replicate_i.h"

#define S3_OBJECT_MAX (5ull << 30)    /* one PUT, and one part */
#define S3_PART_MIN (5ull << 20)      /* every part but the last */
#define S3_PARTS_MAX 10000
#define S3_MULTIPART_DEFAULT (64ull << 20)
#define S3_PART_DEFAULT (16ull << 20)

struct s3 {
	struct s3_url u;              /* endpoint, bucket, prefix, region, addressing, parts */
	char *key_id, *secret, *token;
	char sigv4[128];
	CURLSH *share;
	pthread_mutex_t share_lock[CURL_LOCK_DATA_LAST];
};

static struct s3 *s3(struct backend *b)
{
	return b->priv;
}

/* ---- small pieces, exposed for the unit tests ---- */

void s3_encode(const char *in, bool keep_slash, char *out, size_t len)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;

	for (; *in && o + 4 < len; in++) {
		unsigned char c = (unsigned char)*in;
		if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) {
			out[o++] = (char)c;
		} else {
			out[o++] = '%';
			out[o++] = hex[c >> 4];
			out[o++] = hex[c & 15];
		}
	}
	out[o] = 0;
}

/* The text of the first <TAG>...</TAG> at or after FROM into OUT (entities decoded); the end or NULL. */
const char *s3_xml_tag(const char *from, const char *tag, char *out, size_t len)
{
	char open[64], close[64];
	snprintf(open, sizeof(open), "<%s>", tag);
	snprintf(close, sizeof(close), "</%s>", tag);
	const char *a = strstr(from, open), *e;

	if (!a)
		return NULL;
	a += strlen(open);
	if (!(e = strstr(a, close)))
		return NULL;
	size_t o = 0;
	for (const char *p = a; p < e && o + 1 < len;) {
		static const struct { const char *ent; char c; } ents[] = {
			{ "&amp;", '&' }, { "&lt;", '<' }, { "&gt;", '>' }, { "&quot;", '"' }, { "&apos;", '\'' },
		};
		bool done = false;
		for (size_t i = 0; i < sizeof(ents) / sizeof(ents[0]) && *p == '&'; i++)
			if (!strncmp(p, ents[i].ent, strlen(ents[i].ent))) {
				out[o++] = ents[i].c;
				p += strlen(ents[i].ent);
				done = true;
				break;
			}
		if (!done)
			out[o++] = *p++;
	}
	out[o] = 0;
	return e + strlen(close);
}

/*
 * Reads KEY_ID, SECRET and TOKEN of PROFILE from the credentials file at
 * PATH (INI: [profile], key = value).  0, or -ENOENT when the file or the
 * profile is missing or incomplete.
 */
int s3_credentials_file(const char *path, const char *profile, char **key_id, char **secret,
			char **token)
{
	FILE *f = fopen(path, "r");
	char line[1024];
	bool in = false;

	*key_id = *secret = *token = NULL;
	if (!f)
		return -ENOENT;
	while (fgets(line, sizeof(line), f)) {
		char *s = line, *e = line + strlen(line);
		while (e > s && isspace((unsigned char)e[-1]))
			*--e = 0;
		while (isspace((unsigned char)*s))
			s++;
		if (*s == '[') {
			char *end = strchr(s, ']');
			if (end) {
				*end = 0;
				in = !strcmp(s + 1, profile);
			}
			continue;
		}
		char *eq = strchr(s, '=');
		if (!in || !eq || *s == '#' || *s == ';')
			continue;
		char *k = s, *v = eq + 1, *ke = eq;
		while (ke > k && isspace((unsigned char)ke[-1]))
			ke--;
		*ke = 0;
		while (isspace((unsigned char)*v))
			v++;
		char **dst = !strcmp(k, "aws_access_key_id") ? key_id :
			     !strcmp(k, "aws_secret_access_key") ? secret :
			     !strcmp(k, "aws_session_token") ? token : NULL;
		if (dst) {
			free(*dst);
			*dst = strdup(v);
		}
	}
	fclose(f);
	if (!*key_id || !*secret) {
		free(*key_id);
		free(*secret);
		free(*token);
		*key_id = *secret = *token = NULL;
		return -ENOENT;
	}
	return 0;
}

/* The value of query parameter NAME in the URL's query Q into OUT; false when absent. */
static bool query_get(const char *q, const char *name, char *out, size_t len)
{
	size_t nl = strlen(name);

	for (const char *p = q; p && *p; p = strchr(p, '&') ? strchr(p, '&') + 1 : NULL) {
		if (!strncmp(p, name, nl) && p[nl] == '=') {
			const char *v = p + nl + 1, *e = strchr(v, '&');
			size_t l = e ? (size_t)(e - v) : strlen(v);
			if (l >= len)
				l = len - 1;
			memcpy(out, v, l);
			out[l] = 0;
			return true;
		}
	}
	return false;
}

/*
 * Parses s3://bucket/prefix?endpoint=...&region=...&path_style=1 into S
 * (strings malloc'd).  0 or -EINVAL with ERR.
 */
int s3_parse_url(const char *url, struct s3_url *u, struct backend_err *err)
{
	const char *p = url + strlen("s3://"), *q = strchr(p, '?');
	const char *slash = strchr(p, '/');
	size_t blen;

	memset(u, 0, sizeof(*u));
	if (slash && q && slash > q)
		slash = NULL;
	blen = slash ? (size_t)(slash - p) : q ? (size_t)(q - p) : strlen(p);
	if (blen < 3 || blen > 63) {
		backend_err_set(err, false, 0, NULL,
				"replica URL '%s': give s3://BUCKET/PREFIX (a bucket name of 3 to 63 characters)",
				url);
		return -EINVAL;
	}
	memcpy(u->bucket, p, blen);
	for (size_t i = 0; i < blen; i++)
		if (!(islower((unsigned char)u->bucket[i]) || isdigit((unsigned char)u->bucket[i]) ||
		      u->bucket[i] == '-' || u->bucket[i] == '.')) {
			backend_err_set(err, false, 0, NULL,
					"replica URL '%s': the bucket name may hold a-z, 0-9, '-' and '.'", url);
			return -EINVAL;
		}
	if (slash) {
		size_t plen = q ? (size_t)(q - slash - 1) : strlen(slash + 1);
		if (plen + 2 > sizeof(u->prefix)) {
			backend_err_set(err, false, 0, NULL, "replica URL '%s': the prefix is too long", url);
			return -EINVAL;
		}
		memcpy(u->prefix, slash + 1, plen);
		while (plen && u->prefix[plen - 1] == '/')
			u->prefix[--plen] = 0;
		if (plen)
			u->prefix[plen++] = '/';
	}
	strcpy(u->region, "us-east-1");
	u->multipart_threshold = S3_MULTIPART_DEFAULT;
	u->part_size = S3_PART_DEFAULT;
	if (q) {
		char v[32];
		query_get(q + 1, "region", u->region, sizeof(u->region));
		if (query_get(q + 1, "path_style", v, sizeof(v)))
			u->path_style = !strcmp(v, "1") || !strcmp(v, "true");
		query_get(q + 1, "endpoint", u->endpoint, sizeof(u->endpoint));
		if (query_get(q + 1, "multipart_threshold", v, sizeof(v)) &&
		    (parse_size(v, &u->multipart_threshold) || u->multipart_threshold > S3_OBJECT_MAX)) {
			backend_err_set(err, false, 0, NULL,
					"replica URL '%s': multipart_threshold=%s: give a size up to 5G (64M, 1G)",
					url, v);
			return -EINVAL;
		}
		if (query_get(q + 1, "part_size", v, sizeof(v)) &&
		    (parse_size(v, &u->part_size) || u->part_size < S3_PART_MIN ||
		     u->part_size > S3_OBJECT_MAX)) {
			backend_err_set(err, false, 0, NULL,
					"replica URL '%s': part_size=%s: give a size from 5M to 5G", url, v);
			return -EINVAL;
		}
	}
	if (!u->endpoint[0])
		snprintf(u->endpoint, sizeof(u->endpoint), "https://s3.%s.amazonaws.com", u->region);
	if (strncmp(u->endpoint, "http://", 7) && strncmp(u->endpoint, "https://", 8)) {
		backend_err_set(err, false, 0, NULL,
				"replica URL '%s': endpoint= must start with http:// or https://", url);
		return -EINVAL;
	}
	size_t el = strlen(u->endpoint);
	while (el && u->endpoint[el - 1] == '/')
		u->endpoint[--el] = 0;
	return 0;
}

/* ---- requests ---- */

struct body {                         /* what a request sends */
	const unsigned char *mem;
	int fd;
	off_t off;
	size_t len, done;
};
struct reply {                        /* what it receives */
	unsigned char *buf;           /* malloc'd, or the caller's (fixed) */
	size_t len, cap;
	bool fixed;
	char etag[128];               /* the ETag header, quotes kept */
};

static size_t read_cb(char *dst, size_t size, size_t n, void *arg)
{
	struct body *b = arg;
	size_t want = size * n, left = b->len - b->done;

	if (want > left)
		want = left;
	if (!want)
		return 0;
	if (b->mem) {
		memcpy(dst, b->mem + b->done, want);
	} else {
		ssize_t r = pread(b->fd, dst, want, b->off + (off_t)b->done);
		if (r <= 0)
			return CURL_READFUNC_ABORT;
		want = (size_t)r;
	}
	b->done += want;
	return want;
}

/*
 * Curl rewinds the body when it sends a request again: on a reused connection
 * the server had closed, or after a redirect.  Without this the retry fails
 * with "rewinding of the data stream failed" and hides the real cause.
 */
static int seek_cb(void *arg, curl_off_t off, int origin)
{
	struct body *b = arg;

	if (origin != SEEK_SET || off < 0 || (uint64_t)off > b->len)
		return CURL_SEEKFUNC_CANTSEEK;
	b->done = (size_t)off;
	return CURL_SEEKFUNC_OK;
}

static size_t write_cb(char *src, size_t size, size_t n, void *arg)
{
	struct reply *r = arg;
	size_t len = size * n;

	if (r->len + len > r->cap) {
		if (r->fixed) {
			len = r->cap - r->len;       /* a ranged read: the server sent more than asked */
		} else {
			size_t cap = r->cap ? r->cap * 2 : 4096;
			while (cap < r->len + len)
				cap *= 2;
			unsigned char *nb = realloc(r->buf, cap);
			if (!nb)
				return 0;
			r->buf = nb;
			r->cap = cap;
		}
	}
	memcpy(r->buf + r->len, src, len);
	r->len += len;
	return size * n;
}

static size_t header_cb(char *line, size_t size, size_t n, void *arg)
{
	struct reply *r = arg;
	size_t len = size * n;

	if (len > 5 && !strncasecmp(line, "etag:", 5)) {
		const char *v = line + 5;
		size_t l = len - 5;
		while (l && (*v == ' ' || *v == '\t'))
			v++, l--;
		while (l && (v[l - 1] == '\r' || v[l - 1] == '\n' || v[l - 1] == ' '))
			l--;
		if (l < sizeof(r->etag)) {
			memcpy(r->etag, v, l);
			r->etag[l] = 0;
		}
	}
	return len;
}

static void sha256_hex(const void *data, size_t len, int fd, off_t off, char *hex)
{
	unsigned char md[32];
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned int mdlen;

	EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
	if (data || fd < 0) {
		EVP_DigestUpdate(ctx, data, len);
	} else {
		unsigned char buf[1 << 16];
		size_t done = 0;
		while (done < len) {
			size_t n = len - done < sizeof(buf) ? len - done : sizeof(buf);
			if (pread_all(fd, buf, n, off + (off_t)done))
				break;
			EVP_DigestUpdate(ctx, buf, n);
			done += n;
		}
	}
	EVP_DigestFinal_ex(ctx, md, &mdlen);
	EVP_MD_CTX_free(ctx);
	for (int i = 0; i < 32; i++)
		sprintf(hex + 2 * i, "%02x", md[i]);
}

void s3_object_url(const struct s3_url *u, const char *key, const char *query, char *out,
		   size_t len)
{
	char enc[3200], full[1400];
	snprintf(full, sizeof(full), "%s%s", key ? u->prefix : "", key ? key : "");
	s3_encode(full, true, enc, sizeof(enc));
	if (u->path_style) {
		snprintf(out, len, "%s/%s%s%s%s%s", u->endpoint, u->bucket, key ? "/" : "", enc,
			 query ? "?" : "", query ? query : "");
	} else {
		const char *host = strstr(u->endpoint, "://") + 3;
		snprintf(out, len, "%.*s%s.%s/%s%s%s", (int)(host - u->endpoint), u->endpoint, u->bucket,
			 host, enc, query ? "?" : "", query ? query : "");
	}
}

/* A one-line reason from an S3 error body (Code and Message), and the code itself. */
static void error_of(const struct reply *r, char *code, size_t clen, char *msg, size_t mlen)
{
	code[0] = msg[0] = 0;
	if (!r->buf || !r->len)
		return;
	char *text = strndup((const char *)r->buf, r->len);
	if (!text)
		return;
	s3_xml_tag(text, "Code", code, clen);
	s3_xml_tag(text, "Message", msg, mlen);
	free(text);
}

static const char *advice(long http, const char *code)
{
	if (!strcmp(code, "NoSuchBucket"))
		return "create the bucket, or fix the bucket name in the replica URL";
	if (http == 403 || !strcmp(code, "SignatureDoesNotMatch") || !strcmp(code, "InvalidAccessKeyId"))
		return "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or ~/.aws/credentials) and the region";
	if (http >= 500 || http == 429)
		return "the server is failing; drfs retries";
	return "";
}

/* A request being made: its handle, headers, and where the answer goes. */
struct req {
	CURL *c;
	struct curl_slist *h;
	const char *method;
	struct body *body, empty;
	struct reply *reply;
	char url[4096];
	size_t item;                  /* put_many: the item it carries */
};

/*
 * Prepares METHOD on KEY (NULL: the bucket) with QUERY; BODY (may be NULL)
 * to send, the answer into REPLY; RANGE "a-b" or NULL.  0 or -ENOMEM.
 */
static int req_init(struct backend *b, struct req *q, const char *method, const char *key,
		    const char *query, struct body *body, struct reply *reply, const char *range)
{
	struct s3 *s = s3(b);
	char hdr[2200], hash[65];

	memset(q, 0, offsetof(struct req, url));
	q->empty = (struct body){ .mem = (const unsigned char *)"", .fd = -1 };
	q->method = method;
	q->reply = reply;
	q->body = !body && !strcmp(method, "POST") ? &q->empty : body;
	body = q->body;
	if (!(q->c = curl_easy_init()))
		return -ENOMEM;
	s3_object_url(&s->u, key, query, q->url, sizeof(q->url));
	if (body)
		sha256_hex(body->mem, body->len, body->mem ? -1 : body->fd, body->off, hash);
	else
		sha256_hex("", 0, -1, 0, hash);
	snprintf(hdr, sizeof(hdr), "x-amz-content-sha256: %s", hash);
	q->h = curl_slist_append(q->h, hdr);
	if (s->token) {
		snprintf(hdr, sizeof(hdr), "x-amz-security-token: %s", s->token);
		q->h = curl_slist_append(q->h, hdr);
	}
	if (range) {
		snprintf(hdr, sizeof(hdr), "Range: bytes=%s", range);
		q->h = curl_slist_append(q->h, hdr);
	}
	/* POST: not a form, no Content-Type of curl's choosing */
	if (!strcmp(method, "POST"))
		q->h = curl_slist_append(q->h, "Content-Type: application/xml");
	CURL *c = q->c;
	curl_easy_setopt(c, CURLOPT_URL, q->url);
	curl_easy_setopt(c, CURLOPT_PRIVATE, q);
	curl_easy_setopt(c, CURLOPT_SHARE, s->share);
	curl_easy_setopt(c, CURLOPT_AWS_SIGV4, s->sigv4);
	/* set apart: an access key may hold ':' */
	curl_easy_setopt(c, CURLOPT_USERNAME, s->key_id);
	curl_easy_setopt(c, CURLOPT_PASSWORD, s->secret);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, q->h);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	if (getenv("DRFS_S3_TRACE"))
		curl_easy_setopt(c, CURLOPT_VERBOSE, 1L);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1024L);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 30L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, reply);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, header_cb);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, reply);
	if (!strcmp(method, "POST")) {
		curl_easy_setopt(c, CURLOPT_POST, 1L);
		curl_easy_setopt(c, CURLOPT_READFUNCTION, read_cb);
		curl_easy_setopt(c, CURLOPT_READDATA, body);
		curl_easy_setopt(c, CURLOPT_SEEKFUNCTION, seek_cb);
		curl_easy_setopt(c, CURLOPT_SEEKDATA, body);
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body->len);
	} else if (!strcmp(method, "PUT")) {
		curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
		curl_easy_setopt(c, CURLOPT_READFUNCTION, read_cb);
		curl_easy_setopt(c, CURLOPT_READDATA, body);
		curl_easy_setopt(c, CURLOPT_SEEKFUNCTION, seek_cb);
		curl_easy_setopt(c, CURLOPT_SEEKDATA, body);
		curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)body->len);
	} else if (!strcmp(method, "HEAD")) {
		curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
	} else if (strcmp(method, "GET")) {
		curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	}
	atomic_fetch_add(&b->requests, 1);
	return 0;
}

/*
 * The end of request Q, which curl finished with RC: the HTTP status
 * (2xx..5xx), or -errno for a transport failure (ERR filled).  *LENGTH (may
 * be NULL) gets the Content-Length.  Frees Q's handle and headers.
 */
static long req_finish(struct req *q, CURLcode rc, uint64_t *length, struct backend_err *err)
{
	long http = 0;

	if (rc == CURLE_OK) {
		curl_easy_getinfo(q->c, CURLINFO_RESPONSE_CODE, &http);
		curl_off_t cl = -1;
		curl_easy_getinfo(q->c, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
		if (length)
			*length = cl >= 0 ? (uint64_t)cl : 0;
		/* a body cut short is a transport failure, whatever the status said */
		if (http / 100 == 2 && strcmp(q->method, "HEAD") && cl >= 0 && !q->reply->fixed &&
		    (uint64_t)cl != q->reply->len) {
			backend_err_set(err, true, (int)http, NULL,
					"%s %s: the answer was cut short (%zu of %lld bytes); drfs retries",
					q->method, q->url, q->reply->len, (long long)cl);
			http = -EIO;
		}
	} else {
		bool conn = rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST;
		bool tls = rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CACERT_BADFILE;
		backend_err_set(err, true, 0, NULL, "%s %s: %s%s", q->method, q->url,
				curl_easy_strerror(rc),
				conn  ? "; is the endpoint up and the URL right?"
				: tls ? "; the server's TLS certificate does not verify against the system's CAs (add its CA to /usr/local/share/ca-certificates and run update-ca-certificates)"
				      : "; drfs retries");
		http = rc == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT : -EIO;
	}
	curl_slist_free_all(q->h);
	curl_easy_cleanup(q->c);
	q->h = NULL;
	q->c = NULL;
	return http;
}

/*
 * One blocking request (see req_init).  Returns the HTTP status (2xx..5xx),
 * or -errno for a transport failure (ERR filled).
 */
static long request(struct backend *b, const char *method, const char *key, const char *query,
		    struct body *body, struct reply *reply, const char *range, uint64_t *length,
		    struct backend_err *err)
{
	struct req q;

	if (req_init(b, &q, method, key, query, body, reply, range))
		return -ENOMEM;
	return req_finish(&q, curl_easy_perform(q.c), length, err);
}

/* Turns a non-2xx status into -errno with ERR filled from the reply. */
static int status_err(struct backend *b, const char *method, const char *key, long http,
		      const struct reply *r, struct backend_err *err)
{
	char code[64], msg[256];

	if (http < 0)
		return (int)http;
	error_of(r, code, sizeof(code), msg, sizeof(msg));
	backend_err_set(err, http >= 500 || http == 429 || !strcmp(code, "SlowDown") ||
			!strcmp(code, "RequestTimeout"), (int)http, code,
			"%s %s/%s: HTTP %ld%s%s%s%s%s%s", method, b->url, key ? key : "", http,
			code[0] ? " " : "", code, msg[0] ? ": " : "", msg, advice(http, code)[0] ? "; " : "",
			advice(http, code));
	if (http == 404 && strcmp(code, "NoSuchBucket"))
		return -ENOENT;
	if (http == 403)
		return -EACCES;
	return -EIO;
}

/*
 * Ends the multipart upload ENC_ID of KEY without an object; a failure only
 * costs storage (logged).  0 or -EIO.
 */
static int abort_upload(struct backend *b, const char *key, const char *enc_id)
{
	struct backend_err ignored = { 0 };
	struct reply r = { 0 };
	char query[1400];

	snprintf(query, sizeof(query), "uploadId=%s", enc_id);
	long http = request(b, "DELETE", key, query, NULL, &r, NULL, NULL, &ignored);
	if (http / 100 != 2)
		log_warn("replica: cannot abort the multipart upload of %s/%s (HTTP %ld); its parts stay on the server until a lifecycle rule removes them",
			 b->url, key, http);
	free(r.buf);
	return http / 100 == 2 ? 0 : -EIO;
}

/*
 * BODY in parts of the backend's part size (more when 10000 would not hold
 * it): start, one PUT per part (each with its payload's SHA-256 signed),
 * complete with the parts' ETags.  Anything failing aborts the upload; the
 * replicator retries the whole object.
 */
static int put_multipart(struct backend *b, const char *key, const struct body *body,
			 struct backend_err *err)
{
	struct s3 *s = s3(b);
	uint64_t part = s->u.part_size;
	struct reply r = { 0 };
	char id[400], enc_id[1300], query[1400];
	char *xml = NULL;
	size_t nparts, xlen = 0;
	int ret = 0;

	if ((body->len + part - 1) / part > S3_PARTS_MAX)
		part = (body->len + S3_PARTS_MAX - 1) / S3_PARTS_MAX;
	nparts = (body->len + part - 1) / part;
	long http = request(b, "POST", key, "uploads=", NULL, &r, NULL, NULL, err);
	if (http / 100 != 2) {
		ret = status_err(b, "POST (start a multipart upload)", key, http, &r, err);
		free(r.buf);
		return ret;
	}
	id[0] = 0;
	if (r.buf) {
		char *text = strndup((const char *)r.buf, r.len);
		if (text)
			s3_xml_tag(text, "UploadId", id, sizeof(id));
		free(text);
	}
	free(r.buf);
	if (!id[0]) {
		backend_err_set(err, true, (int)http, NULL,
				"POST %s/%s?uploads: the answer names no UploadId; drfs retries", b->url, key);
		return -EIO;
	}
	s3_encode(id, false, enc_id, sizeof(enc_id));
	xml = malloc(nparts * 200 + 128);
	if (!xml) {
		abort_upload(b, key, enc_id);
		return -ENOMEM;
	}
	xlen = (size_t)sprintf(xml, "<CompleteMultipartUpload>");
	for (size_t i = 0; i < nparts && !ret; i++) {
		uint64_t off = i * part;
		struct body pb = { .mem = body->mem ? body->mem + off : NULL, .fd = body->fd,
				   .off = body->off + (off_t)off,
				   .len = (size_t)(body->len - off < part ? body->len - off : part) };
		struct reply pr = { 0 };
		/* sorted by name: partNumber, uploadId */
		snprintf(query, sizeof(query), "partNumber=%zu&uploadId=%s", i + 1, enc_id);
		http = request(b, "PUT", key, query, &pb, &pr, NULL, NULL, err);
		if (http / 100 != 2) {
			ret = status_err(b, "PUT (a part)", key, http, &pr, err);
		} else if (!pr.etag[0]) {
			backend_err_set(err, true, (int)http, NULL,
					"PUT %s/%s part %zu: the answer has no ETag; drfs retries", b->url, key, i + 1);
			ret = -EIO;
		} else {
			xlen += (size_t)sprintf(xml + xlen, "<Part><PartNumber>%zu</PartNumber><ETag>%s</ETag></Part>",
						i + 1, pr.etag);
		}
		free(pr.buf);
	}
	if (!ret) {
		xlen += (size_t)sprintf(xml + xlen, "</CompleteMultipartUpload>");
		struct body xb = { .mem = (const unsigned char *)xml, .fd = -1, .len = xlen };
		snprintf(query, sizeof(query), "uploadId=%s", enc_id);
		r = (struct reply){ 0 };
		http = request(b, "POST", key, query, &xb, &r, NULL, NULL, err);
		if (http / 100 != 2) {
			ret = status_err(b, "POST (complete a multipart upload)", key, http, &r, err);
		} else if (r.buf && memmem(r.buf, r.len, "<Error>", 7)) {
			/* S3 may answer 200 and put the error in the body */
			char code[64], msg[256];
			error_of(&r, code, sizeof(code), msg, sizeof(msg));
			backend_err_set(err, true, (int)http, code,
					"POST %s/%s (complete a multipart upload): %s: %s; drfs retries",
					b->url, key, code, msg);
			ret = -EIO;
		}
		free(r.buf);
	}
	free(xml);
	if (ret)
		abort_upload(b, key, enc_id);
	return ret;
}

/* The end of a single PUT of LEN bytes: 0 (counted), or -errno with ERR filled; R's body freed. */
static int put_result(struct backend *b, const char *key, long http, struct reply *r, size_t len,
		      struct backend_err *err)
{
	int ret = http / 100 == 2 ? 0 : status_err(b, "PUT", key, http, r, err);

	free(r->buf);
	r->buf = NULL;
	if (!ret)
		atomic_fetch_add(&b->put_bytes, len);
	return ret;
}

static int s3_put_body(struct backend *b, const char *key, struct body *body,
		       struct backend_err *err)
{
	struct reply r = { 0 };

	if (body->len > s3(b)->u.multipart_threshold) {
		int ret = put_multipart(b, key, body, err);
		if (!ret)
			atomic_fetch_add(&b->put_bytes, body->len);
		return ret;
	}
	return put_result(b, key, request(b, "PUT", key, NULL, body, &r, NULL, NULL, err), &r,
			  body->len, err);
}

static int s3_put(struct backend *b, const char *key, const void *data, size_t len,
		  struct backend_err *err)
{
	struct body body = { .mem = data ? data : (const unsigned char *)"", .fd = -1, .len = len };
	return s3_put_body(b, key, &body, err);
}

static int s3_put_fd(struct backend *b, const char *key, int fd, off_t off, size_t len,
		     struct backend_err *err)
{
	struct body body = { .fd = fd, .off = off, .len = len };
	return s3_put_body(b, key, &body, err);
}

/*
 * put_many on one curl multi handle: up to PARALLEL PUTs in flight, the
 * next begun as one ends.  An object over the multipart threshold goes up
 * in parts on its own, once nothing else is in flight (a blocking upload
 * would leave the others' connections unserved).
 */
struct slot {
	struct req q;                 /* q.c is NULL while the slot is free */
	struct body body;
	struct reply reply;
};

/* Reports item I's end RET to CALLS; the first failure goes into *FIRST and ERR. */
static void settle(const struct put_calls *calls, size_t i, int ret, const struct backend_err *e,
		   int *first, struct backend_err *err)
{
	calls->done(calls->arg, i, ret, e);
	if (ret && !*first) {
		*first = ret;
		if (err)
			*err = *e;
	}
}

static int s3_put_many(struct backend *b, const struct put_item *items, size_t n,
		       unsigned parallel, const struct put_calls *calls, struct backend_err *err)
{
	CURLM *m = curl_multi_init();
	struct slot *sl = calloc(parallel, sizeof(*sl));
	size_t next = 0, running = 0;
	int first = 0;

	if (!m || !sl) {
		free(sl);
		if (m)
			curl_multi_cleanup(m);
		return -ENOMEM;
	}
	for (;;) {
		/* fill the free slots while nothing failed */
		while (!first && next < n && running < parallel) {
			size_t i = next;
			bool big = items[i].len > s3(b)->u.multipart_threshold;
			if (big && running)
				break;
			next++;
			if (calls->start)
				calls->start(calls->arg, i);
			if (big) {
				struct backend_err e = { 0 };
				int ret = s3_put_fd(b, items[i].key, items[i].fd, items[i].off, items[i].len, &e);
				settle(calls, i, ret, &e, &first, err);
				continue;
			}
			struct slot *f = sl;
			while (f->q.c)
				f++;
			f->body = (struct body){ .fd = items[i].fd, .off = items[i].off, .len = items[i].len };
			f->reply = (struct reply){ 0 };
			if (req_init(b, &f->q, "PUT", items[i].key, NULL, &f->body, &f->reply, NULL)) {
				first = -ENOMEM;
				break;
			}
			f->q.item = i;
			curl_multi_add_handle(m, f->q.c);
			running++;
		}
		if (!running)
			break;
		int still, left;
		CURLMsg *msg;
		curl_multi_perform(m, &still);
		while ((msg = curl_multi_info_read(m, &left))) {
			if (msg->msg != CURLMSG_DONE)
				continue;
			struct req *done;
			curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&done);
			CURLcode rc = msg->data.result;
			struct backend_err e = { 0 };
			size_t i = done->item;
			curl_multi_remove_handle(m, done->c);
			long http = req_finish(done, rc, NULL, &e);
			int ret = put_result(b, items[i].key, http, done->reply, items[i].len, &e);
			running--;
			settle(calls, i, ret, &e, &first, err);
		}
		if (running)
			curl_multi_poll(m, NULL, 0, 1000, NULL);
	}
	curl_multi_cleanup(m);
	free(sl);
	return first;
}

static ssize_t s3_get_range(struct backend *b, const char *key, uint64_t off, size_t len,
			    void *buf, struct backend_err *err)
{
	struct reply r = { .buf = buf, .cap = len, .fixed = true };
	char range[64];

	if (!len)
		return 0;
	snprintf(range, sizeof(range), "%llu-%llu", (unsigned long long)off,
		 (unsigned long long)(off + len - 1));
	long http = request(b, "GET", key, NULL, NULL, &r, range, NULL, err);
	if (http == 416)
		return 0;
	if (http / 100 != 2) {
		/* the error body went into BUF: read it from there */
		return status_err(b, "GET", key, http, &r, err);
	}
	atomic_fetch_add(&b->get_bytes, r.len);
	return (ssize_t)r.len;
}

static int s3_get(struct backend *b, const char *key, void **data, size_t *len,
		  struct backend_err *err)
{
	struct reply r = { 0 };
	long http = request(b, "GET", key, NULL, NULL, &r, NULL, NULL, err);

	if (http / 100 != 2) {
		int ret = status_err(b, "GET", key, http, &r, err);
		free(r.buf);
		return ret;
	}
	atomic_fetch_add(&b->get_bytes, r.len);
	*data = r.buf ? r.buf : malloc(1);
	*len = r.len;
	return *data ? 0 : -ENOMEM;
}

static int s3_head(struct backend *b, const char *key, uint64_t *size, struct backend_err *err)
{
	struct reply r = { 0 };
	uint64_t l = 0;
	long http = request(b, "HEAD", key, NULL, NULL, &r, NULL, &l, err);
	int ret = http / 100 == 2 ? 0 : status_err(b, "HEAD", key, http, &r, err);

	free(r.buf);
	if (!ret && size)
		*size = l;
	return ret;
}

static int s3_list(struct backend *b, const char *prefix, backend_list_fn fn, void *arg,
		   struct backend_err *err)
{
	struct s3 *s = s3(b);
	char token[1024] = "", full[1200], enc_prefix[3700], enc_token[3100], query[8192];
	int ret = 0;

	snprintf(full, sizeof(full), "%s%s", s->u.prefix, prefix);
	s3_encode(full, false, enc_prefix, sizeof(enc_prefix));
	do {
		struct reply r = { 0 };
		/* sorted by name: continuation-token, list-type, prefix */
		if (token[0]) {
			s3_encode(token, false, enc_token, sizeof(enc_token));
			snprintf(query, sizeof(query), "continuation-token=%s&list-type=2&prefix=%s",
				 enc_token, enc_prefix);
		} else {
			snprintf(query, sizeof(query), "list-type=2&prefix=%s", enc_prefix);
		}
		long http = request(b, "GET", NULL, query, NULL, &r, NULL, NULL, err);
		if (http / 100 != 2) {
			ret = status_err(b, "LIST", prefix, http, &r, err);
			if (ret == -ENOENT)
				ret = -EIO;     /* a listing is never "absent" */
			free(r.buf);
			return ret;
		}
		char *text = r.buf ? strndup((const char *)r.buf, r.len) : strdup("");
		free(r.buf);
		if (!text)
			return -ENOMEM;
		const char *p = text;
		char item[4096], key[1200], sz[32], trunc[16] = "";
		while (!ret && (p = s3_xml_tag(p, "Contents", item, sizeof(item)))) {
			if (!s3_xml_tag(item, "Key", key, sizeof(key)) ||
			    !s3_xml_tag(item, "Size", sz, sizeof(sz)))
				continue;
			if (strncmp(key, s->u.prefix, strlen(s->u.prefix)))
				continue;
			ret = fn(arg, key + strlen(s->u.prefix), strtoull(sz, NULL, 10));
		}
		s3_xml_tag(text, "IsTruncated", trunc, sizeof(trunc));
		token[0] = 0;
		if (!strcmp(trunc, "true"))
			s3_xml_tag(text, "NextContinuationToken", token, sizeof(token));
		free(text);
	} while (!ret && token[0]);
	return ret;
}

/*
 * Aborts the multipart uploads under the prefix begun over MAX_AGE_S ago: a
 * daemon killed between a start and its complete leaves one, and its parts
 * are stored (and billed) until aborted.  Returns how many were aborted.
 */
static unsigned s3_sweep(struct backend *b, unsigned max_age_s)
{
	struct s3 *s = s3(b);
	char kmark[1200] = "", umark[400] = "", enc_prefix[3700], ek[3700], eu[1300], query[9000];
	time_t before = time(NULL) - (time_t)max_age_s;
	size_t plen = strlen(s->u.prefix);
	unsigned n = 0;
	bool more = true;

	s3_encode(s->u.prefix, false, enc_prefix, sizeof(enc_prefix));
	while (more) {
		struct backend_err err = { 0 };
		struct reply r = { 0 };
		/* sorted by name: key-marker, prefix, upload-id-marker, uploads */
		if (kmark[0]) {
			s3_encode(kmark, false, ek, sizeof(ek));
			s3_encode(umark, false, eu, sizeof(eu));
			snprintf(query, sizeof(query), "key-marker=%s&prefix=%s&upload-id-marker=%s&uploads=",
				 ek, enc_prefix, eu);
		} else {
			snprintf(query, sizeof(query), "prefix=%s&uploads=", enc_prefix);
		}
		long http = request(b, "GET", NULL, query, NULL, &r, NULL, NULL, &err);
		if (http / 100 != 2) {
			status_err(b, "GET (list unfinished multipart uploads)", "", http, &r, &err);
			log_warn("%s; parts of uploads an interrupted run left stay until the next mount or a lifecycle rule removes them",
				 err.msg);
			free(r.buf);
			break;
		}
		char *text = r.buf ? strndup((const char *)r.buf, r.len) : strdup("");
		free(r.buf);
		if (!text)
			break;
		const char *p = text;
		char item[4096], key[1200], id[400], when[64], trunc[16] = "";
		while ((p = s3_xml_tag(p, "Upload", item, sizeof(item)))) {
			if (!s3_xml_tag(item, "Key", key, sizeof(key)) ||
			    !s3_xml_tag(item, "UploadId", id, sizeof(id)) ||
			    !s3_xml_tag(item, "Initiated", when, sizeof(when)) ||
			    strncmp(key, s->u.prefix, plen))
				continue;
			int64_t t;
			if (snap_parse_time(when, &t) || t / 1000000000 >= before)
				continue;
			s3_encode(id, false, eu, sizeof(eu));
			if (abort_upload(b, key + plen, eu) == 0) {
				log_info("replica %s: aborted the multipart upload of %s begun %s (an interrupted run left it)",
					 b->url, key + plen, when);
				n++;
			}
		}
		s3_xml_tag(text, "IsTruncated", trunc, sizeof(trunc));
		more = !strcmp(trunc, "true") &&
		       s3_xml_tag(text, "NextKeyMarker", kmark, sizeof(kmark)) &&
		       s3_xml_tag(text, "NextUploadIdMarker", umark, sizeof(umark));
		free(text);
	}
	return n;
}

static int s3_del(struct backend *b, const char *key, struct backend_err *err)
{
	struct reply r = { 0 };
	long http = request(b, "DELETE", key, NULL, NULL, &r, NULL, NULL, err);
	int ret = http / 100 == 2 || http == 404 ? 0 : status_err(b, "DELETE", key, http, &r, err);

	free(r.buf);
	return ret;
}

static void lock_cb(CURL *h, curl_lock_data data, curl_lock_access access, void *arg)
{
	struct s3 *s = arg;
	pthread_mutex_lock(&s->share_lock[data]);
}

static void unlock_cb(CURL *h, curl_lock_data data, void *arg)
{
	struct s3 *s = arg;
	pthread_mutex_unlock(&s->share_lock[data]);
}

static void s3_close(struct backend *b)
{
	struct s3 *s = s3(b);

	if (s) {
		if (s->share)
			curl_share_cleanup(s->share);
		for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
			pthread_mutex_destroy(&s->share_lock[i]);
		free(s->key_id);
		free(s->secret);
		free(s->token);
		free(s);
	}
	free(b->url);
	free(b);
}

static const struct backend_ops s3_ops = {
	.put_fd = s3_put_fd,
	.put_many = s3_put_many,
	.put = s3_put,
	.get_range = s3_get_range,
	.get = s3_get,
	.head = s3_head,
	.list = s3_list,
	.del = s3_del,
	.sweep = s3_sweep,
	.close = s3_close,
};

static void curl_init_once(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

int s3_backend_open(const char *url, struct backend **out, struct backend_err *err)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	struct s3_url u;
	struct backend *b;
	struct s3 *s;
	int ret = s3_parse_url(url, &u, err);

	if (ret)
		return ret;
	pthread_once(&once, curl_init_once);
	b = calloc(1, sizeof(*b));
	s = calloc(1, sizeof(*s));
	if (!b || !s) {
		free(b);
		free(s);
		return -ENOMEM;
	}
	b->ops = &s3_ops;
	b->priv = s;
	for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
		pthread_mutex_init(&s->share_lock[i], NULL);
	s->u = u;
	b->url = strdup(url);
	snprintf(s->sigv4, sizeof(s->sigv4), "aws:amz:%s:s3", u.region);
	const char *id = getenv("AWS_ACCESS_KEY_ID"), *secret = getenv("AWS_SECRET_ACCESS_KEY");
	if (id && *id && secret && *secret) {
		s->key_id = strdup(id);
		s->secret = strdup(secret);
		const char *tok = getenv("AWS_SESSION_TOKEN");
		if (tok && *tok)
			s->token = strdup(tok);
	} else {
		const char *file = getenv("AWS_SHARED_CREDENTIALS_FILE"), *profile = getenv("AWS_PROFILE");
		const char *home = getenv("HOME");
		char path[1024];
		snprintf(path, sizeof(path), "%s", file && *file ? file : "");
		if (!path[0])
			snprintf(path, sizeof(path), "%s/.aws/credentials", home ? home : "/root");
		if (s3_credentials_file(path, profile && *profile ? profile : "default", &s->key_id,
					&s->secret, &s->token)) {
			backend_err_set(err, false, 0, NULL,
					"replica %s: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or put profile [%s] in %s",
					url, profile && *profile ? profile : "default", path);
			s3_close(b);
			return -EINVAL;
		}
	}
	s->share = curl_share_init();
	if (!b->url || !s->share) {
		s3_close(b);
		return -ENOMEM;
	}
	curl_share_setopt(s->share, CURLSHOPT_LOCKFUNC, lock_cb);
	curl_share_setopt(s->share, CURLSHOPT_UNLOCKFUNC, unlock_cb);
	curl_share_setopt(s->share, CURLSHOPT_USERDATA, s);
	curl_share_setopt(s->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
	curl_share_setopt(s->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
	*out = b;
	return 0;
}
