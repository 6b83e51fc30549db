/*
 * blob.c - blob ids and blob encoding (docs/format.md "The snapshot
 * repository": "Conventions" and "Blob encoding").
 *
 * An id is the SHA-256 of a blob's plaintext.  A stored blob is the
 * plaintext (BLOB_RAW) or exactly one zstd frame of it with the content
 * size in its frame header and no dictionary (BLOB_ZSTD), whichever is
 * shorter, raw when equal.  Decoding checks that the stored bytes are one
 * frame that decodes to exactly the plaintext length; that the plaintext is
 * the right one is the caller's check (its SHA-256 against the id).
 *
 * Everything here is thread-safe.  zstd contexts are kept per thread and
 * freed when the thread exits.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "../common/common.h"
#include "store_i.h"

/* ---- ids ---- */

static const EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

/*
 * EVP_sha256() makes OpenSSL 3 look the implementation up on every
 * EVP_DigestInit; an explicitly fetched one is looked up once.  It is kept
 * for the life of the process.
 */
static void sha256_init(void)
{
	sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
	if (!sha256_md)
		sha256_md = EVP_sha256();
}

/*
 * SHA-256 of LEN bytes at DATA into *ID.  The only way EVP_Digest fails
 * with a good digest is an allocation failure; the interface has no error
 * return and an id must never be wrong, so that aborts.
 */
void store_hash(const void *data, size_t len, struct store_id *id)
{
	unsigned int n = 0;

	pthread_once(&sha256_once, sha256_init);
	if (!EVP_Digest(data, len, id->b, &n, sha256_md, NULL) || n != STORE_ID_LEN) {
		log_error("SHA-256 failed (out of memory?)");
		abort();
	}
}

void store_id_hex(const struct store_id *id, char *hex)
{
	static const char digits[] = "0123456789abcdef";

	for (int i = 0; i < STORE_ID_LEN; i++) {
		hex[2 * i] = digits[id->b[i] >> 4];
		hex[2 * i + 1] = digits[id->b[i] & 15];
	}
	hex[2 * STORE_ID_LEN] = '\0';
}

/* The value of a lower-case hex digit, or -1. */
static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/*
 * Parses exactly 64 lower-case hex digits followed by the end of the
 * string (ids are written in lower case, docs/format.md).  0 or -EINVAL;
 * *ID is untouched on failure.
 */
int store_id_parse(const char *hex, struct store_id *id)
{
	struct store_id tmp;

	for (int i = 0; i < STORE_ID_LEN; i++) {
		int hi = hex_value(hex[2 * i]);
		if (hi < 0)
			return -EINVAL;
		int lo = hex_value(hex[2 * i + 1]);
		if (lo < 0)
			return -EINVAL;
		tmp.b[i] = (unsigned char)(hi << 4 | lo);
	}
	if (hex[2 * STORE_ID_LEN] != '\0')
		return -EINVAL;
	*id = tmp;
	return 0;
}

bool store_id_is_zero(const struct store_id *id)
{
	unsigned char acc = 0;

	for (int i = 0; i < STORE_ID_LEN; i++)
		acc |= id->b[i];
	return acc == 0;
}

/* ---- per-thread zstd contexts ---- */

static pthread_key_t zctx_key;
static pthread_once_t zctx_once = PTHREAD_ONCE_INIT;
static bool zctx_key_ok;

struct zctx {
	ZSTD_CCtx *c;
	ZSTD_DCtx *d;
};
static __thread struct zctx *zctx_self;

static void zctx_free(void *arg)
{
	struct zctx *z = arg;

	ZSTD_freeCCtx(z->c);
	ZSTD_freeDCtx(z->d);
	free(z);
}

static void zctx_key_init(void)
{
	zctx_key_ok = pthread_key_create(&zctx_key, zctx_free) == 0;
}

/*
 * This thread's contexts holder, made on first use; freed by the key's
 * destructor when the thread exits.  NULL when out of memory.
 */
static struct zctx *zctx_get(void)
{
	struct zctx *z = zctx_self;

	if (z)
		return z;
	pthread_once(&zctx_once, zctx_key_init);
	if (!zctx_key_ok)
		return NULL;
	z = calloc(1, sizeof(*z));
	if (!z)
		return NULL;
	if (pthread_setspecific(zctx_key, z)) {
		free(z);
		return NULL;
	}
	zctx_self = z;
	return z;
}

