/*
 * fsmodel - a model-based random tester for whole trees, in the spirit of fsx.
 *
 * "fsmodel STEPS SEED DRFSDIR REFDIR [--state FILE]" makes STEPS random
 * changes, each one identically in DRFSDIR (inside a drfs mount) and in
 * REFDIR (a plain directory on the native filesystem: the model).  After
 * every step it compares what the calls returned (value and errno) and then
 * the two trees: names, types, modes, owners, link counts and which names
 * are hard links of each other, sizes, contents, symlink targets, xattrs,
 * and the mtime of objects whose mtime a step set explicitly with nothing
 * changing them since.  atime and ctime are never compared.
 *
 * Names come from a pool of 30 paths over three directory levels, plus the
 * names the last scan of REFDIR found (new objects also go into existing
 * directories while the tree has at most 30 names), so that operations
 * collide: most meet an existing object of some type, many fail, and
 * failures must fail alike.
 * Three files stay open across steps, so writes to unlinked files, file
 * positions and O_APPEND descriptors are exercised too.
 *
 * The first difference ends the run with one line naming the step, the call
 * with its arguments and what differed; exit status 1.  The random choices
 * depend only on SEED and on the trees, so the same seed on the same trees
 * repeats the run.  With --state FILE the step count and the set of mtimes
 * set explicitly survive the process: a later run (after a remount or a
 * crash of the daemon) scans the trees again and continues on them with new
 * random operations.
 *
 * "fsmodel compare DRFSDIR REFDIR [--state FILE]" only compares the trees;
 * "fsmodel sync DRFSDIR" fsyncs every file and directory below DRFSDIR,
 * bottom-up, DRFSDIR last, and fails if any fsync fails.  With FSMODEL_TRACE
 * set in the environment every step is printed with its outcome.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

enum { DRFS, REF };		/* the two sides, in the order every call runs */
#define NSLOTS 3		/* files kept open across steps */
#define MAXWRITE (512 << 10)	/* longest single write or copy */
#define CHUNK (256 << 10)	/* content is compared in pieces of this size */
#define XBUF 65536		/* room for an xattr list or value */

static const char *root[2];
static const char *const side_name[2] = { "drfs", "reference" };
static int slot[NSLOTS][2];
static char slot_path[NSLOTS][PATH_MAX];
static long step;		/* number of the running step, 0 outside steps */
static int trace;		/* FSMODEL_TRACE set: print every step */
static char what[2 * PATH_MAX + 128];	/* the running call, for messages */
static char data[MAXWRITE];	/* the bytes of the running write */

/* ---- messages ---------------------------------------------------------- */

static const char *ename(int e)
{
	static char buf[2][24];
	static int k;
	const char *n = strerrorname_np(e);

	if (n)
		return n;
	k ^= 1;
	snprintf(buf[k], sizeof(buf[k]), "errno %d", e);
	return buf[k];
}

