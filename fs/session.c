/*
 * session.c - mounting, serving and unmounting a drfs filesystem.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/common.h"
#include "fs_i.h"

/* Cached entries and attributes live this long: nobody else writes the backing tree. */
#define DRFS_CACHE_TIMEOUT 86400.0

/* Many cached directories each hold an O_PATH fd: lift the soft fd limit to the hard one. */
static void raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

/*
 * The kernel gives a FUSE mount a small readahead window (128 KiB) and holds
 * its dirty pages to 1% of the dirty limit.  drfs is a local filesystem in
 * all but name: give it a 1 MiB window (the size of our requests) and room
 * for writeback.  Best effort: the mount works without it.
 */
static void tune_bdi(const char *mountpoint)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL, devno[32] = "";
	size_t cap = 0;

	if (!f)
		return;
	while (getline(&line, &cap, f) > 0) {
		char mnt[4096], dev[32];
		/* id parent major:minor root mountpoint ... */
		if (sscanf(line, "%*s %*s %31s %*s %4095s", dev, mnt) == 2 && !strcmp(mnt, mountpoint))
			snprintf(devno, sizeof(devno), "%s", dev);
	}
	free(line);
	fclose(f);
	if (!*devno)
		return;
	static const struct {
		const char *file, *value;
	} knobs[] = { { "read_ahead_kb", "1024" }, { "max_ratio", "40" } };
	for (size_t i = 0; i < ARRAY_SIZE(knobs); i++) {
		char path[96];
		int fd;

		snprintf(path, sizeof(path), "/sys/class/bdi/%s/%s", devno, knobs[i].file);
		fd = open(path, O_WRONLY | O_CLOEXEC);
		if (fd < 0 || write(fd, knobs[i].value, strlen(knobs[i].value)) < 0)
			log_debug("cannot set %s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
	}
}

int fs_open(const struct fs_config *cfg, struct drfs_fs **out)
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct drfs_fs *fs;
	char *opts = NULL;
	int ret;

	fs = calloc(1, sizeof(*fs));
	if (!fs)
		return -ENOMEM;
	fs->cfg = *cfg;
	fs->timeout = DRFS_CACHE_TIMEOUT;
	pthread_mutex_init(&fs->lock, NULL);
	pthread_mutex_init(&fs->anon_lock, NULL);
	pthread_rwlockattr_t rwa;
	pthread_rwlockattr_init(&rwa);
	pthread_rwlockattr_setkind_np(&rwa, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&fs->freeze, &rwa);
	pthread_rwlockattr_destroy(&rwa);
	fs->snapshot_hold = -1;
	raise_fd_limit();
	/* A write to a pipe or socket whose reader went away must fail, not kill the daemon. */
	signal(SIGPIPE, SIG_IGN);

	ret = inode_table_init(fs);
	if (ret)
		goto out_free;
	if (cfg->journal_dir) {
		struct journal_config jc = { .dir = cfg->journal_dir, .backing_fd = fs->mount_fd,
					     .stats_path = cfg->journal_stats,
					     .flush_interval_ms = cfg->flush_interval_ms,
					     .seal_age_ms = cfg->seal_age_ms,
					     .truncate_damaged = cfg->journal_truncate,
					     .full_replay = cfg->full_replay,
					     .fail_flush_at = cfg->fail_flush_at,
					     .max_bytes = cfg->journal_max,
					     .min_free = cfg->journal_min_free,
					     .unapplied_min = pending_min, .unapplied_arg = fs };
		struct replay_result rr;

		ret = journal_open(&jc, &fs->journal, &rr);
		if (ret)
			goto out_table;
		fs->recovery = rr;
		/* the next snapshot is built from the journal since the latest one */
		if (cfg->journal_hold_lsn != UINT64_MAX) {
			fs->snapshot_hold = journal_hold_soft(fs->journal, "snapshot", cfg->journal_hold_lsn,
							      JHOLD_YIELD_CAP | JHOLD_YIELD_FULL);
			if (fs->snapshot_hold < 0)
				log_warn("cannot hold the journal for the next snapshot; it will scan the tree");
		}
	}

	if (asprintf(&opts, "fsname=%s,subtype=drfs,default_permissions%s%s", cfg->fsname,
		     cfg->kernel_opts && *cfg->kernel_opts ? "," : "",
		     cfg->kernel_opts ? cfg->kernel_opts : "") < 0) {
		ret = -ENOMEM;
		goto out_table;
	}
	if (fuse_opt_add_arg(&args, "drfs") || fuse_opt_add_arg(&args, "-o") ||
	    fuse_opt_add_arg(&args, opts) || (cfg->debug && fuse_opt_add_arg(&args, "-d"))) {
		ret = -ENOMEM;
		goto out_args;
	}
	fs->se = fuse_session_new(&args, &drfs_ops, sizeof(drfs_ops), fs);
	if (!fs->se) {
		ret = -EINVAL;
		log_error("cannot set up the FUSE session (options: %s)", opts);
		goto out_args;
	}
	ret = furing_setup(fs);
	if (ret)
		goto out_session;
	if (fuse_session_mount(fs->se, cfg->mountpoint)) {
		ret = -EIO;
		log_error("cannot mount on %s; check that /dev/fuse exists and the fuse module is loaded",
			  cfg->mountpoint);
		goto out_session;
	}
	fs->mounted = true;
	tune_bdi(cfg->mountpoint);
	times_setup(fs);
	ret = furing_attach(fs);
	if (ret) {
		log_error("cannot set up the FUSE transport: %s", strerror(-ret));
		fuse_session_unmount(fs->se);
		fs->mounted = false;
		goto out_session;
	}
	fuse_opt_free_args(&args);
	free(opts);
	*out = fs;
	return 0;

