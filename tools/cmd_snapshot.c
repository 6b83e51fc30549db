/*
 * cmd_snapshot.c - drfs snapshot, snapshots, diff and restore: making
 * snapshots of a backing directory and reading them back.
 *
 * A snapshot of a backing directory is taken when nothing writes to it: by
 * 'drfs init' of a directory holding data, by 'drfs snapshot' on an
 * unmounted backing, and by the daemon when it unmounts cleanly.  Each is
 * built from the previous one and the journal range since (store/build.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>

#include "../common/common.h"
#include "../journal/journal.h"
#include "../replicate/replicate.h"
#include "../store/store.h"
#include "tools_i.h"

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void format_time(int64_t ns, char *buf, size_t len)
{
	time_t t = (time_t)(ns / 1000000000);
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

char *backing_repo_dir(const struct backing *b)
{
	return path_join(b->state_dir, "repo");
}

int journal_log_end(const char *dir, uint64_t *lsn, uint32_t *timeline)
{
	struct jsuper sb;
	struct jreader *rd;
	struct jrec r;
	int ret;

	*lsn = 0;
	*timeline = 0;
	if (!journal_exists(dir))
		return 0;
	ret = jsuper_read(dir, &sb);
	if (ret)
		return ret;
	if (!(sb.flags & JSUPER_CLEAN))
		return -EUCLEAN;
	*timeline = sb.timeline;
	ret = jreader_open(dir, UINT64_MAX, &rd);
	if (ret)
		return ret;
	while ((ret = jreader_next(rd, &r)) == 1)
		;
	*lsn = jreader_lsn(rd);
	jreader_close(rd);
	return ret;
}

int backing_snapshot(const struct backing *b, const struct snapshot_request *rq,
		     struct snap_info *out, char *msg, size_t msglen)
{
	char *repo_dir = backing_repo_dir(b);
	char *journal_dir = path_join(b->state_dir, "journal");
	struct repo *r = NULL;
	struct snap_info parent, s;
	struct snap_build_stats st;
	uint64_t lsn = rq->lsn;
	uint32_t timeline = 0;
	int fd = -1, ret;
	double t0 = now_s();

#define FAIL(...) snprintf(msg, msglen, __VA_ARGS__)
	if (!repo_dir || !journal_dir) {
		ret = -ENOMEM;
		FAIL("out of memory");
		goto out;
	}
	if (lsn == UINT64_MAX) {
		ret = journal_log_end(journal_dir, &lsn, &timeline);
		if (ret == -EUCLEAN) {
			FAIL("the journal in %s was not closed cleanly; mount %s once (it replays the journal), unmount it, then take the snapshot",
			     journal_dir, b->path);
			goto out;
		}
		if (ret) {
			FAIL("cannot read the journal in %s: %s", journal_dir, strerror(-ret));
			goto out;
		}
	} else {
		struct jsuper sb;
		timeline = jsuper_read(journal_dir, &sb) == 0 ? sb.timeline : 0;
	}
	if (!repo_exists(repo_dir)) {
		ret = repo_create(repo_dir, NULL);
		if (ret) {
			FAIL("cannot create the repository %s: %s", repo_dir, strerror(-ret));
			goto out;
		}
	}
	ret = repo_open(repo_dir, true, &r);
	if (ret == -EWOULDBLOCK) {
		FAIL("the repository %s is being written by another drfs; wait for it to finish",
		     repo_dir);
		goto out;
	}
	if (ret) {
		FAIL("cannot open the repository %s (%s): %s", repo_dir, strerror(-ret),
		     log_last_error());
		goto out;
	}
	bool have_parent = !rq->scan && snap_resolve(r, "latest", &parent) == 0;
	if (have_parent && rq->only_if_changed && parent.lsn == lsn) {
		char hex[65];
		store_id_hex(&parent.id, hex);
		snprintf(msg, msglen, "no change since snapshot %.16s (LSN %llu); none taken", hex,
			 (unsigned long long)lsn);
		ret = 1;
		goto out;
	}
	fd = open(b->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		FAIL("cannot open %s: %s", b->path, strerror(errno));
		goto out;
	}
	struct snap_build sb = {
		.backing_fd = fd,
		.skip_name = DRFS_STATE_NAME,
		.journal_dir = journal_dir,
		.parent = have_parent ? &parent : NULL,
		.timeline = timeline,
		.lsn = lsn,
		.tags = rq->tags,
	};
	ret = snap_build(r, &sb, &s, &st);
	if (ret) {
		FAIL("snapshot of %s failed (%s): %s", b->path, strerror(-ret), log_last_error());
		goto out;
	}
	char hex[65];
	store_id_hex(&s.id, hex);
	snprintf(msg, msglen,
		 "snapshot %.16s of %s at LSN %llu: %llu files, %.1f MiB; walked %llu of %llu directories; read %llu files, %llu bytes; %llu new chunks, %llu bytes; added %llu bytes; from the %s; %.2f s",
		 hex, b->path, (unsigned long long)lsn, (unsigned long long)st.files,
		 st.bytes / 1048576.0, (unsigned long long)(st.dirs - st.dirs_skipped),
		 (unsigned long long)st.dirs, (unsigned long long)st.files_read,
		 (unsigned long long)st.bytes_read, (unsigned long long)st.chunks_new,
		 (unsigned long long)st.chunk_bytes_new, (unsigned long long)s.added, s.source,
		 now_s() - t0);
	if (out)
		*out = s;
#undef FAIL
out:
	if (fd >= 0)
		close(fd);
	repo_close(r);
	free(repo_dir);
	free(journal_dir);
	return ret;
}

int backing_snapshot_say(const struct backing *b, const struct snapshot_request *rq)
{
	char msg[1024];

	log_capture_errors(true);
	if (backing_snapshot(b, rq, NULL, msg, sizeof(msg))) {
		say_error("%s", msg);
		return EXIT_FAIL;
	}
	puts(msg);
	return EXIT_OK;
}

int backing_hold_lsn(const struct backing *b, uint64_t retention_s, uint64_t *hold,
		     uint64_t *latest)
{
	char *dir = backing_repo_dir(b);
	struct repo *r;
	struct snap_info *s;
	size_t n;
	int ret = -ENOENT;

	if (dir && repo_exists(dir) && repo_open(dir, false, &r) == 0) {
		ret = snap_list(r, &s, &n);
		if (!ret && !n)
			ret = -ENOENT;
		if (!ret) {
			struct timespec now;
			clock_gettime(CLOCK_REALTIME, &now);
			int64_t edge = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec -
				       (int64_t)retention_s * 1000000000;
			/* the newest snapshot at or before the window's start: @TIME's base */
			size_t base = 0;
			for (size_t i = 0; i < n; i++)
				if (s[i].time_ns <= edge)
					base = i;
			*latest = s[n - 1].lsn;
			*hold = retention_s ? s[base].lsn : s[n - 1].lsn;
			for (size_t i = base; retention_s && i < n; i++)
				if (s[i].lsn < *hold)
					*hold = s[i].lsn;
			free(s);
		}
		repo_close(r);
	}
	free(dir);
	return ret;
}

