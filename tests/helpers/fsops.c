/*
 * fsops - system calls that the shell cannot make, for the integration tests.
 *
 * Every subcommand prints its result on stdout ("ok", a number, or the errno
 * name of the failure) and exits 0 when it could run at all, so that tests can
 * compare the output on a plain directory with the output on a drfs mount.
 * "fsops battery DIR" runs a fixed list of operations whose error codes must
 * match the native filesystem's.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

static const char *errname(int e)
{
	switch (e) {
#define E(x) case x: return #x
	E(EPERM); E(ENOENT); E(EIO); E(EBADF); E(EACCES); E(EEXIST); E(EXDEV);
	E(ENOTDIR); E(EISDIR); E(EINVAL); E(EFBIG); E(ENOSPC); E(EROFS); E(EMLINK);
	E(ENAMETOOLONG); E(ENOTEMPTY); E(ELOOP); E(ENODATA); E(EOPNOTSUPP);
	E(ENXIO); E(EAGAIN); E(ENOSYS); E(ETXTBSY); E(EBUSY); E(ERANGE); E(ESTALE);
#undef E
	default: return "E?";
	}
}

/* Prints "ok" or the errno name for a call returning < 0 on failure. */
static void report(const char *label, long r)
{
	if (label)
		printf("%s: ", label);
	if (r < 0)
		printf("%s\n", errname(errno));
	else
		printf("ok\n");
}

static int cmd_rename2(char **a)
{
	unsigned int flags = 0;

	if (!strcmp(a[2], "noreplace"))
		flags = RENAME_NOREPLACE;
	else if (!strcmp(a[2], "exchange"))
		flags = RENAME_EXCHANGE;
	else if (!strcmp(a[2], "whiteout"))
		flags = RENAME_WHITEOUT;
	report(NULL, renameat2(AT_FDCWD, a[0], AT_FDCWD, a[1], flags));
	return 0;
}

static int cmd_seek(char **a)
{
	int fd = open(a[0], O_RDONLY);
	off_t r;

	if (fd < 0) {
		report(NULL, -1);
		return 0;
	}
	/*
	 * drfs answers EINVAL while a handle that can write is open, and the
	 * kernel releases a closed one asynchronously: wait up to 2 s for the
	 * release of the writer that came before (docs/design.md "Holes").
	 */
	for (int i = 0; i < 400; i++) {
		r = lseek(fd, atoll(a[2]), !strcmp(a[1], "data") ? SEEK_DATA : SEEK_HOLE);
		if (r >= 0 || errno != EINVAL)
			break;
		usleep(5000);
	}
	if (r < 0)
		report(NULL, -1);
	else
		printf("%lld\n", (long long)r);
	close(fd);
	return 0;
}

static int cmd_fallocate(char **a)
{
	int fd = open(a[0], O_RDWR | O_CREAT, 0644), mode = 0;

	if (!strcmp(a[1], "keep"))
		mode = FALLOC_FL_KEEP_SIZE;
	else if (!strcmp(a[1], "punch"))
		mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
	else if (!strcmp(a[1], "zero"))
		mode = FALLOC_FL_ZERO_RANGE;
	report(NULL, fd < 0 ? -1 : fallocate(fd, mode, atoll(a[2]), atoll(a[3])));
	if (fd >= 0)
		close(fd);
	return 0;
}

static int cmd_copy(char **a)
{
	int in = open(a[0], O_RDONLY), out = open(a[1], O_WRONLY | O_CREAT, 0644);
	loff_t off_in = atoll(a[2]), off_out = atoll(a[3]);
	ssize_t n = -1;

	if (in >= 0 && out >= 0)
		n = copy_file_range(in, &off_in, out, &off_out, (size_t)atoll(a[4]), 0);
	if (n < 0)
		report(NULL, -1);
	else
		printf("%zd\n", n);
	return 0;
}

/* Writes STRING at OFF through a shared writable mapping, then msync. */
static int cmd_mmapwrite(char **a)
{
	int fd = open(a[0], O_RDWR);
	size_t off = (size_t)atoll(a[1]), len = strlen(a[2]);
	struct stat st;
	char *p;

	if (fd < 0 || fstat(fd, &st) < 0 || (size_t)st.st_size < off + len) {
		printf("bad file\n");
		return 1;
	}
	p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		report(NULL, -1);
		return 0;
	}
	memcpy(p + off, a[2], len);
	report(NULL, msync(p, (size_t)st.st_size, MS_SYNC));
	munmap(p, (size_t)st.st_size);
	close(fd);
	return 0;
}

