/*
 * crashload - a crash-consistency workload and its checker, for
 * tests/integration/0013-crash.sh.
 *
 *   crashload run DIR LEDGER SEED [OPS]
 *   crashload verify DIR LEDGER
 *   crashload selftest DIR LEDGER
 *
 * "run" creates DIR (which must not exist yet) and changes files in it at
 * random until it is killed, or for OPS operations: writes of 1 byte to
 * 256 KiB at random offsets (files up to 4 MiB, at most 40 files in DIR and
 * up to four subdirectories), creates (one in four with O_TMPFILE: written,
 * sometimes fdatasynced, then linked in), renames (also over another file),
 * unlinks, truncates up and down, fallocates (preallocating, also past the
 * end; punching holes; zeroing ranges), mkdir, closes, stray fsyncs, and rereads
 * checked against its model, which holds every file's full content.  Every
 * 1 to 20 operations comes a durability point: every file touched since the
 * previous one is fsynced or fdatasynced, every directory whose entries may
 * have changed is fsynced, and only when all of that returned 0 does the run
 * append to LEDGER what must now survive a crash.  The first failing call
 * ends the run (exit 3): once the filesystem is gone nothing more is claimed.
 *
 * LEDGER lives on another filesystem.  Every append is one write() followed
 * by fdatasync, so the ledger never claims more than was acknowledged.  One
 * record a line, names relative to DIR:
 *
 *   crashload-ledger 1 seed SEED   the first line
 *   T NAME             NAME (file or directory) is about to be created,
 *                      renamed or removed; durable before the change is made
 *   W NAME             the file NAME is about to be written or truncated;
 *                      durable before the change is made
 *   F NAME SIZE HASH   NAME is a file of SIZE bytes whose content hashes to
 *                      HASH (16 hex digits, see hash_bytes)
 *   D NAME             NAME is a directory
 *   X NAME             NAME does not exist
 *   C SEQ COUNT        commit SEQ (1, 2, ...): the COUNT F/D/X lines just
 *                      before it hold; written together with them
 *
 * A commit has a claim for every name touched since the previous commit; a
 * claim replaces the earlier claims for its name.  LEDGER.d/HASH holds the
 * content of each claimed file, so that verify can name the first differing
 * byte.  Those copies are not synced (verify checks one against its hash
 * before using it), and a copy no longer claimed is removed.
 *
 * "verify" replays LEDGER up to its last complete commit and checks DIR.  A
 * name with a T line after that commit may be absent or present (then it
 * must be readable); a W name must be a readable file; every other claim must
 * hold exactly, and nothing may exist in DIR that the ledger never named.  It
 * prints one line per problem and a summary, and exits 1 when anything is
 * wrong.
 *
 * "selftest" runs a short workload in DIR, damages the result in several ways
 * and checks that verify reports each one, and accepts what is allowed.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FILES 40
#define MAX_DIRS 5			/* DIR itself and d1 .. d4 */
#define MAX_SIZE (4 << 20)		/* largest file */
#define MAX_WRITE (256 << 10)		/* largest single write */
#define MAX_TOTAL (24 << 20)		/* all files together */
#define MAX_INTERVAL 20			/* operations between durability points */
#define MAX_TOUCHED (4 * MAX_INTERVAL)
#define NAME_LEN 32

/* ---- shared ---- */

/* A 64-bit hash of N bytes, eight at a time; the length is mixed in. */
static uint64_t hash_bytes(const unsigned char *p, size_t n)
{
	uint64_t h = 0x243f6a8885a308d3ULL ^ (uint64_t)n, w;
	size_t i;

	for (i = 0; i + 8 <= n; i += 8) {
		memcpy(&w, p + i, 8);
		h = (h ^ w) * 0x9e3779b97f4a7c15ULL;
		h ^= h >> 31;
	}
	w = 0;
	if (n > i)
		memcpy(&w, p + i, n - i);
	h = (h ^ w ^ (n - i)) * 0xff51afd7ed558ccdULL;
	return h ^ (h >> 33);
}

/* Reads the whole file NAME under DIRFD; 0, or an errno value. */
static int read_all(int dirfd, const char *name, unsigned char **buf, size_t *len)
{
	size_t cap, n = 0;
	struct stat st;
	ssize_t got;
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC), err = 0;

	*buf = NULL;
	if (fd < 0)
		return errno;
	if (fstat(fd, &st) < 0)
		err = errno;
	else if (!S_ISREG(st.st_mode))
		err = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
	if (err) {
		close(fd);
		return err;
	}
	cap = (size_t)st.st_size + 1;
	*buf = malloc(cap);
	while (*buf && (got = read(fd, *buf + n, cap - n)) != 0) {
		if (got < 0) {
			err = errno;
			break;
		}
		n += (size_t)got;
		if (n == cap)
			*buf = realloc(*buf, cap *= 2);
	}
	if (!*buf)
		err = ENOMEM;
	close(fd);
	*len = n;
	if (err) {
		free(*buf);
		*buf = NULL;
	}
	return err;
}

/* The ledger's directory of content copies: LEDGER.d. */
static char *blob_dir(const char *ledger)
{
	size_t n = strlen(ledger) + 3;
	char *p = malloc(n);

	if (p)
		snprintf(p, n, "%s.d", ledger);
	return p;
}

/* ---- run ---- */

