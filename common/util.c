/*
 * util.c - paths, option strings, sizes, key/value files and durable writes.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>

#include "common.h"

char *path_join(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	char *p = malloc(la + lb + 2);

	if (!p)
		return NULL;
	memcpy(p, a, la);
	if (la && a[la - 1] != '/')
		p[la++] = '/';
	memcpy(p + la, b, lb + 1);
	return p;
}

char *path_absolute(const char *path)
{
	char cwd[PATH_MAX];
	char *abs, *out, *seg, *save;
	size_t n = 0;

	if (path[0] == '/') {
		abs = strdup(path);
	} else {
		if (!getcwd(cwd, sizeof(cwd)))
			return NULL;
		abs = path_join(cwd, path);
	}
	if (!abs)
		return NULL;
	/* Normalise "//", "/./" and "/../" lexically. */
	out = malloc(strlen(abs) + 2);
	if (!out) {
		free(abs);
		return NULL;
	}
	for (seg = strtok_r(abs, "/", &save); seg; seg = strtok_r(NULL, "/", &save)) {
		if (!strcmp(seg, "."))
			continue;
		if (!strcmp(seg, "..")) {
			while (n > 0 && out[n - 1] != '/')
				n--;
			if (n > 0)
				n--;
			continue;
		}
		out[n++] = '/';
		size_t l = strlen(seg);
		memcpy(out + n, seg, l);
		n += l;
	}
	if (n == 0)
		out[n++] = '/';
	out[n] = '\0';
	free(abs);
	return out;
}

bool opt_next(const char **cursor, char *buf, char **key, char **value)
{
	const char *s = *cursor;
	size_t n = 0;

	while (*s == ',')
		s++;
	if (!*s)
		return false;
	while (*s && *s != ',') {
		/* A backslash escapes a comma inside a value. */
		if (*s == '\\' && s[1])
			s++;
		buf[n++] = *s++;
	}
	buf[n] = '\0';
	*cursor = s;
	*key = buf;
	*value = strchr(buf, '=');
	if (*value)
		*(*value)++ = '\0';
	return true;
}

/* The decimal number S starts with (*V) and where it ends (*END).  0 or -errno. */
static int leading_number(const char *s, unsigned long long *v, char **end)
{
	if (!s || !isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	*v = strtoull(s, end, 10);
	return errno ? -errno : 0;
}

int parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;
	int shift = 0;

	int ret = leading_number(s, &v, &end);
	if (ret)
		return ret;
	switch (toupper((unsigned char)*end)) {
	case '\0': break;
	case 'K': shift = 10; end++; break;
	case 'M': shift = 20; end++; break;
	case 'G': shift = 30; end++; break;
	case 'T': shift = 40; end++; break;
	default: return -EINVAL;
	}
	if (*end == 'i' || *end == 'I')
		end++;
	if (*end == 'B' || *end == 'b')
		end++;
	if (*end)
		return -EINVAL;
	if (shift && v > (UINT64_MAX >> shift))
		return -ERANGE;
	*out = (uint64_t)v << shift;
	return 0;
}

int parse_duration(const char *s, uint64_t *secs)
{
	char *end;
	unsigned long long v;
	uint64_t unit = 1;

	int ret = leading_number(s, &v, &end);
	if (ret)
		return ret;
	switch (*end) {
	case '\0': break;
	case 's': end++; break;
	case 'm': unit = 60; end++; break;
	case 'h': unit = 3600; end++; break;
	case 'd': unit = 86400; end++; break;
	default: return -EINVAL;
	}
	if (*end)
		return -EINVAL;
	if (v > UINT64_MAX / unit)
		return -ERANGE;
	*secs = v * unit;
	return 0;
}

struct kv {
	size_t n;
	char **keys;
	char **values;
};