/* O_TMPFILE in DIR, write DATA, link it in as NAME. */
static int cmd_tmpfile(char **a)
{
	char path[64];
	int fd = open(a[0], O_TMPFILE | O_RDWR, 0644);

	if (fd < 0) {
		report(NULL, -1);
		return 0;
	}
	if (write(fd, a[2], strlen(a[2])) != (ssize_t)strlen(a[2])) {
		report(NULL, -1);
		return 0;
	}
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	char target[4096];
	snprintf(target, sizeof(target), "%s/%s", a[0], a[1]);
	report(NULL, linkat(AT_FDCWD, path, AT_FDCWD, target, AT_SYMLINK_FOLLOW));
	return 0;
}

/* O_DIRECT: write 8 KiB of byte C at OFF from an aligned buffer, read it back. */
static int cmd_odirect(char **a)
{
	int fd = open(a[0], O_RDWR | O_CREAT | O_DIRECT, 0644);
	void *buf, *back;
	off_t off = atoll(a[1]);

	if (fd < 0) {
		report("open", -1);
		return 0;
	}
	if (posix_memalign(&buf, 4096, 8192) || posix_memalign(&back, 4096, 8192))
		return 1;
	memset(buf, a[2][0], 8192);
	if (pwrite(fd, buf, 8192, off) != 8192) {
		report("write", -1);
		return 0;
	}
	if (pread(fd, back, 8192, off) != 8192) {
		report("read", -1);
		return 0;
	}
	printf("%s\n", memcmp(buf, back, 8192) ? "mismatch" : "ok");
	close(fd);
	return 0;
}

/*
 * Locks: the parent takes a POSIX write lock on bytes 0-99 and a flock; a
 * child reports what it sees.
 */
static int cmd_locks(char **a)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100 };
	int fd = open(a[0], O_RDWR | O_CREAT, 0644), status;
	pid_t pid;

	if (fd < 0 || fcntl(fd, F_SETLK, &fl) < 0 || flock(fd, LOCK_EX | LOCK_NB) < 0) {
		report("parent lock", -1);
		return 0;
	}
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		int cfd = open(a[0], O_RDWR);
		struct flock q = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 50, .l_len = 10 };
		struct flock free_range = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 200, .l_len = 10 };

		fcntl(cfd, F_GETLK, &q);
		printf("getlk: %s pid_matches=%d\n", q.l_type == F_WRLCK ? "conflict" : "free",
		       q.l_pid == getppid());
		report("setlk overlapping", fcntl(cfd, F_SETLK, &q));
		report("setlk disjoint", fcntl(cfd, F_SETLK, &free_range));
		report("flock", flock(cfd, LOCK_EX | LOCK_NB));
		fflush(stdout);
		_exit(0);
	}
	waitpid(pid, &status, 0);
	fl.l_type = F_UNLCK;
	fcntl(fd, F_SETLK, &fl);
	flock(fd, LOCK_UN);
	pid = fork();
	if (pid == 0) {
		int cfd = open(a[0], O_RDWR);
		struct flock q = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 50, .l_len = 10 };
		report("after unlock setlk", fcntl(cfd, F_SETLK, &q));
		report("after unlock flock", flock(cfd, LOCK_EX | LOCK_NB));
		fflush(stdout);
		_exit(0);
	}
	waitpid(pid, &status, 0);
	return 0;
}

/* utimens FILE ATIME MTIME, each "now", "omit" or SEC.NSEC; no-follow with -h. */
static int parse_ts(const char *s, struct timespec *ts)
{
	if (!strcmp(s, "now"))
		ts->tv_nsec = UTIME_NOW;
	else if (!strcmp(s, "omit"))
		ts->tv_nsec = UTIME_OMIT;
	else if (sscanf(s, "%ld.%ld", &ts->tv_sec, &ts->tv_nsec) != 2)
		return -1;
	return 0;
}

static int cmd_utimens(char **a)
{
	struct timespec ts[2] = { 0 };
	int flags = 0;

	if (!strcmp(a[0], "-h")) {
		flags = AT_SYMLINK_NOFOLLOW;
		a++;
	}
	if (parse_ts(a[1], &ts[0]) || parse_ts(a[2], &ts[1]))
		return 2;
	report(NULL, utimensat(AT_FDCWD, a[0], ts, flags));
	return 0;
}

/* Binds a unix socket at PATH and connects to it. */
static int cmd_socket(char **a)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int s = socket(AF_UNIX, SOCK_STREAM, 0), c = socket(AF_UNIX, SOCK_STREAM, 0);

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", a[0]);
	if (bind(s, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(s, 1) < 0) {
		report("bind", -1);
		return 0;
	}
	report("connect", connect(c, (struct sockaddr *)&sa, sizeof(sa)));
	return 0;
}

