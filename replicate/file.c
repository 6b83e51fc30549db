/*
 * file.c - the file:// backend: objects are files under a directory (a
 * second disk, an NFS mount).  An object appears whole or not at all: it is
 * written to a temporary name, fsynced, renamed into place and its
 * directory fsynced.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "replicate_i.h"

struct fileb {
	char *dir;                    /* absolute, no trailing slash */
};

static struct fileb *fb(struct backend *b)
{
	return b->priv;
}

/* DIR/KEY into BUF.  -ENAMETOOLONG or -EINVAL for a key that climbs out. */
static int key_path(struct backend *b, const char *key, char *buf, size_t len)
{
	if (!*key || key[0] == '/' || strstr(key, ".."))
		return -EINVAL;
	int n = snprintf(buf, len, "%s/%s", fb(b)->dir, key);
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

static int fail(struct backend *b, struct backend_err *err, const char *op, const char *key,
		int e)
{
	struct stat st;
	const char *hint = e == ENOSPC ? "; free space on the replica's disk" :
			   e == EACCES || e == EPERM || e == EROFS ? "; check the replica directory's permissions" :
			   stat(fb(b)->dir, &st) ? "; the replica directory is missing: mount its disk, or create it" : "";
	backend_err_set(err, e != EINVAL, 0, NULL, "%s %s/%s: %s%s", op, b->url, key, strerror(e),
			hint);
	return -e;
}

/*
 * Makes the directories between the backend's directory (which must exist:
 * a missing one is an unmounted disk, not something to create) and PATH.
 */
static int make_parents(struct backend *b, char *path)
{
	struct stat st;

	if (stat(fb(b)->dir, &st))
		return -errno;
	for (char *p = strchr(path + strlen(fb(b)->dir) + 1, '/'); p; p = strchr(p + 1, '/')) {
		*p = 0;
		int r = mkdir(path, 0755);
		int e = errno;
		*p = '/';
		if (r && e != EEXIST)
			return -e;
	}
	return 0;
}

static int fsync_parent(const char *path)
{
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (!slash)
		return 0;
	*slash = 0;
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int r = fsync(fd) ? -errno : 0;
	close(fd);
	return r;
}

/* Writes the object from DATA, or from FD at OFF when DATA is NULL. */
static int put_any(struct backend *b, const char *key, const void *data, int fd, off_t off,
		   size_t len, struct backend_err *err)
{
	char path[PATH_MAX], tmp[PATH_MAX + 32];
	int ret = key_path(b, key, path, sizeof(path)), out = -1;
	char *buf = NULL;

	atomic_fetch_add(&b->requests, 1);
	if (ret)
		return fail(b, err, "PUT", key, -ret);
	if ((ret = make_parents(b, path)))
		return fail(b, err, "PUT", key, -ret);
	snprintf(tmp, sizeof(tmp), "%s.tmp%ld", path, (long)gettid());
	out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (out < 0)
		return fail(b, err, "PUT", key, errno);
	if (data) {
		ret = write_all(out, data, len);
	} else {
		size_t chunk = 1 << 20, done = 0;
		buf = malloc(chunk);
		ret = buf ? 0 : -ENOMEM;
		while (!ret && done < len) {
			size_t n = len - done < chunk ? len - done : chunk;
			ret = pread_all(fd, buf, n, off + (off_t)done);
			if (ret == -ENODATA)
				ret = -EIO;     /* the source is shorter than said */
			if (!ret)
				ret = write_all(out, buf, n);
			done += n;
		}
		free(buf);
	}
	if (!ret && fsync(out))
		ret = -errno;
	if (close(out) && !ret)
		ret = -errno;
	if (!ret && rename(tmp, path))
		ret = -errno;
	if (!ret)
		ret = fsync_parent(path);
	if (ret) {
		unlink(tmp);
		return fail(b, err, "PUT", key, -ret);
	}
	atomic_fetch_add(&b->put_bytes, len);
	return 0;
}

static int file_put(struct backend *b, const char *key, const void *data, size_t len,
		    struct backend_err *err)
{
	static const char empty[1];
	return put_any(b, key, data ? data : empty, -1, 0, len, err);
}

static int file_put_fd(struct backend *b, const char *key, int fd, off_t off, size_t len,
		       struct backend_err *err)
{
	return put_any(b, key, NULL, fd, off, len, err);
}

static ssize_t file_get_range(struct backend *b, const char *key, uint64_t off, size_t len,
			      void *buf, struct backend_err *err)
{
	char path[PATH_MAX];
	int ret = key_path(b, key, path, sizeof(path));
	size_t got = 0;

	atomic_fetch_add(&b->requests, 1);
	if (ret)
		return fail(b, err, "GET", key, -ret);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		if (e == ENOENT) {
			backend_err_set(err, false, 404, "NoSuchKey", "GET %s/%s: no such object", b->url,
					key);
			return -ENOENT;
		}
		return fail(b, err, "GET", key, e);
	}
	while (got < len) {
		ssize_t n = pread(fd, (char *)buf + got, len - got, (off_t)(off + got));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int e = errno;
			close(fd);
			return fail(b, err, "GET", key, e);
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	atomic_fetch_add(&b->get_bytes, got);
	return (ssize_t)got;
}

static int file_head(struct backend *b, const char *key, uint64_t *size, struct backend_err *err)
{
	char path[PATH_MAX];
	struct stat st;
	int ret = key_path(b, key, path, sizeof(path));

	atomic_fetch_add(&b->requests, 1);
	if (ret)
		return fail(b, err, "HEAD", key, -ret);
	if (stat(path, &st)) {
		if (errno == ENOENT) {
			/* the replica's directory itself missing is a failure, not an absent object */
			struct stat top;
			if (stat(fb(b)->dir, &top))
				return fail(b, err, "HEAD", key, errno);
			backend_err_set(err, false, 404, "NoSuchKey", "HEAD %s/%s: no such object", b->url,
					key);
			return -ENOENT;
		}
		return fail(b, err, "HEAD", key, errno);
	}
	if (size)
		*size = (uint64_t)st.st_size;
	return 0;
}

static int file_get(struct backend *b, const char *key, void **data, size_t *len,
		    struct backend_err *err)
{
	uint64_t size;
	int ret = file_head(b, key, &size, err);

	if (ret)
		return ret;
	void *buf = malloc(size ? size : 1);
	if (!buf)
		return -ENOMEM;
	ssize_t n = file_get_range(b, key, 0, size, buf, err);
	if (n < 0 || (uint64_t)n != size) {
		free(buf);
		if (n >= 0)
			backend_err_set(err, true, 0, NULL, "GET %s/%s: the object changed while read",
					b->url, key);
		return n < 0 ? (int)n : -EIO;
	}
	*data = buf;
	*len = size;
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/*
 * Lists the files under REL (a directory relative to the backend's dir, ""
 * for the top) whose keys start with PREFIX, in key order.
 */
static int list_dir(struct backend *b, const char *rel, const char *prefix, backend_list_fn fn,
		    void *arg, struct backend_err *err)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s%s%s", fb(b)->dir, *rel ? "/" : "", rel);
	DIR *d = opendir(path);
	if (!d) {
		if (errno == ENOENT && *rel)
			return 0;
		return fail(b, err, "LIST", rel, errno);
	}
	char **names = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	int ret = 0;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.' || strstr(de->d_name, ".tmp"))
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			char **nn = realloc(names, cap * sizeof(*nn));
			if (!nn) {
				ret = -ENOMEM;
				break;
			}
			names = nn;
		}
		if (!(names[n] = strdup(de->d_name))) {
			ret = -ENOMEM;
			break;
		}
		n++;
	}
	closedir(d);
	if (!ret)
		qsort(names, n, sizeof(*names), cmp_str);
	for (size_t i = 0; i < n && !ret; i++) {
		char key[PATH_MAX];
		struct stat st;
		if (snprintf(key, sizeof(key), "%s%s%s", rel, *rel ? "/" : "", names[i]) >=
		    (int)sizeof(key))
			continue;
		size_t kl = strlen(key), pl = strlen(prefix);
		/* descend only where the prefix can still match */
		if (strncmp(key, prefix, kl < pl ? kl : pl))
			continue;
		if (snprintf(path, sizeof(path), "%s/%s", fb(b)->dir, key) >= (int)sizeof(path) ||
		    lstat(path, &st))
			continue;
		if (S_ISDIR(st.st_mode))
			ret = list_dir(b, key, prefix, fn, arg, err);
		else if (S_ISREG(st.st_mode) && kl >= pl)
			ret = fn(arg, key, (uint64_t)st.st_size);
	}
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return ret;
}