/* Reports the first difference, on one line, and ends the run. */
static void __attribute__((format(printf, 1, 2), noreturn)) mismatch(const char *fmt, ...)
{
	va_list ap;

	if (step)
		fprintf(stderr, "fsmodel: step %ld %s: ", step, what);
	else
		fprintf(stderr, "fsmodel: %s: ", what);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static void __attribute__((noreturn)) die(const char *msg, const char *arg)
{
	fprintf(stderr, "fsmodel: %s %s: %s\n", msg, arg, strerror(errno));
	exit(2);
}

/* SIDE's name for REL ("" is the top directory), in one of two buffers. */
static const char *fp(int side, const char *rel, int k)
{
	static char buf[2][PATH_MAX + 16];

	snprintf(buf[k], sizeof(buf[k]), "%s%s%s", root[side], *rel ? "/" : "", rel);
	return buf[k];
}

/* ---- randomness -------------------------------------------------------- */

static uint64_t rng;

/* splitmix64: every output is a bijective mix of a counter. */
static uint64_t rnd64(void)
{
	uint64_t z = (rng += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t rnd(uint64_t n)
{
	return n ? rnd64() % n : 0;
}

static int chance(unsigned pct)
{
	return rnd(100) < pct;
}

#define PICK(arr) ((arr)[rnd(sizeof(arr) / sizeof((arr)[0]))])

/* Offsets: mostly in the first 64 KiB, so that writes overlap; up to 1 MiB. */
static long long rnd_off(void)
{
	long long o = chance(60) ? (long long)rnd(64 << 10) :
		      chance(75) ? (long long)rnd(256 << 10) : (long long)rnd(1 << 20);

	return chance(30) ? o & ~4095LL : o;
}

static long long rnd_len(void)
{
	long long l = chance(50) ? 1 + (long long)rnd(4096) :
		      chance(70) ? 1 + (long long)rnd(32 << 10) :
		      chance(85) ? 1 + (long long)rnd(128 << 10) : 1 + (long long)rnd(MAXWRITE);

	return chance(30) && l > 4096 ? l & ~4095LL : l;
}

static void fill(size_t len)
{
	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = rnd64();
		memcpy(data + i, &v, len - i < 8 ? len - i : 8);
	}
}

static mode_t rnd_mode(void)
{
	static const mode_t modes[] = { 0644, 0600, 0755, 0700, 0444, 0000, 0666, 0777,
					04755, 02755, 02644, 01777, 06711, 0640, 02775 };

	return chance(85) ? PICK(modes) : (mode_t)rnd(07777 + 1);
}

static mode_t rnd_mask(void)
{
	static const mode_t masks[] = { 022, 022, 0, 077, 002, 027 };

	return PICK(masks);
}

/* ---- names ------------------------------------------------------------- */

static const char *const level1[] = { "a", "b", "c", "d", "e", "f" };
static const char *const level2[] = { "a/a", "a/b", "a/c", "a/d", "b/a", "b/b",
				      "b/c", "b/d", "c/a", "c/b", "c/c", "c/d" };
static const char *const level3[] = { "a/a/a", "a/a/b", "a/a/c", "a/b/a", "a/b/b", "a/b/c",
				      "b/a/a", "b/a/b", "b/a/c", "c/a/a", "c/a/b", "c/a/c" };

/* Every object the last scan found: its name and inode number on each side. */
struct ent {
	char *path;
	ino_t ino[2];
	mode_t type;		/* S_IFMT bits in the model */
};
static struct ent *ents;
static size_t nents, ents_cap;

/*
 * A name from the pool (each level alike), or one the last scan found;
 * with WANT (S_IFREG, S_IFDIR, ..., or S_IFMT for any) half the time an
 * existing object of that type, so that data operations mostly meet files
 * and rmdir directories.
 */
static void pick_a(char *out, mode_t want)
{
	size_t n = 0, k;
	const char *p;

	for (size_t i = 0; want && i < nents; i++)
		n += want == S_IFMT || ents[i].type == want;
	if (n && chance(50)) {
		k = rnd(n);
		for (size_t i = 0; i < nents; i++)
			if ((want == S_IFMT || ents[i].type == want) && !k--) {
				snprintf(out, PATH_MAX, "%s", ents[i].path);
				return;
			}
	}
	if (nents && chance(20))
		p = ents[rnd(nents)].path;
	else if (chance(33))
		p = PICK(level1);
	else if (chance(50))
		p = PICK(level2);
	else
		p = PICK(level3);
	snprintf(out, PATH_MAX, "%s", p);
}

static void pick(char *out)
{
	pick_a(out, 0);
}

/* A name for a new object: often a pool name inside an existing directory. */
static void pick_new(char *out)
{
	char dir[PATH_MAX];

	if (nents > 30 || !chance(50)) {	/* enough: keep the tree small, names colliding */
		pick(out);
		return;
	}
	if (chance(20))
		dir[0] = '\0';
	else
		pick_a(dir, S_IFDIR);
	snprintf(out, PATH_MAX, "%.*s%s%s", PATH_MAX - 8, dir, *dir ? "/" : "", PICK(level1));
}

/* O_NONBLOCK when REL is a FIFO in the model: opening one must not block. */
static int fifo_flag(const char *rel)
{
	struct stat st;

	return !stat(fp(REF, rel, 0), &st) && S_ISFIFO(st.st_mode) ? O_NONBLOCK : 0;
}

/* ---- explicitly set mtimes --------------------------------------------- */

/* Model inode numbers whose mtime a step set and nothing changed since. */
static ino_t *timed;
static size_t ntimed, timed_cap;

static int is_timed(ino_t ino)
{
	for (size_t i = 0; i < ntimed; i++)
		if (timed[i] == ino)
			return 1;
	return 0;
}

static void set_timed(ino_t ino)
{
	if (is_timed(ino))
		return;
	if (ntimed == timed_cap) {
		timed_cap = timed_cap ? 2 * timed_cap : 64;
		timed = realloc(timed, timed_cap * sizeof(*timed));
		if (!timed)
			abort();
	}
	timed[ntimed++] = ino;
}

static void untime(ino_t ino)
{
	for (size_t i = 0; i < ntimed; i++)
		if (timed[i] == ino) {
			timed[i] = timed[--ntimed];
			return;
		}
}

/*
 * Forgets the mtime of everything a change at REL may touch in the model:
 * the object itself, what it resolves to, its directory, and (for a dangling
 * symlink that O_CREAT follows) the directory of the symlink's target.
 * Targets never hold "..", so following them stays inside the tree.
 */
static void untime_at(const char *rel, int depth)
{
	char dir[PATH_MAX], target[PATH_MAX], next[2 * PATH_MAX + 2];
	const char *slash = strrchr(rel, '/');
	struct stat st;
	ssize_t n;

	snprintf(dir, sizeof(dir), "%.*s", slash ? (int)(slash - rel) : 0, rel);
	if (!stat(fp(REF, dir, 0), &st))
		untime(st.st_ino);
	if (!stat(fp(REF, rel, 0), &st))
		untime(st.st_ino);
	if (lstat(fp(REF, rel, 0), &st))
		return;
	untime(st.st_ino);
	if (!S_ISLNK(st.st_mode) || depth > 8)
		return;
	n = readlink(fp(REF, rel, 0), target, sizeof(target) - 1);
	if (n <= 0)
		return;
	target[n] = '\0';
	snprintf(next, sizeof(next), "%s%s%s", dir, *dir ? "/" : "", target);
	untime_at(next, depth + 1);
}

/* ---- the state file ---------------------------------------------------- */

static const char *state_file;

static void load_state(void)
{
	char line[128];
	unsigned long long v;
	FILE *f;

	if (!state_file || !(f = fopen(state_file, "r")))
		return;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "steps %llu", &v) == 1)
			step = (long)v;
		else if (sscanf(line, "mtime %llu", &v) == 1)
			set_timed((ino_t)v);
	}
	fclose(f);
}

static void save_state(void)
{
	char tmp[PATH_MAX];
	FILE *f;

	if (!state_file)
		return;
	snprintf(tmp, sizeof(tmp), "%s.tmp", state_file);
	if (!(f = fopen(tmp, "w")))
		die("cannot write", tmp);
	fprintf(f, "fsmodel-state 1\nsteps %ld\n", step);
	for (size_t i = 0; i < ntimed; i++)
		fprintf(f, "mtime %llu\n", (unsigned long long)timed[i]);
	if (fclose(f) || rename(tmp, state_file))
		die("cannot write", state_file);
}

/* ---- comparing the trees ----------------------------------------------- */

static const char *type_name(mode_t m)
{
	return S_ISREG(m) ? "file" : S_ISDIR(m) ? "directory" : S_ISLNK(m) ? "symlink" :
	       S_ISFIFO(m) ? "fifo" : "special file";
}

/* Reads up to N bytes at OFF, as many as there are. */
static ssize_t pread_full(int fd, char *buf, size_t n, off_t off)
{
	size_t got = 0;

	while (got < n) {
		ssize_t r = pread(fd, buf + got, n - got, off + (off_t)got);
		if (r < 0)
			return -1;
		if (r == 0)
			break;
		got += (size_t)r;
	}
	return (ssize_t)got;
}

