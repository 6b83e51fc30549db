/*
 * Unit tests for fs/ without a kernel mount: the inode table (identity,
 * lookup counts, reuse), fs_mutate() against a scratch backing directory,
 * including injected failures that must leave nothing half-made, and the
 * times drfs keeps (times.c).
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
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "../../common/common.h"
#include "../../fs/fs_i.h"

static int fail_fchownat;
int __real_fchownat(int fd, const char *path, uid_t uid, gid_t gid, int flags);
int __wrap_fchownat(int fd, const char *path, uid_t uid, gid_t gid, int flags)
{
	if (fail_fchownat) {
		errno = fail_fchownat;
		return -1;
	}
	return __real_fchownat(fd, path, uid, gid, flags);
}

struct fixture {
	char dir[64];
	struct drfs_fs fs;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	strcpy(f->dir, "/tmp/drfs-unit-fs.XXXXXX");
	if (!mkdtemp(f->dir))
		return -1;
	f->fs.cfg.backing = f->dir;
	f->fs.timeout = 1.0;
	pthread_mutex_init(&f->fs.lock, NULL);
	if (inode_table_init(&f->fs))
		return -1;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	char cmd[128];

	inode_table_release(&f->fs);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
	if (system(cmd))
		return -1;
	free(f);
	return 0;
}

static struct drfs_inode *lookup(struct fixture *f, struct drfs_inode *dir, const char *name,
				 struct fuse_entry_param *e)
{
	assert_int_equal(inode_lookup(&f->fs, dir, name, e), 0);
	return inode_get(&f->fs, e->ino);
}

static void test_lookup_identity(void **state)
{
	struct fixture *f = *state;
	struct fuse_entry_param e1, e2, e3;
	char path[128];
	struct stat st;

	snprintf(path, sizeof(path), "%s/a", f->dir);
	close(open(path, O_CREAT | O_WRONLY, 0644));
	snprintf(path, sizeof(path), "%s/b", f->dir);
	char a[128];
	snprintf(a, sizeof(a), "%s/a", f->dir);
	assert_int_equal(link(a, path), 0);
	assert_int_equal(stat(a, &st), 0);

	struct drfs_inode *ia = lookup(f, f->fs.root, "a", &e1);
	struct drfs_inode *ib = lookup(f, f->fs.root, "b", &e2);
	assert_ptr_equal(ia, ib);                 /* hard links: one inode */
	assert_int_equal(e1.ino, st.st_ino);      /* node id is the backing inode number */
	assert_int_equal(e1.attr.st_ino, st.st_ino);
	assert_int_equal(e1.generation, e2.generation);
	assert_int_equal(ia->nlookup, 2);
	inode_forget(&f->fs, ia, 1);
	assert_ptr_equal(inode_get(&f->fs, st.st_ino), ia);
	inode_forget(&f->fs, ia, 1);
	assert_null(inode_get(&f->fs, st.st_ino)); /* freed at zero */
	assert_int_equal(inode_lookup(&f->fs, f->fs.root, "missing", &e3), -ENOENT);
	/* The state directory is never found. */
	snprintf(path, sizeof(path), "%s/" DRFS_STATE_NAME, f->dir);
	assert_int_equal(mkdir(path, 0700), 0);
	assert_int_equal(inode_lookup(&f->fs, f->fs.root, DRFS_STATE_NAME, &e3), -ENOENT);
	assert_int_equal(inode_get(&f->fs, FUSE_ROOT_ID) == f->fs.root, 1);
}

/* Many inodes: the table grows and every one stays reachable. */
static void test_table_growth(void **state)
{
	struct fixture *f = *state;
	struct fuse_entry_param e;
	char path[160];
	enum { N = 20000 };
	static uint64_t inos[N];

	snprintf(path, sizeof(path), "%s/many", f->dir);
	mkdir(path, 0755);
	struct drfs_inode *dir = lookup(f, f->fs.root, "many", &e);
	for (int i = 0; i < N; i++) {
		char name[32];
		snprintf(name, sizeof(name), "f%d", i);
		snprintf(path, sizeof(path), "%s/many/%s", f->dir, name);
		close(open(path, O_CREAT | O_WRONLY, 0644));
		lookup(f, dir, name, &e);
		inos[i] = e.ino;
	}
	assert_true(f->fs.table_size >= N);
	for (int i = 0; i < N; i++) {
		struct drfs_inode *in = inode_get(&f->fs, inos[i]);
		assert_non_null(in);
		assert_int_equal(in->ino, inos[i]);
		inode_forget(&f->fs, in, 1);
	}
	assert_int_equal(f->fs.table_count, 1); /* only "many" is left */
	inode_forget(&f->fs, dir, 1);
}

