/*
 * cmd_mount.c - drfs mount, the mount(8) helper form, and drfs umount.
 *
 * Three ways in, one path: "drfs mount BACKING MNT -o OPTS", the bare
 * "drfs BACKING MNT -o OPTS" that mount.fuse3 uses, and /sbin/mount.fuse.drfs
 * (a link to this binary) that mount(8) runs for "mount -t fuse.drfs".
 *
 * Everything that can be checked is checked before the kernel mount, and the
 * kernel mount happens before the daemon detaches, so every failure is
 * reported on the caller's terminal with a non-zero exit.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "../common/common.h"
#include "../fs/fs.h"
#include "../journal/journal.h"
#include "../replicate/replicate.h"
#include "../store/store.h"
#include "tools_i.h"

static const char mount_usage[] =
	"usage: drfs mount BACKING MOUNTPOINT [-o OPT[,OPT...]] [-f] [-d]\n"
	"       drfs mount --snapshot SNAP|latest|@TIME SOURCE MOUNTPOINT [-o allow_other] [-f]\n"
	"       drfs BACKING MOUNTPOINT [-o OPTS]        (the form mount.fuse3 uses)\n"
	"       mount -t fuse.drfs BACKING MOUNTPOINT [-o OPTS]\n"
	"\n"
	"Mount the drfs backing directory BACKING on MOUNTPOINT.  The daemon detaches\n"
	"once the filesystem is mounted; its log is STATE/drfs.log.\n"
	"\n"
	"options:\n"
	"  -o allow_other       let users other than root use the mount\n"
	"  -o ro                read-only\n"
	"  -o dev,suid,exec     allow device files / set-id programs / execution\n"
	"                       (defaults: nodev,nosuid,exec)\n"
	"  -o noatime,relatime,strictatime,sync,dirsync\n"
	"                       the usual mount flags\n"
	"  -o source=DIR        the backing directory (when BACKING is only a name)\n"
	"  -o max_threads=N     FUSE worker threads (default 16)\n"
	"  -o fuse_uring=auto|on|off\n"
	"                       take requests over io_uring, one queue per CPU (Linux\n"
	"                       6.14+; auto, the default: when the kernel offers it,\n"
	"                       turning on the fuse module's enable_uring as root)\n"
	"  -o flush_interval=MS longest time a change waits for the journal's disk flush\n"
	"                       when nobody asks for it (default 200)\n"
	"  -o journal_truncate  after an unclean stop, replay up to a damaged record even\n"
	"                       though valid records follow it, losing those (drfs refuses\n"
	"                       otherwise and says where the damage is)\n"
	"  -o snapshot_interval=SECONDS\n"
	"                       take a snapshot that often while mounted, when anything\n"
	"                       changed (changes wait while the touched data is read);\n"
	"                       default 600, 0 for none\n"
	"  -o journal_retention=DURATION\n"
	"                       keep the journal so that every moment of the last\n"
	"                       DURATION (seconds, or with s, m, h, d) can be restored\n"
	"                       with 'drfs restore BACKING @TIME'; default 1h, 0 keeps\n"
	"                       only what the next snapshot needs\n"
	"  -o journal_max=SIZE  the journal kept for journal_retention stops growing at\n"
	"                       SIZE (10G, or 20% of the backing filesystem): the oldest\n"
	"                       segments go, with a warning in the log and in 'drfs\n"
	"                       status'; default 10%\n"
	"  -o journal_min_free=SIZE\n"
	"                       the same, and for the journal a replica that is behind\n"
	"                       still needs, when the backing filesystem has less than\n"
	"                       SIZE (or N%) free; default 5%.  The journal that the\n"
	"                       next checkpoint needs is always kept\n"
	"  -o replica=URL       replicate to URL: file:///path, or s3://bucket/prefix with\n"
	"                       ?endpoint=URL&region=R&path_style=1 where needed (default:\n"
	"                       drfs.conf's replica=, set by 'drfs init --replica')\n"
	"  -o noreplica         do not replicate this mount\n"
	"  -o ship_interval=MS  ship the journal to the replica that often (default 1000)\n"
	"  -o replica_bwlimit=RATE\n"
	"                       bytes per second to the replica at most (10M, 1G)\n"
	"  -o nosnapshot        no snapshot at unmount (by default a clean unmount takes\n"
	"                       one into STATE/repo, from the journal since the last)\n"
	"  -f                   stay in the foreground, log to stderr\n"
	"  -d                   log every FUSE request (implies -f)\n"
	"  -h, --help           show this help\n"
	"\n"
	"--snapshot SNAP mounts one snapshot read-only instead: SOURCE is a backing\n"
	"directory, a repository directory or file:///path; SNAP an id prefix (8+ hex\n"
	"digits), 'latest' or @TIME (2026-11-28T17:05:00Z or seconds since the epoch:\n"
	"the newest at or before it).  File data is read from the repository when\n"
	"read; nothing is written to it.  -o allow_other, the mount flags and -f, -d\n"
	"apply; options of a writable mount are refused.  The daemon logs to\n"
	"/run/drfs/*.log (named by 'log=' in its /run/drfs/*.mount record).\n"
	"\n"
	"Permission checks are always done by the kernel (default_permissions).\n";

static const char umount_usage[] =
	"usage: drfs umount MOUNTPOINT\n"
	"\n"
	"Unmount a drfs filesystem and wait until its daemon has finished.\n";

/* A size, or a percentage of the backing filesystem's size. */
struct size_opt {
	bool given, percent;
	uint64_t value;
};