/* The contents of two open files, to the end of the longer. */
static void cmp_fds(const char *label, const int fd[2])
{
	static char buf[2][CHUNK];
	ssize_t n[2];

	for (off_t off = 0;; off += CHUNK) {
		for (int s = 0; s < 2; s++)
			if ((n[s] = pread_full(fd[s], buf[s], CHUNK, off)) < 0)
				mismatch("reading %s failed on %s: %s", label, side_name[s],
					 ename(errno));
		for (ssize_t i = 0; i < n[0] && i < n[1]; i++)
			if (buf[0][i] != buf[1][i])
				mismatch("content of %s differs at byte %lld", label,
					 (long long)(off + i));
		if (n[0] != n[1])
			mismatch("content of %s differs: drfs ends at %lld, reference at %lld",
				 label, (long long)(off + n[0]), (long long)(off + n[1]));
		if (n[0] < CHUNK)
			return;
	}
}

static void cmp_content(const char *rel)
{
	int fd[2];

	for (int s = 0; s < 2; s++)
		if ((fd[s] = open(fp(s, rel, 0), O_RDONLY | O_NOFOLLOW)) < 0)
			mismatch("opening %s to compare failed on %s: %s", rel, side_name[s],
				 ename(errno));
	cmp_fds(rel, fd);
	close(fd[0]);
	close(fd[1]);
}

/* What stat shows, apart from times; the size of directories is left out. */
static void cmp_stat(const char *label, const struct stat st[2])
{
	const struct stat *d = &st[DRFS], *r = &st[REF];

	if ((d->st_mode & S_IFMT) != (r->st_mode & S_IFMT))
		mismatch("type of %s differs: drfs %s, reference %s", label,
			 type_name(d->st_mode), type_name(r->st_mode));
	if ((d->st_mode & 07777) != (r->st_mode & 07777))
		mismatch("mode of %s differs: drfs %04o, reference %04o", label,
			 d->st_mode & 07777, r->st_mode & 07777);
	if (d->st_uid != r->st_uid || d->st_gid != r->st_gid)
		mismatch("owner of %s differs: drfs %u:%u, reference %u:%u", label,
			 d->st_uid, d->st_gid, r->st_uid, r->st_gid);
	if (d->st_nlink != r->st_nlink)
		mismatch("link count of %s differs: drfs %lu, reference %lu", label,
			 (unsigned long)d->st_nlink, (unsigned long)r->st_nlink);
	/*
	 * A directory's size is the filesystem's own bookkeeping (on ext4 the
	 * blocks its entries ever needed), not something a program wrote.
	 */
	if (!S_ISDIR(r->st_mode) && d->st_size != r->st_size)
		mismatch("size of %s differs: drfs %lld, reference %lld", label,
			 (long long)d->st_size, (long long)r->st_size);
}

static void cmp_mtime(const char *rel, const struct stat st[2])
{
	const struct timespec *d = &st[DRFS].st_mtim, *r = &st[REF].st_mtim;

	if (is_timed(st[REF].st_ino) && (d->tv_sec != r->tv_sec || d->tv_nsec != r->tv_nsec))
		mismatch("mtime of %s differs: drfs %lld.%09ld, reference %lld.%09ld", rel,
			 (long long)d->tv_sec, d->tv_nsec, (long long)r->tv_sec, r->tv_nsec);
}

static void cmp_symlink(const char *rel)
{
	char t[2][PATH_MAX];
	ssize_t n;

	for (int s = 0; s < 2; s++) {
		if ((n = readlink(fp(s, rel, 0), t[s], sizeof(t[s]) - 1)) < 0)
			mismatch("readlink %s failed on %s: %s", rel, side_name[s], ename(errno));
		t[s][n] = '\0';
	}
	if (strcmp(t[0], t[1]))
		mismatch("symlink target of %s differs: drfs '%s', reference '%s'", rel, t[0], t[1]);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The xattr names of REL on SIDE, sorted, joined by spaces into OUT. */
static void xattr_names(int side, const char *rel, char *out, size_t size)
{
	char list[XBUF], *names[512];
	ssize_t n = llistxattr(fp(side, rel, 0), list, sizeof(list));
	size_t k = 0, used = 0;

	if (n < 0)
		mismatch("listxattr %s failed on %s: %s", rel, side_name[side], ename(errno));
	for (char *p = list; p < list + n && k < 512; p += strlen(p) + 1)
		names[k++] = p;
	qsort(names, k, sizeof(names[0]), cmp_str);
	out[0] = '\0';
	for (size_t i = 0; i < k; i++)
		used += (size_t)snprintf(out + used, size - used, "%s%s", i ? " " : "", names[i]);
}

static void cmp_xattrs(const char *rel)
{
	static char names[2][XBUF], val[2][XBUF];
	ssize_t n[2];

	for (int s = 0; s < 2; s++)
		xattr_names(s, rel, names[s], sizeof(names[s]));
	if (strcmp(names[0], names[1]))
		mismatch("xattr names of %s differ: drfs '%s', reference '%s'", rel,
			 names[0], names[1]);
	for (char *name = strtok(names[REF], " "); name; name = strtok(NULL, " ")) {
		for (int s = 0; s < 2; s++)
			if ((n[s] = lgetxattr(fp(s, rel, 0), name, val[s], XBUF)) < 0)
				mismatch("getxattr %s of %s failed on %s: %s", name, rel,
					 side_name[s], ename(errno));
		if (n[0] != n[1] || memcmp(val[0], val[1], (size_t)n[0]))
			mismatch("xattr %s of %s differs (drfs %zd bytes, reference %zd)", name,
				 rel, n[0], n[1]);
	}
}

/*
 * Records REL and checks that the same names are hard links of each other
 * on both sides.  Returns 1 when the object was already compared under an
 * earlier name.
 */
static int note_entry(const char *rel, const struct stat st[2])
{
	size_t first[2] = { nents, nents };

	for (size_t i = 0; i < nents; i++)
		for (int s = 0; s < 2; s++)
			if (first[s] == nents && ents[i].ino[s] == st[s].st_ino)
				first[s] = i;
	if (first[DRFS] != first[REF])
		mismatch("%s is a hard link of %s on %s but not on %s", rel,
			 ents[first[DRFS] < first[REF] ? first[DRFS] : first[REF]].path,
			 side_name[first[DRFS] < first[REF] ? DRFS : REF],
			 side_name[first[DRFS] < first[REF] ? REF : DRFS]);
	if (nents == ents_cap) {
		ents_cap = ents_cap ? 2 * ents_cap : 128;
		ents = realloc(ents, ents_cap * sizeof(*ents));
		if (!ents)
			abort();
	}
	ents[nents].path = strdup(rel);
	ents[nents].ino[DRFS] = st[DRFS].st_ino;
	ents[nents].ino[REF] = st[REF].st_ino;
	ents[nents].type = st[REF].st_mode & S_IFMT;
	nents++;
	return first[REF] != nents - 1;
}

/* The names in directory REL on SIDE, sorted; *N gets their number. */
static char **list_dir(int side, const char *rel, size_t *n)
{
	DIR *d = opendir(fp(side, rel, 0));
	struct dirent *e;
	char **names = NULL;
	size_t cap = 0;

	if (!d)
		mismatch("opendir %s failed on %s: %s", *rel ? rel : ".", side_name[side],
			 ename(errno));
	*n = 0;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (*n == cap) {
			cap = cap ? 2 * cap : 16;
			names = realloc(names, cap * sizeof(*names));
			if (!names)
				abort();
		}
		names[(*n)++] = strdup(e->d_name);
	}
	closedir(d);
	qsort(names, *n, sizeof(*names), cmp_str);
	return names;
}