out_session:
	furing_stop(fs);
	fuse_session_destroy(fs->se);
out_args:
	fuse_opt_free_args(&args);
	free(opts);
out_table:
	if (fs->journal)
		journal_close(fs->journal);
	inode_table_release(fs);
out_free:
	pthread_rwlock_destroy(&fs->freeze);
	pthread_mutex_destroy(&fs->anon_lock);
	pthread_mutex_destroy(&fs->lock);
	free(fs);
	return ret;
}

/*
 * The request loop.  A fixed pool of workers each read a request from the
 * session and process it; nothing is created or destroyed per request.
 * (libfuse's own multi-threaded loop starts and stops a thread for almost
 * every request when one client issues them one after another.)
 */
struct worker_pool {
	struct drfs_fs *fs;
	pthread_t main_thread;  /* woken (SIGUSR1) when the last worker ends */
	unsigned int running;   /* protected by lock */
	pthread_mutex_t lock;
	int err;                /* first error a worker saw; protected by lock */
};

static void *worker_main(void *arg)
{
	struct worker_pool *pool = arg;
	struct fuse_session *se = pool->fs->se;
	struct fuse_buf buf = { .mem = NULL };
	int ret = 0;

	while (!fuse_session_exited(se)) {
		ret = fuse_session_receive_buf(se, &buf);
		if (ret == -EINTR || ret == -EAGAIN)
			continue;
		if (ret <= 0)
			break;
		fuse_session_process_buf(se, &buf);
	}
	free(buf.mem);
	/* -ENODEV: the filesystem was unmounted, the normal way to end. */
	pthread_mutex_lock(&pool->lock);
	if (ret < 0 && ret != -ENODEV && !pool->err)
		pool->err = ret;
	if (--pool->running == 0)
		pthread_kill(pool->main_thread, SIGUSR1);
	pthread_mutex_unlock(&pool->lock);
	fuse_session_exit(se);
	return NULL;
}

