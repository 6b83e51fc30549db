/*
 * drfs.c - the drfs command: subcommand dispatch and the helpers the
 * subcommands share.  See CLI.md for the command surface.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../common/common.h"
#include "tools_i.h"

static const char usage_text[] =
	"usage: drfs <command> [options]\n"
	"\n"
	"drfs keeps a service's data directory on a FUSE mount over a backing directory.\n"
	"\n"
	"commands:\n"
	"  init BACKING [--state DIR]          prepare a backing directory\n"
	"  mount BACKING MOUNTPOINT [-o OPTS] [-f]\n"
	"                                      mount it (also: drfs BACKING MOUNTPOINT -o OPTS)\n"
	"  umount MOUNTPOINT                   unmount and wait for the daemon to finish\n"
	"  status MOUNTPOINT|BACKING [--json]  show what drfs knows about a backing directory\n"
	"  journal dump BACKING [--from LSN] [--to LSN]\n"
	"                                      print the journal, one line per record\n"
	"  snapshot BACKING [--tag TAG]        snapshot an unmounted backing directory\n"
	"  snapshots SOURCE [--json]           list the snapshots\n"
	"  diff SOURCE SNAP_A SNAP_B           what changed between two snapshots\n"
	"  restore SOURCE SNAP|@TIME DIR       write a snapshot's tree into DIR\n"
	"  version                             print the version\n"
	"\n"
	"'drfs <command> --help' describes each command.\n";

void say_error(const char *fmt, ...)
{
	va_list ap;

	fputs("drfs: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

int backing_load(const char *path, struct backing *b)
{
	struct stat st;
	struct kv *kv = NULL;
	char *conf;
	const char *v;
	int ret;

	memset(b, 0, sizeof(*b));
	b->path = path_absolute(path);
	if (!b->path) {
		say_error("out of memory");
		return EXIT_FAIL;
	}
	if (stat(b->path, &st) < 0) {
		say_error("backing directory %s: %s; create it and run 'drfs init %s'",
			  b->path, strerror(errno), b->path);
		goto fail;
	}
	if (!S_ISDIR(st.st_mode)) {
		say_error("backing %s is not a directory; give the directory that holds the data",
			  b->path);
		goto fail;
	}
	b->conf_dir = path_join(b->path, DRFS_STATE_NAME);
	conf = path_join(b->conf_dir, DRFS_CONF_NAME);
	ret = kv_load(conf, &kv);
	if (ret == -ENOENT) {
		say_error("%s is not a drfs backing directory (no %s); run 'drfs init %s' first",
			  b->path, conf, b->path);
		free(conf);
		goto fail;
	}
	if (ret) {
		say_error("cannot read %s: %s; restore it or run 'drfs init' on a fresh directory",
			  conf, strerror(-ret));
		free(conf);
		goto fail;
	}
	v = kv_get(kv, "format");
	b->format = v ? atoi(v) : 0;
	if (b->format != DRFS_FORMAT_VERSION) {
		say_error("%s has format %s, this drfs reads format %d; use a matching drfs version",
			  conf, v ? v : "(missing)", DRFS_FORMAT_VERSION);
		free(conf);
		goto fail;
	}
	v = kv_get(kv, "journal_segment_size");
	if (v && (parse_size(v, &b->journal_segment_size) < 0 ||
		  b->journal_segment_size < (4u << 20) || b->journal_segment_size > (1u << 30) ||
		  b->journal_segment_size % 4096)) {
		say_error("%s: journal_segment_size=%s: give a size from 4M to 1G, a multiple of 4K",
			  conf, v);
		free(conf);
		goto fail;
	}
	v = kv_get(kv, "replica");
	if (v && *v && !(b->replica = strdup(v))) {
		free(conf);
		goto fail;
	}
	v = kv_get(kv, "journal_seal_age");
	if (v) {
		char *end;
		unsigned long n = strtoul(v, &end, 10);
		if (*end || n < 1 || n > 86400) {
			say_error("%s: journal_seal_age=%s: give seconds from 1 to 86400", conf, v);
			free(conf);
			goto fail;
		}
		b->journal_seal_age = (unsigned int)n;
	}
	free(conf);
	v = kv_get(kv, "state");
	b->state_dir = strdup(v ? v : b->conf_dir);
	kv_free(kv);
	kv = NULL;
	if (stat(b->state_dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		say_error("state directory %s of %s is missing; mount the disk that holds it",
			  b->state_dir, b->path);
		goto fail;
	}
	return EXIT_OK;
fail:
	kv_free(kv);
	backing_release(b);
	return EXIT_FAIL;
}

void backing_release(struct backing *b)
{
	free(b->path);
	free(b->conf_dir);
	free(b->state_dir);
	free(b->replica);
	memset(b, 0, sizeof(*b));
}

static int mount_record_parse(const char *file, struct mount_record *r)
{
	struct kv *kv;
	const char *v;
	int ret = kv_load(file, &kv);

	memset(r, 0, sizeof(*r));
	if (ret)
		return ret;
	v = kv_get(kv, "pid");
	r->pid = v ? (pid_t)atol(v) : 0;
	v = kv_get(kv, "mountpoint");
	r->mountpoint = v ? strdup(v) : NULL;
	v = kv_get(kv, "backing");
	r->backing = v ? strdup(v) : NULL;
	v = kv_get(kv, "started");
	r->started = v ? strdup(v) : NULL;
	kv_free(kv);
	return 0;
}

int mount_record_read(const char *state_dir, struct mount_record *r)
{
	char *file = path_join(state_dir, "mount");
	int ret = file ? mount_record_parse(file, r) : -ENOMEM;

	free(file);
	return ret;
}

/* /run/drfs/HASH.KIND: a file about the mount on MOUNTPOINT. */
static void run_path(const char *mountpoint, const char *kind, char *buf, size_t len)
{
	unsigned long h = 5381;

	for (const char *p = mountpoint; *p; p++)
		h = h * 33 + (unsigned char)*p;
	snprintf(buf, len, "/run/drfs/%016lx.%s", h, kind);
}

