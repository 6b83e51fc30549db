/*
 * Unit tests for common/: paths, option strings, sizes, key/value files and
 * durable writes, with injected write and fsync failures.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "../../common/common.h"

/* Failure injection: the Nth call fails with the given errno (0: never). */
static int fail_fsync_at, fail_write_at, fsync_calls, write_calls, injected_errno;

int __real_fsync(int fd);
int __wrap_fsync(int fd)
{
	if (fail_fsync_at && ++fsync_calls == fail_fsync_at) {
		errno = injected_errno;
		return -1;
	}
	return __real_fsync(fd);
}

ssize_t __real_write(int fd, const void *buf, size_t n);
ssize_t __wrap_write(int fd, const void *buf, size_t n)
{
	if (fail_write_at && ++write_calls == fail_write_at) {
		errno = injected_errno;
		return -1;
	}
	return __real_write(fd, buf, n);
}

static void reset_injection(void)
{
	fail_fsync_at = fail_write_at = fsync_calls = write_calls = 0;
}

static void test_path_join(void **state)
{
	char *p = path_join("/a", "b");
	assert_string_equal(p, "/a/b");
	free(p);
	p = path_join("/a/", "b");
	assert_string_equal(p, "/a/b");
	free(p);
	p = path_join("", "b");
	assert_string_equal(p, "b");
	free(p);
}

static void test_path_absolute(void **state)
{
	char *p = path_absolute("/a//b/./c/../d/");
	assert_string_equal(p, "/a/b/d");
	free(p);
	p = path_absolute("/..");
	assert_string_equal(p, "/");
	free(p);
	assert_int_equal(chdir("/tmp"), 0);
	p = path_absolute("x/y");
	assert_string_equal(p, "/tmp/x/y");
	free(p);
}

static void test_opt_next(void **state)
{
	const char *cur = "allow_other,,source=/a\\,b,max_threads=4";
	char buf[64], *k, *v;

	assert_true(opt_next(&cur, buf, &k, &v));
	assert_string_equal(k, "allow_other");
	assert_null(v);
	assert_true(opt_next(&cur, buf, &k, &v));
	assert_string_equal(k, "source");
	assert_string_equal(v, "/a,b");
	assert_true(opt_next(&cur, buf, &k, &v));
	assert_string_equal(k, "max_threads");
	assert_string_equal(v, "4");
	assert_false(opt_next(&cur, buf, &k, &v));
}

static void test_parse_size(void **state)
{
	uint64_t v;

	assert_int_equal(parse_size("0", &v), 0);
	assert_int_equal(v, 0);
	assert_int_equal(parse_size("16K", &v), 0);
	assert_int_equal(v, 16384);
	assert_int_equal(parse_size("3MiB", &v), 0);
	assert_int_equal(v, 3 << 20);
	assert_int_equal(parse_size("2g", &v), 0);
	assert_int_equal(v, 2ULL << 30);
	assert_int_equal(parse_size("", &v), -EINVAL);
	assert_int_equal(parse_size("-1", &v), -EINVAL);
	assert_int_equal(parse_size("12Q", &v), -EINVAL);
	assert_int_equal(parse_size("99999999999T", &v), -ERANGE);
}

static char tmpdir[64];

static int make_tmpdir(void **state)
{
	strcpy(tmpdir, "/tmp/drfs-unit.XXXXXX");
	return mkdtemp(tmpdir) ? 0 : -1;
}

static int remove_tmpdir(void **state)
{
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
	return system(cmd);
}

static void test_kv(void **state)
{
	char *path = path_join(tmpdir, "conf");
	int dfd = open(tmpdir, O_RDONLY | O_DIRECTORY);
	const char *text = "# comment\nformat = 1\n\nstate=/x/y\nformat=2\n";
	struct kv *kv;

	assert_int_equal(write_file_durable(dfd, "conf", text, strlen(text)), 0);
	assert_int_equal(kv_load(path, &kv), 0);
	assert_string_equal(kv_get(kv, "format"), "2");
	assert_string_equal(kv_get(kv, "state"), "/x/y");
	assert_null(kv_get(kv, "missing"));
	kv_free(kv);
	assert_int_equal(write_file_durable(dfd, "conf", "no equals sign\n", 15), 0);
	assert_int_equal(kv_load(path, &kv), -EINVAL);
	free(path);
	path = path_join(tmpdir, "absent");
	assert_int_equal(kv_load(path, &kv), -ENOENT);
	free(path);
	close(dfd);
}