/* ---- drfs snapshot ---- */

static const char snapshot_usage[] =
	"usage: drfs snapshot MOUNTPOINT|BACKING [--tag TAG] [--scan]\n"
	"\n"
	"Take a snapshot into the backing directory's repository (STATE/repo).  It is\n"
	"built from the previous snapshot and the journal since: only what the journal\n"
	"says changed is read.  On a mount, changes wait while that is read.\n"
	"\n"
	"options:\n"
	"  --tag TAG    tag the snapshot (comma-separated for several)\n"
	"  --scan       read the whole tree instead of following the journal\n"
	"               (an unmounted backing only)\n"
	"  -h, --help   show this help\n";

int cmd_snapshot(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "tag", required_argument, NULL, 't' },
		{ "scan", no_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *tags = NULL;
	bool scan = false;
	struct backing b;
	struct mount_record rec;
	int c, ret, lock_fd;

	log_capture_errors(true);

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 't':
			tags = optarg;
			if (strchr(tags, '\n') || strlen(tags) >= SNAP_TAGS_MAX) {
				say_error("--tag: a tag is one line of fewer than %d bytes", SNAP_TAGS_MAX);
				return EXIT_USAGE;
			}
			break;
		case 's':
			scan = true;
			break;
		case 'h':
			fputs(snapshot_usage, stdout);
			return EXIT_OK;
		default:
			fputs(snapshot_usage, stderr);
			return EXIT_USAGE;
		}
	}
	if (argc - optind != 1) {
		say_error("snapshot takes one BACKING; see 'drfs snapshot --help'");
		return EXIT_USAGE;
	}
	if (mount_record_for_mountpoint(argv[optind], &rec) == 0 && rec.backing) {
		ret = backing_load(rec.backing, &b);
		mount_record_release(&rec);
	} else {
		ret = backing_load(argv[optind], &b);
	}
	if (ret)
		return ret;
	/* mounted: the daemon takes it, with the mount frozen for the moment it needs */
	bool live = mount_record_read(b.state_dir, &rec) == 0;
	if (live) {
		live = pid_alive(rec.pid);
		mount_record_release(&rec);
	}
	if (live) {
		char reply[1200];
		if (scan) {
			say_error("--scan works on an unmounted backing only; unmount %s first", b.path);
			backing_release(&b);
			return EXIT_USAGE;
		}
		ret = snapctl_request(b.state_dir, tags, reply, sizeof(reply));
		if (ret) {
			say_error("%s is mounted but its daemon does not answer on %s/control.sock (%s); see %s/drfs.log",
				  b.path, b.state_dir, strerror(-ret), b.state_dir);
			ret = EXIT_FAIL;
		} else if (!strncmp(reply, "ok ", 3)) {
			puts(reply + 3);
			ret = EXIT_OK;
		} else {
			say_error("%s", !strncmp(reply, "error ", 6) ? reply + 6 : reply);
			ret = EXIT_FAIL;
		}
		backing_release(&b);
		return ret;
	}
	char *lock_path = path_join(b.state_dir, "lock");
	lock_fd = lock_path ? open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600) : -1;
	if (lock_fd < 0 || flock(lock_fd, LOCK_EX | LOCK_NB) < 0) {
		say_error("%s is in use (mounted, or another drfs holds %s); unmount it first",
			  b.path, lock_path ? lock_path : b.state_dir);
		ret = EXIT_FAIL;
		goto out;
	}
	struct snapshot_request rq = { .tags = tags, .scan = scan, .lsn = UINT64_MAX };
	ret = backing_snapshot_say(&b, &rq);
