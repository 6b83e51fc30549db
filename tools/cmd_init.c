/*
 * cmd_init.c - drfs init: make a directory a drfs backing directory.
 *
 * Writes BACKING/.drfs/drfs.conf (format version, creation time, and the
 * state directory when --state puts it elsewhere).  Existing data in the
 * directory stays where it is and is served by the mount as it is; it
 * becomes the first snapshot of the repository (STATE/repo).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../common/common.h"
#include "../replicate/replicate.h"
#include "tools_i.h"

static const char init_usage[] =
	"usage: drfs init BACKING [--state DIR] [--replica URL]\n"
	"\n"
	"Prepare BACKING (empty or holding data) to be mounted by drfs.  The state\n"
	"directory (journal, snapshot repository, lock, log) is BACKING/.drfs unless\n"
	"--state puts it elsewhere, e.g. on a faster disk.  BACKING is created if\n"
	"missing.  What BACKING holds becomes the first snapshot.\n"
	"\n"
	"options:\n"
	"  --state DIR   keep the state in DIR instead of BACKING/.drfs\n"
	"  --replica URL replicate every mount of BACKING to URL (file:///path or\n"
	"                s3://bucket/prefix?endpoint=...&region=...&path_style=1)\n"
	"  -h, --help    show this help\n";

/* Creates DIR (one level) unless it exists as a directory. */
static int ensure_dir(const char *dir, mode_t mode)
{
	struct stat st;

	if (mkdir(dir, mode) == 0)
		return 0;
	if (errno != EEXIST)
		return -errno;
	if (stat(dir, &st) < 0)
		return -errno;
	return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

int cmd_init(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "state", required_argument, NULL, 's' },
		{ "replica", required_argument, NULL, 'r' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	char *backing = NULL, *conf_dir = NULL, *state = NULL, *conf_path = NULL, *replica = NULL;
	char text[4096], stamp[64];
	int c, ret = EXIT_FAIL, dirfd = -1, len;
	time_t now = time(NULL);
	struct tm tm;

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 's':
			free(state);
			state = path_absolute(optarg);
			break;
		case 'r': {
			struct backend *be;
			struct backend_err err = { 0 };
			if (backend_open(optarg, &be, &err)) {
				say_error("--replica: %s", err.msg);
				free(state);
				free(replica);
				return EXIT_USAGE;
			}
			backend_close(be);
			free(replica);
			replica = strdup(optarg);
			break;
		}
		case 'h':
			fputs(init_usage, stdout);
			free(state);
			free(replica);
			return EXIT_OK;
		default:
			fputs(init_usage, stderr);
			free(state);
			free(replica);
			return EXIT_USAGE;
		}
	}
	if (argc - optind != 1) {
		say_error("init takes exactly one BACKING directory; see 'drfs init --help'");
		free(state);
		free(replica);
		return EXIT_USAGE;
	}
	backing = path_absolute(argv[optind]);
	if (!backing)
		goto out;
	ret = ensure_dir(backing, 0755);
	if (ret) {
		say_error("cannot use %s as a backing directory: %s", backing, strerror(-ret));
		ret = EXIT_FAIL;
		goto out;
	}
	conf_dir = path_join(backing, DRFS_STATE_NAME);
	conf_path = path_join(conf_dir, DRFS_CONF_NAME);
	if (access(conf_path, F_OK) == 0) {
		say_error("%s is already a drfs backing directory; mount it with 'drfs mount %s MOUNTPOINT'",
			  backing, backing);
		ret = EXIT_FAIL;
		goto out;
	}
	ret = ensure_dir(conf_dir, 0700);
	if (!ret && state)
		ret = ensure_dir(state, 0700);
	if (ret) {
		say_error("cannot create the state directory %s: %s", state ? state : conf_dir,
			  strerror(-ret));
		ret = EXIT_FAIL;
		goto out;
	}
	gmtime_r(&now, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
	len = snprintf(text, sizeof(text),
		       "# drfs backing directory configuration; see docs/format.md\n"
		       "format=%d\ncreated=%s\n%s%s%s%s%s%s",
		       DRFS_FORMAT_VERSION, stamp, state ? "state=" : "", state ? state : "",
		       state ? "\n" : "", replica ? "replica=" : "", replica ? replica : "",
		       replica ? "\n" : "");
	dirfd = open(conf_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	ret = dirfd < 0 ? -errno : write_file_durable(dirfd, DRFS_CONF_NAME, text, (size_t)len);
	if (ret) {
		say_error("cannot write %s: %s", conf_path, strerror(-ret));
		ret = EXIT_FAIL;
		goto out;
	}
	printf("initialised %s (state in %s)\n", backing, state ? state : conf_dir);
	/* existing data becomes the first snapshot; an empty tree gets one too (cheap) */
	struct backing b;
	ret = backing_load(backing, &b);
	if (ret)
		goto out;
	struct snapshot_request rq = { .tags = "init", .scan = true, .lsn = UINT64_MAX };
	ret = backing_snapshot_say(&b, &rq);
	backing_release(&b);
out:
	if (dirfd >= 0)
		close(dirfd);
	free(backing);
	free(conf_dir);
	free(conf_path);
	free(state);
	free(replica);
	return ret;
}
