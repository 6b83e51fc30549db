/*
 * test_journal.c - the journal: record encoding, torn and corrupt segments,
 * idempotent replay, failure reporting, group commit and segment recycling.
 *
 * Trees are built in a scratch directory under /var/tmp (the journal needs a
 * filesystem with {inode, generation} file handles, such as ext4).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <cmocka.h>

#include "../../journal/journal_i.h"

static char scratch[256];

static void sh(const char *fmt, ...)
{
	char cmd[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	assert_int_equal(system(cmd), 0);
}

static int setup(void **state)
{
	(void)state;
	snprintf(scratch, sizeof(scratch), "/var/tmp/drfs-unit-journal.XXXXXX");
	assert_non_null(mkdtemp(scratch));
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	sh("rm -rf %s", scratch);
	return 0;
}

/* ---- digest of a tree: names, types, modes, owners, sizes, contents, links, user.x ---- */

struct strbuf {
	char *s;
	size_t n, cap;
};

static void sb_add(struct strbuf *b, const char *fmt, ...)
{
	va_list ap;
	char tmp[1024];
	int n;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (b->n + (size_t)n + 1 > b->cap) {
		b->cap = (b->n + (size_t)n + 1) * 2;
		b->s = realloc(b->s, b->cap);
		assert_non_null(b->s);
	}
	memcpy(b->s + b->n, tmp, (size_t)n + 1);
	b->n += (size_t)n;
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void digest_dir(struct strbuf *b, const char *dir, const char *rel)
{
	DIR *d = opendir(dir);
	char *names[256];
	size_t n = 0;
	struct dirent *de;

	assert_non_null(d);
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..") && strcmp(de->d_name, ".j") &&
		    strcmp(de->d_name, ".drfs"))
			names[n++] = strdup(de->d_name);
	closedir(d);
	qsort(names, n, sizeof(*names), name_cmp);
	for (size_t i = 0; i < n; i++) {
		char path[1024], r[1024], val[64];
		struct stat st;
		ssize_t xl;

		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		snprintf(r, sizeof(r), "%s/%s", rel, names[i]);
		assert_int_equal(lstat(path, &st), 0);
		sb_add(b, "%s %o %u:%u n%lu", r, st.st_mode, st.st_uid, st.st_gid,
		       (unsigned long)st.st_nlink);
		xl = lgetxattr(path, "user.x", val, sizeof(val) - 1);
		if (xl >= 0)
			sb_add(b, " x=%.*s", (int)xl, val);
		if (S_ISREG(st.st_mode)) {
			char *buf = malloc((size_t)st.st_size + 1);
			int fd = open(path, O_RDONLY);
			assert_true(fd >= 0);
			assert_int_equal(pread(fd, buf, (size_t)st.st_size, 0), st.st_size);
			close(fd);
			sb_add(b, " size=%lld crc=%08x", (long long)st.st_size,
			       crc32c(0, buf, (size_t)st.st_size));
			free(buf);
		} else if (S_ISLNK(st.st_mode)) {
			char t[256];
			ssize_t tl = readlink(path, t, sizeof(t));
			sb_add(b, " -> %.*s", (int)tl, t);
		}
		sb_add(b, "\n");
		if (S_ISDIR(st.st_mode))
			digest_dir(b, path, r);
		free(names[i]);
	}
}

static char *digest(const char *dir)
{
	struct strbuf b = { 0 };

	sb_add(&b, "");
	digest_dir(&b, dir, ".");
	return b.s;
}

/* ---- a scripted history with synthetic fids ---- */

static struct jfid F(uint64_t n)
{
	return (struct jfid){ 3000000000ull + n, 0x5eed0000u + (uint32_t)n };
}

#define NAME(r, s) ((r).name = (s), (r).name_len = (uint16_t)strlen(s))
#define NAME2(r, s) ((r).name2 = (s), (r).name2_len = (uint16_t)strlen(s))

#define HMAX 30

static char payload_a[3000], payload_b[700];