struct mount_opts {
	char kernel[1024];   /* options for the kernel mount */
	char after[256];     /* flags libfuse does not take, applied by a remount after mounting */
	char *source;        /* -o source= */
	unsigned int max_threads;
	int fuse_uring;      /* FS_URING_* */
	unsigned int flush_interval;
	bool journal_truncate;
	bool snapshot_at_umount;  /* take a snapshot after a clean unmount (default; -o nosnapshot) */
	long snapshot_interval;   /* seconds between live snapshots; 0: none; -1: not given */
	long long journal_retention; /* seconds of journal kept for @TIME restores; -1: not given */
	struct size_opt journal_max, journal_min_free;
	char *replica;       /* -o replica=URL (else drfs.conf's) */
	bool noreplica;      /* -o noreplica: do not replicate this mount */
	unsigned int ship_interval; /* ms between journal pieces; 0: default */
	uint64_t replica_bwlimit;   /* bytes per second to the replica; 0: no limit */
	bool debug;
	bool foreground;
	bool remount;        /* -o remount: change the flags of a mounted drfs */
};

static int parse_size_opt(const char *key, const char *value, struct size_opt *o)
{
	size_t n = strlen(value);
	char num[32];

	if (n && value[n - 1] == '%' && n < sizeof(num)) {
		uint64_t pct;
		memcpy(num, value, n - 1);
		num[n - 1] = 0;
		if (!parse_size(num, &pct) && pct <= 100 && !strpbrk(num, "kKmMgGtT")) {
			*o = (struct size_opt){ .given = true, .percent = true, .value = pct };
			return 0;
		}
	} else if (!parse_size(value, &o->value)) {
		o->given = true;
		o->percent = false;
		return 0;
	}
	say_error("mount option %s=%s: give a size (512M, 10G) or a percentage of the backing filesystem (10%%)",
		  key, value);
	return -EINVAL;
}

/* O in bytes for a filesystem of TOTAL bytes; DEFAULT_PCT when not given. */
static uint64_t size_opt_bytes(const struct size_opt *o, uint64_t total, unsigned default_pct)
{
	if (!o->given)
		return total / 100 * default_pct;
	return o->percent ? total / 100 * o->value : o->value;
}

/* Options handed to the kernel mount as they are. */
static const char *const kernel_flags[] = {
	"allow_other", "ro", "rw", "dev", "nodev", "suid", "nosuid", "exec", "noexec",
	"atime", "noatime", "sync", "async", "dirsync",
};
/* Mount flags libfuse 3.14 refuses: set by a remount once mounted. */
static const char *const after_flags[] = {
	"relatime", "norelatime", "strictatime", "nostrictatime", "diratime", "nodiratime",
	"lazytime", "nolazytime",
};
/* Words of fstab and mount(8) that concern them, not us. */
static const char *const ignored_flags[] = {
	"defaults", "auto", "noauto", "nofail", "_netdev", "user", "nouser", "users",
	"owner", "group", "nonempty", "default_permissions", "loop",
};

static bool in_list(const char *s, const char *const *list, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!strcmp(s, list[i]))
			return true;
	return false;
}