/* A failed write or fsync is reported and leaves the old file whole. */
static void test_durable_write_failures(void **state)
{
	int dfd = open(tmpdir, O_RDONLY | O_DIRECTORY);
	char *path = path_join(tmpdir, "f"), *back;

	assert_int_equal(write_file_durable(dfd, "f", "old", 3), 0);
	for (int n = 1; n <= 2; n++) {
		reset_injection();
		injected_errno = EIO;
		fail_fsync_at = n;
		/* n == 1: the file's fsync; n == 2: the directory's, after the rename. */
		assert_int_equal(write_file_durable(dfd, "f", "new", 3), -EIO);
		if (n == 1) {
			assert_int_equal(read_file_small(path, &back, NULL), 0);
			assert_string_equal(back, "old");
			free(back);
		}
	}
	reset_injection();
	injected_errno = ENOSPC;
	fail_write_at = 1;
	assert_int_equal(write_file_durable(dfd, "g", "data", 4), -ENOSPC);
	reset_injection();
	char *g = path_join(tmpdir, "g");
	assert_int_equal(access(g, F_OK), -1);
	free(g);
	/* No temporary file is left behind by the failures. */
	char cmd[160];
	snprintf(cmd, sizeof(cmd), "test -z \"$(ls -A %s | grep tmp)\"", tmpdir);
	assert_int_equal(system(cmd), 0);
	free(path);
	close(dfd);
}

/*
 * Data extents by the allocation map: a preallocated (unwritten) range is
 * data, touching extents merge, holes are the gaps, nothing past SIZE.
 */
static void test_file_extents(void **state)
{
	char *path = path_join(tmpdir, "sparse");
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	char block[4096];
	uint64_t ds = 0, de = 0;

	(void)state;
	memset(block, 'x', sizeof(block));
	assert_true(fd >= 0);
	assert_int_equal(pwrite_all(fd, block, sizeof(block), 0), 0);
	assert_int_equal(fallocate(fd, 0, 1 << 20, 65536), 0);
	assert_int_equal(pwrite_all(fd, block, sizeof(block), (1 << 20) + 65536), 0);
	assert_int_equal(ftruncate(fd, 4 << 20), 0);

	assert_int_equal(file_extent_next(fd, 0, 4 << 20, &ds, &de), 0);
	assert_int_equal(ds, 0);
	assert_int_equal(de, 4096);
	assert_int_equal(file_extent_next(fd, 2048, 4 << 20, &ds, &de), 0);
	assert_int_equal(ds, 2048);
	assert_int_equal(de, 4096);
	/* the preallocated range and the block written after it: one extent */
	assert_int_equal(file_extent_next(fd, 4096, 4 << 20, &ds, &de), 0);
	assert_int_equal(ds, 1 << 20);
	assert_int_equal(de, (1 << 20) + 65536 + 4096);
	assert_int_equal(file_extent_next(fd, de, 4 << 20, &ds, &de), 1);
	/* SIZE cuts an extent short */
	assert_int_equal(file_extent_next(fd, 4096, (1 << 20) + 100, &ds, &de), 0);
	assert_int_equal(de, (1 << 20) + 100);
	close(fd);
	free(path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_path_join),
		cmocka_unit_test(test_path_absolute),
		cmocka_unit_test(test_opt_next),
		cmocka_unit_test(test_parse_size),
		cmocka_unit_test(test_kv),
		cmocka_unit_test(test_durable_write_failures),
		cmocka_unit_test(test_file_extents),
	};
	return cmocka_run_group_tests_name("common", tests, make_tmpdir, remove_tmpdir);
}