/* Fills V with a history touching every record type; returns the count. */
static int history(struct jrec *v)
{
	int n = 0;

	memset(payload_a, 'a', sizeof(payload_a));
	for (size_t i = 0; i < sizeof(payload_b); i++)
		payload_b[i] = (char)('0' + i % 10);
	memset(v, 0, HMAX * sizeof(*v));
	v[n].type = JR_CREATE; v[n].fid2 = JFID_ROOT; v[n].fid = F(1);
	v[n].mode = S_IFDIR | 0755; NAME(v[n], "dir"); n++;
	v[n].type = JR_CREATE; v[n].fid2 = F(1); v[n].fid = F(2);
	v[n].mode = S_IFREG | 0644; NAME(v[n], "file"); n++;
	v[n].type = JR_WRITE; v[n].fid = F(2); v[n].offset = 0;
	v[n].data = payload_a; v[n].data_len = sizeof(payload_a); n++;
	v[n].type = JR_WRITE; v[n].fid = F(2); v[n].offset = 100;
	v[n].data = payload_b; v[n].data_len = sizeof(payload_b); n++;
	v[n].type = JR_SETATTR; v[n].fid = F(2); v[n].mask = JA_MODE | JA_SIZE;
	v[n].mode = S_IFREG | 0600; v[n].size = 2500; n++;
	v[n].type = JR_SETXATTR; v[n].fid = F(2); NAME(v[n], "user.x");
	v[n].data = "42"; v[n].data_len = 2; n++;
	v[n].type = JR_CREATE; v[n].fid2 = JFID_ROOT; v[n].fid = F(3);
	v[n].mode = S_IFLNK | 0777; NAME(v[n], "link"); NAME2(v[n], "dir/file"); n++;
	v[n].type = JR_LINK; v[n].fid = F(2); v[n].fid2 = JFID_ROOT; NAME(v[n], "hard"); n++;
	v[n].type = JR_CREATE; v[n].fid2 = JFID_ROOT; v[n].fid = F(4);
	v[n].mode = S_IFREG | 0644; NAME(v[n], "other"); n++;
	v[n].type = JR_COPY; v[n].fid = F(4); v[n].offset = 10; v[n].fid2 = F(2);
	v[n].offset2 = 0; v[n].data = payload_b; v[n].data_len = 200; n++;
	v[n].type = JR_FALLOCATE; v[n].fid = F(4); v[n].offset = 0; v[n].size = 8192; n++;
	v[n].type = JR_RENAME; v[n].fid = JFID_ROOT; v[n].fid2 = F(1); v[n].fid3 = F(4);
	v[n].fid4 = (struct jfid){ 0, 0 }; NAME(v[n], "other"); NAME2(v[n], "moved"); n++;
	v[n].type = JR_CREATE; v[n].fid2 = JFID_ROOT; v[n].fid = F(5);
	v[n].mode = S_IFREG | 0644; NAME(v[n], "gone"); n++;
	v[n].type = JR_WRITE; v[n].fid = F(5); v[n].data = "bye"; v[n].data_len = 3; n++;
	v[n].type = JR_UNLINK; v[n].fid2 = JFID_ROOT; v[n].fid = F(5); NAME(v[n], "gone"); n++;
	v[n].type = JR_REMOVEXATTR; v[n].fid = F(2); NAME(v[n], "user.x"); n++;
	v[n].type = JR_CREATE; v[n].fid2 = JFID_ROOT; v[n].fid = F(6);
	v[n].mode = S_IFREG | 0644; NAME(v[n], "aborted"); n++;
	v[n].type = JR_WRITE; v[n].fid = F(6); v[n].data = "never"; v[n].data_len = 5; n++;
	v[n].type = JR_ABORT; n++;                     /* lsn2 filled in by the writer */
	v[n].type = JR_RENAME; v[n].fid = F(1); v[n].fid2 = JFID_ROOT; v[n].fid3 = F(2);
	v[n].fid4 = (struct jfid){ 0, 0 }; NAME(v[n], "file"); NAME2(v[n], "top"); n++;
	/* a name replaced by a rename, then the survivor moved on: the name must stay free */
	v[n].type = JR_CREATE; v[n].fid2 = JFID_ROOT; v[n].fid = F(7);
	v[n].mode = S_IFREG | 0644; NAME(v[n], "victim"); n++;
	v[n].type = JR_CREATE; v[n].fid2 = JFID_ROOT; v[n].fid = F(8);
	v[n].mode = S_IFREG | 0640; NAME(v[n], "mover"); n++;
	v[n].type = JR_RENAME; v[n].fid = JFID_ROOT; v[n].fid2 = JFID_ROOT; v[n].fid3 = F(8);
	v[n].fid4 = F(7); NAME(v[n], "mover"); NAME2(v[n], "victim"); n++;
	v[n].type = JR_RENAME; v[n].fid = JFID_ROOT; v[n].fid2 = JFID_ROOT; v[n].fid3 = F(8);
	v[n].fid4 = (struct jfid){ 0, 0 }; NAME(v[n], "victim"); NAME2(v[n], "final"); n++;
	assert_true(n <= HMAX);
	return n;
}

/*
 * Writes the history into a new journal in DIR (segment 0 only); LSN[i] is
 * where record i starts, LSN[n] the end.  Returns the record count.
 */
static int write_history(const char *dir, uint64_t *lsn)
{
	struct jrec v[HMAX + 2];
	int n = history(v), fd;
	char path[512];
	unsigned char *buf = calloc(1, 1 << 20);
	uint64_t pos = 0;

	assert_int_equal(journal_create(dir, 4 << 20, 0), 0);
	for (int i = 0; i < n; i++) {
		if (v[i].type == JR_ABORT)
			v[i].lsn2 = lsn[i - 1];
		v[i].lsn = pos;
		v[i].time_ns = 1;
		lsn[i] = pos;
		pos += jrec_encode(&v[i], buf + pos);
	}
	lsn[n] = pos;
	snprintf(path, sizeof(path), "%s/00000001-0000000000000000.seg", dir);
	fd = open(path, O_WRONLY);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, buf, pos, JSEG_HEADER), (ssize_t)pos);
	close(fd);
	free(buf);
	return n;
}

/* Puts LEN bytes of AREA into the record area of segment file PATH. */
static void put_area(const char *path, const unsigned char *area, uint64_t len)
{
	int fd = open(path, O_WRONLY);

	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, area, len, JSEG_HEADER), (ssize_t)len);
	close(fd);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