out:
	if (lock_fd >= 0)
		close(lock_fd);
	free(lock_path);
	backing_release(&b);
	return ret;
}

/* ---- opening a SOURCE: a backing directory, a repository path or file:// URL ---- */

/*
 * A local copy of an object-store replica's repository, brought up to date:
 * $DRFS_CACHE_DIR, or /var/cache/drfs/ID with ID from the URL.  The
 * directory, or NULL after a message.
 */
static char *mirror_replica(const char *url)
{
	struct backend *be = NULL;
	struct backend_err err = { 0 };
	struct store_id h;
	char hex[65], *dir;
	uint64_t n = 0, bytes = 0;
	const char *env = getenv("DRFS_CACHE_DIR");

	store_hash(url, strlen(url), &h);
	store_id_hex(&h, hex);
	hex[16] = 0;
	if (env && *env) {
		dir = strdup(env);
	} else {
		mkdir("/var/cache/drfs", 0700);
		dir = path_join("/var/cache/drfs", hex);
	}
	if (!dir)
		return NULL;
	int ret = backend_open(url, &be, &err);
	if (!ret)
		ret = replica_mirror(be, dir, &n, &bytes, &err);
	if (be)
		backend_close(be);
	if (ret) {
		say_error("cannot read the replica %s: %s", url, err.msg);
		free(dir);
		return NULL;
	}
	if (n)
		fprintf(stderr, "drfs: fetched %llu objects (%.1f MiB) of %s into %s\n",
			(unsigned long long)n, bytes / 1048576.0, url, dir);
	return dir;
}