/* Parses one -o argument into O.  Returns EXIT_OK or EXIT_USAGE after a message. */
static int parse_opts(const char *arg, struct mount_opts *o)
{
	char *buf = malloc(strlen(arg) + 1), *key, *value;
	const char *cur = arg;
	int ret = EXIT_OK;

	if (!buf)
		return EXIT_FAIL;
	while (opt_next(&cur, buf, &key, &value)) {
		if (!value && in_list(key, kernel_flags, ARRAY_SIZE(kernel_flags))) {
			size_t l = strlen(o->kernel);
			snprintf(o->kernel + l, sizeof(o->kernel) - l, "%s%s", l ? "," : "", key);
		} else if (!value && in_list(key, after_flags, ARRAY_SIZE(after_flags))) {
			size_t l = strlen(o->after);
			snprintf(o->after + l, sizeof(o->after) - l, "%s%s", l ? "," : "", key);
		} else if (!value && in_list(key, ignored_flags, ARRAY_SIZE(ignored_flags))) {
			continue;
		} else if (!strncmp(key, "x-", 2) || !strcmp(key, "comment")) {
			continue;
		} else if (value && (!strcmp(key, "user_id") || !strcmp(key, "group_id") ||
				     !strcmp(key, "rootmode") || !strcmp(key, "fd") ||
				     !strcmp(key, "blksize") || !strcmp(key, "max_read"))) {
			/* What the kernel shows for a FUSE mount; mount(8) repeats it on remount. */
			continue;
		} else if (!strcmp(key, "source") && value && *value) {
			free(o->source);
			o->source = strdup(value);
		} else if (!strcmp(key, "max_threads") && value) {
			char *end;
			unsigned long n = strtoul(value, &end, 10);
			if (*end || n < 1 || n > 1024) {
				say_error("mount option max_threads=%s: give a number from 1 to 1024", value);
				ret = EXIT_USAGE;
				break;
			}
			o->max_threads = (unsigned int)n;
		} else if (!strcmp(key, "fuse_uring") && value) {
			if (!strcmp(value, "auto"))
				o->fuse_uring = FS_URING_AUTO;
			else if (!strcmp(value, "on"))
				o->fuse_uring = FS_URING_ON;
			else if (!strcmp(value, "off"))
				o->fuse_uring = FS_URING_OFF;
			else {
				say_error("mount option fuse_uring=%s: give auto, on or off", value);
				ret = EXIT_USAGE;
				break;
			}
		} else if (!strcmp(key, "flush_interval") && value) {
			char *end;
			unsigned long n = strtoul(value, &end, 10);
			if (*end || n < 1 || n > 60000) {
				say_error("mount option flush_interval=%s: give milliseconds from 1 to 60000", value);
				ret = EXIT_USAGE;
				break;
			}
			o->flush_interval = (unsigned int)n;
		} else if (!strcmp(key, "journal_truncate") && !value) {
			o->journal_truncate = true;
		} else if (!strcmp(key, "nosnapshot") && !value) {
			o->snapshot_at_umount = false;
		} else if (!strcmp(key, "remount") && !value) {
			o->remount = true;
		} else if (!strcmp(key, "debug") && !value) {
			o->debug = o->foreground = true;
		} else if (!strcmp(key, "snapshot_interval") && value) {
			char *end;
			unsigned long n = strtoul(value, &end, 10);
			if (*end || !isdigit((unsigned char)*value) || n > 31 * 86400) {
				say_error("mount option snapshot_interval=%s: give seconds from 0 (none) to 2678400", value);
				ret = EXIT_USAGE;
				break;
			}
			o->snapshot_interval = (long)n;
		} else if (!strcmp(key, "journal_retention") && value) {
			uint64_t secs;
			if (parse_duration(value, &secs) || secs > 366 * 86400ull) {
				say_error("mount option journal_retention=%s: give a duration up to 366d (seconds, or 30m, 1h, 7d)", value);
				ret = EXIT_USAGE;
				break;
			}
			o->journal_retention = (long long)secs;
		} else if (!strcmp(key, "journal_max") && value) {
			if (parse_size_opt(key, value, &o->journal_max)) {
				ret = EXIT_USAGE;
				break;
			}
		} else if (!strcmp(key, "journal_min_free") && value) {
			if (parse_size_opt(key, value, &o->journal_min_free)) {
				ret = EXIT_USAGE;
				break;
			}
		} else if (!strcmp(key, "replica") && value) {
			struct backend *be;
			struct backend_err err = { 0 };
			if (backend_open(value, &be, &err)) {
				say_error("mount option replica: %s", err.msg);
				ret = EXIT_USAGE;
				break;
			}
			backend_close(be);
			free(o->replica);
			o->replica = strdup(value);
		} else if (!strcmp(key, "replica_bwlimit") && value) {
			if (parse_size(value, &o->replica_bwlimit) || !o->replica_bwlimit) {
				say_error("mount option replica_bwlimit=%s: give bytes per second, e.g. 10M", value);
				ret = EXIT_USAGE;
				break;
			}
		} else if (!strcmp(key, "noreplica") && !value) {
			o->noreplica = true;
		} else if (!strcmp(key, "ship_interval") && value) {
			char *end;
			unsigned long n = strtoul(value, &end, 10);
			if (*end || n < 10 || n > 600000) {
				say_error("mount option ship_interval=%s: give milliseconds from 10 to 600000", value);
				ret = EXIT_USAGE;
				break;
			}
			o->ship_interval = (unsigned int)n;
		} else {
			say_error("unknown mount option '%s%s%s'; see 'drfs mount --help'", key,
				  value ? "=" : "", value ? value : "");
			ret = EXIT_USAGE;
			break;
		}
	}
	free(buf);
	return ret;
}

/* The per-mount options of MNT from /proc/self/mountinfo into BUF; 0 or -1. */
static int mount_options_of(const char *mnt, char *buf, size_t len)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL;
	size_t cap = 0;
	int ret = -1;

	if (!f)
		return -1;
	while (getline(&line, &cap, f) > 0) {
		char point[4096], opts[1024];

		/* id parent major:minor root mountpoint options ... */
		if (sscanf(line, "%*s %*s %*s %*s %4095s %1023s", point, opts) == 2 &&
		    !strcmp(point, mnt)) {
			snprintf(buf, len, "%s", opts);
			ret = 0;
		}
	}
	free(line);
	fclose(f);
	return ret;
}

/*
 * Changes the flags of the drfs mounted on MNT_ARG: the current ones are the
 * starting point and the options in OPTS change them in order, as mount(8)
 * does.  BIND_ONLY changes only the mount point's flags (no call reaches the
 * daemon, so it works before the daemon serves); otherwise the superblock is
 * reconfigured too (remount,ro).  The daemon itself is untouched.
 */
static int do_remount(const char *mnt_arg, const char *opts, bool bind_only)
{
	/*
	 * Each word clears CLEAR, then sets SET.  The atime modes are one
	 * setting, the last named wins, and "atime" is the kernel's default,
	 * relatime: a remount naming no mode keeps the mount's, so switching
	 * back from noatime must name one.
	 */
	static const unsigned long modes = MS_NOATIME | MS_RELATIME | MS_STRICTATIME;
	static const struct {
		const char *name;
		unsigned long clear, set;
	} flags[] = {
		{ "ro", 0, MS_RDONLY },            { "rw", MS_RDONLY, 0 },
		{ "nosuid", 0, MS_NOSUID },        { "suid", MS_NOSUID, 0 },
		{ "nodev", 0, MS_NODEV },          { "dev", MS_NODEV, 0 },
		{ "noexec", 0, MS_NOEXEC },        { "exec", MS_NOEXEC, 0 },
		{ "noatime", modes, MS_NOATIME },  { "atime", modes, MS_RELATIME },
		{ "relatime", modes, MS_RELATIME }, { "norelatime", MS_RELATIME, 0 },
		{ "strictatime", modes, MS_STRICTATIME }, { "nostrictatime", MS_STRICTATIME, 0 },
		{ "nodiratime", 0, MS_NODIRATIME }, { "diratime", MS_NODIRATIME, 0 },
		{ "sync", 0, MS_SYNCHRONOUS },     { "async", MS_SYNCHRONOUS, 0 },
		{ "dirsync", 0, MS_DIRSYNC },      { "lazytime", 0, MS_LAZYTIME },
		{ "nolazytime", MS_LAZYTIME, 0 },
	};
	char *mnt = path_absolute(mnt_arg), *fstype = NULL, *buf = NULL, *key, *value;
	char current[1024];
	unsigned long ms = MS_REMOUNT | (bind_only ? MS_BIND : 0);
	int ret = EXIT_FAIL;

	if (!mnt)
		goto out;
	if (!is_mount_point(mnt, &fstype) || !fstype || strcmp(fstype, "fuse.drfs") ||
	    mount_options_of(mnt, current, sizeof(current))) {
		say_error("cannot remount %s: it is not a mounted drfs", mnt);
		goto out;
	}
	buf = malloc(strlen(current) + strlen(opts) + 2);
	if (!buf)
		goto out;
	/* The current flags first, then the requested ones: later words win. */
	for (int pass = 0; pass < 2; pass++) {
		const char *cur = pass ? opts : current;

		while (opt_next(&cur, buf, &key, &value))
			for (size_t i = 0; i < ARRAY_SIZE(flags); i++)
				if (!strcmp(key, flags[i].name))
					ms = (ms & ~flags[i].clear) | flags[i].set;
		/*
		 * The kernel lists no word for strictatime; and with nodiratime
		 * given, a remount naming no mode falls back to relatime.
		 */
		if (pass == 0 && !(ms & modes))
			ms |= MS_STRICTATIME;
	}
	if (mount(NULL, mnt, NULL, ms, NULL) < 0) {
		say_error("cannot remount %s: %s", mnt, strerror(errno));
		goto out;
	}
	ret = EXIT_OK;
out:
	free(buf);
	free(fstype);
	free(mnt);
	return ret;
}