static void cmp_entry(const char *rel);

/* Both directories hold the same names; then each entry is compared. */
static void cmp_dir(const char *rel)
{
	char **names[2], child[PATH_MAX];
	size_t n[2], i;

	for (int s = 0; s < 2; s++)
		names[s] = list_dir(s, rel, &n[s]);
	for (i = 0; i < n[0] || i < n[1]; i++) {
		int c = i == n[0] ? 1 : i == n[1] ? -1 : strcmp(names[0][i], names[1][i]);
		if (c)
			mismatch("%s%s%s exists only on %s", rel, *rel ? "/" : "",
				 c < 0 ? names[0][i] : names[1][i], side_name[c < 0 ? DRFS : REF]);
	}
	for (i = 0; i < n[0]; i++) {
		snprintf(child, sizeof(child), "%s%s%s", rel, *rel ? "/" : "", names[0][i]);
		cmp_entry(child);
	}
	for (int s = 0; s < 2; s++) {
		for (i = 0; i < n[s]; i++)
			free(names[s][i]);
		free(names[s]);
	}
}

static void cmp_entry(const char *rel)
{
	struct stat st[2];

	for (int s = 0; s < 2; s++)
		if (lstat(fp(s, rel, 0), &st[s]))
			mismatch("lstat %s failed on %s: %s", rel, side_name[s], ename(errno));
	cmp_stat(rel, st);
	if (note_entry(rel, st))
		return;
	cmp_mtime(rel, st);
	cmp_xattrs(rel);
	if (S_ISLNK(st[REF].st_mode))
		cmp_symlink(rel);
	else if (S_ISREG(st[REF].st_mode))
		cmp_content(rel);
	else if (S_ISDIR(st[REF].st_mode))
		cmp_dir(rel);
}

/* The files held open: what fstat shows, and the data of unlinked ones. */
static void cmp_slots(void)
{
	char label[PATH_MAX + 64];
	struct stat st[2];

	for (int k = 0; k < NSLOTS; k++) {
		if (slot[k][REF] < 0)
			continue;
		snprintf(label, sizeof(label), "fd%d (opened as %s)", k, slot_path[k]);
		for (int s = 0; s < 2; s++)
			if (fstat(slot[k][s], &st[s]))
				mismatch("fstat %s failed on %s: %s", label, side_name[s],
					 ename(errno));
		cmp_stat(label, st);
		if (S_ISREG(st[REF].st_mode) && st[REF].st_nlink == 0)
			cmp_fds(label, slot[k]);
	}
}

/* The whole comparison; the names found are the next steps' choices. */
static void cmp_trees(void)
{
	struct stat st[2];

	for (size_t i = 0; i < nents; i++)
		free(ents[i].path);
	nents = 0;
	for (int s = 0; s < 2; s++)
		if (lstat(root[s], &st[s]))
			mismatch("lstat %s failed: %s", root[s], ename(errno));
	cmp_stat(".", st);
	cmp_dir("");
	cmp_slots();
}

/* ---- operations -------------------------------------------------------- */

/* The arguments of one step, drawn before it runs on either side. */
struct args {
	char p[PATH_MAX], q[PATH_MAX];	/* paths; for symlink q is the target */
	int slot;			/* the open file used instead of p, or -1 */
	int flags, pflags, qflags;	/* call flags; extra open flags for p, q */
	mode_t mode, mask;
	long long off, off2, len;
	uid_t uid;
	gid_t gid;
	struct timespec ts[2];
	char xname[16];
};

/* One side's outcome: which call gave it, its value, its errno. */
struct res {
	const char *call;
	long long r;
	int err;
};

static struct res done(const char *call, long long r)
{
	return (struct res){ call, r, r < 0 ? errno : 0 };
}

static void res_str(const struct res *x, char *buf, size_t size)
{
	if (x->r < 0)
		snprintf(buf, size, "%s failed with %s", x->call, ename(x->err));
	else
		snprintf(buf, size, "%s returned %lld", x->call, x->r);
}

typedef struct res (*side_fn)(int side, const struct args *a);

/* Runs FN on both sides; their outcomes must be the same. */
static struct res both(side_fn fn, const struct args *a)
{
	struct res x[2];
	char d[128], r[128];