int fs_serve(struct drfs_fs *fs)
{
	struct worker_pool pool = { .fs = fs, .main_thread = pthread_self() };
	unsigned int n = fs->cfg.max_threads ? fs->cfg.max_threads : 16, started = 0;
	struct timespec tick = { 1, 0 };
	pthread_t *threads = calloc(n, sizeof(*threads));
	sigset_t stop, old;
	bool unmounted = false;

	if (!threads)
		return -ENOMEM;
	pthread_mutex_init(&pool.lock, NULL);
	/* Workers never see the stop signals; this thread waits for them. */
	sigemptyset(&stop);
	sigaddset(&stop, SIGTERM);
	sigaddset(&stop, SIGINT);
	sigaddset(&stop, SIGHUP);
	sigaddset(&stop, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &stop, &old);
	if (fs->journal && fs->recovery.unclean) {
		/* said here, after the caller may have daemonized: it goes to the log */
		struct replay_result *rr = &fs->recovery;
		log_info("recovered after an unclean stop%s: replayed LSN %llu..%llu, "
			 "%llu records (%llu applied, %llu already there)%s%s",
			 rr->reboot ? " (the machine restarted)" : " (the daemon had stopped)",
			 (unsigned long long)rr->from, (unsigned long long)rr->to,
			 (unsigned long long)rr->records, (unsigned long long)rr->applied,
			 (unsigned long long)rr->skipped,
			 rr->stop_reason[0] ? "; the log ended at: " : "", rr->stop_reason);
	}
	if (fs->journal) {
		int ret = journal_start(fs->journal);
		if (!ret)
			ret = pending_start(fs);
		if (ret) {
			log_error("cannot start the journal: %s; unmounting", strerror(-ret));
			pthread_sigmask(SIG_SETMASK, &old, NULL);
			pthread_mutex_destroy(&pool.lock);
			free(threads);
			return ret;
		}
	}
	furing_start(fs);
	for (; started < n; started++) {
		pthread_mutex_lock(&pool.lock);
		pool.running++;
		pthread_mutex_unlock(&pool.lock);
		if (pthread_create(&threads[started], NULL, worker_main, &pool)) {
			pthread_mutex_lock(&pool.lock);
			pool.running--;
			pthread_mutex_unlock(&pool.lock);
			break;
		}
	}
	for (;;) {
		unsigned int running;
		int sig = sigtimedwait(&stop, NULL, &tick);

		if (sig > 0 && sig != SIGUSR1 && !unmounted) {
			log_info("signal %d: unmounting %s", sig, fs->cfg.mountpoint);
			fuse_session_exit(fs->se);
			fuse_session_unmount(fs->se);
			fs->mounted = false;
			unmounted = true;
		}
		pthread_mutex_lock(&pool.lock);
		running = pool.running;
		pthread_mutex_unlock(&pool.lock);
		if (running == 0)
			break;
	}
	for (unsigned int i = 0; i < started; i++)
		pthread_join(threads[i], NULL);
	furing_stop(fs);
	/*
	 * The last worker's wake-up may still be pending; unblocked, its default
	 * action would end the process before it finishes.  Take it first.
	 */
	sigset_t wake;
	struct timespec none = { 0, 0 };
	sigemptyset(&wake);
	sigaddset(&wake, SIGUSR1);
	while (sigtimedwait(&wake, NULL, &none) > 0)
		;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_mutex_destroy(&pool.lock);
	free(threads);
	if (started == 0)
		return -EAGAIN;
	return pool.err;
}

void fs_close(struct drfs_fs *fs)
{
	if (!fs)
		return;
	if (fs->mounted)
		fuse_session_unmount(fs->se);
	furing_stop(fs);
	fuse_session_destroy(fs->se);
	pending_stop(fs);
	times_release(fs);
	if (fs->journal && journal_close(fs->journal))
		log_error("the journal was not closed cleanly; the next mount replays it");
	inode_table_release(fs);
	pthread_rwlock_destroy(&fs->freeze);
	pthread_mutex_destroy(&fs->anon_lock);
	pthread_mutex_destroy(&fs->lock);
	free(fs);
}

int fs_freeze(struct drfs_fs *fs, uint64_t *lsn)
{
	int ret;

	if (!fs->journal)
		return -EOPNOTSUPP;
	pthread_rwlock_wrlock(&fs->freeze);
	/* no change is in flight; make the journal durable and the tree hold it */
	uint64_t head = journal_head(fs->journal);
	ret = journal_wait(fs->journal, head);
	if (!ret) {
		pending_drain(fs);
		ret = journal_error(fs->journal);
	}
	if (ret) {
		pthread_rwlock_unlock(&fs->freeze);
		return ret;
	}
	*lsn = head;
	return 0;
}

void fs_thaw(struct drfs_fs *fs)
{
	pthread_rwlock_unlock(&fs->freeze);
}

void fs_journal_keep_from(struct drfs_fs *fs, uint64_t lsn)
{
	if (!fs->journal)
		return;
	if (fs->snapshot_hold < 0)
		fs->snapshot_hold = journal_hold_soft(fs->journal, "snapshot", lsn,
						      JHOLD_YIELD_CAP | JHOLD_YIELD_FULL);
	else
		journal_release(fs->journal, fs->snapshot_hold, lsn);
}

struct journal *fs_journal(struct drfs_fs *fs)
{
	return fs->journal;
}
