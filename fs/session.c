/*
 * session.c - mounting, serving and unmounting a drfs filesystem.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
	raise_fd_limit();

	ret = inode_table_init(fs);
	if (ret)
		goto out_free;

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
	if (fuse_set_signal_handlers(fs->se)) {
		ret = -EIO;
		goto out_session;
	}
	if (fuse_session_mount(fs->se, cfg->mountpoint)) {
		ret = -EIO;
		log_error("cannot mount on %s; check that /dev/fuse exists and the fuse module is loaded",
			  cfg->mountpoint);
		goto out_signals;
	}
	fs->mounted = true;
	fuse_opt_free_args(&args);
	free(opts);
	*out = fs;
	return 0;

out_signals:
	fuse_remove_signal_handlers(fs->se);
out_session:
	fuse_session_destroy(fs->se);
out_args:
	fuse_opt_free_args(&args);
	free(opts);
out_table:
	inode_table_release(fs);
out_free:
	pthread_mutex_destroy(&fs->lock);
	free(fs);
	return ret;
}

int fs_serve(struct drfs_fs *fs)
{
	struct fuse_loop_config *lc = fuse_loop_cfg_create();
	int ret;

	if (!lc)
		return -ENOMEM;
	fuse_loop_cfg_set_clone_fd(lc, 0);
	fuse_loop_cfg_set_idle_threads(lc, 8);
	fuse_loop_cfg_set_max_threads(lc, fs->cfg.max_threads ? fs->cfg.max_threads : 16);
	ret = fuse_session_loop_mt(fs->se, lc);
	fuse_loop_cfg_destroy(lc);
	return ret < 0 ? ret : 0;
}

void fs_close(struct drfs_fs *fs)
{
	if (!fs)
		return;
	fuse_remove_signal_handlers(fs->se);
	if (fs->mounted)
		fuse_session_unmount(fs->se);
	fuse_session_destroy(fs->se);
	inode_table_release(fs);
	pthread_mutex_destroy(&fs->lock);
	free(fs);
}