static int write_records(const struct backing *b, const char *mountpoint)
{
	char text[8192], stamp[64], run[64];
	time_t now = time(NULL);
	int fd, len, ret;

	utc_time(now, stamp, sizeof(stamp));
	len = snprintf(text, sizeof(text), "pid=%ld\nmountpoint=%s\nbacking=%s\nstarted=%s\n",
		       (long)getpid(), mountpoint, b->path, stamp);
	fd = open(b->state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ret = write_file_durable(fd, "mount", text, (size_t)len);
	close(fd);
	if (ret)
		return ret;
	mkdir("/run/drfs", 0755);
	run_dir_sweep();
	mount_record_run_path(mountpoint, run, sizeof(run));
	fd = open("/run/drfs", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return 0; /* status by mount point will not work; by backing it will */
	write_file_durable(fd, strrchr(run, '/') + 1, text, (size_t)len);
	close(fd);
	return 0;
}

static void remove_records(const struct backing *b, const char *mountpoint)
{
	char *file = path_join(b->state_dir, "mount"), run[64];

	if (file)
		unlink(file);
	free(file);
	mount_record_run_path(mountpoint, run, sizeof(run));
	unlink(run);
	transport_path(mountpoint, run, sizeof(run));
	unlink(run);
	/* the journal counters go after the journal's close, which writes them once more */
}

/*
 * Detaches from the terminal once everything is in place: the parent waits
 * for the child's word, so it exits only when the child is ready to serve.
 * Returns in the child with *NOTIFY_FD set; never returns in the parent.
 */
static int daemonize(int *notify_fd)
{
	int p[2];
	pid_t pid;
	char c = 1;

	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid > 0) {
		close(p[1]);
		if (read(p[0], &c, 1) != 1)
			c = 1;
		_exit(c == 0 ? EXIT_OK : EXIT_FAIL);
	}
	close(p[0]);
	setsid();
	if (chdir("/") < 0)
		return -errno;
	*notify_fd = p[1];
	return 0;
}

static void notify_parent(int fd, bool ok)
{
	char c = ok ? 0 : 1;

	if (fd < 0)
		return;
	if (write(fd, &c, 1) != 1)
		log_warn("could not tell the starting process the mount is ready");
	close(fd);
}

/*
 * The absolute path of MNT_ARG when it can be mounted on: an existing
 * directory that is not a mount point, not inside BACKING (may be NULL; the
 * next snapshot would walk into it; BACKING itself only when SAME_OK), with
 * /dev/fuse usable.  NULL after a one-line message.  The caller frees.
 */
static char *mountpoint_check(const char *mnt_arg, const char *backing, bool same_ok)
{
	struct stat st;
	char *fstype = NULL, *mnt = path_absolute(mnt_arg);

	if (!mnt) {
		say_error("out of memory");
		return NULL;
	}
	if (stat(mnt, &st) < 0) {
		say_error("mountpoint %s: %s; create it with 'mkdir -p %s'", mnt, strerror(errno), mnt);
		goto fail;
	}
	if (!S_ISDIR(st.st_mode)) {
		say_error("mountpoint %s is not a directory; give an empty directory", mnt);
		goto fail;
	}
	if (is_mount_point(mnt, &fstype)) {
		say_error("%s is already a mount point (%s); unmount it first or choose another directory",
			  mnt, fstype ? fstype : "unknown type");
		goto fail;
	}
	size_t bl = backing ? strlen(backing) : 0;
	if (backing && !strncmp(mnt, backing, bl) && (mnt[bl] == '/' || backing[bl - 1] == '/' ||
						     (!mnt[bl] && !same_ok))) {
		say_error("mountpoint %s lies inside the backing directory %s; choose a directory outside it",
			  mnt, backing);
		goto fail;
	}
	int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		say_error("cannot open /dev/fuse: %s; install fuse3 and load the module (modprobe fuse)",
			  strerror(errno));
		goto fail;
	}
	close(fd);
	free(fstype);
	return mnt;
fail:
	free(fstype);
	free(mnt);
	return NULL;
}