void mount_record_run_path(const char *mountpoint, char *buf, size_t len)
{
	run_path(mountpoint, "mount", buf, len);
}

void journal_stats_path(const char *mountpoint, char *buf, size_t len)
{
	run_path(mountpoint, "journal", buf, len);
}

void transport_path(const char *mountpoint, char *buf, size_t len)
{
	run_path(mountpoint, "transport", buf, len);
}

/* How long the log of a snapshot mount that ended stays in /run/drfs. */
#define LOG_KEEP_S (7 * 24 * 3600)

void run_dir_sweep(void)
{
	DIR *d = opendir("/run/drfs");
	struct dirent *e;
	time_t now = time(NULL);

	if (!d)
		return;
	while ((e = readdir(d))) {
		const char *dot = strchr(e->d_name, '.');
		char path[300], rec[64];
		struct mount_record r;
		struct stat st;
		bool stale;

		if (!dot || dot - e->d_name != 16 ||
		    (strcmp(dot, ".journal") && strcmp(dot, ".transport") && strcmp(dot, ".log")))
			continue;
		snprintf(path, sizeof(path), "/run/drfs/%s", e->d_name);
		snprintf(rec, sizeof(rec), "/run/drfs/%.16s.mount", e->d_name);
		bool live = false, have = mount_record_parse(rec, &r) == 0;
		if (have) {
			live = pid_alive(r.pid);
			mount_record_release(&r);
		}
		if (stat(path, &st))
			continue;
		if (!strcmp(dot, ".log"))
			/* a snapshot mount's only log: kept a week after its mount ended */
			stale = !live && now - st.st_mtime > LOG_KEEP_S;
		else
			/* no record: a mount being set up has one within seconds */
			stale = have ? !live : now - st.st_mtime > 60;
		if (stale)
			unlink(path);
	}
	closedir(d);
}