struct file {
	char name[NAME_LEN];	/* relative to DIR: "f12" or "d2/f12" */
	unsigned char *data;	/* what the file holds */
	size_t size, cap;
	int fd;			/* open read-write, or -1 */
	uint64_t claimed;	/* hash in the last claim, to keep its copy */
};

struct touch {
	char name[NAME_LEN];
	char level;		/* 'W' data only, 'T' the name itself */
};

struct run {
	int dir, ledger, blobs;	/* DIR, LEDGER (append), LEDGER.d */
	uint64_t rng;
	struct file files[MAX_FILES];
	int nfiles;
	char dirs[MAX_DIRS][NAME_LEN];	/* dirs[0] is "", DIR itself */
	int ndirs;
	struct touch touched[MAX_TOUCHED];	/* since the last commit */
	int ntouched;
	uint64_t *blobs_kept;	/* content copies in LEDGER.d */
	size_t nblobs, blobcap;
	unsigned long next_name, commits, ops;
	size_t total;		/* bytes in all files */
};

/* A call failed: nothing more may be claimed, so the run ends here. */
static void stop(const char *what, const char *name)
{
	fprintf(stderr, "crashload: run stopped: %s %s: %s\n", what, name, strerror(errno));
	exit(3);
}

/* splitmix64 */
static uint64_t rnd64(struct run *r)
{
	uint64_t z = (r->rng += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static size_t rnd(struct run *r, size_t n)
{
	return n ? (size_t)(rnd64(r) % n) : 0;
}

/* A length from 1 to MAX_WRITE, small ones as likely as large scales. */
static size_t rnd_len(struct run *r)
{
	return 1 + rnd(r, (size_t)1 << rnd(r, 19));
}

static void fill_random(struct run *r, unsigned char *p, size_t n)
{
	uint64_t w;

	for (size_t i = 0; i < n; i += 8) {
		w = rnd64(r);
		memcpy(p + i, &w, n - i < 8 ? n - i : 8);
	}
}

static void ledger_append(struct run *r, const char *buf, size_t len)
{
	errno = EIO;
	if (write(r->ledger, buf, len) != (ssize_t)len || fdatasync(r->ledger) < 0)
		stop("append to", "the ledger");
}

static struct file *file_named(struct run *r, const char *name)
{
	for (int i = 0; i < r->nfiles; i++)
		if (!strcmp(r->files[i].name, name))
			return &r->files[i];
	return NULL;
}

static bool is_dir(struct run *r, const char *name)
{
	for (int i = 0; i < r->ndirs; i++)
		if (!strcmp(r->dirs[i], name))
			return true;
	return false;
}

static int file_fd(struct file *f, struct run *r)
{
	if (f->fd < 0) {
		f->fd = openat(r->dir, f->name, O_RDWR | O_CLOEXEC);
		if (f->fd < 0)
			stop("open", f->name);
	}
	return f->fd;
}

/* Removes F from the model (its name is gone); F's slot is reused. */
static void file_forget(struct run *r, struct file *f)
{
	if (f->fd >= 0)
		close(f->fd);
	r->total -= f->size;
	free(f->data);
	*f = r->files[--r->nfiles];
}

/* Sets the model's size of F, zero-filling a new tail. */
static void file_resize(struct run *r, struct file *f, size_t size)
{
	if (size > f->cap) {
		f->cap = size + size / 2 > MAX_SIZE ? MAX_SIZE : size + size / 2;
		f->data = realloc(f->data, f->cap);
		if (!f->data) {
			fprintf(stderr, "crashload: out of memory\n");
			exit(2);
		}
	}
	if (size > f->size)
		memset(f->data + f->size, 0, size - f->size);
	r->total = r->total - f->size + size;
	f->size = size;
}

static struct touch *touch_of(struct run *r, const char *name)
{
	for (int i = 0; i < r->ntouched; i++)
		if (!strcmp(r->touched[i].name, name))
			return &r->touched[i];
	return NULL;
}

/*
 * NAME (and NAME2 unless NULL) are about to change, at LEVEL 'W' (data) or
 * 'T' (name): the ledger says so durably before the change is made, once
 * per name and level between two commits.
 */
static void touch(struct run *r, char level, const char *name, const char *name2)
{
	const char *names[2] = { name, name2 };
	char buf[2 * (NAME_LEN + 4)];
	size_t len = 0;

	for (int i = 0; i < 2 && names[i]; i++) {
		struct touch *t = touch_of(r, names[i]);

		if (t && (t->level == 'T' || t->level == level))
			continue;
		if (!t) {
			t = &r->touched[r->ntouched++];
			snprintf(t->name, sizeof(t->name), "%s", names[i]);
		}
		t->level = level;
		len += (size_t)snprintf(buf + len, sizeof(buf) - len, "%c %s\n", level, names[i]);
	}
	if (len)
		ledger_append(r, buf, len);
}

/* A fresh file name in a random directory. */
static void new_name(struct run *r, char *name)
{
	const char *d = r->dirs[rnd(r, (size_t)r->ndirs)];

	snprintf(name, NAME_LEN, "%s%sf%lu", d, *d ? "/" : "", r->next_name++);
}

static struct file *any_file(struct run *r)
{
	return &r->files[rnd(r, (size_t)r->nfiles)];
}

/* Writes LEN random bytes at OFF into F and the model, claiming nothing. */
static void put_bytes(struct run *r, struct file *f, size_t off, size_t len)
{
	if (off + len > f->size)
		file_resize(r, f, off + len);
	fill_random(r, f->data + off, len);
	errno = EIO;
	if (pwrite(file_fd(f, r), f->data + off, len, (off_t)off) != (ssize_t)len)
		stop("pwrite", f->name);
}

/* Writes LEN random bytes at OFF into F (the caller keeps to the limits). */
static void write_at(struct run *r, struct file *f, size_t off, size_t len)
{
	touch(r, 'W', f->name, NULL);
	put_bytes(r, f, off, len);
}

static void op_truncate(struct run *r, struct file *f, size_t size)
{
	touch(r, 'W', f->name, NULL);
	if (size == 0 && rnd(r, 2)) {
		int fd = openat(r->dir, f->name, O_WRONLY | O_TRUNC | O_CLOEXEC);

		if (fd < 0)
			stop("open O_TRUNC", f->name);
		close(fd);
	} else if (ftruncate(file_fd(f, r), (off_t)size) < 0) {
		stop("ftruncate", f->name);
	}
	file_resize(r, f, size);
}

/* A write inside, at the end of or past the end of a file, or a truncate when full. */
static void op_write(struct run *r)
{
	struct file *f = any_file(r);
	size_t len = rnd_len(r), off;

	switch (rnd(r, 10)) {
	case 0: off = rnd(r, MAX_SIZE); break;
	case 1: case 2: off = f->size; break;
	default: off = rnd(r, f->size + 1); break;
	}
	if (off > MAX_SIZE - 1)
		off = MAX_SIZE - 1;
	if (off + len > MAX_SIZE)
		len = MAX_SIZE - off;
	if (off + len > f->size && r->total + (off + len - f->size) > MAX_TOTAL)
		op_truncate(r, f, rnd(r, f->size / 2 + 1));
	else
		write_at(r, f, off, len);
}

static void op_resize(struct run *r)
{
	struct file *f = any_file(r);
	size_t size = rnd(r, 2) ? rnd(r, f->size + 1) : f->size + rnd_len(r);

	if (size > MAX_SIZE || (size > f->size && r->total + (size - f->size) > MAX_TOTAL))
		size = f->size / 2;
	op_truncate(r, f, rnd(r, 8) ? size : 0);
}

/* A fallocate: preallocate (maybe past the end), punch a hole or zero a range. */
static void op_fallocate(struct run *r)
{
	static const int modes[] = { 0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				     FALLOC_FL_ZERO_RANGE };
	struct file *f = any_file(r);
	int mode = modes[rnd(r, 4)];
	size_t off = rnd(r, f->size + 1), len = rnd_len(r), end;

	if (off + len > MAX_SIZE)
		len = MAX_SIZE - off;
	if (!len)
		return;
	end = off + len;
	if (!(mode & FALLOC_FL_KEEP_SIZE) && end > f->size && r->total + (end - f->size) > MAX_TOTAL) {
		op_resize(r);
		return;
	}
	touch(r, 'W', f->name, NULL);
	if (fallocate(file_fd(f, r), mode, (off_t)off, (off_t)len) < 0)
		stop("fallocate", f->name);
	if (!(mode & FALLOC_FL_KEEP_SIZE) && end > f->size)
		file_resize(r, f, end);
	if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE) && off < f->size)
		memset(f->data + off, 0, (end < f->size ? end : f->size) - off);
}