/* Replays journal JDIR from FROM onto a fresh tree TREE; returns its digest. */
static char *replay_fresh(const char *jdir, const char *tree, uint64_t from,
			  struct replay_result *rr)
{
	int fd;
	char *d;

	char map[600];

	snprintf(map, sizeof(map), "%s/replay.map", jdir);
	unlink(map);
	nftw(tree, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	assert_int_equal(mkdir(tree, 0755), 0);
	fd = open(tree, O_RDONLY | O_DIRECTORY);
	assert_true(fd >= 0);
	assert_int_equal(journal_replay_dir(jdir, fd, from, true, rr), 0);
	close(fd);
	d = digest(tree);
	return d;
}

/* ---- tests ---- */

static void test_crc32c(void **state)
{
	(void)state;
	assert_int_equal(crc32c(0, "123456789", 9), 0xE3069283u);
	/* split computation equals one pass */
	assert_int_equal(crc32c(crc32c(0, "1234", 4), "56789", 5), 0xE3069283u);
}

static void test_roundtrip(void **state)
{
	struct jrec v[HMAX + 2], out;
	unsigned char buf[8192];
	int n = history(v);

	(void)state;
	v[n].type = JR_SEAL;
	v[n + 1].type = JR_RECOVERED;
	v[n + 1].lsn2 = 5;
	v[n + 1].offset = 99;
	v[n + 1].xflags = JR_RECOVERED_REBOOT;
	for (int i = 0; i < n + 2; i++) {
		size_t len;
		const char *why;

		v[i].lsn = 4096 + 8 * (uint64_t)i;
		v[i].time_ns = 123456789 + (uint64_t)i;
		v[i].atime = (struct timespec){ 5, 6 };
		v[i].mtime = (struct timespec){ 7, 8 };
		len = jrec_encode(&v[i], buf);
		assert_true(len >= JREC_HEADER && len % 8 == 0 && len == jrec_size(&v[i]));
		assert_int_equal(jrec_decode(buf, len, v[i].lsn, &out, &why), len);
		assert_int_equal(out.type, v[i].type);
		assert_int_equal(out.lsn, v[i].lsn);
		assert_int_equal(out.time_ns, v[i].time_ns);
		assert_memory_equal(&out.fid, &v[i].fid, sizeof(out.fid));
		assert_int_equal(out.fid2.ino, v[i].fid2.ino);
		assert_int_equal(out.fid3.gen, v[i].fid3.gen);
		assert_int_equal(out.fid4.ino, v[i].fid4.ino);
		assert_int_equal(out.data_len, v[i].data_len);
		if (v[i].data_len)
			assert_memory_equal(out.data, v[i].data, v[i].data_len);
		assert_int_equal(out.name_len, v[i].name_len);
		if (v[i].name_len)
			assert_memory_equal(out.name, v[i].name, v[i].name_len);
		assert_int_equal(out.name2_len, v[i].name2_len);
		if (v[i].type == JR_SETATTR) {
			assert_int_equal(out.mask, v[i].mask);
			assert_int_equal(out.mode, v[i].mode);
			assert_int_equal(out.size, v[i].size);
			assert_int_equal(out.mtime.tv_nsec, 8);
		}
		if (v[i].type == JR_CREATE)
			assert_int_equal(out.mode, v[i].mode);
		if (v[i].type == JR_RECOVERED) {
			assert_int_equal(out.lsn2, 5);
			assert_int_equal(out.offset, 99);
			assert_int_equal(out.xflags, JR_RECOVERED_REBOOT);
		}
		/* the wrong position, a cut, or any changed byte make it invalid */
		assert_int_equal(jrec_decode(buf, len, v[i].lsn + 8, &out, NULL), 0);
		assert_int_equal(jrec_decode(buf, len - 1, v[i].lsn, &out, NULL), 0);
		for (size_t k = 0; k < len; k++) {
			buf[k] ^= 0x10;
			if (jrec_decode(buf, len, v[i].lsn, &out, NULL)) {
				/* only padding may change unnoticed */
				assert_true(k >= JREC_HEADER + (len - jrec_size(&v[i])) &&
					    k >= len - 7);
			}
			buf[k] ^= 0x10;
		}
	}
}

/* The head of a borrowed WRITE plus its data encodes exactly like a whole WRITE. */
static void test_encode_head(void **state)
{
	struct jrec r = { .type = JR_WRITE, .fid = { 7, 9 }, .offset = 4096, .lsn = 64,
			  .data = payload_b, .data_len = 333 };
	unsigned char whole[1024], split[1024];
	size_t len, head, pad;

	(void)state;
	history((struct jrec[HMAX]){ 0 });
	len = jrec_encode(&r, whole);
	assert_int_equal(jrec_encode_head(&r, split, &head), len);
	memcpy(split + head, r.data, r.data_len);
	pad = len - head - r.data_len;
	memset(split + head + r.data_len, 0, pad);
	assert_memory_equal(whole, split, len);
	jrec_set_lsn(split, 128);
	assert_int_equal(jrec_decode(split, len, 128, &r, NULL), len);
}

/* A segment cut at every byte offset replays exactly the records before the cut. */
static void test_torn_every_offset(void **state)
{
	char jdir[512], jcut[512], tree[512], ref[512], seg[600], cutseg[600];
	uint64_t lsn[HMAX + 1];
	struct replay_result rr;
	int n;

	(void)state;
	snprintf(jdir, sizeof(jdir), "%s/j", scratch);
	snprintf(jcut, sizeof(jcut), "%s/jc", scratch);
	snprintf(tree, sizeof(tree), "%s/t", scratch);
	snprintf(ref, sizeof(ref), "%s/r", scratch);
	n = write_history(jdir, lsn);
	snprintf(seg, sizeof(seg), "%s/00000001-0000000000000000.seg", jdir);
	snprintf(cutseg, sizeof(cutseg), "%s/00000001-0000000000000000.seg", jcut);
	sh("rm -rf %s && cp -a %s %s", jcut, jdir, jcut);

	char **expect = calloc((size_t)n + 1, sizeof(char *));
	for (int k = 0; k <= n; k++) {
		/* the reference for "the first k records": a journal holding only them */
		sh("cp %s %s && truncate -s %llu %s && truncate -s %u %s", seg, cutseg,
		   (unsigned long long)(JSEG_HEADER + lsn[k]), cutseg, 4u << 20, cutseg);
		expect[k] = replay_fresh(jcut, ref, 0, &rr);
		assert_int_equal(rr.to, lsn[k]);
	}
	/* the full history really does something */
	assert_non_null(strstr(expect[n], "./top 100600"));
	assert_non_null(strstr(expect[n], "./dir/moved"));
	assert_null(strstr(expect[n], "gone"));
	assert_null(strstr(expect[n], "x=42"));
	assert_null(strstr(expect[n], "victim"));
	assert_null(strstr(expect[n], "mover"));
	assert_non_null(strstr(expect[n], "./final 100640"));
	assert_string_not_equal(expect[n], expect[n - 1]);

	unsigned char *orig = malloc(lsn[n]), *area = malloc(lsn[n]);
	int fd = open(seg, O_RDONLY);
	assert_int_equal(pread(fd, orig, lsn[n], JSEG_HEADER), (ssize_t)lsn[n]);
	close(fd);
	for (uint64_t cut = 0; cut <= lsn[n]; cut++) {
		bool zeros = cut % 2 == 0;
		int k = 0;
		char *got;

		/* bytes from CUT on: zeros on even offsets, garbage (never zero) on odd ones */
		memcpy(area, orig, lsn[n]);
		for (uint64_t o = cut; o < lsn[n]; o++)
			area[o] = zeros ? 0 : (unsigned char)((o * 131 + 7) | 1);
		/* the records whose bytes are all still there (zeroing a zero changes nothing) */
		while (k < n && !memcmp(area + lsn[k], orig + lsn[k], lsn[k + 1] - lsn[k]))
			k++;
		/* a cut inside a record's meaningful bytes must drop it */
		if (cut < lsn[n] && !zeros)
			assert_true(lsn[k] <= cut);
		put_area(cutseg, area, lsn[n]);
		got = replay_fresh(jcut, tree, 0, &rr);
		if (strcmp(got, expect[k]))
			fail_msg("cut at %llu: replay differs from the first %d records",
				 (unsigned long long)cut, k);
		assert_int_equal(rr.to, lsn[k]);
		free(got);
	}
	/* random single-bit flips: the record holding the flip and all after it are dropped */
	srand(12345);
	for (int t = 0; t < 300; t++) {
		uint64_t pos = (uint64_t)rand() % lsn[n];
		int bit = rand() % 8, k = 0;
		unsigned char b = orig[pos] ^ (unsigned char)(1 << bit);
		char *got;

		while (k < n && lsn[k + 1] <= pos)
			k++;
		memcpy(area, orig, lsn[n]);
		area[pos] = b;
		put_area(cutseg, area, lsn[n]);
		got = replay_fresh(jcut, tree, 0, &rr);
		/* the flipped record and everything after it are dropped */
		if (strcmp(got, expect[k]))
			fail_msg("bit %d of byte %llu flipped: replay is not the first %d records",
				 bit, (unsigned long long)pos, k);
		assert_int_equal(rr.to, lsn[k]);
		free(got);
	}
	for (int k = 0; k <= n; k++)
		free(expect[k]);
	free(expect);
	free(orig);
	free(area);
}

/* Replaying any suffix again, on the tree a full replay made, changes nothing. */
static void test_replay_idempotent(void **state)
{
	char jdir[512], tree[512], *once, *again;
	uint64_t lsn[HMAX + 1];
	struct replay_result rr;
	int n, fd;

	(void)state;
	snprintf(jdir, sizeof(jdir), "%s/ji", scratch);
	snprintf(tree, sizeof(tree), "%s/ti", scratch);
	n = write_history(jdir, lsn);
	once = replay_fresh(jdir, tree, 0, &rr);
	assert_int_equal(rr.records, (uint64_t)n);
	fd = open(tree, O_RDONLY | O_DIRECTORY);
	for (int k = 0; k <= n; k++) {
		assert_int_equal(journal_replay_dir(jdir, fd, lsn[k], true, &rr), 0);
		again = digest(tree);
		if (strcmp(once, again))
			fail_msg("replaying again from record %d changed the tree:\n%s\nvs\n%s", k,
				 once, again);
		free(again);
	}
	/* twice in a row from the start too */
	assert_int_equal(journal_replay_dir(jdir, fd, 0, true, &rr), 0);
	assert_int_equal(journal_replay_dir(jdir, fd, 0, true, &rr), 0);
	again = digest(tree);
	assert_string_equal(once, again);
	/* a record aborted later is never applied */
	assert_null(strstr(once, "size=5 "));
	close(fd);
	free(once);
	free(again);
}

/* ---- the live journal ---- */

/* Empty scratch directories SCRATCH/jTAG and SCRATCH/tTAG (512 bytes each), a new journal in the first. */
static void fresh_journal(const char *tag, char *jdir, char *tree)
{
	snprintf(jdir, 512, "%s/j%s", scratch, tag);
	snprintf(tree, 512, "%s/t%s", scratch, tag);
	sh("rm -rf %s %s && mkdir -p %s", jdir, tree, tree);
	assert_int_equal(journal_create(jdir, 4 << 20, 0), 0);
}

/*
 * journal_create places the journal directory away from the tree around it:
 * on ext4 its segments' inodes land in another block group, never in the
 * inode-table block of a file made just before; the parent's flags are
 * left as they were.
 */
static void test_journal_dir_placed(void **state)
{
	char parent[300], file[320], jdir[320], name[40], seg[400];
	bool apart = false, ext4 = false;

	(void)state;
	jseg_name(name, JTIMELINE, 0);
	/* ext4 picks the group at random among roomy ones: the parent's own, rarely; three tries */
	for (int i = 0; i < 3 && !apart; i++) {
		int before = 0, after = 0, pfd;
		struct stat a, sg;
		struct statfs sf;

		snprintf(parent, sizeof(parent), "%s/placed%d", scratch, i);
		snprintf(file, sizeof(file), "%s/a", parent);
		snprintf(jdir, sizeof(jdir), "%s/journal", parent);
		sh("rm -rf %s && mkdir -p %s && touch %s", parent, parent, file);
		pfd = open(parent, O_RDONLY | O_DIRECTORY);
		assert_true(pfd >= 0);
		bool flags = ioctl(pfd, FS_IOC_GETFLAGS, &before) == 0;
		assert_int_equal(journal_create(jdir, 4 << 20, 0), 0);
		if (flags) {
			assert_int_equal(ioctl(pfd, FS_IOC_GETFLAGS, &after), 0);
			assert_int_equal(after, before);
		}
		close(pfd);
		snprintf(seg, sizeof(seg), "%s/%s", jdir, name);
		assert_int_equal(stat(file, &a), 0);
		assert_int_equal(stat(seg, &sg), 0);
		assert_int_equal(statfs(parent, &sf), 0);
		ext4 = sf.f_type == 0xEF53;   /* ext2/3/4 */
		uint64_t d = a.st_ino > sg.st_ino ? a.st_ino - sg.st_ino : sg.st_ino - a.st_ino;
		apart = !ext4 || d >= 64;     /* 16-32 inodes per inode-table block */
		sh("rm -rf %s", parent);
	}
	assert_true(apart);
}

static struct journal *open_live(const char *jdir, const char *tree, unsigned fail_write,
				 unsigned fail_flush, struct replay_result *rr)
{
	struct journal_config cfg = { .dir = jdir, .fail_write_at = fail_write,
				      .fail_flush_at = fail_flush, .checkpoint_interval_ms = 100000 };
	struct journal *j;
	int fd = open(tree, O_RDONLY | O_DIRECTORY);

	assert_true(fd >= 0);
	cfg.backing_fd = fd;          /* left open: the process ends soon */
	assert_int_equal(journal_open(&cfg, &j, rr), 0);
	assert_int_equal(journal_start(j), 0);
	return j;
}

static void test_failure_reported(void **state)
{
	char jdir[512], tree[512];
	struct jrec r = { .type = JR_SETXATTR, .fid = { 1, 1 }, .data = "v", .data_len = 1 };
	struct replay_result rr;
	struct jsuper sb;

	(void)state;
	NAME(r, "user.a");
	for (int which = 0; which < 2; which++) {
		for (unsigned nth = 1; nth <= 3; nth++) {
			struct journal *j;
			int err = 0, failed_at = 0;

			fresh_journal("f", jdir, tree);
			j = open_live(jdir, tree, which ? 0 : nth, which ? nth : 0, &rr);
			for (int i = 1; i <= 6; i++) {
				uint64_t end = journal_append(j, &r, false, &err);
				if (!end || journal_wait(j, end)) {
					failed_at = i;
					break;
				}
			}
			/* the Nth write or flush fails, and that wait says so */
			assert_int_equal(failed_at, (int)nth);
			/* and everything after it fails too */
			assert_int_equal(journal_append(j, &r, false, &err), 0);
			assert_int_equal(err, -EIO);
			assert_int_not_equal(journal_close(j), 0);
			/* the journal is not marked clean: the next mount replays */
			assert_int_equal(jsuper_read(jdir, &sb), 0);
			assert_false(sb.flags & JSUPER_CLEAN);
		}
	}
}

struct appender {
	struct journal *j;
	int id, count;
	int start;                 /* the first record's offset, in records */
};

static void *append_thread(void *arg)
{
	struct appender *a = arg;
	char data[512];

	memset(data, 'a' + a->id, sizeof(data));
	for (int i = 0; i < a->count; i++) {
		struct jrec r = { .type = JR_WRITE, .fid = { (uint64_t)a->id + 100, 1 },
				  .offset = (uint64_t)(a->start + i) * sizeof(data), .data = data,
				  .data_len = sizeof(data) };
		int err;
		uint64_t end;

		journal_apply_begin(a->j);
		end = journal_append(a->j, &r, true, &err);
		assert_true(end > 0);
		assert_int_equal(journal_wait(a->j, end), 0);
		journal_apply_end(a->j);
	}
	return NULL;
}

static void test_live_segments(void **state)
{
	char jdir[512], tree[512];
	struct replay_result rr;
	struct journal_stats st;
	struct jreader *rd;
	struct jrec r;
	pthread_t t[8];
	struct appender a[8];
	int counts[8] = { 0 }, hold;
	uint64_t last = 0xfffffff000ull, records = 0;
	struct journal *j;

	(void)state;
	snprintf(jdir, sizeof(jdir), "%s/jl", scratch);
	snprintf(tree, sizeof(tree), "%s/tl", scratch);
	sh("rm -rf %s %s && mkdir -p %s", jdir, tree, tree);
	assert_int_equal(journal_create(jdir, 4 << 20, 0xfffffff000ull), 0);
	j = open_live(jdir, tree, 0, 0, &rr);
	hold = journal_hold(j, "test", 0);
	assert_true(hold >= 0);
	for (int i = 0; i < 8; i++) {
		a[i] = (struct appender){ j, i, 3000, 0 };
		pthread_create(&t[i], NULL, append_thread, &a[i]);
	}
	for (int i = 0; i < 8; i++)
		pthread_join(t[i], NULL);
	journal_get_stats(j, &st);
	assert_int_equal(st.records - st.segments + 1, 24000);   /* SEALs are records too */
	assert_true(st.segments >= 3);                            /* ~13 MiB in 4 MiB segments */
	/* group commit: far fewer flushes than waits */
	assert_true(st.flushes < 24000);
	print_message("24000 waits, %llu flushes, %llu segments\n",
		      (unsigned long long)st.flushes, (unsigned long long)st.segments);
	/* the hold keeps every segment through a checkpoint */
	assert_int_equal(journal_checkpoint(j), 0);
	assert_int_equal(journal_close(j), 0);

	/*
	 * Reopen (clean, so the journal goes on in its last segment) where the
	 * log ends inside a 4 KiB block: the next writes rewrite that block,
	 * and the records in front of the end must come through whole.
	 */
	j = open_live(jdir, tree, 0, 0, &rr);
	assert_false(rr.unclean);
	hold = journal_hold(j, "test", 0);
	assert_true(hold >= 0);
	{
		struct jseg *segs;
		size_t nseg;
		int dfd = open(jdir, O_RDONLY | O_DIRECTORY);
		assert_int_equal(jseg_list(dfd, &segs, &nseg), 0);
		journal_get_stats(j, &st);
		assert_true((st.head_lsn - segs[nseg - 1].first_lsn) % 4096 != 0);
		free(segs);
		close(dfd);
	}
	a[0] = (struct appender){ j, 0, 50, 3000 };
	append_thread(&a[0]);
	assert_int_equal(journal_close(j), 0);

	/* read back: all records, LSNs rising, every writer's records in order */
	assert_int_equal(jreader_open(jdir, 0, &rd), 0);
	while (jreader_next(rd, &r) == 1) {
		assert_true(r.lsn >= last);
		last = r.lsn;
		if (r.type != JR_WRITE)
			continue;
		int id = (int)r.fid.ino - 100;
		assert_int_equal(r.offset, (uint64_t)counts[id] * 512);
		assert_int_equal(((const char *)r.data)[0], 'a' + id);
		counts[id]++;
		records++;
	}
	assert_null(jreader_stop(rd));
	jreader_close(rd);
	assert_int_equal(records, 24050);

	/* reopen (clean: no replay), release the hold, checkpoint: old segments are recycled */
	j = open_live(jdir, tree, 0, 0, &rr);
	assert_false(rr.unclean);
	assert_int_equal(journal_checkpoint(j), 0);
	assert_int_equal(journal_close(j), 0);
	{
		struct jseg *segs;
		size_t nseg;
		int dfd = open(jdir, O_RDONLY | O_DIRECTORY);
		assert_int_equal(jseg_list(dfd, &segs, &nseg), 0);
		assert_int_equal(nseg, 1);      /* everything before the checkpoint is gone */
		free(segs);
		close(dfd);
	}
}

/*
 * A direct write refused with EINVAL (a device with blocks larger than
 * 4 KiB): the journal goes on through the page cache, loses nothing, and
 * every record reads back.
 */
static void test_direct_refused(void **state)
{
	char jdir[512], tree[512];
	struct journal_config cfg = { .checkpoint_interval_ms = 100000, .refuse_direct_at = 2 };
	struct replay_result rr;
	struct journal_stats st;
	struct appender a[4];
	struct jreader *rd;
	struct jrec r;
	pthread_t t[4];
	struct journal *j;
	uint64_t records = 0;

	(void)state;
	fresh_journal("d", jdir, tree);
	cfg.dir = jdir;
	cfg.backing_fd = open(tree, O_RDONLY | O_DIRECTORY);
	assert_int_equal(journal_open(&cfg, &j, &rr), 0);
	assert_int_equal(journal_start(j), 0);
	a[0] = (struct appender){ j, 0, 1, 0 };
	append_thread(&a[0]);
	journal_get_stats(j, &st);
	if (!st.direct)
		skip();     /* the scratch filesystem takes no O_DIRECT: nothing to refuse */
	for (int i = 0; i < 4; i++) {
		a[i] = (struct appender){ j, i, 500, i == 0 };
		pthread_create(&t[i], NULL, append_thread, &a[i]);
	}
	for (int i = 0; i < 4; i++)
		pthread_join(t[i], NULL);
	journal_get_stats(j, &st);
	assert_false(st.direct);
	assert_int_equal(st.error, 0);
	assert_int_equal(journal_close(j), 0);
	close(cfg.backing_fd);

	assert_int_equal(jreader_open(jdir, 0, &rd), 0);
	while (jreader_next(rd, &r) == 1)
		records += r.type == JR_WRITE;
	assert_null(jreader_stop(rd));
	jreader_close(rd);
	assert_int_equal(records, 2001);
}

/* The batch hook of test_fail_in_flight: holds the journal thread until released. */
struct gate {
	pthread_mutex_t lock;
	pthread_cond_t cv;
	bool armed, entered, open;
};

static void gate_hook(void *arg)
{
	struct gate *g = arg;

	pthread_mutex_lock(&g->lock);
	if (g->armed) {
		g->entered = true;
		pthread_cond_broadcast(&g->cv);
		while (!g->open)
			pthread_cond_wait(&g->cv, &g->lock);
	}
	pthread_mutex_unlock(&g->lock);
}

struct waiter {
	struct journal *j;
	char *data;                   /* lent to the record: freed once the wait returns */
	int ret;
	atomic_bool returned;
};

static void *lend_and_wait(void *arg)
{
	struct waiter *w = arg;
	struct jrec r = { .type = JR_WRITE, .fid = { 9, 1 }, .data = w->data, .data_len = 4096 };
	int err;
	uint64_t end = journal_append(w->j, &r, true, &err);

	assert_true(end > 0);
	w->ret = journal_wait(w->j, end);
	atomic_store(&w->returned, true);
	memset(w->data, 0xee, 4096);  /* what the caller may do with its buffer now */
	return NULL;
}

/*
 * The journal fails (a write could not be applied) while its thread writes
 * a batch holding a record whose data the waiter lent: the waiter returns
 * only once that batch is written, so it never frees data still being read;
 * the batch reaches the segment whole, and the next mount's replay reads it.
 */
static void test_fail_in_flight(void **state)
{
	char jdir[512], tree[512];
	struct gate g = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, true, false, false };
	struct journal_config cfg = { .checkpoint_interval_ms = 100000, .batch_hook = gate_hook,
				      .batch_hook_arg = &g };
	struct waiter w = { .data = malloc(4096) };
	struct replay_result rr;
	struct jreader *rd;
	struct jrec r;
	pthread_t t;
	int found = 0;

