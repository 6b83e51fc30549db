/*
 * test_replicate.c - replicate/: the file:// backend (objects appear whole,
 * listing in key order under a prefix, ranged reads, absent objects, a
 * missing replica directory, keys that would climb out) and the journal
 * read back from pieces (chains, overlaps, gaps, damage); the s3:// URL,
 * key encoding and XML pieces (the requests themselves are tested against a
 * real server by 0021-replica-s3), and the resend of a body when a kept-alive
 * connection turns out dead (an in-process HTTP peer that drops it).
 *
 * Every test works in its own directory under /tmp, removed at the end.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "../../common/common.h"
#include "../../journal/journal.h"
#include "../../replicate/replicate.h"
#include "../../replicate/replicate_i.h"

struct fix {
	char root[64];
	char url[96];
	struct backend *b;
};

static int setup(void **state)
{
	struct fix *f = calloc(1, sizeof(*f));
	struct backend_err err = { 0 };

	assert_non_null(f);
	strcpy(f->root, "/tmp/test_replicate.XXXXXX");
	assert_non_null(mkdtemp(f->root));
	snprintf(f->url, sizeof(f->url), "file://%s", f->root);
	assert_int_equal(backend_open(f->url, &f->b, &err), 0);
	*state = f;
	return 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static int teardown(void **state)
{
	struct fix *f = *state;

	backend_close(f->b);
	nftw(f->root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

struct listed {
	char keys[16][64];
	uint64_t sizes[16];
	int n;
};

static int collect(void *arg, const char *key, uint64_t size)
{
	struct listed *l = arg;
	if (l->n == 16)
		return -E2BIG;
	snprintf(l->keys[l->n], sizeof(l->keys[0]), "%s", key);
	l->sizes[l->n++] = size;
	return 0;
}

static void test_put_get_list(void **state)
{
	struct fix *f = *state;
	struct backend_err err = { 0 };
	struct listed l = { 0 };
	void *data;
	size_t len;
	uint64_t size;
	char buf[8];

	assert_int_equal(backend_put(f->b, "packs/ab/abc.pack", "pack-bytes", 10, &err), 0);
	assert_int_equal(backend_put(f->b, "index/1.idx", "i", 1, &err), 0);
	assert_int_equal(backend_put(f->b, "packs/00/0.pack", "zero", 4, &err), 0);
	assert_int_equal(backend_put(f->b, "config", "c=1\n", 4, &err), 0);
	/* replaced whole */
	assert_int_equal(backend_put(f->b, "config", "c=22\n", 5, &err), 0);

	assert_int_equal(backend_get(f->b, "config", &data, &len, &err), 0);
	assert_int_equal(len, 5);
	assert_memory_equal(data, "c=22\n", 5);
	free(data);
	assert_int_equal(backend_get_range(f->b, "packs/ab/abc.pack", 5, 8, buf, &err), 5);
	assert_memory_equal(buf, "bytes", 5);
	assert_int_equal(backend_head(f->b, "packs/00/0.pack", &size, &err), 0);
	assert_int_equal(size, 4);
	assert_int_equal(backend_head(f->b, "packs/00/1.pack", &size, &err), -ENOENT);
	assert_int_equal(backend_get(f->b, "nothing", &data, &len, &err), -ENOENT);

	assert_int_equal(backend_list(f->b, "packs/", collect, &l, &err), 0);
	assert_int_equal(l.n, 2);
	assert_string_equal(l.keys[0], "packs/00/0.pack");
	assert_string_equal(l.keys[1], "packs/ab/abc.pack");
	assert_int_equal(l.sizes[1], 10);
	memset(&l, 0, sizeof(l));
	assert_int_equal(backend_list(f->b, "", collect, &l, &err), 0);
	assert_int_equal(l.n, 4);
	assert_string_equal(l.keys[0], "config");
	assert_string_equal(l.keys[1], "index/1.idx");
	/* no temporary file is left behind by a put */
	memset(&l, 0, sizeof(l));
	assert_int_equal(backend_list(f->b, "p", collect, &l, &err), 0);
	assert_int_equal(l.n, 2);

	assert_int_equal(backend_delete(f->b, "index/1.idx", &err), 0);
	assert_int_equal(backend_delete(f->b, "index/1.idx", &err), 0);
	assert_int_equal(backend_head(f->b, "index/1.idx", NULL, &err), -ENOENT);
	struct backend_counters c;
	backend_get_counters(f->b, &c);
	assert_true(c.requests >= 12);
	assert_int_equal(c.put_bytes, 10 + 1 + 4 + 4 + 5);
}