int source_open(const char *src, struct repo **r, char **backing)
{
	char *dir = NULL;
	int ret;

	if (backing)
		*backing = NULL;
	/* absolute: a daemon changes to / when it detaches */
	if (!strncmp(src, "file://", 7)) {
		dir = path_absolute(src + 7);
	} else if (!strncmp(src, "s3://", 5)) {
		dir = mirror_replica(src);
		if (!dir)
			return -EIO;
	} else {
		char *conf = path_join(src, DRFS_STATE_NAME "/" DRFS_CONF_NAME);
		struct stat st;
		bool is_backing = conf && stat(conf, &st) == 0;
		free(conf);
		if (is_backing) {
			struct backing b;
			if (backing_load(src, &b))
				return -EINVAL;
			dir = backing_repo_dir(&b);
			if (backing && !(*backing = strdup(b.path))) {
				free(dir);
				dir = NULL;
			}
			backing_release(&b);
		} else {
			dir = path_absolute(src);
		}
	}
	if (!dir) {
		ret = -ENOMEM;
		goto out;
	}
	if (!repo_exists(dir)) {
		say_error("%s holds no snapshots (no repository at %s); take one with 'drfs snapshot BACKING'",
			  src, dir);
		ret = -ENOENT;
		goto out;
	}
	ret = repo_open(dir, false, r);
	if (ret)
		say_error("cannot open the repository %s (%s): %s", dir, strerror(-ret),
			  log_last_error());
out:
	free(dir);
	if (ret && backing) {
		free(*backing);
		*backing = NULL;
	}
	return ret;
}

int source_resolve(struct repo *r, const char *spec, struct snap_info *s)
{
	int ret = snap_resolve(r, spec, s);

	if (ret == -ENOENT)
		say_error("no snapshot matches '%s' in %s; list them with 'drfs snapshots'", spec,
			  repo_dir(r));
	else if (ret == -EEXIST)
		say_error("'%s' matches several snapshots; give more hex digits", spec);
	else if (ret == -EINVAL)
		say_error("'%s' is not a snapshot: give an id (8+ hex digits), 'latest' or @TIME (2026-11-28T17:05:00Z or seconds since the epoch)",
			  spec);
	else if (ret)
		say_error("cannot read the snapshots of %s: %s", repo_dir(r), strerror(-ret));
	return ret;
}

char *source_journal_dir(struct repo *r)
{
	char *top = strdup(repo_dir(r)), *slash, *dir = NULL;

	if (top && (slash = strrchr(top, '/'))) {
		*slash = 0;
		dir = path_join(*top ? top : "/", "journal");
		if (dir && !journal_exists(dir)) {
			free(dir);
			dir = NULL;
		}
	}
	free(top);
	return dir;
}

/* ---- drfs snapshots ---- */

static const char snapshots_usage[] =
	"usage: drfs snapshots SOURCE [--json]\n"
	"\n"
	"List the snapshots of SOURCE (a backing directory, a repository directory or\n"
	"file:///path), oldest first: id, time, journal LSN, tags, files changed and\n"
	"bytes added.\n"
	"\n"
	"options:\n"
	"  --json       machine-readable output\n"
	"  -h, --help   show this help\n";