int mount_record_for_mountpoint(const char *mountpoint, struct mount_record *r)
{
	char *abs = path_absolute(mountpoint);
	struct mount_record tmp;
	int ret;

	memset(r, 0, sizeof(*r));
	if (!abs)
		return -ENOMEM;
	/* The state directory's record is authoritative; /run only points at it. */
	char link[64];
	mount_record_run_path(abs, link, sizeof(link));
	ret = mount_record_parse(link, &tmp);
	if (!ret && (!tmp.mountpoint || strcmp(tmp.mountpoint, abs)))
		ret = -ENOENT;
	if (!ret)
		*r = tmp;
	else
		mount_record_release(&tmp);
	free(abs);
	return ret;
}

void mount_record_release(struct mount_record *r)
{
	free(r->mountpoint);
	free(r->backing);
	free(r->started);
	memset(r, 0, sizeof(*r));
}

bool pid_alive(pid_t pid)
{
	char path[64], *text, *paren;
	bool alive;

	if (pid <= 0 || (kill(pid, 0) < 0 && errno != EPERM))
		return false;
	/* A zombie has finished its work; only its parent has not noticed yet. */
	snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
	if (read_file_small(path, &text, NULL) < 0)
		return false;
	paren = strrchr(text, ')');
	alive = !(paren && paren[1] == ' ' && paren[2] == 'Z');
	free(text);
	return alive;
}

/* Undoes the octal escapes of /proc/self/mountinfo in place. */
static void unescape_mountinfo(char *s)
{
	char *out = s;

	while (*s) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '7' && s[2] && s[3]) {
			*out++ = (char)(((s[1] - '0') << 6) | ((s[2] - '0') << 3) | (s[3] - '0'));
			s += 4;
		} else {
			*out++ = *s++;
		}
	}
	*out = '\0';
}

bool is_mount_point(const char *path, char **fstype)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL;
	size_t cap = 0;
	bool found = false;

	if (!f)
		return false;
	while (getline(&line, &cap, f) > 0) {
		char *save, *tok, *mnt = NULL, *type = NULL;
		int field = 0;

		for (tok = strtok_r(line, " \n", &save); tok; tok = strtok_r(NULL, " \n", &save)) {
			field++;
			if (field == 5)
				mnt = tok;
			if (!strcmp(tok, "-")) {
				type = strtok_r(NULL, " \n", &save);
				break;
			}
		}
		if (!mnt)
			continue;
		unescape_mountinfo(mnt);
		if (!strcmp(mnt, path)) {
			found = true;
			if (fstype) {
				free(*fstype);
				*fstype = type ? strdup(type) : NULL;
			}
		}
	}
	free(line);
	fclose(f);
	return found;
}

static int cmd_version(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	printf("drfs %s (format %d)\n", DRFS_VERSION, DRFS_FORMAT_VERSION);
	return EXIT_OK;
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		int (*fn)(int, char **);
	} cmds[] = {
		{ "init", cmd_init },     { "mount", cmd_mount },   { "umount", cmd_umount },
		{ "unmount", cmd_umount }, { "status", cmd_status }, { "journal", cmd_journal }, { "version", cmd_version },
		{ "snapshot", cmd_snapshot }, { "snapshots", cmd_snapshots }, { "diff", cmd_diff },
		{ "restore", cmd_restore },
	};
	const char *base = strrchr(argv[0], '/');

	base = base ? base + 1 : argv[0];
	/* Invoked by mount(8) as /sbin/mount.fuse.drfs SOURCE MOUNTPOINT -o OPTS. */
	if (!strncmp(base, "mount.", 6))
		return cmd_mount_helper(argc, argv);

	if (argc < 2) {
		fputs(usage_text, stderr);
		return EXIT_USAGE;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		fputs(usage_text, stdout);
		return EXIT_OK;
	}
	if (!strcmp(argv[1], "--version"))
		return cmd_version(argc, argv);
	for (size_t i = 0; i < ARRAY_SIZE(cmds); i++)
		if (!strcmp(argv[1], cmds[i].name))
			return cmds[i].fn(argc - 1, argv + 1);
	/* The bare form: drfs BACKING MOUNTPOINT [-o OPTS]. */
	if (argv[1][0] == '/' || argv[1][0] == '.' || strchr(argv[1], '/'))
		return cmd_mount_helper(argc, argv);
	say_error("unknown command '%s'; run 'drfs --help' for the list", argv[1]);
	return EXIT_USAGE;
}