	(void)state;
	fresh_journal("fl", jdir, tree);
	cfg.dir = jdir;
	cfg.backing_fd = open(tree, O_RDONLY | O_DIRECTORY);
	assert_int_equal(journal_open(&cfg, &w.j, &rr), 0);
	assert_int_equal(journal_start(w.j), 0);
	memset(w.data, 'd', 4096);
	pthread_create(&t, NULL, lend_and_wait, &w);
	pthread_mutex_lock(&g.lock);
	while (!g.entered)
		pthread_cond_wait(&g.cv, &g.lock);
	pthread_mutex_unlock(&g.lock);
	/* the batch is in hand, not yet written: the journal fails now */
	journal_fail(w.j, -EIO, "a test apply");
	usleep(100000);
	assert_false(atomic_load(&w.returned));
	pthread_mutex_lock(&g.lock);
	g.open = true;
	pthread_cond_broadcast(&g.cv);
	pthread_mutex_unlock(&g.lock);
	pthread_join(t, NULL);
	/* that batch was written and flushed: its record is durable, and the wait says so */
	assert_int_equal(w.ret, 0);
	assert_int_not_equal(journal_close(w.j), 0);
	close(cfg.backing_fd);
	free(w.data);

	/* the record is in the segment, whole: 'd's, not what the waiter wrote after */
	assert_int_equal(jreader_open(jdir, 0, &rd), 0);
	while (jreader_next(rd, &r) == 1)
		if (r.type == JR_WRITE) {
			assert_int_equal(r.data_len, 4096);
			assert_int_equal(((const unsigned char *)r.data)[4095], 'd');
			found++;
		}
	assert_null(jreader_stop(rd));
	jreader_close(rd);
	assert_int_equal(found, 1);
}