int cmd_snapshots(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	bool json = false;
	struct repo *r;
	struct snap_info *s;
	size_t n;
	int c, ret;

	log_capture_errors(true);

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 'h':
			fputs(snapshots_usage, stdout);
			return EXIT_OK;
		default:
			fputs(snapshots_usage, stderr);
			return EXIT_USAGE;
		}
	}
	if (argc - optind != 1) {
		say_error("snapshots takes one SOURCE; see 'drfs snapshots --help'");
		return EXIT_USAGE;
	}
	if (source_open(argv[optind], &r, NULL))
		return EXIT_FAIL;
	ret = snap_list(r, &s, &n);
	if (ret) {
		say_error("cannot list the snapshots in %s (%s): %s", repo_dir(r), strerror(-ret),
			  log_last_error());
		repo_close(r);
		return EXIT_FAIL;
	}
	if (json)
		putchar('[');
	else
		printf("%-16s  %-20s  %12s  %9s  %10s  %-7s  %s\n", "ID", "TIME", "LSN", "CHANGED",
		       "ADDED", "SOURCE", "TAGS");
	for (size_t i = 0; i < n; i++) {
		char hex[65], when[32];
		store_id_hex(&s[i].id, hex);
		format_time(s[i].time_ns, when, sizeof(when));
		if (json) {
			char tree[65], parent[65] = "";
			store_id_hex(&s[i].tree, tree);
			if (!store_id_is_zero(&s[i].parent))
				store_id_hex(&s[i].parent, parent);
			printf("%s{\"id\":\"%s\",\"time\":\"%s\",\"time_ns\":%lld,\"lsn\":%llu,"
			       "\"timeline\":%u,\"tree\":\"%s\",\"parent\":\"%s\",\"host\":\"%s\","
			       "\"tags\":\"%s\",\"files\":%llu,\"bytes\":%llu,\"changed\":%llu,"
			       "\"added\":%llu,\"source\":\"%s\"}",
			       i ? "," : "", hex, when, (long long)s[i].time_ns,
			       (unsigned long long)s[i].lsn, s[i].timeline, tree, parent, s[i].host,
			       s[i].tags, (unsigned long long)s[i].files, (unsigned long long)s[i].bytes,
			       (unsigned long long)s[i].changed, (unsigned long long)s[i].added,
			       s[i].source);
		} else {
			printf("%.16s  %-20s  %12llu  %9llu  %9.1fM  %-7s  %s\n", hex, when,
			       (unsigned long long)s[i].lsn, (unsigned long long)s[i].changed,
			       s[i].added / 1048576.0, s[i].source, s[i].tags);
		}
	}
	if (json)
		puts("]");
	free(s);
	repo_close(r);
	return EXIT_OK;
}

/* ---- drfs diff ---- */

static const char diff_usage[] =
	"usage: drfs diff SOURCE SNAP_A SNAP_B\n"
	"\n"
	"Show what changed from snapshot A to snapshot B, one path a line:\n"
	"  +  added          -  removed\n"
	"  M  content changed (and maybe metadata)\n"
	"  U  metadata only (mode, owner, times, xattrs, link count)\n"
	"  T  type changed\n"
	"SNAP is an id prefix, 'latest' or @TIME.\n";

static bool same_meta(const struct tree_entry *a, const struct tree_entry *b)
{
	if (a->mode != b->mode || a->uid != b->uid || a->gid != b->gid || a->nlink != b->nlink ||
	    a->mtime_sec != b->mtime_sec || a->mtime_nsec != b->mtime_nsec || a->rdev != b->rdev ||
	    a->nxattr != b->nxattr)
		return false;
	for (uint32_t i = 0; i < a->nxattr; i++)
		if (strcmp(a->xattr[i].name, b->xattr[i].name) || a->xattr[i].len != b->xattr[i].len ||
		    memcmp(a->xattr[i].value, b->xattr[i].value, a->xattr[i].len))
			return false;
	return true;
}

static bool same_content(const struct tree_entry *a, const struct tree_entry *b)
{
	if (a->size != b->size || a->nchunk != b->nchunk)
		return false;
	for (uint32_t i = 0; i < a->nchunk; i++)
		if (a->chunk[i].offset != b->chunk[i].offset ||
		    memcmp(a->chunk[i].id.b, b->chunk[i].id.b, STORE_ID_LEN))
			return false;
	if (a->type == TT_SYMLINK)
		return !strcmp(a->target, b->target);
	return true;
}

struct diff_count {
	uint64_t added, removed, changed;
};

static int diff_tree(struct repo *r, const struct store_id *a, const struct store_id *b,
		     char *path, size_t plen, struct diff_count *dc, char mark_all);

/* Prints every path under tree ID with MARK. */
static int diff_all(struct repo *r, const struct store_id *id, char *path, size_t plen,
		    struct diff_count *dc, char mark)
{
	return diff_tree(r, mark == '+' ? NULL : id, mark == '+' ? id : NULL, path, plen, dc, mark);
}