/* Points stdin and stdout at /dev/null and stderr at LOG_PATH. */
static void redirect_stdio(const char *log_path)
{
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);
	int log = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);

	if (null >= 0) {
		dup2(null, 0);
		dup2(null, 1);
		if (log < 0)
			dup2(null, 2);
		close(null);
	}
	if (log >= 0) {
		dup2(log, 2);
		close(log);
	}
}

static int do_mount(const char *source, const char *mnt_arg, struct mount_opts *o)
{
	struct fs_config cfg = { 0 };
	struct drfs_fs *fs = NULL;
	struct backing b;
	struct mount_record rec;
	char *mnt = NULL, *lock_path = NULL, *log_path = NULL, *fstype = NULL, *journal_dir = NULL;
	char stats[64], transport[64];
	int ret, lock_fd = -1, notify_fd = -1;

	if (o->remount) {
		char all[1300];
		snprintf(all, sizeof(all), "%s,%s", o->kernel, o->after);
		return do_remount(mnt_arg, all, false);
	}
	ret = backing_load(o->source ? o->source : source, &b);
	if (ret)
		return ret;
	ret = EXIT_FAIL;
	mnt = mountpoint_check(mnt_arg, b.path, true);
	if (!mnt)
		goto out;

	lock_path = path_join(b.state_dir, "lock");
	lock_fd = lock_path ? open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600) : -1;
	if (lock_fd < 0) {
		say_error("cannot open %s: %s; check the state directory", lock_path, strerror(errno));
		goto out;
	}
	/*
	 * A daemon whose filesystem was just unmounted still holds the lock
	 * while it finishes (its snapshot at unmount can take a while; so can
	 * a 'drfs snapshot' of the unmounted backing); a mount right after
	 * waits for it, up to 10 minutes.
	 */
	for (int i = 0; i < 12000 && flock(lock_fd, LOCK_EX | LOCK_NB) < 0; i++) {
		/* No record, or its mount point no longer mounted: the holder is ending. */
		bool finishing = mount_record_read(b.state_dir, &rec) != 0 || !rec.mountpoint ||
				 !is_mount_point(rec.mountpoint, NULL);
		mount_record_release(&rec);
		if (!finishing)
			break;
		if (i == 40)
			fprintf(stderr, "drfs: waiting for the drfs that holds %s to finish (a snapshot at unmount, or 'drfs snapshot')\n",
				b.state_dir);
		usleep(50000);
	}
	if (flock(lock_fd, LOCK_EX | LOCK_NB) < 0) {
		if (mount_record_read(b.state_dir, &rec) == 0 && rec.mountpoint) {
			say_error("%s is in use by another drfs (pid %ld, mounted on %s); unmount it first with 'drfs umount %s'",
				  b.state_dir, (long)rec.pid, rec.mountpoint, rec.mountpoint);
			mount_record_release(&rec);
		} else {
			say_error("%s is in use by another drfs process; stop it first", b.state_dir);
		}
		goto out;
	}

	journal_dir = path_join(b.state_dir, "journal");
	if (!journal_dir)
		goto out;
	if (!journal_exists(journal_dir)) {
		/* a test aid: start the log at a high LSN to exercise 64-bit positions */
		const char *first = getenv("DRFS_JOURNAL_FIRST_LSN");
		int jr = journal_create(journal_dir, b.journal_segment_size,
					first ? strtoull(first, NULL, 0) : 0);
		if (jr) {
			say_error("cannot create the journal in %s: %s; check space and permissions",
				  journal_dir, strerror(-jr));
			goto out;
		}
	}
	journal_stats_path(mnt, stats, sizeof(stats));
	cfg.state_dir = b.state_dir;
	cfg.journal_dir = journal_dir;
	cfg.journal_stats = stats;
	transport_path(mnt, transport, sizeof(transport));
	unlink(transport);   /* a previous mount's, until this one says */
	cfg.transport_path = transport;
	cfg.backing = b.path;
	cfg.mountpoint = mnt;
	/* The source shown in /proc/mounts: the name given with -o source=, else the absolute backing path. */
	cfg.fsname = o->source ? source : b.path;
	cfg.kernel_opts = o->kernel;
	cfg.debug = o->debug;
	cfg.max_threads = o->max_threads;
	cfg.fuse_uring = o->fuse_uring;
	cfg.flush_interval_ms = o->flush_interval;
	cfg.seal_age_ms = b.journal_seal_age * 1000u;
	cfg.journal_truncate = o->journal_truncate;
	/* a test aid: replay as after a machine restart (namespace records too) */
	const char *full = getenv("DRFS_REPLAY_FULL");
	cfg.full_replay = full && *full && strcmp(full, "0");
	/* a test aid: the Nth journal flush fails */
	const char *failn = getenv("DRFS_JOURNAL_FAIL_FLUSH");
	cfg.fail_flush_at = failn ? (unsigned int)strtoul(failn, NULL, 10) : 0;
	uint64_t hold, latest = 0;
	uint64_t retention = o->journal_retention >= 0 ? (uint64_t)o->journal_retention
						       : JOURNAL_RETENTION_DEFAULT;
	unsigned interval = o->snapshot_interval >= 0 ? (unsigned)o->snapshot_interval
						      : SNAPSHOT_INTERVAL_DEFAULT;
	cfg.journal_hold_lsn = backing_hold_lsn(&b, retention, &hold, &latest) == 0 ? hold
										    : UINT64_MAX;
	struct statvfs sv;
	uint64_t fs_bytes = statvfs(b.state_dir, &sv) == 0 ? (uint64_t)sv.f_blocks * sv.f_frsize : 0;
	cfg.journal_max = size_opt_bytes(&o->journal_max, fs_bytes, JOURNAL_MAX_PCT_DEFAULT);
	cfg.journal_min_free = size_opt_bytes(&o->journal_min_free, fs_bytes, JOURNAL_MIN_FREE_PCT_DEFAULT);
	if (fs_open(&cfg, &fs)) {
		say_error("mounting %s on %s failed; see the message above", b.path, mnt);
		goto out;
	}
	if (*o->after && do_remount(mnt, o->after, true) != EXIT_OK) {
		say_error("mounted %s, but could not apply '%s'; unmounting", mnt, o->after);
		goto out_close;
	}
	if (!o->foreground) {
		if (daemonize(&notify_fd) < 0) {
			say_error("cannot detach from the terminal: %s", strerror(errno));
			goto out_close;
		}
		log_path = path_join(b.state_dir, "drfs.log");
		redirect_stdio(log_path);
		log_set_timestamps(true);
	}
	if (write_records(&b, mnt) < 0)
		log_warn("cannot record the mount in %s; 'drfs status' will not see it", b.state_dir);
	log_info("mounted %s on %s (pid %ld)", b.path, mnt, (long)getpid());
	notify_parent(notify_fd, true);
	notify_fd = -1;
	struct snapctl *ctl = NULL;
	if (snapctl_start(&b, fs, interval, retention, latest,
			  cfg.journal_hold_lsn == UINT64_MAX ? 0 : cfg.journal_hold_lsn, &ctl))
		log_warn("snapshots of the live mount are off (see above); one is still taken at unmount");
	struct replicator *rep = NULL;
	const char *replica = o->noreplica ? NULL : o->replica ? o->replica : b.replica;
	if (replica) {
		char *repo_dir = backing_repo_dir(&b);
		struct replicator_config rc = {
			.url = replica,
			.state_dir = b.state_dir,
			.repo_dir = repo_dir,
			.journal_dir = journal_dir,
			.journal = fs_journal(fs),
			.start_lsn = latest,
			.ship_interval_ms = o->ship_interval,
			.bwlimit = o->replica_bwlimit,
		};
		/* its threads (and the backend's) must leave the stop signals to fs_serve */
		sigset_t all, old;
		sigfillset(&all);
		pthread_sigmask(SIG_BLOCK, &all, &old);
		int rret = replicator_start(&rc, &rep);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		if (rret)
			log_error("replication to %s is off for this mount (see above)", replica);
		else
			snapctl_on_snapshot(ctl, (void (*)(void *))replicator_kick, rep);
		free(repo_dir);
	}
	ret = fs_serve(fs) ? EXIT_FAIL : EXIT_OK;
	snapctl_stop(ctl);
	remove_records(&b, mnt);
	log_info("unmounted %s", mnt);
	if (rep) {
		struct journal_stats js;
		journal_get_stats(fs_journal(fs), &js);
		replicator_detach_journal(rep, js.durable_lsn);
	}
	fs_close(fs);
	fs = NULL;
	unlink(stats);   /* closing the journal wrote its counters once more */
	/* the tree is quiet and the journal closed: the snapshot at unmount */
	if (ret == EXIT_OK && o->snapshot_at_umount) {
		char msg[1024];
		struct snapshot_request rq = { .tags = "umount", .lsn = UINT64_MAX,
					       .only_if_changed = true };
		/* a stop signal now waits for the snapshot (the process ends right after) */
		sigset_t stop;
		sigemptyset(&stop);
		sigaddset(&stop, SIGTERM);
		sigaddset(&stop, SIGINT);
		sigaddset(&stop, SIGHUP);
		pthread_sigmask(SIG_BLOCK, &stop, NULL);
		int sret = backing_snapshot(&b, &rq, NULL, msg, sizeof(msg));
		if (sret < 0)
			log_error("no snapshot at unmount: %s", msg);
		else
			log_info("at unmount: %s", msg);
	}
	if (rep) {
		/* the journal is closed: ship its end and the last snapshot, for a bounded time */
		uint64_t end;
		uint32_t tl;
		if (journal_log_end(journal_dir, &end, &tl) == 0)
			replicator_detach_journal(rep, end);
		replicator_stop(rep, 30);
	}