static ZSTD_CCtx *cctx_get(void)
{
	struct zctx *z = zctx_get();

	if (z && !z->c)
		z->c = ZSTD_createCCtx();
	return z ? z->c : NULL;
}

static ZSTD_DCtx *dctx_get(void)
{
	struct zctx *z = zctx_get();

	if (z && !z->d)
		z->d = ZSTD_createDCtx();
	return z ? z->d : NULL;
}

/* ---- blob encoding ---- */

/*
 * Compresses into a buffer of ZSTD_compressBound(LEN) bytes and keeps the
 * frame when it is shorter than LEN; otherwise the same buffer (at least
 * LEN bytes) takes the plaintext, so there is one allocation either way.
 * ZSTD_compressCCtx ignores any parameter but LEVEL, so the frame is the
 * one ZSTD_compress would make: content size in the header, no checksum,
 * no dictionary.  A compression error other than running out of memory
 * stores the plaintext (always a valid encoding).
 */
int blob_encode(const void *data, size_t len, int level, void **out, size_t *out_len,
		enum blob_enc *enc)
{
	size_t bound = ZSTD_compressBound(len);
	ZSTD_CCtx *cctx = cctx_get();
	unsigned char *buf;
	size_t zlen;

	if (!cctx || ZSTD_isError(bound))
		return -ENOMEM;
	buf = malloc(bound);
	if (!buf)
		return -ENOMEM;
	zlen = ZSTD_compressCCtx(cctx, buf, bound, data, len, level);
	if (ZSTD_isError(zlen) && ZSTD_getErrorCode(zlen) == ZSTD_error_memory_allocation) {
		free(buf);
		return -ENOMEM;
	}
	if (!ZSTD_isError(zlen) && zlen < len) {
		void *shrunk = realloc(buf, zlen);

		*out = shrunk ? shrunk : buf;
		*out_len = zlen;
		*enc = BLOB_ZSTD;
		return 0;
	}
	if (len)
		memcpy(buf, data, len);
	if (len < bound) {
		void *shrunk = realloc(buf, len ? len : 1);

		if (shrunk)
			buf = shrunk;
	}
	*out = buf;
	*out_len = len;
	*enc = BLOB_RAW;
	return 0;
}

/*
 * Decodes a stored blob into BUF (RAW_LEN bytes).  A zstd blob is valid
 * only as exactly one zstd frame (no skippable frame, nothing after it)
 * whose header states RAW_LEN as the content size and which decodes to
 * exactly RAW_LEN bytes.  0, -EBADMSG, or -ENOMEM (no decompression
 * context).  BUF may be partly written when it fails.
 */
int blob_decode(const void *stored, size_t stored_len, enum blob_enc enc, void *buf,
		size_t raw_len)
{
	const unsigned char *s = stored;
	ZSTD_DCtx *dctx;
	unsigned long long csize;
	size_t n;

	switch (enc) {
	case BLOB_RAW:
		if (stored_len != raw_len)
			return -EBADMSG;
		if (raw_len)
			memcpy(buf, stored, raw_len);
		return 0;
	case BLOB_ZSTD:
		break;
	default:
		return -EBADMSG;
	}
	/* the magic, little-endian: a regular frame, not a skippable one */
	if (stored_len < 4 || (s[0] | s[1] << 8 | s[2] << 16 | (uint32_t)s[3] << 24) !=
	    ZSTD_MAGICNUMBER)
		return -EBADMSG;
	csize = ZSTD_getFrameContentSize(stored, stored_len);
	if (csize == ZSTD_CONTENTSIZE_UNKNOWN || csize == ZSTD_CONTENTSIZE_ERROR ||
	    csize != raw_len)
		return -EBADMSG;
	n = ZSTD_findFrameCompressedSize(stored, stored_len);
	if (ZSTD_isError(n) || n != stored_len)
		return -EBADMSG;
	dctx = dctx_get();
	if (!dctx)
		return -ENOMEM;
	n = ZSTD_decompressDCtx(dctx, buf, raw_len, stored, stored_len);
	if (ZSTD_isError(n)) {
		if (ZSTD_getErrorCode(n) == ZSTD_error_memory_allocation)
			return -ENOMEM;
		return -EBADMSG;
	}
	if (n != raw_len)
		return -EBADMSG;
	return 0;
}