/* Appends ~MIB MiB of 64 KiB WRITE records to J and waits for them. */
static void append_mib(struct journal *j, int mib)
{
	static char data[65536];

	for (int i = 0; i < mib * 16; i++) {
		struct jrec r = { .type = JR_WRITE, .fid = { 7, 1 }, .offset = (uint64_t)i * sizeof(data),
				  .data = data, .data_len = sizeof(data) };
		int err;
		uint64_t end;

		journal_apply_begin(j);
		end = journal_append(j, &r, true, &err);
		assert_true(end > 0);
		assert_int_equal(journal_wait(j, end), 0);
		journal_apply_end(j);
	}
}

static size_t segments_in(const char *jdir)
{
	struct jseg *segs;
	size_t nseg;
	int dfd = open(jdir, O_RDONLY | O_DIRECTORY);

	assert_int_equal(jseg_list(dfd, &segs, &nseg), 0);
	free(segs);
	close(dfd);
	return nseg;
}

/*
 * A hold that yields to the cap gives way past max_bytes (the segments
 * beyond the cap go at a checkpoint); one that yields only to a full disk,
 * and a hard hold, keep every segment, and nothing is counted as given up.
 */
static void test_soft_hold(void **state)
{
	char jdir[512], tree[512];
	struct replay_result rr;
	struct journal_stats st;

	(void)state;
	snprintf(jdir, sizeof(jdir), "%s/js", scratch);
	snprintf(tree, sizeof(tree), "%s/ts", scratch);
	for (int kind = 0; kind < 3; kind++) {     /* yields to the cap, to a full disk, never */
		bool keeps = kind > 0;
		sh("rm -rf %s %s && mkdir -p %s", jdir, tree, tree);
		assert_int_equal(journal_create(jdir, 4 << 20, 0), 0);
		struct journal_config cfg = { .dir = jdir, .checkpoint_interval_ms = 100000,
					      .max_bytes = 8 << 20 };
		struct journal *j;
		cfg.backing_fd = open(tree, O_RDONLY | O_DIRECTORY);
		assert_true(cfg.backing_fd >= 0);
		assert_int_equal(journal_open(&cfg, &j, &rr), 0);
		assert_int_equal(journal_start(j), 0);
		if (kind == 0)
			assert_true(journal_hold_soft(j, "retention", 0, JHOLD_YIELD_CAP) >= 0);
		else if (kind == 1)
			assert_true(journal_hold_soft(j, "replica", 0, JHOLD_YIELD_FULL) >= 0);
		else
			assert_true(journal_hold(j, "reader", 0) >= 0);
		append_mib(j, 20);
		journal_get_stats(j, &st);
		if (keeps)
			assert_int_equal(st.yielded, 0);
		assert_int_equal(journal_close(j), 0);
		close(cfg.backing_fd);
		if (keeps)
			assert_true(segments_in(jdir) >= 5);    /* the hold kept them all */
		else
			assert_true(segments_in(jdir) <= 2);    /* down to the 8 MiB cap */
	}
}

