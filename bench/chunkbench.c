/*
 * chunkbench.c - single-thread throughput of the store's hot paths:
 * chunker_cut (gear-fastcdc-1, default 16/64/256 KiB) and SHA-256
 * (store_hash) over 1 GiB of pseudo-random data, and blob_encode /
 * blob_decode (zstd level 3) over a mixed buffer.
 *
 * Data (all generated in memory by a fixed xorshift64 seed, so runs are
 * comparable):
 *   random: a 64 MiB buffer of xorshift64 output, walked 16 times (1 GiB).
 *   mixed:  64 MiB of alternating 32 KiB stretches: text-like (words drawn
 *           from a 64-word vocabulary, spaces, a newline every ~12 words)
 *           and random bytes; so every 64 KiB blob is half text, half
 *           random.  Encoded in 64 KiB blobs, 4 passes (256 MiB).
 *
 * Usage: chunkbench            run, print "name MB/s" lines (MB = 10^6 bytes)
 *        chunkbench -w FILE    write the 64 MiB mixed buffer to FILE and exit
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../store/store.h"

#define BUF_SIZE (64u << 20)
#define TOTAL (1ull << 30)
#define BLOB_SIZE (64u << 10)
#define MIX_PASSES 4

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t xorshift64(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static void fill_random(unsigned char *p, size_t n)
{
	size_t i = 0;

	for (; i + 8 <= n; i += 8) {
		uint64_t v = xorshift64();
		memcpy(p + i, &v, 8);
	}
	for (; i < n; i++)
		p[i] = (unsigned char)xorshift64();
}

static void fill_text(unsigned char *p, size_t n)
{
	static const char *words[64] = {
		"the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with",
		"be", "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which",
		"but", "have", "an", "had", "they", "you", "were", "their", "one", "all", "we",
		"can", "her", "has", "there", "been", "if", "more", "when", "will", "would",
		"who", "so", "no", "file", "block", "journal", "snapshot", "chunk", "repository",
		"inode", "directory", "checkpoint", "segment", "record", "write", "read",
		"data", "mount", "system",
	};
	size_t i = 0;
	unsigned nw = 0;

	while (i < n) {
		const char *w = words[xorshift64() % 64];
		size_t l = strlen(w);

		for (size_t j = 0; j < l && i < n; j++)
			p[i++] = (unsigned char)w[j];
		if (i < n)
			p[i++] = ++nw % 12 ? ' ' : '\n';
	}
}

static void fill_mixed(unsigned char *p, size_t n)
{
	for (size_t off = 0; off < n; off += 32u << 10) {
		size_t l = n - off < (32u << 10) ? n - off : 32u << 10;

		if ((off >> 15) % 2 == 0)
			fill_text(p + off, l);
		else
			fill_random(p + off, l);
	}
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void report(const char *name, uint64_t bytes, double secs)
{
	printf("%-16s %10.1f MB/s   (%llu bytes in %.3f s)\n", name, (double)bytes / secs / 1e6,
	       (unsigned long long)bytes, secs);
}

int main(int argc, char **argv)
{
	struct chunker_params cp = { CHUNK_MIN_DEFAULT, CHUNK_AVG_DEFAULT, CHUNK_MAX_DEFAULT };
	unsigned char *buf = malloc(BUF_SIZE);
	volatile unsigned char sink = 0;
	uint64_t chunks = 0, done;
	double t;

	if (!buf) {
		fprintf(stderr, "chunkbench: out of memory for a %u-byte buffer\n", BUF_SIZE);
		return 1;
	}
	if (argc == 3 && !strcmp(argv[1], "-w")) {
		FILE *f = fopen(argv[2], "wb");

		fill_mixed(buf, BUF_SIZE);
		if (!f || fwrite(buf, 1, BUF_SIZE, f) != BUF_SIZE || fclose(f)) {
			fprintf(stderr, "chunkbench: cannot write %s: %s\n", argv[2], strerror(errno));
			return 1;
		}
		free(buf);
		return 0;
	}
	if (argc != 1) {
		fprintf(stderr, "usage: chunkbench [-w FILE]\n");
		return 2;
	}

	fill_random(buf, BUF_SIZE);
	/* warm the gear table and the page cache */
	chunker_cut(&cp, buf, cp.max);

	t = now();
	for (done = 0; done < TOTAL; done += BUF_SIZE) {
		size_t pos = 0;

		while (pos < BUF_SIZE) {
			size_t left = BUF_SIZE - pos;
			size_t cut = chunker_cut(&cp, buf + pos, left < cp.max ? left : cp.max);

			pos += cut;
			chunks++;
		}
	}
	report("chunker_cut", TOTAL, now() - t);
	printf("%-16s %10.1f KiB average chunk (%llu chunks)\n", "", (double)TOTAL / chunks / 1024,
	       (unsigned long long)chunks);

	t = now();
	for (done = 0; done < TOTAL; done += BUF_SIZE) {
		for (size_t pos = 0; pos < BUF_SIZE; pos += BLOB_SIZE) {
			struct store_id id;

			store_hash(buf + pos, BLOB_SIZE, &id);
			sink ^= id.b[0];
		}
	}
	report("sha256-64KiB", TOTAL, now() - t);

	fill_mixed(buf, BUF_SIZE);
	size_t nblob = BUF_SIZE / BLOB_SIZE, stored_total = 0;
	void **enc = calloc(nblob, sizeof(*enc));
	size_t *enc_len = calloc(nblob, sizeof(*enc_len));
	enum blob_enc *enc_kind = calloc(nblob, sizeof(*enc_kind));
	unsigned char *out = malloc(BLOB_SIZE);

	if (!enc || !enc_len || !enc_kind || !out) {
		fprintf(stderr, "chunkbench: out of memory\n");
		return 1;
	}
	t = now();
	for (int pass = 0; pass < MIX_PASSES; pass++) {
		for (size_t b = 0; b < nblob; b++) {
			free(enc[b]);
			if (blob_encode(buf + b * BLOB_SIZE, BLOB_SIZE, 3, &enc[b], &enc_len[b],
					&enc_kind[b])) {
				fprintf(stderr, "chunkbench: blob_encode failed\n");
				return 1;
			}
		}
	}
	report("zstd3-compress", (uint64_t)MIX_PASSES * BUF_SIZE, now() - t);
	for (size_t b = 0; b < nblob; b++)
		stored_total += enc_len[b];
	printf("%-16s %10.3f ratio (stored/plain, 64 KiB blobs)\n", "",
	       (double)stored_total / BUF_SIZE);

	t = now();
	for (int pass = 0; pass < MIX_PASSES; pass++) {
		for (size_t b = 0; b < nblob; b++) {
			if (blob_decode(enc[b], enc_len[b], enc_kind[b], out, BLOB_SIZE) ||
			    memcmp(out, buf + b * BLOB_SIZE, 64)) {
				fprintf(stderr, "chunkbench: blob_decode failed on blob %zu\n", b);
				return 1;
			}
		}
	}
	report("zstd3-decompress", (uint64_t)MIX_PASSES * BUF_SIZE, now() - t);

	for (size_t b = 0; b < nblob; b++)
		free(enc[b]);
	free(enc);
	free(enc_len);
	free(enc_kind);
	free(out);
	free(buf);
	return sink == 1 && stored_total == 0;
}