static int diff_tree(struct repo *r, const struct store_id *a, const struct store_id *b,
		     char *path, size_t plen, struct diff_count *dc, char mark_all)
{
	struct tree ta = { 0 }, tb = { 0 };
	int ret = 0;

	if (a && b && !memcmp(a->b, b->b, STORE_ID_LEN))
		return 0;
	if ((a && (ret = tree_load(r, a, &ta))) || (b && (ret = tree_load(r, b, &tb))))
		goto out;
	uint32_t i = 0, j = 0;
	while (i < ta.n || j < tb.n) {
		int c = i >= ta.n ? 1 : j >= tb.n ? -1 : strcmp(ta.e[i].name, tb.e[j].name);
		const struct tree_entry *e = c <= 0 ? &ta.e[i] : &tb.e[j];
		size_t nl = strlen(e->name);
		if (plen + 1 + nl >= PATH_MAX) {
			ret = -ENAMETOOLONG;
			goto out;
		}
		path[plen] = '/';
		memcpy(path + plen + 1, e->name, nl + 1);
		if (c < 0) {
			printf("-  %s%s\n", path, ta.e[i].type == TT_DIR ? "/" : "");
			dc->removed++;
			if (ta.e[i].type == TT_DIR)
				ret = diff_all(r, &ta.e[i].subtree, path, plen + 1 + nl, dc, '-');
			i++;
		} else if (c > 0) {
			printf("+  %s%s\n", path, tb.e[j].type == TT_DIR ? "/" : "");
			dc->added++;
			if (tb.e[j].type == TT_DIR)
				ret = diff_all(r, &tb.e[j].subtree, path, plen + 1 + nl, dc, '+');
			j++;
		} else {
			const struct tree_entry *x = &ta.e[i], *y = &tb.e[j];
			if (x->type != y->type) {
				printf("T  %s\n", path);
				dc->changed++;
			} else if (x->type == TT_DIR) {
				if (!same_meta(x, y)) {
					printf("U  %s/\n", path);
					dc->changed++;
				}
				ret = diff_tree(r, &x->subtree, &y->subtree, path, plen + 1 + nl, dc, 0);
			} else if (!same_content(x, y)) {
				printf("M  %s\n", path);
				dc->changed++;
			} else if (!same_meta(x, y)) {
				printf("U  %s\n", path);
				dc->changed++;
			}
			i++;
			j++;
		}
		path[plen] = 0;
		if (ret)
			goto out;
	}
	(void)mark_all;
out:
	tree_release(&ta);
	tree_release(&tb);
	return ret;
}

int cmd_diff(int argc, char **argv)
{
	struct repo *r;
	struct snap_info a, b;
	struct diff_count dc = { 0 };
	int ret;

	log_capture_errors(true);

	if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
		fputs(diff_usage, stdout);
		return EXIT_OK;
	}
	if (argc != 4) {
		say_error("diff takes SOURCE SNAP_A SNAP_B; see 'drfs diff --help'");
		return EXIT_USAGE;
	}
	if (source_open(argv[1], &r, NULL))
		return EXIT_FAIL;
	if (source_resolve(r, argv[2], &a) || source_resolve(r, argv[3], &b)) {
		repo_close(r);
		return EXIT_FAIL;
	}
	char *path = calloc(1, PATH_MAX);
	ret = path ? diff_tree(r, &a.tree, &b.tree, path, 0, &dc, 0) : -ENOMEM;
	free(path);
	repo_close(r);
	if (ret) {
		say_error("diff failed (%s): %s", strerror(-ret), log_last_error());
		return EXIT_FAIL;
	}
	fprintf(stderr, "%llu added, %llu removed, %llu changed\n", (unsigned long long)dc.added,
		(unsigned long long)dc.removed, (unsigned long long)dc.changed);
	return EXIT_OK;
}

/* ---- drfs restore ---- */

/* Removes DIR and the files in it (one level: the rebuilt segments). */
static void remove_tree(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;

	while (d && (de = readdir(d)))
		if (de->d_name[0] != '.')
			unlinkat(dirfd(d), de->d_name, 0);
	if (d)
		closedir(d);
	rmdir(dir);
}

/*
 * The journal of replica URL from LSN FROM, rebuilt into a new directory
 * made from the template DIR.  0; 1 when it does not reach back to FROM
 * (WHY); -errno (WHY).  A damaged piece is not an error here: the journal
 * up to it is there, and DAMAGE says where it stops.
 */