	for (int s = 0; s < 2; s++)
		x[s] = fn(s, a);
	if (strcmp(x[0].call, x[1].call) || x[0].r != x[1].r || x[0].err != x[1].err) {
		res_str(&x[DRFS], d, sizeof(d));
		res_str(&x[REF], r, sizeof(r));
		mismatch("drfs: %s; reference: %s", d, r);
	}
	return x[REF];
}

/* The fd a data operation works on: an open slot, or P opened now. */
static int get_fd(int side, const struct args *a, int flags, struct res *fail)
{
	int fd;

	if (a->slot >= 0)
		return slot[a->slot][side];
	fd = open(fp(side, a->p, 0), flags | a->pflags);
	if (fd < 0)
		*fail = done("open", -1);
	return fd;
}

/* Closes an fd get_fd opened; a failing close is the operation's outcome. */
static struct res put_fd(const struct args *a, int fd, struct res x)
{
	if (a->slot < 0 && close(fd) && x.r >= 0)
		x = done("close", -1);
	return x;
}

/* The data operations' target: one of the open files, or a name. */
static void pick_target(struct args *a)
{
	int k = (int)rnd(NSLOTS), use = chance(35);

	pick_a(a->p, S_IFREG);
	a->slot = use && slot[k][REF] >= 0 ? k : -1;
	a->pflags = fifo_flag(a->p);
}

static const char *target_name(const struct args *a)
{
	static char buf[PATH_MAX + 16];

	if (a->slot < 0)
		return a->p;
	snprintf(buf, sizeof(buf), "fd%d=%s", a->slot, slot_path[a->slot]);
	return buf;
}

static const char *oflags_str(int f)
{
	static char buf[96];

	snprintf(buf, sizeof(buf), "%s%s%s%s%s", (f & O_ACCMODE) == O_RDWR ? "RDWR" :
		 (f & O_ACCMODE) == O_WRONLY ? "WRONLY" : "RDONLY", f & O_CREAT ? "|CREAT" : "",
		 f & O_EXCL ? "|EXCL" : "", f & O_TRUNC ? "|TRUNC" : "",
		 f & O_APPEND ? "|APPEND" : "");
	return buf;
}

/* create: open with O_CREAT under a random umask, then close. */
static struct res create_side(int s, const struct args *a)
{
	struct res x;
	int fd;

	umask(a->mask);
	fd = open(fp(s, a->p, 0), a->flags | a->pflags, a->mode);
	x = done("open", fd < 0 ? -1 : 0);
	return fd < 0 ? x : put_fd(a, fd, x);
}

static void gen_create(struct args *a)
{
	pick_new(a->p);
	a->pflags = fifo_flag(a->p);
	a->flags = O_WRONLY | O_CREAT | (chance(30) ? O_EXCL : 0) | (chance(10) ? O_TRUNC : 0);
	a->mode = rnd_mode();
	a->mask = rnd_mask();
	snprintf(what, sizeof(what), "create(%s, %s, %04o, umask %03o)", a->p,
		 oflags_str(a->flags), a->mode, a->mask);
}

static void gen_open_trunc(struct args *a)
{
	pick_a(a->p, S_IFREG);
	a->pflags = fifo_flag(a->p);
	a->flags = O_WRONLY | O_TRUNC | (chance(30) ? O_CREAT : 0);
	a->mode = 0644;
	a->mask = 022;
	snprintf(what, sizeof(what), "open(%s, %s)", a->p, oflags_str(a->flags));
}

static struct res pwrite_side(int s, const struct args *a)
{
	struct res x;
	int fd = get_fd(s, a, O_WRONLY, &x);

	if (fd < 0)
		return x;
	return put_fd(a, fd, done("pwrite", pwrite(fd, data, (size_t)a->len, a->off)));
}

static void gen_pwrite(struct args *a)
{
	pick_target(a);
	a->off = rnd_off();
	a->len = rnd_len();
	fill((size_t)a->len);
	snprintf(what, sizeof(what), "pwrite(%s, off %lld, len %lld)", target_name(a), a->off,
		 a->len);
}

/* Appends through O_APPEND, or writes at an open file's position. */
static struct res append_side(int s, const struct args *a)
{
	struct res x;
	int fd = get_fd(s, a, O_WRONLY | O_APPEND, &x);

	if (fd < 0)
		return x;
	return put_fd(a, fd, done("write", write(fd, data, (size_t)a->len)));
}

static void gen_append(struct args *a)
{
	pick_target(a);
	a->len = rnd_len();
	fill((size_t)a->len);
	snprintf(what, sizeof(what), "%s(%s, len %lld)", a->slot < 0 ? "append" : "write",
		 target_name(a), a->len);
}

static struct res truncate_side(int s, const struct args *a)
{
	struct res x;
	int fd = get_fd(s, a, O_WRONLY, &x);

	if (fd < 0)
		return x;
	return put_fd(a, fd, done("ftruncate", ftruncate(fd, a->off)));
}

static void gen_truncate(struct args *a)
{
	pick_target(a);
	a->off = chance(15) ? 0 : rnd_off();
	snprintf(what, sizeof(what), "ftruncate(%s, %lld)", target_name(a), a->off);
}

static struct res fallocate_side(int s, const struct args *a)
{
	struct res x;
	int fd = get_fd(s, a, O_WRONLY, &x);

	if (fd < 0)
		return x;
	return put_fd(a, fd, done("fallocate", fallocate(fd, a->flags, a->off, a->len)));
}

static void gen_fallocate(struct args *a)
{
	static const int modes[] = { 0, FALLOC_FL_KEEP_SIZE,
				     FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE };

	pick_target(a);
	a->flags = PICK(modes);
	a->off = rnd_off();
	a->len = rnd_len();
	snprintf(what, sizeof(what), "fallocate(%s, %s, off %lld, len %lld)", target_name(a),
		 a->flags == 0 ? "0" : a->flags == FALLOC_FL_KEEP_SIZE ? "KEEP_SIZE" :
		 "PUNCH_HOLE|KEEP_SIZE", a->off, a->len);
}