static void test_mutations(void **state)
{
	struct fixture *f = *state;
	struct fuse_entry_param e;
	char path[160], buf[16];
	struct stat st;
	ssize_t r;

	struct mutation m = { .type = MUT_MKDIR, .dir = f->fs.root, .name = "d", .mode = 0750,
			      .uid = 1234, .gid = 99 };
	assert_int_equal(fs_mutate(&f->fs, &m), 0);
	snprintf(path, sizeof(path), "%s/d", f->dir);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0750);
	assert_int_equal(st.st_uid, 1234);
	assert_int_equal(st.st_gid, 99);
	struct drfs_inode *d = lookup(f, f->fs.root, "d", &e);

	struct mutation c = { .type = MUT_CREATE, .dir = d, .name = "f", .mode = 0640,
			      .open_flags = O_RDWR, .uid = 5, .gid = 6 };
	r = fs_mutate(&f->fs, &c);
	assert_true(r >= 0);
	int fd = (int)r;
	struct mutation w = { .type = MUT_WRITE, .fd = fd, .offset = 3, .data = "abc", .size = 3 };
	assert_int_equal(fs_mutate(&f->fs, &w), 3);
	struct drfs_inode *fi = lookup(f, d, "f", &e);
	assert_int_equal(e.attr.st_size, 6);
	assert_int_equal(e.attr.st_uid, 5);

	struct mutation t = { .type = MUT_SETATTR, .node = fi, .fd = -1,
			      .valid = FUSE_SET_ATTR_SIZE | FUSE_SET_ATTR_MODE };
	t.attr.st_size = 4;
	t.attr.st_mode = 0600;
	assert_int_equal(fs_mutate(&f->fs, &t), 0);
	snprintf(path, sizeof(path), "%s/d/f", f->dir);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, 4);
	assert_int_equal(st.st_mode & 07777, 0600);

	struct mutation x = { .type = MUT_SETXATTR, .node = fi, .xname = "user.k", .data = "v",
			      .size = 1 };
	assert_int_equal(fs_mutate(&f->fs, &x), 0);
	assert_int_equal(getxattr(path, "user.k", buf, sizeof(buf)), 1);
	x.flags = XATTR_CREATE;
	assert_int_equal(fs_mutate(&f->fs, &x), -EEXIST);

	struct mutation rn = { .type = MUT_RENAME, .dir = d, .name = "f", .newdir = f->fs.root,
			       .newname = "g", .flags = RENAME_NOREPLACE };
	assert_int_equal(fs_mutate(&f->fs, &rn), 0);
	assert_int_equal(fs_mutate(&f->fs, &rn), -ENOENT);
	struct mutation ln = { .type = MUT_LINK, .node = fi, .dir = d, .name = "h" };
	assert_int_equal(fs_mutate(&f->fs, &ln), 0);
	snprintf(path, sizeof(path), "%s/g", f->dir);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_nlink, 2);
	struct mutation ul = { .type = MUT_UNLINK, .dir = f->fs.root, .name = "g" };
	assert_int_equal(fs_mutate(&f->fs, &ul), 0);
	struct mutation rd = { .type = MUT_RMDIR, .dir = f->fs.root, .name = "d" };
	assert_int_equal(fs_mutate(&f->fs, &rd), -ENOTEMPTY);

	/* The state directory's name is refused for every namespace change. */
	struct mutation hid = { .type = MUT_MKDIR, .dir = f->fs.root, .name = DRFS_STATE_NAME,
				.mode = 0755 };
	assert_int_equal(fs_mutate(&f->fs, &hid), -EPERM);
	struct mutation hid2 = { .type = MUT_RENAME, .dir = d, .name = "h",
				 .newdir = f->fs.root, .newname = DRFS_STATE_NAME };
	assert_int_equal(fs_mutate(&f->fs, &hid2), -EPERM);
	close(fd);
	inode_forget(&f->fs, fi, 1);
	inode_forget(&f->fs, d, 1);
}