static void test_put_fd(void **state)
{
	struct fix *f = *state;
	struct backend_err err = { 0 };
	char path[128];
	size_t n = 3 << 20;
	unsigned char *src = malloc(n);
	void *data;
	size_t len;

	assert_non_null(src);
	for (size_t i = 0; i < n; i++)
		src[i] = (unsigned char)(i * 7 + (i >> 12));
	snprintf(path, sizeof(path), "%s/source", f->root);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write_all(fd, src, n), 0);
	assert_int_equal(backend_put_fd(f->b, "big/x", fd, 1000, n - 2000, &err), 0);
	/* the source shorter than asked: an error, and no object */
	assert_int_not_equal(backend_put_fd(f->b, "big/y", fd, 0, n + 1, &err), 0);
	close(fd);
	assert_int_equal(backend_get(f->b, "big/x", &data, &len, &err), 0);
	assert_int_equal(len, n - 2000);
	assert_memory_equal(data, src + 1000, n - 2000);
	free(data);
	assert_int_equal(backend_head(f->b, "big/y", NULL, &err), -ENOENT);
	free(src);
}

static void test_errors(void **state)
{
	struct fix *f = *state;
	struct backend_err err = { 0 };
	struct backend *b;
	char url[128];

	assert_int_equal(backend_put(f->b, "../escape", "x", 1, &err), -EINVAL);
	assert_int_equal(backend_put(f->b, "/abs", "x", 1, &err), -EINVAL);
	assert_int_equal(backend_open("file://relative", &b, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "file:///path"));
	assert_int_equal(backend_open("gopher://x", &b, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "s3://"));

	/* a missing replica directory is not created: it is an unmounted disk */
	snprintf(url, sizeof(url), "file://%s/not-mounted", f->root);
	assert_int_equal(backend_open(url, &b, &err), 0);
	memset(&err, 0, sizeof(err));
	assert_int_equal(backend_put(b, "config", "x", 1, &err), -ENOENT);
	assert_true(err.retry);
	assert_non_null(strstr(err.msg, "not-mounted/config"));
	assert_non_null(strstr(err.msg, "missing"));
	char path[128];
	snprintf(path, sizeof(path), "%s/not-mounted", f->root);
	assert_int_equal(access(path, F_OK), -1);
	backend_close(b);
}

/* ---- the journal from pieces ---- */

/* Builds N records (WRITEs; a SEAL after record SEAL_AT) from LSN 0 into BUF; returns the length. */
static size_t make_log(unsigned char *buf, int n, int seal_at, size_t *ends)
{
	size_t at = 0;
	for (int i = 0; i < n; i++) {
		struct jrec r = { .type = JR_WRITE, .fid = { 5, 1 }, .offset = (uint64_t)i * 10,
				  .data = "0123456789", .data_len = 10, .lsn = at,
				  .time_ns = 1000 + (uint64_t)i };
		if (i == seal_at)
			r = (struct jrec){ .type = JR_SEAL, .lsn = at, .time_ns = 1000 + (uint64_t)i };
		at += jrec_encode(&r, buf + at);
		ends[i] = at;
	}
	return at;
}

static int count_records(const char *dir, uint64_t from, uint64_t *end)
{
	struct jreader *rd;
	struct jrec r;
	int n = 0;

	assert_int_equal(jreader_open(dir, from, &rd), 0);
	while (jreader_next(rd, &r) == 1)
		n++;
	*end = jreader_lsn(rd);
	jreader_close(rd);
	return n;
}

static void put_piece(struct fix *f, const unsigned char *log, size_t a, size_t b)
{
	char key[96];
	struct backend_err err = { 0 };
	snprintf(key, sizeof(key), "journal/00000001/%016zx-%016zx.log", a, b);
	assert_int_equal(backend_put(f->b, key, log + a, b - a, &err), 0);
}