/* copy_file_range from name q into the target (a name or an open file). */
static struct res copy_side(int s, const struct args *a)
{
	loff_t in_off = a->off2, out_off = a->off;
	struct res x;
	int in, out;

	in = open(fp(s, a->q, 1), O_RDONLY | a->qflags);
	if (in < 0)
		return done("open source", -1);
	out = get_fd(s, a, O_WRONLY, &x);
	if (out < 0) {
		close(in);
		return x;
	}
	x = done("copy_file_range", copy_file_range(in, &in_off, out, &out_off, (size_t)a->len, 0));
	close(in);
	return put_fd(a, out, x);
}

static void gen_copy(struct args *a)
{
	pick_a(a->q, S_IFREG);
	a->qflags = fifo_flag(a->q);
	pick_target(a);
	a->off2 = rnd_off();
	a->off = rnd_off();
	a->len = rnd_len();
	snprintf(what, sizeof(what), "copy_file_range(%s off %lld, %s off %lld, len %lld)", a->q,
		 a->off2, target_name(a), a->off, a->len);
}

static struct res mkdir_side(int s, const struct args *a)
{
	umask(a->mask);
	return done("mkdir", mkdir(fp(s, a->p, 0), a->mode));
}

static void gen_mkdir(struct args *a)
{
	static const mode_t modes[] = { 0755, 0755, 0700, 0777, 02775, 01777, 0555, 02755 };

	pick_new(a->p);
	a->mode = chance(90) ? PICK(modes) : (mode_t)rnd(07777 + 1);
	a->mask = rnd_mask();
	snprintf(what, sizeof(what), "mkdir(%s, %04o, umask %03o)", a->p, a->mode, a->mask);
}

static struct res mkfifo_side(int s, const struct args *a)
{
	umask(a->mask);
	return done("mknod", mknod(fp(s, a->p, 0), S_IFIFO | a->mode, 0));
}

static void gen_mkfifo(struct args *a)
{
	pick_new(a->p);
	a->mode = rnd_mode();
	a->mask = rnd_mask();
	snprintf(what, sizeof(what), "mknod(%s, FIFO %04o, umask %03o)", a->p, a->mode, a->mask);
}

static struct res rmdir_side(int s, const struct args *a)
{
	return done("rmdir", rmdir(fp(s, a->p, 0)));
}

static void gen_rmdir(struct args *a)
{
	pick_a(a->p, S_IFDIR);
	snprintf(what, sizeof(what), "rmdir(%s)", a->p);
}

static struct res unlink_side(int s, const struct args *a)
{
	return done("unlink", unlink(fp(s, a->p, 0)));
}

static void gen_unlink(struct args *a)
{
	pick_a(a->p, S_IFMT);
	snprintf(what, sizeof(what), "unlink(%s)", a->p);
}

static struct res rename_side(int s, const struct args *a)
{
	return done("renameat2", renameat2(AT_FDCWD, fp(s, a->p, 0), AT_FDCWD, fp(s, a->q, 1),
					   (unsigned)a->flags));
}

static void gen_rename(struct args *a)
{
	pick_a(a->p, S_IFMT);
	pick_new(a->q);
	a->flags = chance(50) ? 0 : chance(50) ? RENAME_NOREPLACE : RENAME_EXCHANGE;
	snprintf(what, sizeof(what), "rename(%s, %s%s)", a->p, a->q,
		 a->flags == RENAME_NOREPLACE ? ", NOREPLACE" :
		 a->flags == RENAME_EXCHANGE ? ", EXCHANGE" : "");
}

static struct res link_side(int s, const struct args *a)
{
	return done("link", link(fp(s, a->p, 0), fp(s, a->q, 1)));
}

static void gen_link(struct args *a)
{
	pick_a(a->p, S_IFREG);
	pick_new(a->q);
	snprintf(what, sizeof(what), "link(%s, %s)", a->p, a->q);
}

/* symlink: the target is relative and without "..", so it stays inside. */
static struct res symlink_side(int s, const struct args *a)
{
	return done("symlink", symlink(a->q, fp(s, a->p, 0)));
}

static void gen_symlink(struct args *a)
{
	pick_new(a->p);
	if (chance(10))
		snprintf(a->q, sizeof(a->q), "nowhere");
	else
		pick(a->q);
	snprintf(what, sizeof(what), "symlink(%s -> %s)", a->p, a->q);
}

static struct res chmod_side(int s, const struct args *a)
{
	return done("chmod", chmod(fp(s, a->p, 0), a->mode));
}

static void gen_chmod(struct args *a)
{
	pick_a(a->p, S_IFMT);
	a->mode = rnd_mode();
	snprintf(what, sizeof(what), "chmod(%s, %04o)", a->p, a->mode);
}

static struct res chown_side(int s, const struct args *a)
{
	return done("fchownat", fchownat(AT_FDCWD, fp(s, a->p, 0), a->uid, a->gid, a->flags));
}

static void gen_chown(struct args *a)
{
	static const uid_t ids[] = { 0, 1, 1000, 65534, (uid_t)-1 };

	pick_a(a->p, S_IFMT);
	a->uid = PICK(ids);
	a->gid = (gid_t)PICK(ids);
	a->flags = chance(30) ? AT_SYMLINK_NOFOLLOW : 0;
	snprintf(what, sizeof(what), "chown(%s, %d, %d%s)", a->p, (int)a->uid, (int)a->gid,
		 a->flags ? ", NOFOLLOW" : "");
}

static struct res utimens_side(int s, const struct args *a)
{
	return done("utimensat", utimensat(AT_FDCWD, fp(s, a->p, 0), a->ts, a->flags));
}