out_close:
	fs_close(fs);
out:
	notify_parent(notify_fd, false);
	if (lock_fd >= 0)
		close(lock_fd);
	free(fstype);
	free(lock_path);
	free(log_path);
	free(journal_dir);
	free(mnt);
	backing_release(&b);
	return ret;
}

/* ---- drfs mount --snapshot: one snapshot, read-only (fs/snapshot.c) ---- */

struct snapmount_run {
	const struct mount_opts *o;
	const char *mnt;
	const char *repo;
	char id[65];
	char record[64];     /* /run/drfs/HASH.mount */
	char log_path[64];   /* /run/drfs/HASH.log */
	int notify_fd;
	bool recorded;       /* the record is written: remove it at the end */
};

/*
 * Called by fs_serve_snapshot() once mounted: applies the flags libfuse
 * does not take, detaches, and writes the record 'drfs umount' finds the
 * daemon by (/run/drfs only; nothing goes near the repository).
 */
static int snapmount_ready(void *arg)
{
	struct snapmount_run *run = arg;
	char text[8192], stamp[64];
	time_t now = time(NULL);
	int fd, len, ret;

	if (*run->o->after && do_remount(run->mnt, run->o->after, true) != EXIT_OK)
		return -EINVAL;
	if (!run->o->foreground) {
		ret = daemonize(&run->notify_fd);
		if (ret) {
			say_error("cannot detach from the terminal: %s", strerror(-ret));
			return ret;
		}
		redirect_stdio(run->log_path);
		log_set_timestamps(true);
	}
	utc_time(now, stamp, sizeof(stamp));
	len = snprintf(text, sizeof(text),
		       "pid=%ld\nmountpoint=%s\nsnapshot=%s\nrepository=%s\nstarted=%s\nlog=%s\n",
		       (long)getpid(), run->mnt, run->id, run->repo, stamp, run->log_path);
	mkdir("/run/drfs", 0755);
	fd = open("/run/drfs", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || write_file_durable(fd, strrchr(run->record, '/') + 1, text, (size_t)len))
		log_warn("cannot write %s; 'drfs umount %s' will not wait for this daemon",
			 run->record, run->mnt);
	else
		run->recorded = true;
	if (fd >= 0)
		close(fd);
	log_info("mounted snapshot %.16s of %s on %s (pid %ld)", run->id, run->repo, run->mnt,
		 (long)getpid());
	notify_parent(run->notify_fd, true);
	run->notify_fd = -1;
	return 0;
}

