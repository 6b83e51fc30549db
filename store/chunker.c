/*
 * chunker.c - content-defined chunking, gear-fastcdc-1 (docs/format.md
 * "Chunking (gear-fastcdc-1)").  Changing anything here changes every
 * chunk id, so the cut points are pinned by a known-answer test
 * (tests/unit/test_store.c) checked against a byte-at-a-time reference.
 *
 * The rule, as this file reads the spec.  Positions are 0-based offsets i
 * from the chunk start (the region start or the last cut).  n = i + 1 is
 * the length the chunk would have if it were cut right after byte i.
 *
 *   - Bytes 0 .. min-1 are not hashed and no cut is tested after them.
 *   - h = 0 before byte min; for i = min, min+1, ...:
 *         h = (h << 1) + G[buf[i]]           (mod 2^64)
 *     then, with n = i + 1:
 *         n <  avg and (h & MASK_S) == 0  ->  cut, chunk length n
 *         n >= avg and (h & MASK_L) == 0  ->  cut, chunk length n
 *         n == max                        ->  cut, chunk length max
 *   - The end of the region ends the chunk whatever h is.
 *
 * So the shortest chunk a content cut makes is min + 1 bytes, the first
 * test uses h = G[buf[min]], and (min <= n) always holds at a test.  With
 * k = log2(avg): MASK_S = ~0 << (64 - (k + 2)), MASK_L = ~0 << (64 - (k - 2)).
 * G[i] = the first 8 bytes, little-endian, of SHA-256 of the two bytes
 * {'g', i}.
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "store_i.h"

static uint64_t gear[256];
static pthread_once_t gear_once = PTHREAD_ONCE_INIT;

static void gear_init(void)
{
	for (unsigned i = 0; i < 256; i++) {
		unsigned char in[2] = { 'g', (unsigned char)i };
		struct store_id id;
		uint64_t v = 0;

		store_hash(in, sizeof(in), &id);
		for (int j = 7; j >= 0; j--)
			v = v << 8 | id.b[j];
		gear[i] = v;
	}
}

/* log2 of a power of two */
static unsigned log2_pow2(uint32_t v)
{
	return (unsigned)__builtin_ctz(v);
}

/*
 * avg must be at least 8 so that MASK_L has at least one bit (k - 2 >= 1);
 * docs/format.md does not state that bound.
 */
int chunker_check(const struct chunker_params *p)
{
	if (!p || p->min == 0 || p->avg < 8 || (p->avg & (p->avg - 1)) != 0)
		return -EINVAL;
	if (p->min >= p->avg || p->avg >= p->max || p->max > CHUNK_MAX_LIMIT)
		return -EINVAL;
	return 0;
}

/*
 * One step of the gear hash at byte I, and the cut test with mask M.  h
 * lives in a register across the unrolled loop; the only branch per byte
 * is the (rarely taken) mask test.
 */
#define GEAR_STEP(I, M)							\
	do {								\
		h = (h << 1) + gear[buf[(I)]];				\
		if (__builtin_expect((h & (M)) == 0, 0))		\
			return (I) + 1;					\
	} while (0)

/*
 * Scans bytes [*I, END) with mask M continuing from *H: the chunk length
 * when a cut is found, else 0 with *H and *I advanced to END.
 */
static inline size_t gear_scan(const unsigned char *buf, size_t *ip, size_t end, uint64_t m,
			       uint64_t *hp)
{
	uint64_t h = *hp;
	size_t i = *ip;

	for (; i + 8 <= end; i += 8) {
		GEAR_STEP(i, m);
		GEAR_STEP(i + 1, m);
		GEAR_STEP(i + 2, m);
		GEAR_STEP(i + 3, m);
		GEAR_STEP(i + 4, m);
		GEAR_STEP(i + 5, m);
		GEAR_STEP(i + 6, m);
		GEAR_STEP(i + 7, m);
	}
	for (; i < end; i++)
		GEAR_STEP(i, m);
	*hp = h;
	*ip = i;
	return 0;
}

/*
 * The chunk length at BUF for LEN bytes (the caller passes
 * min(max, bytes left in the region); a longer LEN is treated as max).
 * Returns 1..LEN, or 0 when LEN is 0.  P must pass chunker_check.
 */
size_t chunker_cut(const struct chunker_params *p, const unsigned char *buf, size_t len)
{
	unsigned k = log2_pow2(p->avg);
	uint64_t mask_s = ~0ull << (64 - (k + 2));
	uint64_t mask_l = ~0ull << (64 - (k - 2));
	size_t i = p->min, end_s, cut;
	uint64_t h = 0;

	if (len > p->max)
		len = p->max;
	if (len <= p->min)
		return len;
	pthread_once(&gear_once, gear_init);

	/* bytes at i < avg - 1 are tested with n = i + 1 < avg: MASK_S */
	end_s = (size_t)p->avg - 1;
	if (end_s > len)
		end_s = len;
	cut = gear_scan(buf, &i, end_s, mask_s, &h);
	if (cut)
		return cut;
	cut = gear_scan(buf, &i, len, mask_l, &h);
	if (cut)
		return cut;
	return len;
}