static int file_list(struct backend *b, const char *prefix, backend_list_fn fn, void *arg,
		     struct backend_err *err)
{
	atomic_fetch_add(&b->requests, 1);
	return list_dir(b, "", prefix, fn, arg, err);
}

static int file_del(struct backend *b, const char *key, struct backend_err *err)
{
	char path[PATH_MAX];
	int ret = key_path(b, key, path, sizeof(path));

	atomic_fetch_add(&b->requests, 1);
	if (ret)
		return fail(b, err, "DELETE", key, -ret);
	if (unlink(path) && errno != ENOENT)
		return fail(b, err, "DELETE", key, errno);
	return 0;
}

/* Removes the stale temp files in DIR and, one level down, in its directories. */
static unsigned sweep_dir(int dfd, time_t before, int depth)
{
	DIR *d = fdopendir(dfd);
	struct dirent *de;
	struct stat st;
	unsigned n = 0;

	if (!d) {
		close(dfd);
		return 0;
	}
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.' || fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW))
			continue;
		if (S_ISDIR(st.st_mode) && depth < 2) {
			int sub = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
			if (sub >= 0)
				n += sweep_dir(sub, before, depth + 1);
		} else if (S_ISREG(st.st_mode) && strstr(de->d_name, ".tmp") && st.st_mtime < before &&
			   unlinkat(dirfd(d), de->d_name, 0) == 0) {
			n++;
		}
	}
	closedir(d);
	return n;
}