static void test_fetch_journal(void **state)
{
	struct fix *f = *state;
	unsigned char log[8192];
	size_t ends[40];
	size_t len = make_log(log, 40, 19, ends);
	char dir[128];
	uint64_t end;
	struct backend_err err = { 0 };

	/* pieces cut anywhere between records, one overlapping two others */
	put_piece(f, log, 0, ends[6]);
	put_piece(f, log, ends[6], ends[25]);
	put_piece(f, log, ends[3], ends[12]);
	put_piece(f, log, ends[25], len);
	snprintf(dir, sizeof(dir), "%s/j1", f->root);
	mkdir(dir, 0700);
	assert_int_equal(replica_fetch_journal(f->b, 0, dir, &end, &err), 0);
	assert_int_equal(end, len);
	uint64_t rend;
	/* the SEAL splits the log into two segment files the reader follows */
	assert_int_equal(count_records(dir, 0, &rend), 40);
	assert_int_equal(rend, len);

	/* from the middle of a piece */
	snprintf(dir, sizeof(dir), "%s/j2", f->root);
	mkdir(dir, 0700);
	assert_int_equal(replica_fetch_journal(f->b, ends[9], dir, &end, &err), 0);
	assert_int_equal(count_records(dir, ends[9], &rend), 30);

	/* a gap with pieces after it: the chain up to it, and an error saying where it is */
	struct backend_err e2 = { 0 };
	char key[96];
	snprintf(key, sizeof(key), "journal/00000001/%016zx-%016zx.log", ends[6], ends[25]);
	assert_int_equal(backend_delete(f->b, key, &e2), 0);
	snprintf(dir, sizeof(dir), "%s/j3", f->root);
	mkdir(dir, 0700);
	assert_int_equal(replica_fetch_journal(f->b, 0, dir, &end, &err), -EBADMSG);
	assert_int_equal(end, ends[12]);
	assert_non_null(strstr(err.msg, "has a gap"));
	assert_int_equal(count_records(dir, 0, &rend), 13);   /* records 0..12 */

	/* not reaching back to FROM */
	snprintf(dir, sizeof(dir), "%s/j4", f->root);
	mkdir(dir, 0700);
	assert_int_equal(replica_fetch_journal(f->b, ends[13], dir, &end, &err), 1);
	assert_non_null(strstr(err.msg, "does not reach back"));

	/* damage inside a piece: what precedes it, and an error naming the piece */
	unsigned char bad[8192];
	memcpy(bad, log, len);
	bad[ends[29] + 45] ^= 1;
	put_piece(f, bad, ends[25], len);
	snprintf(key, sizeof(key), "journal/00000001/%016zx-%016zx.log", ends[6], ends[25]);
	put_piece(f, log, ends[6], ends[25]);
	snprintf(dir, sizeof(dir), "%s/j5", f->root);
	mkdir(dir, 0700);
	memset(&err, 0, sizeof(err));
	assert_int_equal(replica_fetch_journal(f->b, ends[12], dir, &end, &err), -EBADMSG);
	assert_int_equal(end, ends[29]);
	assert_non_null(strstr(err.msg, "damaged"));
	assert_int_equal(count_records(dir, ends[12], &rend), 29 - 12);
}

struct many_seen {
	int started[32], done[32], ret[32];
};

static void many_start(void *arg, size_t i)
{
	((struct many_seen *)arg)->started[i]++;
}

static void many_done(void *arg, size_t i, int ret, const struct backend_err *err)
{
	struct many_seen *m = arg;
	(void)err;
	m->done[i]++;
	m->ret[i] = ret;
}

/* put_many: every item once, at most PARALLEL at a time; a failure stops the rest */
static void test_put_many(void **state)
{
	struct fix *f = *state;
	struct backend_err err = { 0 };
	struct put_item items[20];
	struct many_seen seen = { 0 };
	struct put_calls calls = { .start = many_start, .done = many_done, .arg = &seen };
	char path[128], keys[20][32];
	void *data;
	size_t len;

	snprintf(path, sizeof(path), "%s/source", f->root);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	for (int i = 0; i < 20; i++) {
		char c = (char)('a' + i);
		assert_int_equal(pwrite(fd, &c, 1, i), 1);
		snprintf(keys[i], sizeof(keys[i]), "packs/%02d.pack", i);
		items[i] = (struct put_item){ .key = keys[i], .fd = fd, .off = i, .len = 1 };
	}
	assert_int_equal(backend_put_many(f->b, items, 20, 4, &calls, &err), 0);
	for (int i = 0; i < 20; i++) {
		assert_int_equal(seen.started[i], 1);
		assert_int_equal(seen.done[i], 1);
		assert_int_equal(seen.ret[i], 0);
		assert_int_equal(backend_get(f->b, keys[i], &data, &len, &err), 0);
		assert_int_equal(len, 1);
		assert_int_equal(((char *)data)[0], 'a' + i);
		free(data);
	}
	/* item 3 reads past the end of its source: it fails, later ones do not begin */
	memset(&seen, 0, sizeof(seen));
	items[3].len = 100;
	assert_int_not_equal(backend_put_many(f->b, items, 20, 1, &calls, &err), 0);
	assert_int_equal(seen.done[3], 1);
	assert_int_not_equal(seen.ret[3], 0);
	assert_int_equal(seen.started[4], 0);
	assert_true(err.msg[0]);
	close(fd);
}