/* Creates N empty files named fNNNNNN in DIR (fast, for big directories). */
static int cmd_mkfiles(char **a)
{
	long n = atol(a[1]);
	char name[4096];

	for (long i = 0; i < n; i++) {
		snprintf(name, sizeof(name), "%s/f%07ld", a[0], i);
		int fd = open(name, O_WRONLY | O_CREAT | O_EXCL, 0644);
		if (fd < 0) {
			printf("%s: %s\n", name, errname(errno));
			return 1;
		}
		close(fd);
	}
	printf("ok\n");
	return 0;
}

/* Drops to UID:GID (with no supplementary groups, or with the ones given). */
static void become(const char *spec)
{
	unsigned long uid, gid;
	gid_t groups[16];
	int n = 0;
	const char *p = strchr(spec, ':');

	uid = strtoul(spec, NULL, 10);
	gid = p ? strtoul(p + 1, NULL, 10) : uid;
	for (p = strchr(spec, '+'); p && n < 16; p = strchr(p + 1, '+'))
		groups[n++] = (gid_t)strtoul(p + 1, NULL, 10);
	if (setgroups((size_t)n, groups) || setgid((gid_t)gid) || setuid((uid_t)uid)) {
		perror("become");
		exit(2);
	}
}

static void wr(const char *path, const char *data)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd >= 0) {
		if (write(fd, data, strlen(data)) < 0)
			perror("write");
		close(fd);
	}
}

/*
 * The error-code battery, run with DIR as the current directory.  Root part
 * first, then (when USER is given as UID:GID) the unprivileged part.
 */