static unsigned file_sweep(struct backend *b, unsigned max_age_s)
{
	int dfd = open(fb(b)->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	return dfd < 0 ? 0 : sweep_dir(dfd, time(NULL) - (time_t)max_age_s, 0);
}

static void file_close(struct backend *b)
{
	free(fb(b)->dir);
	free(b->priv);
	free(b->url);
	free(b);
}

static const struct backend_ops file_ops = {
	.put_fd = file_put_fd,
	.put = file_put,
	.get_range = file_get_range,
	.get = file_get,
	.head = file_head,
	.list = file_list,
	.del = file_del,
	.sweep = file_sweep,
	.close = file_close,
};

int file_backend_open(const char *url, struct backend **out, struct backend_err *err)
{
	const char *path = url + strlen("file://");
	struct backend *b;
	struct fileb *f;

	if (path[0] != '/' || !path[1]) {
		backend_err_set(err, false, 0, NULL,
				"replica URL '%s': give an absolute directory, file:///path", url);
		return -EINVAL;
	}
	b = calloc(1, sizeof(*b));
	f = calloc(1, sizeof(*f));
	if (!b || !f || !(f->dir = strdup(path)) || !(b->url = strdup(url))) {
		if (f)
			free(f->dir);
		free(f);
		if (b)
			free(b->url);
		free(b);
		return -ENOMEM;
	}
	size_t l = strlen(f->dir);
	while (l > 1 && f->dir[l - 1] == '/')
		f->dir[--l] = 0;
	b->ops = &file_ops;
	b->priv = f;
	*out = b;
	return 0;
}