/* sweep: temp files older than the age go, fresh ones and objects stay */
static void test_sweep(void **state)
{
	struct fix *f = *state;
	struct backend_err err = { 0 };
	char stale[256], fresh[256];
	struct timespec old[2] = { { .tv_sec = time(NULL) - 7200 }, { .tv_sec = time(NULL) - 7200 } };

	assert_int_equal(backend_put(f->b, "journal/00000001/0000000000000000-0000000000000004.log", "abcd", 4, &err), 0);
	assert_int_equal(backend_put(f->b, "packs/aa/aa11.pack", "p", 1, &err), 0);
	snprintf(stale, sizeof(stale), "%s/journal/00000001/0000000000000004-0000000000000008.log.tmp77", f->root);
	snprintf(fresh, sizeof(fresh), "%s/packs/aa/aa22.pack.tmp78", f->root);
	close(open(stale, O_WRONLY | O_CREAT, 0644));
	close(open(fresh, O_WRONLY | O_CREAT, 0644));
	assert_int_equal(utimensat(AT_FDCWD, stale, old, 0), 0);
	assert_int_equal(backend_sweep(f->b, 3600), 1);
	assert_int_equal(access(stale, F_OK), -1);
	assert_int_equal(access(fresh, F_OK), 0);
	assert_int_equal(backend_head(f->b, "journal/00000001/0000000000000000-0000000000000004.log", NULL, &err), 0);
	assert_int_equal(backend_head(f->b, "packs/aa/aa11.pack", NULL, &err), 0);
}

static void test_s3_url(void **state)
{
	struct backend_err err = { 0 };
	struct s3_url u;
	char enc[256], text[64];

	(void)state;
	assert_int_equal(s3_parse_url("s3://my-bucket/a/b/?endpoint=http://127.0.0.1:9000/&region=eu-west-1&path_style=1",
				      &u, &err), 0);
	assert_string_equal(u.bucket, "my-bucket");
	assert_string_equal(u.prefix, "a/b/");
	assert_string_equal(u.endpoint, "http://127.0.0.1:9000");
	assert_string_equal(u.region, "eu-west-1");
	assert_true(u.path_style);
	assert_int_equal(u.multipart_threshold, 64 << 20);
	assert_int_equal(u.part_size, 16 << 20);

	assert_int_equal(s3_parse_url("s3://bkt", &u, &err), 0);
	assert_string_equal(u.prefix, "");
	assert_string_equal(u.endpoint, "https://s3.us-east-1.amazonaws.com");
	assert_false(u.path_style);

	assert_int_equal(s3_parse_url("s3://bkt/p?multipart_threshold=8M&part_size=5M", &u, &err), 0);
	assert_int_equal(u.multipart_threshold, 8 << 20);
	assert_int_equal(u.part_size, 5 << 20);
	assert_int_equal(s3_parse_url("s3://bkt/p?part_size=1M", &u, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "part_size=1M"));
	assert_int_equal(s3_parse_url("s3://bkt/p?multipart_threshold=lots", &u, &err), -EINVAL);
	assert_int_equal(s3_parse_url("s3://ab/p", &u, &err), -EINVAL);
	assert_int_equal(s3_parse_url("s3://Upper/p", &u, &err), -EINVAL);
	assert_int_equal(s3_parse_url("s3://bkt/p?endpoint=ftp://x", &u, &err), -EINVAL);

	/* path-style and virtual-hosted addressing, keys and queries encoded */
	char url[512];
	assert_int_equal(s3_parse_url("s3://bkt/pre?endpoint=https://s3.example.net:9000&path_style=1",
				      &u, &err), 0);
	s3_object_url(&u, "packs/a b", "partNumber=1&uploadId=x%2By", url, sizeof(url));
	assert_string_equal(url, "https://s3.example.net:9000/bkt/pre/packs/a%20b?partNumber=1&uploadId=x%2By");
	s3_object_url(&u, NULL, "list-type=2&prefix=pre%2F", url, sizeof(url));
	assert_string_equal(url, "https://s3.example.net:9000/bkt?list-type=2&prefix=pre%2F");
	assert_int_equal(s3_parse_url("s3://bkt/pre?region=eu-west-1", &u, &err), 0);
	s3_object_url(&u, "head", NULL, url, sizeof(url));
	assert_string_equal(url, "https://bkt.s3.eu-west-1.amazonaws.com/pre/head");

	s3_encode("a b/c=d~e", true, enc, sizeof(enc));
	assert_string_equal(enc, "a%20b/c%3Dd~e");
	s3_encode("x/y+z", false, enc, sizeof(enc));
	assert_string_equal(enc, "x%2Fy%2Bz");

	const char *xml = "<R><UploadId>a&amp;b</UploadId><Code>X</Code></R>";
	assert_non_null(s3_xml_tag(xml, "UploadId", text, sizeof(text)));
	assert_string_equal(text, "a&b");
	assert_null(s3_xml_tag(xml, "ETag", text, sizeof(text)));
}