/* A time: explicit (sometimes before 1970, sometimes whole seconds), NOW, OMIT. */
static void rnd_time(struct timespec *ts)
{
	if (chance(15)) {
		ts->tv_sec = 0;
		ts->tv_nsec = chance(50) ? UTIME_NOW : UTIME_OMIT;
		return;
	}
	ts->tv_sec = (time_t)rnd(2000000000);
	if (chance(10))
		ts->tv_sec = -ts->tv_sec / 4;
	ts->tv_nsec = chance(20) ? 0 : (long)rnd(1000000000);
}

static const char *time_str(const struct timespec *ts, char *buf, size_t size)
{
	if (ts->tv_nsec == UTIME_NOW)
		return "NOW";
	if (ts->tv_nsec == UTIME_OMIT)
		return "OMIT";
	snprintf(buf, size, "%lld.%09ld", (long long)ts->tv_sec, ts->tv_nsec);
	return buf;
}

static void gen_utimens(struct args *a)
{
	char t0[32], t1[32];

	pick_a(a->p, S_IFMT);
	rnd_time(&a->ts[0]);
	rnd_time(&a->ts[1]);
	a->flags = chance(25) ? AT_SYMLINK_NOFOLLOW : 0;
	snprintf(what, sizeof(what), "utimensat(%s, atime %s, mtime %s%s)", a->p,
		 time_str(&a->ts[0], t0, sizeof(t0)), time_str(&a->ts[1], t1, sizeof(t1)),
		 a->flags ? ", NOFOLLOW" : "");
}

/* After a utimensat both sides took: an explicit mtime is now comparable. */
static void note_utimens(const struct args *a)
{
	struct stat st;
	int r = a->flags ? lstat(fp(REF, a->p, 0), &st) : stat(fp(REF, a->p, 0), &st);

	if (r)
		return;
	if (a->ts[1].tv_nsec == UTIME_NOW)
		untime(st.st_ino);
	else if (a->ts[1].tv_nsec != UTIME_OMIT)
		set_timed(st.st_ino);
}

static struct res setxattr_side(int s, const struct args *a)
{
	const char *path = fp(s, a->p, 0);
	size_t len = (size_t)a->len;

	return done("setxattr", a->mode ? lsetxattr(path, a->xname, data, len, a->flags) :
					  setxattr(path, a->xname, data, len, a->flags));
}

static void pick_xattr(struct args *a)
{
	static const char *const names[] = { "user.a", "user.b", "user.c" };

	pick_a(a->p, S_IFMT);
	snprintf(a->xname, sizeof(a->xname), "%s", PICK(names));
	a->mode = chance(25);	/* l*xattr: do not follow a symlink */
}

static void gen_setxattr(struct args *a)
{
	pick_xattr(a);
	a->flags = chance(60) ? 0 : chance(50) ? XATTR_CREATE : XATTR_REPLACE;
	a->len = (long long)rnd(chance(90) ? 64 : 512);
	fill((size_t)a->len);
	snprintf(what, sizeof(what), "%ssetxattr(%s, %s, %lld bytes%s)", a->mode ? "l" : "",
		 a->p, a->xname, a->len, a->flags == XATTR_CREATE ? ", CREATE" :
		 a->flags == XATTR_REPLACE ? ", REPLACE" : "");
}

static struct res removexattr_side(int s, const struct args *a)
{
	const char *path = fp(s, a->p, 0);

	return done("removexattr", a->mode ? lremovexattr(path, a->xname) :
					     removexattr(path, a->xname));
}

static void gen_removexattr(struct args *a)
{
	pick_xattr(a);
	snprintf(what, sizeof(what), "%sremovexattr(%s, %s)", a->mode ? "l" : "", a->p,
		 a->xname);
}

static struct res fsync_side(int s, const struct args *a)
{
	struct res x;
	int fd = get_fd(s, a, O_RDONLY, &x);

	if (fd < 0)
		return x;
	return put_fd(a, fd, a->flags ? done("fdatasync", fdatasync(fd)) : done("fsync", fsync(fd)));
}

static void gen_fsync(struct args *a)
{
	pick_target(a);
	a->flags = chance(30);
	snprintf(what, sizeof(what), "%s(%s)", a->flags ? "fdatasync" : "fsync", target_name(a));
}

/* Opens P into a slot (closing what the slot held) for later steps. */
static struct res open_slot_side(int s, const struct args *a)
{
	int fd;

	if (slot[a->slot][s] >= 0)
		close(slot[a->slot][s]);
	umask(a->mask);
	fd = open(fp(s, a->p, 0), a->flags | a->pflags, a->mode);
	slot[a->slot][s] = fd;
	return done("open", fd < 0 ? -1 : 0);
}

static void gen_open_slot(struct args *a)
{
	pick_a(a->p, S_IFREG);
	a->slot = (int)rnd(NSLOTS);
	a->pflags = fifo_flag(a->p);
	a->flags = O_RDWR | (chance(30) ? O_APPEND : 0) | (chance(40) ? O_CREAT : 0) |
		   (chance(10) ? O_TRUNC : 0);
	a->mode = 0644;
	a->mask = 022;
	snprintf(slot_path[a->slot], sizeof(slot_path[a->slot]), "%s", a->p);
	snprintf(what, sizeof(what), "open(%s, %s) as fd%d", a->p, oflags_str(a->flags), a->slot);
}

static struct res close_slot_side(int s, const struct args *a)
{
	int fd = slot[a->slot][s];

	slot[a->slot][s] = -1;
	return fd < 0 ? done("nothing", 0) : done("close", close(fd));
}

static void gen_close_slot(struct args *a)
{
	a->slot = (int)rnd(NSLOTS);
	snprintf(what, sizeof(what), "close(fd%d=%s)", a->slot, slot_path[a->slot]);
}

/* What an operation may do to mtimes, besides its call. */
enum effect {
	KEEPS,		/* changes no mtime (chmod, chown, xattrs, fsync) */
	CHANGES,	/* changes the mtime of its objects or their directories */
	SETS,		/* utimensat */
};