/*
 * A new file under a new name in a random directory.  TMPFILE: made with
 * O_TMPFILE, written while it has no name (nothing claimed), sometimes
 * fdatasynced, then linked in; from the link on it is like any other file.
 */
static void op_create(struct run *r, bool tmpfile)
{
	char name[NAME_LEN], dir[NAME_LEN], *slash;
	struct file *f;
	int fd;

	if (r->nfiles == MAX_FILES) {
		op_resize(r);
		return;
	}
	new_name(r, name);
	if (tmpfile) {
		snprintf(dir, sizeof(dir), "%s", name);
		slash = strrchr(dir, '/');
		if (slash)
			*slash = 0;
		else
			snprintf(dir, sizeof(dir), ".");
		fd = openat(r->dir, dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0644);
	} else {
		touch(r, 'T', name, NULL);
		fd = openat(r->dir, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	}
	if (fd < 0)
		stop(tmpfile ? "open O_TMPFILE for" : "create", name);
	f = &r->files[r->nfiles++];
	memset(f, 0, sizeof(*f));
	snprintf(f->name, sizeof(f->name), "%s", name);
	f->fd = fd;
	if (rnd(r, 4) && r->total + MAX_WRITE <= MAX_TOTAL)
		(tmpfile ? put_bytes : write_at)(r, f, 0, rnd_len(r));
	if (!tmpfile)
		return;
	if (rnd(r, 2) && fdatasync(fd) < 0)
		stop("fdatasync O_TMPFILE for", name);
	touch(r, 'T', name, NULL);
	if (linkat(fd, "", r->dir, name, AT_EMPTY_PATH) < 0)
		stop("linkat O_TMPFILE as", name);
}

/* Renames a file to a new name or over another file. */
static void op_rename(struct run *r)
{
	struct file *f = any_file(r), *victim = NULL;
	char to[NAME_LEN];

	if (r->nfiles > 1 && rnd(r, 2)) {
		while ((victim = any_file(r)) == f)
			;
		snprintf(to, sizeof(to), "%s", victim->name);
	} else {
		new_name(r, to);
	}
	touch(r, 'T', f->name, to);
	if (renameat(r->dir, f->name, r->dir, to) < 0)
		stop("rename", f->name);
	snprintf(f->name, sizeof(f->name), "%s", to);
	if (victim)
		file_forget(r, victim);
}

static void op_unlink(struct run *r)
{
	struct file *f = any_file(r);

	touch(r, 'T', f->name, NULL);
	if (unlinkat(r->dir, f->name, 0) < 0)
		stop("unlink", f->name);
	file_forget(r, f);
}

static void op_mkdir(struct run *r)
{
	char *name = r->dirs[r->ndirs];

	if (r->ndirs == MAX_DIRS) {
		op_create(r, false);
		return;
	}
	snprintf(name, NAME_LEN, "d%d", r->ndirs);
	touch(r, 'T', name, NULL);
	if (mkdirat(r->dir, name, 0755) < 0)
		stop("mkdir", name);
	r->ndirs++;
}

/* Reads part of a file back; a difference is a bug without any crash. */
static void op_reread(struct run *r)
{
	struct file *f = any_file(r);
	size_t off = rnd(r, f->size + 1), len = rnd_len(r);
	unsigned char *buf;
	struct stat st;

	if (len > f->size - off)
		len = f->size - off;
	buf = malloc(len + 1);
	errno = EIO;
	if (!buf || pread(file_fd(f, r), buf, len, (off_t)off) != (ssize_t)len)
		stop("pread", f->name);
	if (fstat(f->fd, &st) < 0)
		stop("fstat", f->name);
	for (size_t i = 0; i < len; i++)
		if (buf[i] != f->data[off + i]) {
			printf("crashload: MISMATCH without a crash: %s byte %zu reads %#x, wrote %#x\n",
			       f->name, off + i, buf[i], f->data[off + i]);
			exit(1);
		}
	if ((size_t)st.st_size != f->size) {
		printf("crashload: MISMATCH without a crash: %s has size %lld, expected %zu\n",
		       f->name, (long long)st.st_size, f->size);
		exit(1);
	}
	free(buf);
}

static void op_close(struct run *r)
{
	struct file *f = any_file(r);

	if (f->fd >= 0)
		close(f->fd);
	f->fd = -1;
}

static void sync_dir(struct run *r, const char *name)
{
	int fd = *name ? openat(r->dir, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : r->dir;

	if (fd < 0 || fsync(fd) < 0)
		stop("fsync directory", *name ? name : ".");
	if (fd != r->dir)
		close(fd);
}

/* An fsync that no claim follows. */
static void op_stray_sync(struct run *r)
{
	struct file *f = any_file(r);

	if (rnd(r, 2)) {
		sync_dir(r, r->dirs[rnd(r, (size_t)r->ndirs)]);
	} else if (fdatasync(file_fd(f, r)) < 0) {
		stop("fdatasync", f->name);
	}
}

/* One random operation; creates keep up with removals until 20 files exist. */
static void step(struct run *r)
{
	size_t k = rnd(r, 100);

	r->ops++;
	if (r->nfiles == 0 || rnd(r, r->nfiles < 20 ? 5 : 12) == 0)
		op_create(r, rnd(r, 4) == 0);
	else if (k < 45)
		op_write(r);
	else if (k < 51)
		op_resize(r);
	else if (k < 55)
		op_fallocate(r);
	else if (k < 64)
		op_rename(r);
	else if (k < 70)
		op_unlink(r);
	else if (k < 72)
		op_mkdir(r);
	else if (k < 84)
		op_reread(r);
	else if (k < 92)
		op_close(r);
	else
		op_stray_sync(r);
}

/* Index in r->dirs of the directory holding NAME. */
static int parent_of(struct run *r, const char *name)
{
	const char *slash = strrchr(name, '/');
	size_t n = slash ? (size_t)(slash - name) : 0;

	for (int i = 0; i < r->ndirs; i++)
		if (strlen(r->dirs[i]) == n && !strncmp(r->dirs[i], name, n))
			return i;
	return 0;
}

/* Makes every touched file and every directory a touched name lives in durable. */
static void sync_touched(struct run *r)
{
	bool parents[MAX_DIRS] = { false };
	int start = (int)rnd(r, (size_t)r->ntouched + 1);

	for (int k = 0; k < r->ntouched; k++) {
		struct touch *t = &r->touched[(start + k) % r->ntouched];
		struct file *f = file_named(r, t->name);
		bool data_only = rnd(r, 2);

		if (f && (data_only ? fdatasync(file_fd(f, r)) : fsync(file_fd(f, r))) < 0)
			stop(data_only ? "fdatasync" : "fsync", f->name);
		if (!f && is_dir(r, t->name))
			sync_dir(r, t->name);
		if (t->level == 'T')
			parents[parent_of(r, t->name)] = true;
	}
	for (int i = MAX_DIRS - 1; i >= 0; i--)
		if (parents[i])
			sync_dir(r, r->dirs[i]);
}

/* Keeps a copy of F's content in LEDGER.d, named by its hash. */
static void keep_blob(struct run *r, uint64_t h, const struct file *f)
{
	char name[24], tmp[32];
	int fd;

	for (size_t i = 0; i < r->nblobs; i++)
		if (r->blobs_kept[i] == h)
			return;
	snprintf(name, sizeof(name), "%016" PRIx64, h);
	snprintf(tmp, sizeof(tmp), "%s.tmp", name);
	fd = openat(r->blobs, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	errno = EIO;
	if (fd < 0 || write(fd, f->data, f->size) != (ssize_t)f->size || close(fd) < 0 ||
	    renameat(r->blobs, tmp, r->blobs, name) < 0)
		stop("write content copy", name);
	if (r->nblobs == r->blobcap) {
		r->blobcap = r->blobcap ? 2 * r->blobcap : 64;
		r->blobs_kept = realloc(r->blobs_kept, r->blobcap * sizeof(*r->blobs_kept));
	}
	r->blobs_kept[r->nblobs++] = h;
}

/* After a commit: removes the copies no claim names any more. */
static void drop_blobs(struct run *r)
{
	char name[24];

	for (size_t i = 0; i < r->nblobs; i++) {
		bool used = false;

		for (int j = 0; j < r->nfiles && !used; j++)
			used = r->files[j].claimed == r->blobs_kept[i];
		if (used)
			continue;
		snprintf(name, sizeof(name), "%016" PRIx64, r->blobs_kept[i]);
		unlinkat(r->blobs, name, 0);
		r->blobs_kept[i--] = r->blobs_kept[--r->nblobs];
	}
}

/* The claim for one touched name, appended to BUF at LEN. */
static size_t claim(struct run *r, const char *name, char *buf, size_t len, size_t cap)
{
	struct file *f = file_named(r, name);

	if (!f)
		return (size_t)snprintf(buf + len, cap - len, "%c %s\n", is_dir(r, name) ? 'D' : 'X', name);
	f->claimed = hash_bytes(f->data, f->size);
	keep_blob(r, f->claimed, f);
	return (size_t)snprintf(buf + len, cap - len, "F %s %zu %016" PRIx64 "\n", name, f->size,
				f->claimed);
}

/* A durability point: sync what changed, then claim it in one ledger append. */
static void commit(struct run *r)
{
	size_t cap = (size_t)(r->ntouched + 1) * (NAME_LEN + 48), len = 0;
	char *buf = malloc(cap);

	if (!buf)
		exit(2);
	sync_touched(r);
	for (int i = 0; i < r->ntouched; i++)
		len += claim(r, r->touched[i].name, buf, len, cap);
	len += (size_t)snprintf(buf + len, cap - len, "C %lu %d\n", ++r->commits, r->ntouched);
	ledger_append(r, buf, len);
	r->ntouched = 0;
	free(buf);
	drop_blobs(r);
}

/* fsync of the directory that holds PATH. */
static void sync_parent(const char *path)
{
	char *copy = strdup(path), *slash = copy ? strrchr(copy, '/') : NULL;
	int fd;

	if (slash)
		*slash = 0;
	fd = open(!slash ? "." : slash == copy ? "/" : copy, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || fsync(fd) < 0)
		stop("fsync the directory of", path);
	close(fd);
	free(copy);
}

/* The ledger first, then DIR: a ledger exists for every DIR. */
static void start(struct run *r, const char *dir, const char *ledger, const char *seed)
{
	char *bd = blob_dir(ledger), head[64];
	int n;

	r->ledger = open(ledger, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0644);
	if (r->ledger < 0)
		stop("create ledger", ledger);
	if (!bd || mkdir(bd, 0755) < 0 || (r->blobs = open(bd, O_RDONLY | O_DIRECTORY)) < 0)
		stop("mkdir", bd ? bd : "LEDGER.d");
	sync_parent(ledger);
	n = snprintf(head, sizeof(head), "crashload-ledger 1 seed %s\n", seed);
	ledger_append(r, head, (size_t)n);
	if (mkdir(dir, 0755) < 0)
		stop("mkdir", dir);
	sync_parent(dir);
	r->dir = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (r->dir < 0)
		stop("open", dir);
	r->ndirs = 1;
	r->rng = strtoull(seed, NULL, 0) * 0x9e3779b97f4a7c15ULL + 1;
	free(bd);
}

/* Runs until killed, or for OPS operations (> 0) ending with a commit. */
static void workload(const char *dir, const char *ledger, const char *seed, unsigned long ops)
{
	struct run *r = calloc(1, sizeof(*r));

	if (!r)
		exit(2);
	start(r, dir, ledger, seed);
	while (!ops || r->ops < ops) {
		for (size_t n = 1 + rnd(r, MAX_INTERVAL); n > 0 && (!ops || r->ops < ops); n--)
			step(r);
		commit(r);
	}
	printf("crashload: %lu operations, %lu commits\n", r->ops, r->commits);
	for (int i = 0; i < r->nfiles; i++) {
		if (r->files[i].fd >= 0)
			close(r->files[i].fd);
		free(r->files[i].data);
	}
	close(r->dir);
	close(r->ledger);
	close(r->blobs);
	free(r->blobs_kept);
	free(r);
}

/* ---- verify ---- */

struct entry {
	struct entry *next;	/* in its hash chain */
	char state;		/* 'F', 'D', 'X' at the last commit, or 0 */
	char touch;		/* 'W' or 'T' since, or 0 */
	uint64_t size, hash;
	char name[];
};

struct claim {
	struct entry *e;
	char state;
	uint64_t size, hash;
};

#define BUCKETS 4096

struct verify {
	struct entry *bucket[BUCKETS];
	struct claim *pending;	/* claims since the last C line */
	size_t npending, cap;
	int dir, blobs;		/* DIR and LEDGER.d, or -1 */
	bool quiet;
	unsigned long problems, commits, files, absent, dirs, skipped;
};

static void problem(struct verify *v, const char *fmt, ...)
{
	va_list ap;

	v->problems++;
	if (v->quiet)
		return;
	va_start(ap, fmt);
	fputs("crashload: ", stdout);
	vprintf(fmt, ap);
	putchar('\n');
	va_end(ap);
}

static struct entry *lookup(struct verify *v, const char *name, bool add)
{
	size_t h = (size_t)hash_bytes((const unsigned char *)name, strlen(name)) % BUCKETS;
	struct entry *e;

	for (e = v->bucket[h]; e; e = e->next)
		if (!strcmp(e->name, name))
			return e;
	if (!add)
		return NULL;
	e = calloc(1, sizeof(*e) + strlen(name) + 1);
	if (!e)
		exit(2);
	strcpy(e->name, name);
	e->next = v->bucket[h];
	v->bucket[h] = e;
	return e;
}

/* A C line: applies the claims since the previous one, if they are all there. */
static bool apply_commit(struct verify *v, const char *args, unsigned long lineno)
{
	unsigned long seq;
	size_t count;

	if (sscanf(args, "%lu %zu", &seq, &count) != 2 || seq != v->commits + 1 ||
	    count != v->npending) {
		problem(v, "BAD LEDGER: line %lu: commit '%s' does not follow commit %lu with %zu claims",
			lineno, args, v->commits, v->npending);
		return false;
	}
	for (size_t i = 0; i < v->npending; i++) {
		struct claim *c = &v->pending[i];

		c->e->state = c->state;
		c->e->size = c->size;
		c->e->hash = c->hash;
		c->e->touch = 0;
	}
	v->npending = 0;
	v->commits = seq;
	return true;
}

static bool add_claim(struct verify *v, char kind, char *args)
{
	char *name = strtok(args, " ");
	char *size = strtok(NULL, " "), *hash = strtok(NULL, " ");
	struct claim c = { .state = kind };

	if (!name || (kind == 'F' && (!size || !hash)))
		return false;
	if (kind == 'F') {
		c.size = strtoull(size, NULL, 10);
		c.hash = strtoull(hash, NULL, 16);
	}
	c.e = lookup(v, name, true);
	if (v->npending == v->cap) {
		v->cap = v->cap ? 2 * v->cap : 64;
		v->pending = realloc(v->pending, v->cap * sizeof(*v->pending));
		if (!v->pending)
			exit(2);
	}
	v->pending[v->npending++] = c;
	return true;
}

/* One complete ledger line; false ends the replay. */
static bool replay_line(struct verify *v, char *line, unsigned long lineno)
{
	char kind = line[0];
	struct entry *e;

	if (lineno == 1) {
		if (!strncmp(line, "crashload-ledger 1 ", 19))
			return true;
		problem(v, "BAD LEDGER: it does not start with 'crashload-ledger 1'");
		return false;
	}
	if (!kind || line[1] != ' ' || !line[2])
		kind = '?';
	switch (kind) {
	case 'T': case 'W':
		e = lookup(v, line + 2, true);
		if (e->touch != 'T')
			e->touch = kind;
		return true;
	case 'F': case 'D': case 'X':
		if (add_claim(v, kind, line + 2))
			return true;
		break;
	case 'C':
		return apply_commit(v, line + 2, lineno);
	}
	problem(v, "BAD LEDGER: line %lu: '%s'", lineno, line);
	return false;
}

/* Replays LEDGER up to its last complete commit; a torn last line is ignored. */
static int replay(struct verify *v, const char *ledger)
{
	unsigned char *text;
	char *line, *nl;
	size_t len;
	unsigned long lineno = 0;
	int err = read_all(AT_FDCWD, ledger, &text, &len);

	if (err) {
		fprintf(stderr, "crashload: cannot read ledger %s: %s\n", ledger, strerror(err));
		return -1;
	}
	text[len] = 0;
	for (line = (char *)text; (nl = strchr(line, '\n')); line = nl + 1) {
		*nl = 0;
		if (!replay_line(v, line, ++lineno))
			break;
	}
	free(text);
	return 0;
}

/* Where NAME first differs from the copy of HASH in LEDGER.d, as text. */
static void first_difference(struct verify *v, struct entry *e, const unsigned char *got,
			     size_t len, char *out, size_t cap)
{
	char name[24];
	unsigned char *want = NULL;
	size_t wlen = 0, i;

	snprintf(name, sizeof(name), "%016" PRIx64, e->hash);
	if (v->blobs < 0 || read_all(v->blobs, name, &want, &wlen) || wlen != e->size ||
	    hash_bytes(want, wlen) != e->hash) {
		snprintf(out, cap, "first difference unknown (no copy of the claimed content)");
		free(want);
		return;
	}
	for (i = 0; i < len && i < wlen && got[i] == want[i]; i++)
		;
	if (i == len && i == wlen)
		snprintf(out, cap, "identical to the copy");
	else
		snprintf(out, cap, "first difference at byte %zu", i);
	free(want);
}

static void check_file(struct verify *v, struct entry *e)
{
	unsigned char *got;
	size_t len = 0;
	int err = v->dir < 0 ? ENOENT : read_all(v->dir, e->name, &got, &len);
	char diff[96];
	uint64_t h;

	v->files++;
	if (err) {
		problem(v, "LOST: %s: expected size %" PRIu64 " hash %016" PRIx64 ", found %s (%s)",
			e->name, e->size, e->hash, err == ENOENT ? "nothing" : "no readable file",
			strerror(err));
		return;
	}
	h = hash_bytes(got, len);
	if (len != e->size || h != e->hash) {
		first_difference(v, e, got, len, diff, sizeof(diff));
		problem(v, "LOST: %s: expected size %" PRIu64 " hash %016" PRIx64
			", found size %zu hash %016" PRIx64 ", %s", e->name, e->size, e->hash, len, h, diff);
	} else {
		first_difference(v, e, got, len, diff, sizeof(diff));
		if (strcmp(diff, "identical to the copy") && strncmp(diff, "first difference unknown", 24))
			problem(v, "LOST: %s: hash matches but content differs from the copy, %s",
				e->name, diff);
	}
	free(got);
}

static void check_entry(struct verify *v, struct entry *e)
{
	struct stat st;
	unsigned char *buf;
	size_t len;
	int err;
	bool there = v->dir >= 0 && fstatat(v->dir, e->name, &st, AT_SYMLINK_NOFOLLOW) == 0;

	if (e->touch) {
		v->skipped++;
		if (there && S_ISDIR(st.st_mode) && e->touch == 'T')
			return;
		err = v->dir < 0 ? ENOENT : read_all(v->dir, e->name, &buf, &len);
		if (err && !(e->touch == 'T' && err == ENOENT))
			problem(v, "UNREADABLE: %s (changed after the last commit): %s", e->name,
				strerror(err));
		if (!err)
			free(buf);
	} else if (e->state == 'F') {
		check_file(v, e);
	} else if (e->state == 'X') {
		v->absent++;
		if (there)
			problem(v, "EXTRA: %s should not exist", e->name);
	} else if (e->state == 'D') {
		v->dirs++;
		if (!there || !S_ISDIR(st.st_mode))
			problem(v, "LOST: %s: expected a directory, found %s", e->name,
				there ? "something else" : "nothing");
	}
}

static bool is_directory(int dirfd, const char *name)
{
	struct stat st;

	return fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
}

/* Every entry under DIR must be a name the ledger knows. */
static void walk(struct verify *v, int dirfd, const char *prefix)
{
	int fd = openat(dirfd, prefix[0] ? prefix : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;
	char name[512];

	if (!d) {
		problem(v, "UNREADABLE: directory '%s': %s", prefix[0] ? prefix : ".", strerror(errno));
		if (fd >= 0)
			close(fd);
		return;
	}
	while ((errno = 0, de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		snprintf(name, sizeof(name), "%s%s%s", prefix, prefix[0] ? "/" : "", de->d_name);
		if (!lookup(v, name, false))
			problem(v, "EXTRA: %s should not exist (the ledger never names it)", name);
		else if (de->d_type == DT_DIR || (de->d_type == DT_UNKNOWN && is_directory(dirfd, name)))
			walk(v, dirfd, name);
	}
	if (errno)
		problem(v, "UNREADABLE: directory '%s': %s", prefix[0] ? prefix : ".", strerror(errno));
	closedir(d);
}

static void verify_free(struct verify *v)
{
	for (int i = 0; i < BUCKETS; i++)
		while (v->bucket[i]) {
			struct entry *e = v->bucket[i];

			v->bucket[i] = e->next;
			free(e);
		}
	free(v->pending);
	if (v->dir >= 0)
		close(v->dir);
	if (v->blobs >= 0)
		close(v->blobs);
}

/* Checks DIR against LEDGER into V (the caller frees it); -1 if LEDGER cannot be read. */
static int verify_into(struct verify *v, const char *dir, const char *ledger)
{
	char *bd = blob_dir(ledger);

	v->dir = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (v->dir < 0 && errno != ENOENT)
		problem(v, "UNREADABLE: %s: %s", dir, strerror(errno));
	v->blobs = bd ? open(bd, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
	free(bd);
	if (replay(v, ledger) < 0)
		return -1;
	for (int i = 0; i < BUCKETS; i++)
		for (struct entry *e = v->bucket[i]; e; e = e->next)
			check_entry(v, e);
	if (v->dir >= 0)
		walk(v, v->dir, "");
	return 0;
}

static int cmd_verify(const char *dir, const char *ledger)
{
	struct verify *v = calloc(1, sizeof(*v));
	int ret;

	if (!v || verify_into(v, dir, ledger) < 0)
		return 2;
	printf("crashload: verified %lu files, %lu absent names, %lu touched-after-commit skipped"
	       " (%lu directories, %lu commits, %lu problems)\n",
	       v->files, v->absent, v->skipped, v->dirs, v->commits, v->problems);
	ret = v->problems ? 1 : 0;
	verify_free(v);
	free(v);
	return ret;
}

/* ---- selftest ---- */

/* Problems verify finds now; QUIET when some are expected. */
static unsigned long problems(const char *dir, const char *ledger, bool quiet)
{
	struct verify *v = calloc(1, sizeof(*v));
	unsigned long n;

	if (!v)
		exit(2);
	v->quiet = quiet;
	n = verify_into(v, dir, ledger) < 0 ? 1000 : v->problems;
	verify_free(v);
	free(v);
	return n;
}

/* A claim of STATE from LEDGER, file claims with at least 2 bytes; NAME gets its name. */
static bool pick_claim(const char *dir, const char *ledger, char state, char *name)
{
	struct verify *v = calloc(1, sizeof(*v));
	bool found = false;

	if (!v)
		exit(2);
	v->quiet = true;
	if (verify_into(v, dir, ledger) < 0)
		exit(2);
	for (int i = 0; i < BUCKETS && !found; i++)
		for (struct entry *e = v->bucket[i]; e && !found; e = e->next)
			if (e->state == state && !e->touch && (state != 'F' || e->size >= 2)) {
				snprintf(name, NAME_LEN, "%s", e->name);
				found = true;
			}
	verify_free(v);
	free(v);
	return found;
}

static int selftest_fails;

static void expect(bool ok, const char *what)
{
	if (!ok) {
		printf("crashload: selftest FAILED: %s\n", what);
		selftest_fails++;
	}
}

static void append_line(const char *ledger, const char *kind, const char *name)
{
	FILE *f = fopen(ledger, "a");

	if (!f || fprintf(f, "%s %s\n", kind, name) < 0 || fclose(f))
		exit(2);
}

/* Flips one byte of NAME, then cuts its last byte, each undone after the check. */
static void damage_content(int dfd, const char *dir, const char *ledger, const char *name)
{
	int fd = openat(dfd, name, O_RDWR);
	off_t size = fd >= 0 ? lseek(fd, 0, SEEK_END) : -1;
	unsigned char b, last;

	if (size < 2 || pread(fd, &b, 1, size / 2) != 1 || pread(fd, &last, 1, size - 1) != 1)
		exit(2);
	b ^= 0x40;
	if (pwrite(fd, &b, 1, size / 2) != 1)
		exit(2);
	expect(problems(dir, ledger, true) == 1, "a flipped byte is reported");
	b ^= 0x40;
	if (pwrite(fd, &b, 1, size / 2) != 1 || ftruncate(fd, size - 1) < 0)
		exit(2);
	expect(problems(dir, ledger, true) == 1, "a file one byte short is reported");
	if (pwrite(fd, &last, 1, size - 1) != 1)
		exit(2);
	close(fd);
	expect(problems(dir, ledger, false) == 0, "the repaired file verifies");
}

/* Moves NAME away, creates a stray file and a name claimed absent. */
static void damage_names(int dfd, const char *dir, const char *ledger, const char *name)
{
	char absent[NAME_LEN];

	if (renameat(dfd, name, dfd, "moved-away") < 0)
		exit(2);
	expect(problems(dir, ledger, true) == 2, "a missing file and an unknown name are reported");
	if (renameat(dfd, "moved-away", dfd, name) < 0)
		exit(2);
	if (pick_claim(dir, ledger, 'X', absent)) {
		int fd = openat(dfd, absent, O_WRONLY | O_CREAT, 0644);

		close(fd);
		expect(problems(dir, ledger, true) == 1, "a name claimed absent is reported");
		unlinkat(dfd, absent, 0);
	}
	expect(problems(dir, ledger, false) == 0, "the repaired tree verifies");
}

/* Changes after the last commit: W allows other content, T allows absence. */
static void allowed_changes(int dfd, const char *dir, const char *ledger, const char *name)
{
	int fd = openat(dfd, name, O_WRONLY);

	append_line(ledger, "W", name);
	if (fd < 0 || pwrite(fd, "x", 1, 0) != 1 || ftruncate(fd, 1) < 0)
		exit(2);
	close(fd);
	expect(problems(dir, ledger, false) == 0, "a file written after the last commit may differ");
	unlinkat(dfd, name, 0);
	expect(problems(dir, ledger, true) == 1, "a file written after the last commit must exist");
	append_line(ledger, "T", name);
	expect(problems(dir, ledger, false) == 0, "a name changed after the last commit may be gone");
	append_line(ledger, "F", "never-committed 1 0");
	expect(problems(dir, ledger, false) == 0, "a claim without its commit line is not trusted");
}

static int cmd_selftest(const char *dir, const char *ledger)
{
	char name[NAME_LEN];
	int dfd;

	workload(dir, ledger, "7", 600);
	dfd = open(dir, O_RDONLY | O_DIRECTORY);
	expect(problems(dir, ledger, false) == 0, "a finished run verifies");
	expect(dfd >= 0 && pick_claim(dir, ledger, 'F', name), "the run claimed a file");
	if (selftest_fails)
		return 1;
	damage_content(dfd, dir, ledger, name);
	damage_names(dfd, dir, ledger, name);
	allowed_changes(dfd, dir, ledger, name);
	close(dfd);
	if (selftest_fails)
		return 1;
	printf("crashload: selftest ok: verify reports damage and accepts what a crash may do\n");
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 5 && argc <= 6 && !strcmp(argv[1], "run")) {
		workload(argv[2], argv[3], argv[4], argc == 6 ? strtoul(argv[5], NULL, 10) : 0);
		return 0;
	}
	if (argc == 4 && !strcmp(argv[1], "verify"))
		return cmd_verify(argv[2], argv[3]);
	if (argc == 4 && !strcmp(argv[1], "selftest"))
		return cmd_selftest(argv[2], argv[3]);
	fprintf(stderr, "usage: crashload run DIR LEDGER SEED [OPS]\n"
			"       crashload verify DIR LEDGER\n"
			"       crashload selftest DIR LEDGER\n");
	return 2;
}