/* A create whose ownership cannot be set fails whole: no file is left. */
static void test_create_rollback(void **state)
{
	struct fixture *f = *state;
	char path[160];

	fail_fchownat = EIO;
	struct mutation c = { .type = MUT_CREATE, .dir = f->fs.root, .name = "half", .mode = 0644,
			      .open_flags = O_RDWR, .uid = 7, .gid = 7 };
	assert_int_equal(fs_mutate(&f->fs, &c), -EIO);
	struct mutation m = { .type = MUT_MKDIR, .dir = f->fs.root, .name = "halfdir",
			      .mode = 0755, .uid = 7, .gid = 7 };
	assert_int_equal(fs_mutate(&f->fs, &m), -EIO);
	fail_fchownat = 0;
	snprintf(path, sizeof(path), "%s/half", f->dir);
	assert_int_equal(access(path, F_OK), -1);
	snprintf(path, sizeof(path), "%s/halfdir", f->dir);
	assert_int_equal(access(path, F_OK), -1);
}

/* A file "old" looked up (one lookup reference) and then deleted behind drfs's back. */
static struct drfs_inode *looked_up_then_deleted(struct fixture *f, struct fuse_entry_param *e)
{
	char path[160];

	snprintf(path, sizeof(path), "%s/old", f->dir);
	close(open(path, O_CREAT | O_WRONLY, 0644));
	struct drfs_inode *old = lookup(f, f->fs.root, "old", e);
	if (old->fd >= 0)
		skip(); /* no file handles on this filesystem: fds pin inodes */
	assert_int_equal(unlink(path), 0);
	return old;
}

/*
 * A deleted file's inode number given to a new file: the entry must follow
 * the new object (new generation, opens the new file), with its lookup count
 * carried over so that the kernel's later forgets balance.
 */
static void test_inode_number_reuse(void **state)
{
	struct fixture *f = *state;
	struct fuse_entry_param e, e2;
	char path[160], buf[8];
	struct stat st;
	int attempt;

	struct drfs_inode *old = looked_up_then_deleted(f, &e);
	for (attempt = 0; attempt < 50; attempt++) {
		snprintf(path, sizeof(path), "%s/new%d", f->dir, attempt);
		int fd = open(path, O_CREAT | O_WRONLY, 0644);
		assert_int_equal(write(fd, "new", 3), 3);
		close(fd);
		assert_int_equal(stat(path, &st), 0);
		if (st.st_ino == e.ino)
			break;
	}
	if (attempt == 50)
		skip(); /* the backing filesystem did not reuse the number */
	snprintf(path, sizeof(path), "new%d", attempt);
	struct drfs_inode *again = lookup(f, f->fs.root, path, &e2);
	assert_ptr_equal(again, old);
	assert_int_equal(e2.ino, e.ino);
	assert_int_not_equal(e2.generation, e.generation);
	assert_int_equal(again->nlookup, 2);
	bool owned;
	int fd = inode_fd(&f->fs, again, O_RDONLY, &owned);
	assert_true(fd >= 0);
	assert_int_equal(read(fd, buf, sizeof(buf)), 3);
	assert_memory_equal(buf, "new", 3);
	close(fd);
	inode_forget(&f->fs, again, 2);
	assert_null(inode_get(&f->fs, e.ino));
}

/*
 * A deleted file's inode number given to an object that needs an fd (here a
 * file made with O_TMPFILE): the kernel forgets its old inode by that node
 * id afterwards, and that forget must not take the new entry with it.
 */
static void test_reuse_for_fd_entry(void **state)
{
	struct fixture *f = *state;
	struct fuse_entry_param e, e2;
	int attempt, fd = -1;

	struct drfs_inode *old = looked_up_then_deleted(f, &e);
	for (attempt = 0; attempt < 200; attempt++) {
		struct mutation c = { .type = MUT_TMPFILE, .dir = f->fs.root, .name = "/",
				      .mode = 0600, .open_flags = O_RDWR };
		struct stat st;

		fd = (int)fs_mutate(&f->fs, &c);
		assert_true(fd >= 0);
		assert_int_equal(fstat(fd, &st), 0);
		if (st.st_ino == e.ino)
			break;
		close(fd);
	}
	if (attempt == 200)
		skip(); /* the backing filesystem did not reuse the number */
	assert_int_equal(inode_lookup_anon(&f->fs, fd, &e2), 0);
	assert_int_equal(e2.ino, e.ino);
	struct drfs_inode *fresh = inode_get(&f->fs, e2.ino);
	assert_non_null(fresh);
	assert_ptr_not_equal(fresh, old);
	assert_int_equal(fresh->nlookup, 2);             /* the old inode's count came along */
	inode_forget(&f->fs, inode_get(&f->fs, e.ino), 1); /* the kernel forgets the old inode */
	assert_ptr_equal(inode_get(&f->fs, e2.ino), fresh);
	inode_forget(&f->fs, fresh, 1);                  /* and then the new one */
	assert_null(inode_get(&f->fs, e2.ino));
	close(fd);
}