int read_file_small(const char *path, char **out, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	size_t cap = 4096, n = 0;
	char *buf;
	ssize_t r;

	if (fd < 0)
		return -errno;
	buf = malloc(cap);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	for (;;) {
		if (n + 1 >= cap) {
			char *nb = realloc(buf, cap * 2);
			if (!nb) {
				free(buf);
				close(fd);
				return -ENOMEM;
			}
			buf = nb;
			cap *= 2;
		}
		r = read(fd, buf + n, cap - n - 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int err = -errno;
			free(buf);
			close(fd);
			return err;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	close(fd);
	buf[n] = '\0';
	*out = buf;
	if (len)
		*len = n;
	return 0;
}

static char *trim(char *s)
{
	char *e;

	while (isspace((unsigned char)*s))
		s++;
	e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

int kv_load(const char *path, struct kv **out)
{
	char *text, *line, *save;
	struct kv *kv;
	int ret = read_file_small(path, &text, NULL);

	if (ret)
		return ret;
	kv = calloc(1, sizeof(*kv));
	if (!kv) {
		ret = -ENOMEM;
		goto out_free_text;
	}
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *eq, *k, *v, **nk, **nv;

		line = trim(line);
		if (!*line || *line == '#')
			continue;
		eq = strchr(line, '=');
		if (!eq) {
			ret = -EINVAL;
			goto out_free_kv;
		}
		*eq = '\0';
		k = strdup(trim(line));
		v = strdup(trim(eq + 1));
		nk = realloc(kv->keys, (kv->n + 1) * sizeof(char *));
		if (nk)
			kv->keys = nk;
		nv = realloc(kv->values, (kv->n + 1) * sizeof(char *));
		if (nv)
			kv->values = nv;
		if (!k || !v || !nk || !nv) {
			free(k);
			free(v);
			ret = -ENOMEM;
			goto out_free_kv;
		}
		kv->keys[kv->n] = k;
		kv->values[kv->n] = v;
		kv->n++;
	}
	free(text);
	*out = kv;
	return 0;

out_free_kv:
	kv_free(kv);
out_free_text:
	free(text);
	return ret;
}

void utc_time(int64_t secs, char *buf, size_t len)
{
	time_t t = (time_t)secs;
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

const char *kv_get(const struct kv *kv, const char *key)
{
	/* Last assignment wins, as in shell-style config files. */
	for (size_t i = kv->n; i-- > 0;)
		if (!strcmp(kv->keys[i], key))
			return kv->values[i];
	return NULL;
}

void kv_free(struct kv *kv)
{
	if (!kv)
		return;
	for (size_t i = 0; i < kv->n; i++) {
		free(kv->keys[i]);
		free(kv->values[i]);
	}
	free(kv->keys);
	free(kv->values);
	free(kv);
}

void proc_fd_path(char *buf, int fd)
{
	snprintf(buf, 32, "/proc/self/fd/%d", fd);
}

int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t r = write(fd, p, len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		p += r;
		len -= (size_t)r;
	}
	return 0;
}

int pwrite_all(int fd, const void *buf, size_t len, off_t off)
{
	const char *p = buf;

	while (len) {
		ssize_t r = pwrite(fd, p, len, off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ENOSPC;
		p += r;
		len -= (size_t)r;
		off += r;
	}
	return 0;
}

int write_file_durable(int dirfd, const char *name, const void *data, size_t len)
{
	char tmp[NAME_MAX + 1];
	int fd, ret;

	if (snprintf(tmp, sizeof(tmp), ".%s.tmp.%ld", name, (long)getpid()) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	ret = write_all(fd, data, len);
	if (!ret && fsync(fd))
		ret = -errno;
	if (close(fd) && !ret)
		ret = -errno;
	if (ret)
		goto out_unlink;
	if (renameat(dirfd, tmp, dirfd, name)) {
		ret = -errno;
		goto out_unlink;
	}
	if (fsync(dirfd))
		return -errno;
	return 0;

out_unlink:
	unlinkat(dirfd, tmp, 0);
	return ret;
}

ssize_t pread_upto(int fd, void *buf, size_t len, off_t off)
{
	size_t got = 0;

	while (got < len) {
		ssize_t r = pread(fd, (char *)buf + got, len - got, off + (off_t)got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			break;
		got += (size_t)r;
	}
	return (ssize_t)got;
}

int write_file_replace(const char *path, const void *data, size_t len)
{
	char tmp[PATH_MAX];
	int fd, ret;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	ret = write_all(fd, data, len);
	if (close(fd) && !ret)
		ret = -errno;
	if (!ret && rename(tmp, path) < 0)
		ret = -errno;
	if (ret)
		unlink(tmp);
	return ret;
}

int pread_all(int fd, void *buf, size_t len, off_t off)
{
	ssize_t n = pread_upto(fd, buf, len, off);

	if (n < 0)
		return (int)n;
	return (size_t)n == len ? 0 : -ENODATA;
}

/* file_extent_next by the allocation map; -EOPNOTSUPP: no FIEMAP here. */
static int extent_fiemap(int fd, uint64_t pos, uint64_t size, uint64_t *ds, uint64_t *de)
{
	struct {
		struct fiemap fm;
		struct fiemap_extent fe[32];
	} q;
	bool found = false;

	for (uint64_t at = pos; at < size;) {
		memset(&q.fm, 0, sizeof(q.fm));
		q.fm.fm_start = at;
		q.fm.fm_length = size - at;
		q.fm.fm_extent_count = 32;
		if (ioctl(fd, FS_IOC_FIEMAP, &q.fm))
			return errno == ENOTTY || errno == EOPNOTSUPP ? -EOPNOTSUPP : -errno;
		if (!q.fm.fm_mapped_extents)
			break;
		for (uint32_t i = 0; i < q.fm.fm_mapped_extents; i++) {
			const struct fiemap_extent *x = &q.fe[i];
			uint64_t s = x->fe_logical, e = x->fe_logical + x->fe_length;
			if (e <= pos)
				continue;
			if (!found) {
				*ds = s > pos ? s : pos;
				*de = e;
				found = true;
			} else if (s > *de) {
				goto done;            /* a hole after the extent */
			} else if (e > *de) {
				*de = e;
			}
			if (x->fe_flags & FIEMAP_EXTENT_LAST)
				goto done;
		}
		if (!found || *de <= at)
			break;
		at = *de;
	}
done:
	if (!found || *ds >= size)
		return 1;
	if (*de > size)
		*de = size;
	return 0;
}

/* file_extent_next by SEEK_DATA and SEEK_HOLE. */
static int extent_seek(int fd, uint64_t pos, uint64_t size, uint64_t *ds, uint64_t *de)
{
	off_t s = lseek(fd, (off_t)pos, SEEK_DATA);

	if (s < 0)
		return errno == ENXIO ? 1 : -errno;
	off_t e = lseek(fd, s, SEEK_HOLE);
	if (e < 0)
		return -errno;
	if ((uint64_t)s >= size)
		return 1;
	*ds = (uint64_t)s;
	*de = (uint64_t)e > size ? size : (uint64_t)e;
	return 0;
}

int file_extent_next(int fd, uint64_t pos, uint64_t size, uint64_t *ds, uint64_t *de)
{
	int ret = extent_fiemap(fd, pos, size, ds, de);

	return ret == -EOPNOTSUPP ? extent_seek(fd, pos, size, ds, de) : ret;
}