/* ---- a body sent again on a fresh connection ---- */

struct peer {
	int lfd;
	char body[3][256];            /* the body of each request, as received */
	int conns;
};

/* Reads one request on FD into BODY; false at end of stream. */
static bool peer_read(int fd, char *body, size_t cap)
{
	char buf[8192];
	size_t have = 0;
	char *end = NULL;

	while (!end) {
		ssize_t r = read(fd, buf + have, sizeof(buf) - 1 - have);
		if (r <= 0)
			return false;
		have += (size_t)r;
		buf[have] = 0;
		end = strstr(buf, "\r\n\r\n");
	}
	const char *cl = strcasestr(buf, "content-length:");
	size_t want = cl ? strtoul(cl + 15, NULL, 10) : 0, got = have - (size_t)(end + 4 - buf);
	memmove(buf, end + 4, got);
	while (got < want) {
		ssize_t r = read(fd, buf + got, sizeof(buf) - 1 - got);
		if (r <= 0)
			return false;
		got += (size_t)r;
	}
	if (got >= cap)
		got = cap - 1;
	memcpy(body, buf, got);
	body[got] = 0;
	return true;
}

/*
 * First connection: answers one request and keeps the connection open, then
 * reads a second one and closes without a word, as a server does that stops
 * or times the connection out just then.  Second connection: answers one.
 */
static void *peer_main(void *arg)
{
	struct peer *p = arg;
	static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nETag: \"e\"\r\n\r\n";
	int n = 0;

	for (int c = 0; c < 2; c++) {
		int fd = accept(p->lfd, NULL, NULL);
		if (fd < 0)
			break;
		p->conns++;
		if (peer_read(fd, p->body[n], sizeof(p->body[n]))) {
			n++;
			if (write(fd, ok, sizeof(ok) - 1) < 0)
				n = 3;
			if (c == 0 && peer_read(fd, p->body[n], sizeof(p->body[n])))
				n++;
		}
		close(fd);
	}
	return NULL;
}

static void test_s3_resend(void **state)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);
	struct backend_err err = { 0 };
	struct backend *b;
	struct peer p = { 0 };
	pthread_t t;
	char url[160];

	(void)state;
	p.lfd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(p.lfd >= 0);
	assert_int_equal(bind(p.lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(p.lfd, 4), 0);
	assert_int_equal(getsockname(p.lfd, (struct sockaddr *)&a, &al), 0);
	snprintf(url, sizeof(url), "s3://bkt/pre?endpoint=http://127.0.0.1:%u&path_style=1",
		 ntohs(a.sin_port));
	setenv("AWS_ACCESS_KEY_ID", "k", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "s", 1);
	assert_int_equal(backend_open(url, &b, &err), 0);
	assert_int_equal(pthread_create(&t, NULL, peer_main, &p), 0);

	assert_int_equal(backend_put(b, "one", "first body", 10, &err), 0);
	/* the kept-alive connection dies under this one: curl must rewind and send it again */
	int ret = backend_put(b, "two", "second body", 11, &err);
	if (ret)
		print_error("second put: %s\n", err.msg);
	assert_int_equal(ret, 0);
	pthread_join(t, NULL);
	backend_close(b);
	close(p.lfd);
	assert_int_equal(p.conns, 2);
	assert_string_equal(p.body[0], "first body");
	assert_string_equal(p.body[1], "second body");   /* the one the dead connection swallowed */
	assert_string_equal(p.body[2], "second body");   /* sent whole again */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_put_get_list, setup, teardown),
		cmocka_unit_test_setup_teardown(test_put_fd, setup, teardown),
		cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fetch_journal, setup, teardown),
		cmocka_unit_test_setup_teardown(test_put_many, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sweep, setup, teardown),
		cmocka_unit_test(test_s3_url),
		cmocka_unit_test(test_s3_resend),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