static bool ts_equal(struct timespec a, struct timespec b)
{
	return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
}

/* What attribute replies would show for FD now. */
static struct stat shown(struct fixture *f, int fd)
{
	struct stat st;

	assert_int_equal(fstat(fd, &st), 0);
	times_show(&f->fs, &st);
	return st;
}

/*
 * fs/times.c: a data apply puts the mtime back and keeps the ctime the kernel
 * showed; the kernel's ctime from a SETATTR is shown while the backing ctime
 * is the one it stands for; STATE/ctimes carries the pairs to the next mount,
 * and a damaged one is ignored.
 */
static void test_times_kept(void **state)
{
	struct fixture *f = *state;
	const struct timespec old_mtime = { 1000000000, 123456789 }, kernel = { 1500000000, 42 };
	struct timespec tv[2] = { { .tv_nsec = UTIME_OMIT }, old_mtime };
	struct fuse_entry_param e;
	struct timespec first;
	struct stat before, st;
	char path[160];
	uint64_t ino;
	bool cached;
	int fd;

	f->fs.cfg.state_dir = f->dir;
	times_start(&f->fs, true);
	snprintf(path, sizeof(path), "%s/t", f->dir);
	fd = open(path, O_CREAT | O_RDWR, 0644);
	assert_true(fd >= 0);
	assert_int_equal(futimens(fd, tv), 0);
	usleep(20000);

	assert_int_equal(fstat(fd, &st), 0);
	ino = (uint64_t)st.st_ino;
	assert_true(times_data_before(&f->fs, ino, fd, &before, &cached));
	assert_false(cached);                                      /* first apply: a stat */
	assert_int_equal(pwrite(fd, "data", 4, 0), 4);
	times_data_after(&f->fs, ino, fd, &before, cached);
	assert_int_equal(fstat(fd, &st), 0);
	assert_true(ts_equal(st.st_mtim, old_mtime));              /* mtime put back */
	assert_false(ts_equal(st.st_ctim, before.st_ctim));        /* the backing's moved */
	assert_true(ts_equal(shown(f, fd).st_ctim, before.st_ctim)); /* the kernel's is shown */
	first = before.st_ctim;

	/* the next apply knows the mtime: no stat, and the kernel's ctime still shows */
	usleep(20000);
	memset(&before, 0, sizeof(before));
	assert_true(times_data_before(&f->fs, ino, fd, &before, &cached));
	assert_true(cached);
	assert_true(ts_equal(before.st_mtim, old_mtime));
	assert_int_equal(pwrite(fd, "more", 4, 4), 4);
	times_data_after(&f->fs, ino, fd, &before, cached);
	assert_int_equal(fstat(fd, &st), 0);
	assert_true(ts_equal(st.st_mtim, old_mtime));
	assert_true(ts_equal(shown(f, fd).st_ctim, first));

	/* the kernel's times applied without a stat: its ctime shows, its mtime is kept */
	usleep(20000);
	tv[1] = kernel;
	assert_int_equal(futimens(fd, tv), 0);
	times_kernel_applied(&f->fs, ino, &kernel, &tv[1]);
	assert_true(ts_equal(shown(f, fd).st_ctim, kernel));
	assert_true(times_data_before(&f->fs, ino, fd, &before, &cached));
	assert_true(cached && ts_equal(before.st_mtim, kernel));
	assert_int_equal(pwrite(fd, "x", 1, 8), 1);
	times_data_after(&f->fs, ino, fd, &before, cached);
	assert_int_equal(fstat(fd, &st), 0);
	assert_true(ts_equal(st.st_mtim, kernel));
	assert_true(ts_equal(shown(f, fd).st_ctim, kernel));

	/* times without the kernel's ctime, or a change drfs does not follow: the backing's */
	times_kernel_applied(&f->fs, ino, NULL, NULL);
	assert_int_equal(fstat(fd, &st), 0);
	assert_true(ts_equal(shown(f, fd).st_ctim, st.st_ctim));
	times_kernel_applied(&f->fs, ino, &kernel, NULL);
	assert_true(ts_equal(shown(f, fd).st_ctim, kernel));
	times_forget(&f->fs, ino);
	assert_true(ts_equal(shown(f, fd).st_ctim, st.st_ctim));

	/*
	 * A pair whose B is stale is written out with B read at unmount, when
	 * the file can be reached (here: it is in the inode table)...
	 */
	assert_int_equal(inode_lookup(&f->fs, f->fs.root, "t", &e), 0);
	times_kernel_applied(&f->fs, ino, &kernel, NULL);
	times_release(&f->fs);
	snprintf(path, sizeof(path), "%s/ctimes", f->dir);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, 20 + 40);
	times_start(&f->fs, true);
	assert_true(ts_equal(shown(f, fd).st_ctim, kernel));
	/* ...and left out when it cannot */
	inode_forget(&f->fs, inode_get(&f->fs, e.ino), 1);
	times_kernel_applied(&f->fs, ino, &kernel, NULL);
	times_release(&f->fs);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, 20);
	times_start(&f->fs, true);
	assert_int_equal(fstat(fd, &st), 0);
	assert_true(ts_equal(shown(f, fd).st_ctim, st.st_ctim));

	/* a SETATTR of the kernel's ctime, applied */
	assert_int_equal(fchmod(fd, 0600), 0);
	assert_int_equal(fstat(fd, &st), 0);
	times_kernel_ctime(&f->fs, (uint64_t)st.st_ino, &kernel, &st, NULL, false);
	assert_true(ts_equal(shown(f, fd).st_ctim, kernel));
	/* the mtime kept for applies: as set, unchanged by a chmod, unknown after a size change */
	times_kernel_ctime(&f->fs, ino, &kernel, &st, &old_mtime, true);
	times_kernel_ctime(&f->fs, ino, &kernel, &st, NULL, false);
	assert_true(times_data_before(&f->fs, ino, fd, &before, &cached));
	assert_true(cached && ts_equal(before.st_mtim, old_mtime));
	times_kernel_ctime(&f->fs, ino, &kernel, &st, NULL, true);
	assert_true(times_data_before(&f->fs, ino, fd, &before, &cached));
	assert_false(cached);
	/* a stale B read through an fd (the kernel forgot the file) */
	times_kernel_applied(&f->fs, ino, &kernel, NULL);
	assert_true(times_stale(&f->fs, ino));
	times_settle(&f->fs, ino, fd);
	assert_false(times_stale(&f->fs, ino));
	assert_true(ts_equal(shown(f, fd).st_ctim, kernel));
	usleep(20000);
	assert_int_equal(fchmod(fd, 0640), 0);      /* a change not followed: B no longer matches */
	assert_int_equal(fstat(fd, &st), 0);
	assert_true(ts_equal(shown(f, fd).st_ctim, st.st_ctim));
	times_kernel_ctime(&f->fs, ino, &kernel, &st, NULL, false);

	/* across a remount */
	times_release(&f->fs);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, 20 + 40);
	times_start(&f->fs, true);
	assert_true(ts_equal(shown(f, fd).st_ctim, kernel));

	/* a change drfs did not account for: the backing ctime again */
	usleep(20000);
	assert_int_equal(fchmod(fd, 0644), 0);
	assert_int_equal(fstat(fd, &st), 0);
	assert_true(ts_equal(shown(f, fd).st_ctim, st.st_ctim));

	/* a damaged file is ignored */
	times_kernel_ctime(&f->fs, (uint64_t)st.st_ino, &kernel, &st, NULL, false);
	times_release(&f->fs);
	int cfd = open(path, O_RDWR);
	assert_true(cfd >= 0);
	assert_int_equal(pwrite(cfd, "X", 1, 30), 1);
	close(cfd);
	times_start(&f->fs, true);
	assert_true(ts_equal(shown(f, fd).st_ctim, st.st_ctim));
	times_release(&f->fs);
	close(fd);
}