/* Options of a writable mount: a snapshot mount refuses them. */
static const char *snapmount_refused(const struct mount_opts *o)
{
	char *buf = malloc(strlen(o->kernel) + 1), *key, *value;
	const char *cur = o->kernel, *bad = NULL;

	while (buf && !bad && opt_next(&cur, buf, &key, &value))
		if (!strcmp(key, "rw"))
			bad = "rw";
	free(buf);
	if (bad)
		return bad;
	if (o->remount)
		return "remount";
	if (o->journal_truncate)
		return "journal_truncate";
	if (o->flush_interval)
		return "flush_interval";
	if (o->snapshot_interval >= 0)
		return "snapshot_interval";
	if (o->journal_retention >= 0)
		return "journal_retention";
	if (o->journal_max.given || o->journal_min_free.given)
		return "journal_max";
	if (o->replica || o->noreplica)
		return "replica";
	if (o->ship_interval)
		return "ship_interval";
	if (o->replica_bwlimit)
		return "replica_bwlimit";
	if (o->max_threads)
		return "max_threads";
	if (o->fuse_uring)
		return "fuse_uring";
	return NULL;
}

static int do_snapshot_mount(const char *spec, const char *source, const char *mnt_arg,
			     struct mount_opts *o)
{
	struct snapmount_run run = { .o = o, .notify_fd = -1 };
	struct snapmount_config cfg = { 0 };
	struct repo *r = NULL;
	struct snap_info s;
	char *mnt = NULL, *backing = NULL, *fstype = NULL;
	const char *bad = snapmount_refused(o);
	int ret = EXIT_FAIL;

	if (bad) {
		say_error("mount option '%s' is for a writable mount; a --snapshot mount is read-only (see 'drfs mount --help')",
			  bad);
		return EXIT_USAGE;
	}
	if (source_open(o->source ? o->source : source, &r, &backing))
		return EXIT_FAIL;
	ret = source_resolve(r, spec, &s) ? EXIT_FAIL : EXIT_OK;
	if (ret)
		goto out;
	ret = EXIT_FAIL;
	mnt = mountpoint_check(mnt_arg, backing, false);
	if (!mnt)
		goto out;
	/* inside the backing, the next snapshot's scan would descend into it */

	store_id_hex(&s.id, run.id);
	if (spec[0] == '@') {
		char when[40];
		utc_time(s.time_ns / 1000000000, when, sizeof(when));
		fprintf(stderr, "drfs: showing snapshot %.16s of %s, the newest at or before %s; 'drfs restore %s %s DIR' also replays the journal up to that time\n",
			run.id, when, spec + 1, o->source ? o->source : source, spec);
	}
	run.mnt = mnt;
	run.repo = repo_dir(r);
	mount_record_run_path(mnt, run.record, sizeof(run.record));
	snprintf(run.log_path, sizeof(run.log_path), "%.*s.log",
		 (int)(strrchr(run.record, '.') - run.record), run.record);
	cfg.mountpoint = mnt;
	cfg.kernel_opts = o->kernel;
	cfg.debug = o->debug;
	cfg.foreground = o->foreground;
	cfg.ready = snapmount_ready;
	cfg.ready_arg = &run;
	ret = fs_serve_snapshot(r, &s, &cfg);
	if (ret) {
		say_error("mounting snapshot %.16s on %s failed: %s; see the message above", run.id,
			  mnt, strerror(-ret));
		ret = EXIT_FAIL;
	} else {
		ret = EXIT_OK;
	}
	if (run.recorded) {
		unlink(run.record);
		log_info("unmounted %s", mnt);
	}
out:
	notify_parent(run.notify_fd, false);
	repo_close(r);
	free(fstype);
	free(backing);
	free(mnt);
	return ret;
}

int cmd_mount(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "options", required_argument, NULL, 'o' },
		{ "foreground", no_argument, NULL, 'f' },
		{ "snapshot", required_argument, NULL, 'S' },
		{ 0 },
	};
	struct mount_opts o = { .snapshot_at_umount = true, .snapshot_interval = -1, .journal_retention = -1 };
	const char *snapshot = NULL;
	int c, ret;

	/* GNU getopt also takes options after the operands, as mount.fuse3 puts them. */
	optind = 1;
	while ((c = getopt_long(argc, argv, "ho:fd", longopts, NULL)) != -1) {
		switch (c) {
		case 'h':
			fputs(mount_usage, stdout);
			ret = EXIT_OK;
			goto out;
		case 'o':
			if ((ret = parse_opts(optarg, &o)))
				goto out;
			break;
		case 'f':
			o.foreground = true;
			break;
		case 'd':
			o.debug = o.foreground = true;
			break;
		case 'S':
			snapshot = optarg;
			break;
		default:
			fputs(mount_usage, stderr);
			ret = EXIT_USAGE;
			goto out;
		}
	}
	if (argc - optind > 2) {
		say_error("unexpected argument '%s'; see 'drfs mount --help'", argv[optind + 2]);
		ret = EXIT_USAGE;
		goto out;
	}
	if (argc - optind == 2) {
		if (snapshot)
			ret = do_snapshot_mount(snapshot, argv[optind], argv[optind + 1], &o);
		else
			ret = do_mount(argv[optind], argv[optind + 1], &o);
		goto out;
	}
	if (snapshot)
		say_error("mount --snapshot needs SOURCE and MOUNTPOINT; see 'drfs mount --help'");
	else
		say_error("mount needs BACKING and MOUNTPOINT; see 'drfs mount --help'");
	ret = EXIT_USAGE;