static const struct op {
	int weight;
	void (*gen)(struct args *a);
	side_fn run;
	enum effect effect;
} ops[] = {
	{ 9, gen_create, create_side, CHANGES },
	{ 3, gen_open_trunc, create_side, CHANGES },
	{ 14, gen_pwrite, pwrite_side, CHANGES },
	{ 6, gen_append, append_side, CHANGES },
	{ 6, gen_truncate, truncate_side, CHANGES },
	{ 6, gen_fallocate, fallocate_side, CHANGES },
	{ 5, gen_copy, copy_side, CHANGES },
	{ 6, gen_mkdir, mkdir_side, CHANGES },
	{ 3, gen_rmdir, rmdir_side, CHANGES },
	{ 5, gen_unlink, unlink_side, CHANGES },
	{ 9, gen_rename, rename_side, CHANGES },
	{ 4, gen_link, link_side, CHANGES },
	{ 4, gen_symlink, symlink_side, CHANGES },
	{ 1, gen_mkfifo, mkfifo_side, CHANGES },
	{ 3, gen_chmod, chmod_side, KEEPS },
	{ 3, gen_chown, chown_side, KEEPS },
	{ 5, gen_utimens, utimens_side, SETS },
	{ 5, gen_setxattr, setxattr_side, KEEPS },
	{ 3, gen_removexattr, removexattr_side, KEEPS },
	{ 3, gen_fsync, fsync_side, KEEPS },
	{ 3, gen_open_slot, open_slot_side, CHANGES },
	{ 3, gen_close_slot, close_slot_side, KEEPS },
};

static const struct op *choose_op(void)
{
	int total = 0, r;
	size_t i;

	for (i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
		total += ops[i].weight;
	r = (int)rnd((uint64_t)total);
	for (i = 0; r >= ops[i].weight; i++)
		r -= ops[i].weight;
	return &ops[i];
}

/* Forgets the mtimes a changing operation may touch (before and after it). */
static void untime_args(const struct args *a, int is_symlink)
{
	struct stat st;

	if (*a->p)
		untime_at(a->p, 0);
	if (*a->q && !is_symlink)
		untime_at(a->q, 0);
	if (a->slot >= 0 && slot[a->slot][REF] >= 0 && !fstat(slot[a->slot][REF], &st))
		untime(st.st_ino);
}

static void one_step(void)
{
	struct args a = { .slot = -1 };
	const struct op *o = choose_op();
	int is_symlink = o->gen == gen_symlink;
	struct res r;

	o->gen(&a);
	if (o->effect == CHANGES)
		untime_args(&a, is_symlink);
	r = both(o->run, &a);
	if (o->effect == CHANGES)
		untime_args(&a, is_symlink);
	if (o->effect == SETS && r.r >= 0)
		note_utimens(&a);
	if (trace) {
		char out[128];

		res_str(&r, out, sizeof(out));
		fprintf(stderr, "fsmodel: step %ld %s: %s\n", step, what, out);
	}
	cmp_trees();
}

/* ---- commands ---------------------------------------------------------- */

static int run(long steps, unsigned long long seed)
{
	long last;

	load_state();
	last = step + steps;
	rng = seed;
	snprintf(what, sizeof(what), "before step %ld", step + 1);
	step = 0;
	cmp_trees();
	step = last - steps;
	while (step < last) {
		step++;
		one_step();
	}
	save_state();
	for (int k = 0; k < NSLOTS; k++)
		for (int s = 0; s < 2; s++)
			if (slot[k][s] >= 0)
				close(slot[k][s]);
	printf("fsmodel: %ld steps, seed %llu, ok\n", steps, seed);
	return 0;
}

static int compare(void)
{
	load_state();
	step = 0;
	snprintf(what, sizeof(what), "compare");
	cmp_trees();
	printf("fsmodel: trees equal (%zu names)\n", nents);
	return 0;
}

static int sync_failed;

static int sync_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	int fd;

	if (type != FTW_DP && !(type == FTW_F && S_ISREG(st->st_mode)))
		return 0;
	fd = open(path, O_RDONLY | O_NOFOLLOW | (type == FTW_DP ? O_DIRECTORY : 0));
	if (fd < 0 || fsync(fd)) {
		fprintf(stderr, "fsmodel: sync: %s of %s failed: %s\n", fd < 0 ? "open" : "fsync",
			path, ename(errno));
		sync_failed = 1;
	}
	if (fd >= 0)
		close(fd);
	return 0;
}

/* fsync everything below DIR, children before their directory, DIR last. */
static int sync_tree(const char *dir)
{
	if (nftw(dir, sync_one, 16, FTW_PHYS | FTW_DEPTH | FTW_MOUNT)) {
		fprintf(stderr, "fsmodel: sync: walking %s failed: %s\n", dir, ename(errno));
		return 1;
	}
	return sync_failed;
}

static int usage(void)
{
	fprintf(stderr, "usage: fsmodel STEPS SEED DRFSDIR REFDIR [--state FILE]\n"
			"       fsmodel compare DRFSDIR REFDIR [--state FILE]\n"
			"       fsmodel sync DRFSDIR\n");
	return 2;
}

int main(int argc, char **argv)
{
	char *end;
	long steps;
	unsigned long long seed;

	setvbuf(stdout, NULL, _IOLBF, 0);
	trace = getenv("FSMODEL_TRACE") != NULL;
	for (int k = 0; k < NSLOTS; k++)
		slot[k][DRFS] = slot[k][REF] = -1;
	if (argc >= 3 && !strcmp(argv[argc - 2], "--state")) {
		state_file = argv[argc - 1];
		argc -= 2;
	}
	if (argc == 3 && !strcmp(argv[1], "sync") && !state_file)
		return sync_tree(argv[2]);
	if (argc != 4 && argc != 5)
		return usage();
	root[DRFS] = argv[argc - 2];
	root[REF] = argv[argc - 1];
	if (argc == 4)
		return strcmp(argv[1], "compare") ? usage() : compare();
	steps = strtol(argv[1], &end, 10);
	if (*end || steps < 0)
		return usage();
	seed = strtoull(argv[2], &end, 0);
	if (*end)
		return usage();
	return run(steps, seed);
}