/* A fresh journal beside the fixture's tree, started, as f->fs.journal. */
static void start_journal(struct fixture *f, struct journal_config *cfg, char *jdir, size_t len)
{
	snprintf(jdir, len, "%s.journal", f->dir);
	assert_int_equal(journal_create(jdir, 4 << 20, 0), 0);
	cfg->dir = jdir;
	cfg->backing_fd = open(f->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_int_equal(journal_open(cfg, &f->fs.journal, NULL), 0);
	assert_int_equal(journal_start(f->fs.journal), 0);
}

/*
 * A file made by drfs does not inherit the ctime pair of a deleted file
 * whose inode number it got: the pair, stale since the deleted file's last
 * apply, would show that file's ctime for the new one.
 */
static void test_times_reused_number(void **state)
{
	struct fixture *f = *state;
	struct journal_config cfg = { .checkpoint_interval_ms = 100000 };
	const struct timespec kernel = { 1500000000, 42 };
	char jdir[128], dead[160];
	int attempt;

	start_journal(f, &cfg, jdir, sizeof(jdir));
	times_start(&f->fs, true);
	snprintf(dead, sizeof(dead), "%s/dead", f->dir);
	for (attempt = 0; attempt < 50; attempt++) {
		struct mutation c = { .type = MUT_CREATE, .dir = f->fs.root, .name = "born",
				      .mode = 0644, .open_flags = O_RDWR };
		struct stat st, bst;
		int fd = open(dead, O_CREAT | O_RDWR, 0644);
		ssize_t nfd;

		assert_true(fd >= 0);
		assert_int_equal(fstat(fd, &st), 0);
		close(fd);
		times_kernel_applied(&f->fs, (uint64_t)st.st_ino, &kernel, NULL);
		assert_true(times_stale(&f->fs, (uint64_t)st.st_ino));
		assert_int_equal(unlink(dead), 0);
		nfd = fs_mutate(&f->fs, &c);
		assert_true(nfd >= 0);
		assert_int_equal(fstat((int)nfd, &bst), 0);
		if (bst.st_ino == st.st_ino) {
			assert_false(times_stale(&f->fs, (uint64_t)bst.st_ino));
			assert_true(ts_equal(shown(f, (int)nfd).st_ctim, bst.st_ctim));
			close((int)nfd);
			break;
		}
		times_forget(&f->fs, (uint64_t)st.st_ino);
		close((int)nfd);
		snprintf(dead, sizeof(dead), "%s/born", f->dir);
		assert_int_equal(unlink(dead), 0);
		snprintf(dead, sizeof(dead), "%s/dead", f->dir);
	}
	times_release(&f->fs);
	assert_int_equal(journal_close(f->fs.journal), 0);
	f->fs.journal = NULL;
	close(cfg.backing_fd);
	if (attempt == 50)
		skip(); /* the backing filesystem did not reuse the number */
}

/*
 * O_TMPFILE with a journal: nothing is recorded while the file has no name;
 * its first link records CREATE, one WRITE per data extent (the hole left
 * out), its xattr and a SETATTR of size and times; later changes are
 * journaled as for any file.
 */
static void test_tmpfile_first_link(void **state)
{
	struct fixture *f = *state;
	struct journal_config cfg = { .checkpoint_interval_ms = 100000 };
	struct fuse_entry_param e;
	struct jreader *rd;
	struct jrec r;
	char jdir[128], path[160], big[4096];
	struct stat st;
	struct jfid fid;

	start_journal(f, &cfg, jdir, sizeof(jdir));

	struct mutation c = { .type = MUT_TMPFILE, .dir = f->fs.root, .name = "/", .mode = 0600,
			      .open_flags = O_RDWR };
	ssize_t fd = fs_mutate(&f->fs, &c);
	assert_true(fd >= 0);
	assert_int_equal(inode_lookup_anon(&f->fs, (int)fd, &e), 0);
	assert_int_equal(e.attr.st_nlink, 0);
	struct drfs_inode *in = inode_get(&f->fs, e.ino);
	assert_non_null(in);
	assert_true(atomic_load(&in->anon));

	memset(big, 'b', sizeof(big));
	struct mutation w1 = { .type = MUT_WRITE, .node = in, .fd = (int)fd, .offset = 0,
			       .data = big, .size = sizeof(big) };
	struct mutation w2 = { .type = MUT_WRITE, .node = in, .fd = (int)fd, .offset = 4 << 20,
			       .data = "tail", .size = 4 };
	struct mutation x = { .type = MUT_SETXATTR, .node = in, .xname = "user.k", .data = "v",
			      .size = 1 };
	assert_int_equal(fs_mutate(&f->fs, &w1), (ssize_t)sizeof(big));
	assert_int_equal(fs_mutate(&f->fs, &w2), 4);
	assert_int_equal(fs_mutate(&f->fs, &x), 0);
	assert_int_equal(fs_sync(&f->fs, in, false), 0);
	assert_int_equal(journal_head(f->fs.journal), 0);          /* nothing recorded */

	struct mutation ln = { .type = MUT_LINK, .node = in, .dir = f->fs.root, .name = "named" };
	assert_int_equal(fs_mutate(&f->fs, &ln), 0);
	assert_false(atomic_load(&in->anon));
	snprintf(path, sizeof(path), "%s/named", f->dir);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_nlink, 1);
	assert_int_equal(st.st_size, (4 << 20) + 4);
	/* a change after the link is journaled like any other */
	struct mutation w3 = { .type = MUT_WRITE, .node = in, .fd = (int)fd, .offset = 1,
			       .data = "x", .size = 1 };
	assert_int_equal(fs_mutate(&f->fs, &w3), 1);
	assert_int_equal(fs_sync(&f->fs, NULL, false), 0);
	assert_int_equal(atomic_load(&in->data_lsn), journal_head(f->fs.journal));

	fid = fs_fid(&f->fs, in);
	assert_int_equal(jreader_open(jdir, 0, &rd), 0);
	assert_int_equal(jreader_next(rd, &r), 1);
	assert_int_equal(r.type, JR_CREATE);
	assert_int_equal(r.name_len, 5);
	assert_memory_equal(r.name, "named", 5);
	assert_int_equal(r.fid.ino, fid.ino);
	assert_int_equal(r.mode & 07777, 0600);
	assert_int_equal(jreader_next(rd, &r), 1);
	assert_int_equal(r.type, JR_WRITE);
	assert_int_equal(r.offset, 0);
	assert_int_equal(r.data_len, sizeof(big));
	assert_int_equal(jreader_next(rd, &r), 1);
	assert_int_equal(r.type, JR_WRITE);                        /* the hole is skipped */
	assert_true(r.offset > sizeof(big) && r.offset <= 4 << 20);
	assert_int_equal(r.offset + r.data_len, (4 << 20) + 4);
	assert_int_equal(jreader_next(rd, &r), 1);
	assert_int_equal(r.type, JR_SETXATTR);
	assert_memory_equal(r.name, "user.k", 6);
	assert_int_equal(jreader_next(rd, &r), 1);
	assert_int_equal(r.type, JR_SETATTR);
	assert_true(r.mask & JA_SIZE);
	assert_int_equal(r.size, (4 << 20) + 4);
	assert_int_equal(jreader_next(rd, &r), 1);
	assert_int_equal(r.type, JR_WRITE);
	assert_int_equal(r.offset, 1);
	assert_int_equal(jreader_next(rd, &r), 0);
	jreader_close(rd);

	close((int)fd);
	inode_forget(&f->fs, in, 1);
	assert_int_equal(journal_close(f->fs.journal), 0);
	f->fs.journal = NULL;
	close(cfg.backing_fd);
	snprintf(path, sizeof(path), "rm -rf %s", jdir);
	assert_int_equal(system(path), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_lookup_identity, setup, teardown),
		cmocka_unit_test_setup_teardown(test_table_growth, setup, teardown),
		cmocka_unit_test_setup_teardown(test_mutations, setup, teardown),
		cmocka_unit_test_setup_teardown(test_create_rollback, setup, teardown),
		cmocka_unit_test_setup_teardown(test_inode_number_reuse, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reuse_for_fd_entry, setup, teardown),
		cmocka_unit_test_setup_teardown(test_times_kept, setup, teardown),
		cmocka_unit_test_setup_teardown(test_times_reused_number, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tmpfile_first_link, setup, teardown),
	};
	return cmocka_run_group_tests_name("fs", tests, NULL, NULL);
}