static int cmd_battery(char **a, int n)
{
	char longname[300];
	int fd;

	if (chdir(a[0]) < 0) {
		perror(a[0]);
		return 2;
	}
	memset(longname, 'n', 256);
	longname[256] = '\0';
	umask(022);
	mkdir("d", 0755);
	mkdir("d/sub", 0755);
	wr("d/sub/file", "data");
	wr("f", "hello");
	wr("g", "world");
	mkdir("e", 0755);
	symlink("loop", "loop");
	symlink("f", "sl");

	report("mkdir existing", mkdir("d", 0755));
	report("mkdir over file", mkdir("f", 0755));
	report("mkdir in missing", mkdir("nope/x", 0755));
	report("mkdir under file", mkdir("f/x", 0755));
	report("rmdir missing", rmdir("nope"));
	report("rmdir nonempty", rmdir("d"));
	report("rmdir file", rmdir("f"));
	report("unlink dir", unlink("d"));
	report("unlink missing", unlink("nope"));
	report("open excl existing", open("f", O_CREAT | O_EXCL | O_WRONLY, 0644));
	report("open missing", open("nope", O_RDONLY));
	report("open dir for write", open("d", O_WRONLY));
	report("open nofollow symlink", open("sl", O_RDONLY | O_NOFOLLOW));
	report("open symlink loop", open("loop", O_RDONLY));
	report("open directory flag on file", open("f", O_RDONLY | O_DIRECTORY));
	report("create 256-byte name", open(longname, O_CREAT | O_WRONLY, 0644));
	longname[255] = '\0';
	fd = open(longname, O_CREAT | O_WRONLY, 0644);
	report("create 255-byte name", fd);
	if (fd >= 0)
		close(fd);
	report("unlink 255-byte name", unlink(longname));
	report("link to dir", link("d", "dlink"));
	report("link existing name", link("f", "g"));
	report("link missing", link("nope", "x"));
	report("rename missing", rename("nope", "x"));
	report("rename dir into itself", rename("d", "d/sub/d"));
	report("rename file over dir", rename("f", "e"));
	report("rename dir over file", rename("e", "f"));
	report("rename dir over nonempty dir", rename("e", "d"));
	report("rename noreplace existing", renameat2(AT_FDCWD, "f", AT_FDCWD, "g", RENAME_NOREPLACE));
	report("rename exchange missing", renameat2(AT_FDCWD, "f", AT_FDCWD, "nope", RENAME_EXCHANGE));
	report("rename noreplace|exchange", renameat2(AT_FDCWD, "f", AT_FDCWD, "g",
						       RENAME_NOREPLACE | RENAME_EXCHANGE));
	report("truncate dir", truncate("d", 0));
	report("truncate negative", truncate("f", -1));
	char buf[16];
	report("readlink on file", readlink("f", buf, sizeof(buf)));
	report("getxattr missing", getxattr("f", "user.nope", buf, sizeof(buf)));
	report("setxattr create existing", (setxattr("f", "user.a", "1", 1, 0),
					    setxattr("f", "user.a", "2", 1, XATTR_CREATE)));
	report("setxattr replace missing", setxattr("f", "user.b", "1", 1, XATTR_REPLACE));
	report("getxattr small buffer", getxattr("f", "user.a", buf, 0) == 1 ?
						getxattr("f", "user.a", buf, 0) - 1 : -1);
	report("removexattr missing", removexattr("f", "user.nope"));
	report("user xattr on symlink", lsetxattr("sl", "user.x", "1", 1, 0));
	report("mknod fifo", mknod("fifo", S_IFIFO | 0644, 0));
	report("mknod existing", mknod("fifo", S_IFIFO | 0644, 0));
	report("rename to /proc (cross-device)", rename("g", "/proc/self/drfs-x"));
	report("link across devices", link("f", "/dev/shm/drfs-cross-device-link"));

	if (n < 2)
		return 0;
	/* Unprivileged part: files owned by root, then by the user. */
	chmod(".", 0755);
	mkdir("open", 0777);
	chmod("open", 0777);
	mkdir("sticky", 01777);
	chmod("sticky", 01777);
	wr("sticky/rootfile", "x");
	wr("secret", "s");
	chmod("secret", 0600);
	wr("readable", "r");
	mkdir("closed", 0700);
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		become(a[1]);
		report("user: create in root dir", open("x", O_CREAT | O_WRONLY, 0644));
		report("user: mkdir in root dir", mkdir("xd", 0755));
		report("user: read 0600 root file", open("secret", O_RDONLY));
		report("user: write root file", open("readable", O_WRONLY));
		report("user: chmod root file", chmod("readable", 0777));
		report("user: chown root file", chown("readable", getuid(), getgid()));
		report("user: utimes explicit on root file", utimensat(AT_FDCWD, "readable",
			(struct timespec[2]){ { 1, 0 }, { 1, 0 } }, 0));
		report("user: utimes now on root file", utimensat(AT_FDCWD, "readable", NULL, 0));
		report("user: enter 0700 dir", open("closed/x", O_RDONLY));
		report("user: unlink in sticky dir", unlink("sticky/rootfile"));
		report("user: trusted xattr", setxattr("readable", "trusted.x", "1", 1, 0));
		report("user: create in 0777 dir", (fd = open("open/mine", O_CREAT | O_WRONLY, 0644)));
		if (fd >= 0)
			close(fd);
		report("user: chmod own file", chmod("open/mine", 0600));
		report("user: chown own file to root", chown("open/mine", 0, (gid_t)-1));
		report("user: chgrp own file to a group not held", chown("open/mine", (uid_t)-1, 0));
		report("user: set user xattr on own file", setxattr("open/mine", "user.k", "v", 1, 0));
		report("user: link root file into 0777 dir", link("readable", "open/hl"));
		report("user: rename root file from root dir", rename("readable", "open/r"));
		fflush(stdout);
		_exit(0);
	}
	int status;
	waitpid(pid, &status, 0);
	struct stat st;
	if (stat("open/mine", &st) == 0)
		printf("owner of user's file: %u:%u mode %o\n", st.st_uid, st.st_gid, st.st_mode & 07777);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		int nargs;
		int (*fn)(char **);
	} cmds[] = {
		{ "rename2", 3, cmd_rename2 },   { "seek", 3, cmd_seek },
		{ "fallocate", 4, cmd_fallocate }, { "copy", 5, cmd_copy },
		{ "mmapwrite", 3, cmd_mmapwrite }, { "tmpfile", 3, cmd_tmpfile },
		{ "odirect", 3, cmd_odirect },   { "locks", 1, cmd_locks },
		{ "utimens", 3, cmd_utimens },   { "socket", 1, cmd_socket },
		{ "mkfiles", 2, cmd_mkfiles },
	};

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 3 && !strcmp(argv[1], "battery"))
		return cmd_battery(argv + 2, argc - 2);
	for (size_t i = 0; argc >= 2 && i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (!strcmp(argv[1], cmds[i].name) && argc - 2 >= cmds[i].nargs)
			return cmds[i].fn(argv + 2);
	fprintf(stderr, "usage: fsops rename2|seek|fallocate|copy|mmapwrite|tmpfile|odirect|"
			"locks|utimens|socket|mkfiles|battery ARGS...\n");
	return 2;
}
