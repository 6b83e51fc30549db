/*
 * snapctl.c - snapshots of a live mount: the daemon's control socket and
 * its snapshot timer, and the client side of 'drfs snapshot MOUNTPOINT'.
 *
 * A live snapshot freezes the mount (changes wait; reads go on), so that the
 * backing tree is exactly the journal up to one LSN, builds the snapshot
 * from the previous one and the journal since (only touched ranges are
 * read) and thaws.  How long changes waited is logged with every snapshot.
 *
 * The journal is held from the newest snapshot at or before now minus
 * journal_retention (docs/snapshot-design.md "Point-in-time restore"): the
 * hold moves after every snapshot and once a minute.
 *
 * The socket is STATE/control.sock (AF_UNIX, stream, mode 0600).  A request
 * is one line, "snapshot TAGS\n" (TAGS may be empty); the answer is one line,
 * "ok SUMMARY\n" or "error MESSAGE\n".
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "../common/common.h"
#include "../fs/fs.h"
#include "../store/store.h"
#include "tools_i.h"

struct snapctl {
	const struct backing *b;
	struct drfs_fs *fs;
	unsigned interval_s;          /* 0: no timer */
	uint64_t retention_s;         /* journal_retention */
	uint64_t hold_lsn;            /* the journal is held from here */
	void (*on_snapshot)(void *);  /* after every snapshot; set before the first */
	void *on_snapshot_arg;
	int listen_fd;
	int stop_pipe[2];
	pthread_t thread;
	pthread_mutex_t lock;         /* one snapshot at a time */
	uint64_t last_lsn;            /* protected by lock: LSN of the latest snapshot */
	char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

static double mono_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Moves the journal hold forward to what snapshots and the retention still need. */
static void move_hold(struct snapctl *c)
{
	uint64_t hold, latest;

	if (backing_hold_lsn(c->b, c->retention_s, &hold, &latest) == 0 && hold > c->hold_lsn) {
		c->hold_lsn = hold;
		fs_journal_keep_from(c->fs, hold);
	}
}

/*
 * Takes one live snapshot; MSG gets the summary or the error.  With
 * ONLY_IF_CHANGED, does nothing (returns 1) when the journal has not moved.
 */
static int live_snapshot(struct snapctl *c, const char *tags, bool only_if_changed, char *msg,
			 size_t msglen)
{
	uint64_t lsn;
	int ret;

	pthread_mutex_lock(&c->lock);
	double t0 = mono_s();
	ret = fs_freeze(c->fs, &lsn);
	if (ret) {
		snprintf(msg, msglen, "the journal has failed (%s); see the log of %s", strerror(-ret),
			 c->b->path);
		goto out;
	}
	if (only_if_changed && lsn == c->last_lsn) {
		fs_thaw(c->fs);
		ret = 1;
		goto out;
	}
	struct snapshot_request rq = { .tags = tags, .lsn = lsn };
	struct snap_info s;
	ret = backing_snapshot(c->b, &rq, &s, msg, msglen);
	/*
	 * A test aid: scan the same frozen tree as well and compare the root
	 * trees (invariant 4 under live writers).
	 */
	const char *verify = getenv("DRFS_SNAPSHOT_VERIFY");
	if (!ret && verify && *verify && strcmp(verify, "0")) {
		struct snapshot_request vq = { .tags = "verify", .lsn = lsn, .scan = true };
		struct snap_info v;
		char vmsg[900];
		ret = backing_snapshot(c->b, &vq, &v, vmsg, sizeof(vmsg));
		if (!ret && memcmp(v.tree.b, s.tree.b, STORE_ID_LEN)) {
			char a[65], b[65];
			store_id_hex(&s.tree, a);
			store_id_hex(&v.tree, b);
			snprintf(msg, msglen, "invariant 4 violated at LSN %llu: the journal-built tree %.16s differs from the scan's %.16s",
				 (unsigned long long)lsn, a, b);
			ret = -EUCLEAN;
		} else if (ret) {
			snprintf(msg, msglen, "verify scan failed: %s", vmsg);
		}
	}
	fs_thaw(c->fs);
	double paused = mono_s() - t0;
	if (!ret) {
		c->last_lsn = lsn;
		move_hold(c);
		if (c->on_snapshot)
			c->on_snapshot(c->on_snapshot_arg);
		size_t l = strlen(msg);
		snprintf(msg + l, msglen - l, "; changes waited %.0f ms", paused * 1000);
		log_info("%s", msg);
	} else {
		log_error("live snapshot failed: %s", msg);
	}
out:
	pthread_mutex_unlock(&c->lock);
	return ret;
}

static void serve_client(struct snapctl *c, int fd)
{
	char req[512], msg[1024], reply[1200];
	size_t len = 0;

	/* one line, with a time limit so a silent client cannot hold the thread */
	while (len < sizeof(req) - 1) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 5000) <= 0)
			return;
		ssize_t n = read(fd, req + len, sizeof(req) - 1 - len);
		if (n <= 0)
			return;
		len += (size_t)n;
		if (memchr(req, '\n', len))
			break;
	}
	req[len] = 0;
	char *nl = strchr(req, '\n');
	if (nl)
		*nl = 0;
	if (!strncmp(req, "snapshot", 8) && (req[8] == ' ' || req[8] == 0)) {
		const char *tags = req[8] ? req + 9 : "";
		int ret = live_snapshot(c, tags, false, msg, sizeof(msg));
		snprintf(reply, sizeof(reply), "%s %s\n", ret ? "error" : "ok", msg);
	} else {
		snprintf(reply, sizeof(reply), "error unknown request\n");
	}
	write_all(fd, reply, strlen(reply));
}