static int fetch_replica_journal(const char *url, uint64_t from, char *dir, char *why,
				 size_t whylen, char *damage, size_t damagelen, uint64_t *end_out)
{
	struct backend *be = NULL;
	struct backend_err err = { 0 };
	uint64_t end = from;
	int ret = backend_open(url, &be, &err);

	if (!ret && !mkdtemp(dir)) {
		ret = -errno;
		snprintf(err.msg, sizeof(err.msg), "cannot make %s: %s", dir, strerror(errno));
	}
	if (!ret) {
		ret = replica_fetch_journal(be, from, dir, &end, &err);
		if (ret == -EBADMSG) {
			snprintf(damage, damagelen, "%s", err.msg);
			ret = 0;
		}
	}
	if (ret)
		snprintf(why, whylen, "%s", err.msg);
	if (be)
		backend_close(be);
	*end_out = end;
	return ret;
}

static const char restore_usage[] =
	"usage: drfs restore SOURCE SNAP|latest|@TIME TARGET_DIR [--force] [--threads N]\n"
	"\n"
	"Write the tree of a snapshot into TARGET_DIR with every attribute: mode,\n"
	"owner, mtime, xattrs and ACLs, hard links, symlinks, special files and holes.\n"
	"@TIME is point-in-time (TIME as 2026-11-28T17:05:00Z or seconds since the\n"
	"epoch): the newest snapshot at or before TIME, then the journal after it\n"
	"replayed up to TIME; the journal must still hold that stretch (mount option\n"
	"journal_retention, default 1h).  TARGET_DIR must be empty or absent.\n"
	"\n"
	"options:\n"
	"  --force       restore into a directory that is not empty\n"
	"  --threads N   files written in parallel (default 4)\n"
	"  -h, --help    show this help\n";