static void on_usr1(int sig)
{
	(void)sig;
}

static atomic_bool stop_signals;

/* Sends SIGUSR1 to the process (any of its threads) every 20 us until told to stop. */
static void *signaller(void *arg)
{
	(void)arg;
	while (!atomic_load(&stop_signals)) {
		kill(getpid(), SIGUSR1);
		usleep(20);
	}
	return NULL;
}

/*
 * Signals that interrupt the journal thread's waits (a handler without
 * SA_RESTART, as a service's own may be) are no error: every append and
 * every wait succeeds, and the log reads back whole.
 */
static void test_signals(void **state)
{
	char jdir[512], tree[512];
	struct replay_result rr;
	struct sigaction sa = { .sa_handler = on_usr1 }, old;
	struct jreader *rd;
	struct jrec r;
	pthread_t t;
	struct journal *j;
	int n = 0;

	(void)state;
	fresh_journal("sig", jdir, tree);
	sigemptyset(&sa.sa_mask);
	assert_int_equal(sigaction(SIGUSR1, &sa, &old), 0);
	j = open_live(jdir, tree, 0, 0, &rr);
	assert_true(journal_hold(j, "test", 0) >= 0);      /* every segment stays to be read */
	atomic_store(&stop_signals, false);
	pthread_create(&t, NULL, signaller, NULL);
	append_mib(j, 64);                              /* 1024 records of 64 KiB */
	atomic_store(&stop_signals, true);
	pthread_join(t, NULL);
	assert_int_equal(journal_close(j), 0);
	sigaction(SIGUSR1, &old, NULL);
	assert_int_equal(jreader_open(jdir, 0, &rd), 0);
	while (jreader_next(rd, &r) == 1)
		n += r.type == JR_WRITE;
	jreader_close(rd);
	assert_int_equal(n, 1024);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_crc32c),
		cmocka_unit_test(test_journal_dir_placed),
		cmocka_unit_test(test_soft_hold),
		cmocka_unit_test(test_signals),
		cmocka_unit_test(test_roundtrip),
		cmocka_unit_test(test_encode_head),
		cmocka_unit_test(test_torn_every_offset),
		cmocka_unit_test(test_replay_idempotent),
		cmocka_unit_test(test_failure_reported),
		cmocka_unit_test(test_live_segments),
		cmocka_unit_test(test_direct_refused),
		cmocka_unit_test(test_fail_in_flight),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