static void *snapctl_thread(void *arg)
{
	struct snapctl *c = arg;
	double next = c->interval_s ? mono_s() + c->interval_s : 0;
	double next_hold = mono_s() + 60;

	for (;;) {
		struct pollfd p[2] = {
			{ .fd = c->listen_fd, .events = POLLIN },
			{ .fd = c->stop_pipe[0], .events = POLLIN },
		};
		double wake = c->interval_s && next < next_hold ? next : next_hold;
		double left = wake - mono_s();
		int timeout = left > 0 ? (int)(left * 1000) + 1 : 0;
		int n = poll(p, 2, timeout);
		if (n < 0 && errno != EINTR)
			break;
		if (p[1].revents)
			break;
		if (n > 0 && p[0].revents & POLLIN) {
			int fd = accept4(c->listen_fd, NULL, NULL, SOCK_CLOEXEC);
			if (fd >= 0) {
				serve_client(c, fd);
				close(fd);
			}
		}
		if (c->interval_s && mono_s() >= next) {
			char msg[1024];
			live_snapshot(c, "interval", true, msg, sizeof(msg));
			next = mono_s() + c->interval_s;
		}
		if (mono_s() >= next_hold) {
			pthread_mutex_lock(&c->lock);
			move_hold(c);
			pthread_mutex_unlock(&c->lock);
			next_hold = mono_s() + 60;
		}
	}
	return NULL;
}

static int control_path(const char *state_dir, char *buf, size_t len)
{
	int n = snprintf(buf, len, "%s/control.sock", state_dir);
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

int snapctl_start(const struct backing *b, struct drfs_fs *fs, unsigned interval_s,
		  uint64_t retention_s, uint64_t last_lsn, uint64_t hold_lsn, struct snapctl **out)
{
	struct snapctl *c = calloc(1, sizeof(*c));
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int ret;

	if (!c)
		return -ENOMEM;
	c->b = b;
	c->fs = fs;
	c->interval_s = interval_s;
	c->last_lsn = last_lsn;
	c->retention_s = retention_s;
	c->hold_lsn = hold_lsn;
	c->listen_fd = -1;
	pthread_mutex_init(&c->lock, NULL);
	ret = control_path(b->state_dir, c->sock_path, sizeof(c->sock_path));
	if (ret) {
		log_error("the state directory path %s is too long for a control socket; 'drfs snapshot' of the mount will not work",
			  b->state_dir);
		goto out_free;
	}
	memcpy(sa.sun_path, c->sock_path, sizeof(sa.sun_path));
	unlink(c->sock_path);
	c->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->listen_fd < 0 || bind(c->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) ||
	    listen(c->listen_fd, 8)) {
		ret = -errno;
		log_error("cannot listen on %s: %s", c->sock_path, strerror(errno));
		goto out_free;
	}
	if (pipe2(c->stop_pipe, O_CLOEXEC)) {
		ret = -errno;
		goto out_sock;
	}
	/*
	 * The daemon takes its stop signals in one thread (fs_serve's
	 * sigtimedwait); this thread, and the builder's threads it starts, must
	 * not be where the kernel delivers them.
	 */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	ret = -pthread_create(&c->thread, NULL, snapctl_thread, c);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (ret)
		goto out_pipe;
	*out = c;
	return 0;

out_pipe:
	close(c->stop_pipe[0]);
	close(c->stop_pipe[1]);
out_sock:
	unlink(c->sock_path);
out_free:
	if (c->listen_fd >= 0)
		close(c->listen_fd);
	pthread_mutex_destroy(&c->lock);
	free(c);
	return ret;
}

void snapctl_on_snapshot(struct snapctl *c, void (*fn)(void *), void *arg)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->lock);
	c->on_snapshot = fn;
	c->on_snapshot_arg = arg;
	pthread_mutex_unlock(&c->lock);
}

void snapctl_stop(struct snapctl *c)
{
	if (!c)
		return;
	if (write(c->stop_pipe[1], "x", 1) < 0)
		log_warn("cannot stop the snapshot thread: %s", strerror(errno));
	pthread_join(c->thread, NULL);
	close(c->stop_pipe[0]);
	close(c->stop_pipe[1]);
	close(c->listen_fd);
	unlink(c->sock_path);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

int snapctl_request(const char *state_dir, const char *tags, char *reply, size_t len)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	size_t got = 0;
	int fd, ret;

	if (control_path(state_dir, sa.sun_path, sizeof(sa.sun_path)))
		return -ENAMETOOLONG;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		ret = -errno;
		goto out;
	}
	char req[600];
	snprintf(req, sizeof(req), "snapshot %s\n", tags ? tags : "");
	ret = write_all(fd, req, strlen(req));
	if (ret)
		goto out;
	while (got < len - 1) {
		ssize_t n = read(fd, reply + got, len - 1 - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	reply[got] = 0;
	char *nl = strchr(reply, '\n');
	if (nl)
		*nl = 0;
	ret = got ? 0 : -ECONNRESET;
out:
	close(fd);
	return ret;
}