int cmd_restore(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "force", no_argument, NULL, 'f' },
		{ "threads", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	bool force = false;
	unsigned threads = 4;
	struct repo *r;
	struct snap_info s;
	struct restore_stats st;
	int c, ret;

	log_capture_errors(true);

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'f':
			force = true;
			break;
		case 't': {
			char *end;
			long v = strtol(optarg, &end, 10);
			if (*end || v < 1 || v > 64) {
				say_error("--threads: give a number from 1 to 64, not '%s'", optarg);
				return EXIT_USAGE;
			}
			threads = (unsigned)v;
			break;
		}
		case 'h':
			fputs(restore_usage, stdout);
			return EXIT_OK;
		default:
			fputs(restore_usage, stderr);
			return EXIT_USAGE;
		}
	}
	if (argc - optind != 3) {
		say_error("restore takes SOURCE SNAP TARGET_DIR; see 'drfs restore --help'");
		return EXIT_USAGE;
	}
	const char *target = argv[optind + 2];
	DIR *d = opendir(target);
	if (d) {
		struct dirent *de;
		bool empty = true;
		while ((de = readdir(d)))
			if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
				empty = false;
		closedir(d);
		if (!empty && !force) {
			say_error("%s is not empty; restore into an empty directory, or give --force to write over what is there",
				  target);
			return EXIT_FAIL;
		}
	} else if (errno != ENOENT) {
		say_error("cannot use %s as the target: %s", target, strerror(errno));
		return EXIT_FAIL;
	}
	if (source_open(argv[optind], &r, NULL))
		return EXIT_FAIL;
	if (source_resolve(r, argv[optind + 1], &s)) {
		repo_close(r);
		return EXIT_FAIL;
	}
	char hex[65], when[40];
	store_id_hex(&s.id, hex);
	format_time(s.time_ns, when, sizeof(when));
	/* @TIME: the journal after the snapshot must be there before anything is written */
	const char *spec = argv[optind + 1];
	char *jdir = NULL;
	int64_t until = 0;
	char tmpdir[] = "/var/tmp/drfs-journal.XXXXXX", damage[600] = "";
	bool fetched = false, nothing_after = false;
	uint64_t fetched_end = 0;
	if (spec[0] == '@') {
		char why[600];
		snap_parse_time(spec + 1, &until);
		jdir = source_journal_dir(r);
		if (!jdir && (!strncmp(argv[optind], "file://", 7) || !strncmp(argv[optind], "s3://", 5))) {
			/* a replica: its journal pieces, rebuilt into segments here */
			ret = fetch_replica_journal(argv[optind], s.lsn, tmpdir, why, sizeof(why),
						    damage, sizeof(damage), &fetched_end);
			if (ret < 0) {
				say_error("cannot read the journal of %s: %s", argv[optind], why);
				if (strcmp(tmpdir + strlen(tmpdir) - 6, "XXXXXX"))
					remove_tree(tmpdir);
				repo_close(r);
				return EXIT_FAIL;
			}
			fetched = true;
			jdir = strdup(tmpdir);
			if (ret == 0 && fetched_end == s.lsn) {
				/* the replica's journal ends at the snapshot: nothing after it to replay */
				remove_tree(tmpdir);
				free(jdir);
				jdir = NULL;
				fetched = false;
				nothing_after = true;
			}
		}
		ret = nothing_after ? 0 : !jdir ? 1 : fetched && ret ? 1 :
		      snap_replay_check(jdir, s.lsn, why, sizeof(why));
		if (!jdir && !nothing_after)
			snprintf(why, sizeof(why), "%s keeps no journal", argv[optind]);
		if (ret) {
			if (fetched)
				remove_tree(tmpdir);
			say_error("cannot restore the state at %s: %s; the newest state before it that can be restored is snapshot %.16s of %s ('drfs restore %s %.16s %s')",
				  spec + 1, why, hex, when, argv[optind], hex, target);
			free(jdir);
			repo_close(r);
			return EXIT_FAIL;
		}
	}
	double t0 = now_s();
	struct restore_opts o = { .threads = threads };
	ret = snap_restore(r, &s, target, &o, &st);
	if (ret) {
		say_error("restore into %s failed (%s): %s; what was written is left in place",
			  target, strerror(-ret), log_last_error());
		free(jdir);
		repo_close(r);
		if (fetched)
			remove_tree(tmpdir);
		return EXIT_FAIL;
	}
	double dt = now_s() - t0;
	printf("restored snapshot %.16s of %s into %s: %llu files, %llu directories, %llu others, %.1f MiB in %.2f s (%.0f MiB/s)\n",
	       hex, when, target, (unsigned long long)st.files, (unsigned long long)st.dirs,
	       (unsigned long long)st.others, st.bytes / 1048576.0, dt,
	       dt > 0 ? st.bytes / 1048576.0 / dt : 0.0);
	if (jdir) {
		struct snap_replay_stats rs;
		t0 = now_s();
		ret = snap_replay(r, &s, jdir, until, target, &rs);
		free(jdir);
		repo_close(r);
		if (fetched)
			remove_tree(tmpdir);
		if (!ret && damage[0] && !rs.more) {
			say_error("%s; %s holds the state up to LSN 0x%llx, not at %s", damage, target,
				  (unsigned long long)rs.last_lsn, spec + 1);
			return EXIT_FAIL;
		}
		if (ret) {
			say_error("point-in-time replay into %s stopped: %s; %s holds snapshot %.16s plus %llu records up to LSN 0x%llx",
				  target, rs.why, target, hex, (unsigned long long)rs.applied,
				  (unsigned long long)rs.last_lsn);
			return EXIT_FAIL;
		}
		char last[40] = "-";
		if (rs.last_time_ns)
			format_time(rs.last_time_ns, last, sizeof(last));
		printf("replayed %llu journal records (%llu skipped) from LSN 0x%llx to 0x%llx, the last made at %s, in %.2f s\n",
		       (unsigned long long)rs.applied, (unsigned long long)rs.skipped,
		       (unsigned long long)s.lsn, (unsigned long long)rs.last_lsn, last, now_s() - t0);
		if (rs.stop[0]) {
			say_error("the journal is damaged at LSN 0x%llx, before %s (%s): %s holds the state up to there, not at %s",
				  (unsigned long long)rs.journal_end, spec + 1, rs.stop, target, spec + 1);
			return EXIT_FAIL;
		}
		if (!rs.more) {
			printf("the journal ends there: nothing newer than that was recorded\n");
		}
		return EXIT_OK;
	}
	repo_close(r);
	return EXIT_OK;
}