out:
	free(o.source);
	return ret;
}

/*
 * mount(8) runs /sbin/mount.fuse.drfs SOURCE MOUNTPOINT [-o OPTS] [-f] [-n]
 * [-s] [-v], where -f means "fake": do nothing.  The bare "drfs BACKING MNT"
 * form arrives here too, with -f meaning foreground as for drfs mount.
 */
int cmd_mount_helper(int argc, char **argv)
{
	const char *base = strrchr(argv[0], '/');
	bool helper = !strncmp(base ? base + 1 : argv[0], "mount.", 6);
	struct mount_opts o = { .snapshot_at_umount = true, .snapshot_interval = -1, .journal_retention = -1 };
	const char *pos[2] = { NULL, NULL };
	int npos = 0, ret = EXIT_OK;
	bool fake = false;

	/*
	 * mount(8) leaves out "dev" and "suid" because they are its defaults for
	 * root; the FUSE defaults are the opposite, so restore mount(8)'s.  A
	 * "nodev" or "nosuid" in the options still wins: later options override.
	 */
	bool remount = false;
	for (int i = 1; i + 1 < argc; i++) {
		if (strcmp(argv[i], "-o"))
			continue;
		char *buf = malloc(strlen(argv[i + 1]) + 1), *key, *value;
		const char *cur = argv[i + 1];
		while (buf && opt_next(&cur, buf, &key, &value))
			remount |= !strcmp(key, "remount");
		free(buf);
	}
	if (helper && getuid() == 0 && !remount)
		ret = parse_opts("dev,suid", &o);

	for (int i = 1; i < argc && !ret; i++) {
		const char *a = argv[i];

		if (!strcmp(a, "-o") && i + 1 < argc)
			ret = parse_opts(argv[++i], &o);
		else if (!strncmp(a, "-o", 2) && a[2])
			ret = parse_opts(a + 2, &o);
		else if (!strcmp(a, "-f"))
			helper ? (void)(fake = true) : (void)(o.foreground = true);
		else if (!strcmp(a, "-d"))
			o.debug = o.foreground = true;
		else if (helper && (!strcmp(a, "-n") || !strcmp(a, "-s") || !strcmp(a, "-v")))
			continue;
		else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			fputs(mount_usage, stdout);
			free(o.source);
			return EXIT_OK;
		} else if (a[0] == '-') {
			say_error("unknown option '%s'; see 'drfs mount --help'", a);
			ret = EXIT_USAGE;
		} else if (npos < 2) {
			pos[npos++] = a;
		} else {
			say_error("unexpected argument '%s'; see 'drfs mount --help'", a);
			ret = EXIT_USAGE;
		}
	}
	if (!ret && npos != 2) {
		say_error("mount needs BACKING and MOUNTPOINT; see 'drfs mount --help'");
		ret = EXIT_USAGE;
	}
	if (!ret && !fake)
		ret = do_mount(pos[0], pos[1], &o);
	free(o.source);
	return ret;
}

int cmd_umount(int argc, char **argv)
{
	struct mount_record rec;
	char *mnt, *fstype = NULL;
	int ret = EXIT_FAIL;

	if (argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
		fputs(umount_usage, stdout);
		return EXIT_OK;
	}
	if (argc != 2 || argv[1][0] == '-') {
		say_error("umount takes one MOUNTPOINT; see 'drfs umount --help'");
		return EXIT_USAGE;
	}
	mnt = path_absolute(argv[1]);
	if (!mnt)
		return EXIT_FAIL;
	if (!is_mount_point(mnt, &fstype)) {
		say_error("%s is not mounted", mnt);
		goto out;
	}
	if (!fstype || strcmp(fstype, "fuse.drfs")) {
		say_error("%s is a %s mount, not drfs; use umount(8) for it", mnt,
			  fstype ? fstype : "unknown");
		goto out;
	}
	if (mount_record_for_mountpoint(mnt, &rec) < 0)
		memset(&rec, 0, sizeof(rec));
	/*
	 * A file just closed may be released a moment later (the kernel
	 * defers some final closes): a busy mount gets a second before the
	 * answer is that a process uses it.
	 */
	int uret;
	for (int i = 0; (uret = umount2(mnt, 0)) < 0 && errno == EBUSY && i < 10; i++)
		usleep(100000);
	if (uret < 0) {
		if (errno == EBUSY)
			say_error("%s is busy: a process still uses it (see 'fuser -vm %s'); stop it and retry",
				  mnt, mnt);
		else
			say_error("cannot unmount %s: %s", mnt, strerror(errno));
		mount_record_release(&rec);
		goto out;
	}
	/* The daemon finishes its work after the kernel lets go: wait for it. */
	for (int i = 0; i < 6000 && pid_alive(rec.pid); i++)
		usleep(10000);
	if (pid_alive(rec.pid)) {
		say_error("%s is unmounted but its daemon (pid %ld) is still running; see its log",
			  mnt, (long)rec.pid);
		mount_record_release(&rec);
		goto out;
	}
	mount_record_release(&rec);
	ret = EXIT_OK;
out:
	free(fstype);
	free(mnt);
	return ret;
}
