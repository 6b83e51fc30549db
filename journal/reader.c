/*
 * reader.c - what is on disk: segment names and headers, the superblock,
 * creating an empty journal, and reading the log back in LSN order.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../common/common.h"
#include "journal_i.h"

void jseg_name(char *name, uint32_t timeline, uint64_t first_lsn)
{
	snprintf(name, 40, "%08" PRIx32 "-%016" PRIx64 ".seg", timeline, first_lsn);
}

static bool parse_seg_name(const char *s, struct jseg *seg)
{
	char *end;

	if (strlen(s) != 29 || s[8] != '-' || strcmp(s + 25, ".seg"))
		return false;
	seg->timeline = (uint32_t)strtoul(s, &end, 16);
	if (end != s + 8)
		return false;
	seg->first_lsn = strtoull(s + 9, &end, 16);
	if (end != s + 25)
		return false;
	snprintf(seg->name, sizeof(seg->name), "%s", s);
	return true;
}

static int seg_cmp(const void *a, const void *b)
{
	const struct jseg *x = a, *y = b;

	return x->first_lsn < y->first_lsn ? -1 : x->first_lsn > y->first_lsn;
}

int jseg_list(int dirfd, struct jseg **out, size_t *n)
{
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	struct jseg *v = NULL, seg;
	size_t cnt = 0, cap = 0;
	struct dirent *de;
	DIR *d;

	if (fd < 0 || !(d = fdopendir(fd))) {
		int err = -errno;
		if (fd >= 0)
			close(fd);
		return err;
	}
	while ((de = readdir(d))) {
		if (!parse_seg_name(de->d_name, &seg))
			continue;
		if (cnt == cap) {
			struct jseg *nv = realloc(v, (cap = cap ? cap * 2 : 16) * sizeof(*v));
			if (!nv) {
				free(v);
				closedir(d);
				return -ENOMEM;
			}
			v = nv;
		}
		v[cnt++] = seg;
	}
	closedir(d);
	if (cnt)
		qsort(v, cnt, sizeof(*v), seg_cmp);
	*out = v;
	*n = cnt;
	return 0;
}

void jseg_header(void *buf, uint32_t timeline, uint64_t first_lsn, uint64_t size)
{
	unsigned char *b = buf;
	uint32_t version = JFORMAT, zero = 0, crc;
	uint64_t now;
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	memset(b, 0, JSEG_HEADER);
	memcpy(b, JSEG_MAGIC, 8);
	memcpy(b + 8, &version, 4);
	memcpy(b + 12, &zero, 4);
	memcpy(b + 16, &timeline, 4);
	memcpy(b + 24, &first_lsn, 8);
	memcpy(b + 32, &size, 8);
	memcpy(b + 40, &now, 8);
	crc = crc32c(0, b, 48);
	memcpy(b + 48, &crc, 4);
}

const char *jseg_check(const void *buf, const char *name, uint64_t *first, uint64_t *size)
{
	const unsigned char *b = buf;
	uint32_t version, features, crc;
	struct jseg seg;

	if (memcmp(b, JSEG_MAGIC, 8))
		return "not a journal segment (bad magic)";
	memcpy(&crc, b + 48, 4);
	if (crc32c(0, b, 48) != crc)
		return "segment header checksum mismatch";
	memcpy(&version, b + 8, 4);
	memcpy(&features, b + 12, 4);
	if (version != JFORMAT)
		return "segment format version not supported by this drfs";
	if (features)
		return "segment uses features this drfs does not know";
	memcpy(first, b + 24, 8);
	memcpy(size, b + 32, 8);
	if (*size < JSEG_MIN || *size > JSEG_MAX || *size % 4096)
		return "segment header has a bad size";
	if (name && (!parse_seg_name(name, &seg) || seg.first_lsn != *first))
		return "segment name does not match its header";
	return NULL;
}

/* ---- superblock ---- */

void boot_id(unsigned char id[16])
{
	char text[64];
	int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, text, sizeof(text) - 1) : -1;
	int k = 0;

	memset(id, 0, 16);
	if (fd >= 0)
		close(fd);
	if (n <= 0)
		return;
	text[n] = 0;
	for (char *p = text; *p && k < 32; p++) {
		int v = *p >= '0' && *p <= '9' ? *p - '0' : *p >= 'a' && *p <= 'f' ? *p - 'a' + 10 : -1;
		if (v < 0)
			continue;
		id[k / 2] |= (unsigned char)(k % 2 ? v : v << 4);
		k++;
	}
}

static void super_encode(unsigned char *b, const struct jsuper *sb)
{
	uint32_t version = JFORMAT, zero = 0, crc;

	memset(b, 0, JSUP_SLOT);
	memcpy(b, JSUP_MAGIC, 8);
	memcpy(b + 8, &version, 4);
	memcpy(b + 12, &sb->timeline, 4);
	memcpy(b + 16, &sb->seq, 8);
	memcpy(b + 24, &sb->checkpoint_lsn, 8);
	memcpy(b + 32, &sb->segment_size, 8);
	memcpy(b + 40, &sb->flags, 4);
	memcpy(b + 44, &zero, 4);
	memcpy(b + 48, sb->boot_id, 16);
	memcpy(b + 64, &sb->time_ns, 8);
	crc = crc32c(0, b, 72);
	memcpy(b + 72, &crc, 4);
}

static bool super_decode(const unsigned char *b, struct jsuper *sb)
{
	uint32_t version, crc;

	memcpy(&crc, b + 72, 4);
	if (memcmp(b, JSUP_MAGIC, 8) || crc32c(0, b, 72) != crc)
		return false;
	memcpy(&version, b + 8, 4);
	if (version != JFORMAT)
		return false;
	memcpy(&sb->timeline, b + 12, 4);
	memcpy(&sb->seq, b + 16, 8);
	memcpy(&sb->checkpoint_lsn, b + 24, 8);
	memcpy(&sb->segment_size, b + 32, 8);
	memcpy(&sb->flags, b + 40, 4);
	memcpy(sb->boot_id, b + 48, 16);
	memcpy(&sb->time_ns, b + 64, 8);
	return true;
}

int jsuper_write(int dirfd, const struct jsuper *sb)
{
	unsigned char b[JSUP_SLOT];
	int fd = openat(dirfd, "super", O_WRONLY | O_CLOEXEC);
	int ret = 0;

	if (fd < 0)
		return -errno;
	super_encode(b, sb);
	if (pwrite(fd, b, JSUP_SLOT, (off_t)(sb->seq % 2) * JSUP_SLOT) != JSUP_SLOT)
		ret = errno ? -errno : -EIO;
	else if (fdatasync(fd) < 0)
		ret = -errno;
	close(fd);
	return ret;
}

static int super_read_fd(int dirfd, struct jsuper *sb)
{
	unsigned char b[2 * JSUP_SLOT];
	struct jsuper s[2];
	bool ok[2];
	int fd = openat(dirfd, "super", O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = pread(fd, b, sizeof(b), 0);
	close(fd);
	if (n < 0)
		return -errno;
	if (n < (ssize_t)sizeof(b))
		memset(b + n, 0, sizeof(b) - (size_t)n);
	ok[0] = super_decode(b, &s[0]);
	ok[1] = super_decode(b + JSUP_SLOT, &s[1]);
	if (!ok[0] && !ok[1])
		return -EBADMSG;
	*sb = ok[0] && (!ok[1] || s[0].seq > s[1].seq) ? s[0] : s[1];
	return 0;
}

int jsuper_read(const char *dir, struct jsuper *sb)
{
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), ret;

	if (dfd < 0)
		return -errno;
	ret = super_read_fd(dfd, sb);
	close(dfd);
	return ret;
}

bool journal_exists(const char *dir)
{
	struct stat st;
	char path[4096];

	snprintf(path, sizeof(path), "%s/super", dir);
	return stat(path, &st) == 0;
}

/* Creates segment NAME in DIRFD: SIZE bytes written in full, HEADER first.  0 or -errno. */
static int seg_write_new(int dirfd, const char *name, uint64_t size, const void *header)
{
	static const unsigned char zeros[1 << 16];
	int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	int ret;

	if (fd < 0)
		return -errno;
	ret = pwrite_all(fd, header, JSEG_HEADER, 0);
	for (uint64_t off = JSEG_HEADER; !ret && off < size; off += sizeof(zeros)) {
		size_t n = size - off < sizeof(zeros) ? (size_t)(size - off) : sizeof(zeros);
		ret = pwrite_all(fd, zeros, n, (off_t)off);
	}
	if (!ret && fdatasync(fd) < 0)
		ret = -errno;
	close(fd);
	if (ret)
		unlinkat(dirfd, name, 0);
	return ret;
}

int jseg_create(int dirfd, const char *name, uint32_t timeline, uint64_t first, uint64_t size)
{
	unsigned char h[JSEG_HEADER];

	jseg_header(h, timeline, first, size);
	return seg_write_new(dirfd, name, size, h);
}

/*
 * mkdir(DIR) with its parent flagged, for that moment, as the top of a
 * directory hierarchy (FS_TOPDIR_FL; ext2/3/4 only, elsewhere nothing
 * changes): ext4 then places DIR, and the segments made in it, as it places
 * top-level directories, in another block group than the tree's files.  A
 * segment's inode otherwise shares its inode-table
 * block with files of the tree, and on ext4 without a journal every
 * fdatasync of the segment writes that block whenever one of them changed
 * (docs/journal-design.md, "Appending and group commit").
 */
static int mkdir_spread(const char *dir)
{
	char *parent = strdup(dir), *slash;
	int pfd = -1, flags = 0, ret;
	bool set = false;

	if (parent && (slash = strrchr(parent, '/'))) {
		if (slash == parent)
			slash[1] = 0;
		else
			*slash = 0;
		pfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	}
	if (pfd >= 0 && ioctl(pfd, FS_IOC_GETFLAGS, &flags) == 0 && !(flags & FS_TOPDIR_FL)) {
		int on = flags | FS_TOPDIR_FL;
		set = ioctl(pfd, FS_IOC_SETFLAGS, &on) == 0;
	}
	ret = mkdir(dir, 0700) < 0 ? -errno : 0;
	if (set)
		ioctl(pfd, FS_IOC_SETFLAGS, &flags);
	if (pfd >= 0)
		close(pfd);
	free(parent);
	return ret;
}

int journal_create(const char *dir, uint64_t segment_size, uint64_t first_lsn)
{
	struct jsuper sb = { .timeline = JTIMELINE, .seq = 1, .segment_size = segment_size,
			     .flags = JSUPER_CLEAN, .checkpoint_lsn = first_lsn };
	unsigned char b[2 * JSUP_SLOT];
	char name[40];
	int dfd, fd, ret;
	struct timespec ts;

	if (!segment_size)
		sb.segment_size = segment_size = JSEG_DEFAULT;
	if (segment_size < JSEG_MIN || segment_size > JSEG_MAX || segment_size % 4096)
		return -EINVAL;
	if ((ret = mkdir_spread(dir)) < 0 && ret != -EEXIST)
		return ret;
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return -errno;
	jseg_name(name, JTIMELINE, first_lsn);
	ret = jseg_create(dfd, name, JTIMELINE, first_lsn, segment_size);
	if (ret)
		goto out;
	clock_gettime(CLOCK_REALTIME, &ts);
	sb.time_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	boot_id(sb.boot_id);
	memset(b, 0, sizeof(b));
	super_encode(b + JSUP_SLOT, &sb);   /* seq 1 lives in slot 1 */
	fd = openat(dfd, "super.tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || write_all(fd, b, sizeof(b)) < 0 || fsync(fd) < 0) {
		ret = -errno;
		if (fd >= 0)
			close(fd);
		goto out;
	}
	close(fd);
	if (renameat(dfd, "super.tmp", dfd, "super") < 0 || fsync(dfd) < 0)
		ret = -errno;
out:
	close(dfd);
	return ret;
}

/* ---- reading the log ---- */

struct jreader {
	int dirfd;
	struct jseg *segs;
	size_t nseg, cur;
	unsigned char *map;      /* the current segment, mapped */
	uint64_t map_size, first, pos, skip_below;
	const char *stop;
	bool sealed;             /* ended at a SEAL whose next segment does not exist */
	char stop_buf[200];
};

static void reader_unmap(struct jreader *rd)
{
	if (rd->map)
		munmap(rd->map, rd->map_size);
	rd->map = NULL;
}

/* Maps segment index I; 0, or -errno / stop reason set. */
static int reader_map(struct jreader *rd, size_t i)
{
	struct stat st;
	uint64_t first, size;
	const char *why;
	int fd;

	reader_unmap(rd);
	rd->cur = i;
	fd = openat(rd->dirfd, rd->segs[i].name, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0) {
		int err = -errno;
		if (fd >= 0)
			close(fd);
		return err;
	}
	if ((uint64_t)st.st_size < JSEG_HEADER) {
		close(fd);
		snprintf(rd->stop_buf, sizeof(rd->stop_buf), "%s: shorter than a segment header",
			 rd->segs[i].name);
		rd->stop = rd->stop_buf;
		return 1;
	}
	rd->map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (rd->map == MAP_FAILED) {
		rd->map = NULL;
		return -errno;
	}
	rd->map_size = (uint64_t)st.st_size;
	why = jseg_check(rd->map, rd->segs[i].name, &first, &size);
	if (!why && size != rd->map_size)
		why = "segment file size differs from its header";
	if (why) {
		snprintf(rd->stop_buf, sizeof(rd->stop_buf), "%s: %s", rd->segs[i].name, why);
		rd->stop = rd->stop_buf;
		return 1;
	}
	rd->first = first;
	return 0;
}

int jreader_open(const char *dir, uint64_t from, struct jreader **out)
{
	struct jreader *rd = calloc(1, sizeof(*rd));
	struct jsuper sb;
	size_t i;
	int ret;

	if (!rd)
		return -ENOMEM;
	rd->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (rd->dirfd < 0) {
		ret = -errno;
		free(rd);
		return ret;
	}
	if (from == UINT64_MAX) {
		ret = super_read_fd(rd->dirfd, &sb);
		if (ret)
			goto fail;
		from = sb.checkpoint_lsn;
	}
	ret = jseg_list(rd->dirfd, &rd->segs, &rd->nseg);
	if (ret)
		goto fail;
	*out = rd;
	rd->skip_below = from;
	if (!rd->nseg) {
		rd->stop = "no segments";
		return 0;
	}
	for (i = 0; i + 1 < rd->nseg && rd->segs[i + 1].first_lsn <= from; i++)
		;
	/* before the oldest segment kept: start at the oldest */
	ret = reader_map(rd, i);
	if (ret < 0) {
		jreader_close(rd);
		return ret;
	}
	rd->pos = rd->segs[i].first_lsn;
	return 0;
fail:
	close(rd->dirfd);
	free(rd->segs);
	free(rd);
	return ret;
}

int jreader_next(struct jreader *rd, struct jrec *r)
{
	for (;;) {
		uint64_t off;
		const char *why;
		size_t len;
		int ret;

		if (rd->stop || !rd->map)
			return 0;
		off = JSEG_HEADER + (rd->pos - rd->first);
		if (off >= rd->map_size) {
			snprintf(rd->stop_buf, sizeof(rd->stop_buf),
				 "%s: ends without a SEAL record", rd->segs[rd->cur].name);
			rd->stop = rd->stop_buf;
			return 0;
		}
		len = jrec_decode(rd->map + off, (size_t)(rd->map_size - off), rd->pos, r, &why);
		if (!len) {
			if (strcmp(why, "end of log (zeros)") &&
			    strcmp(why, "record LSN does not match its position (stale bytes)")) {
				snprintf(rd->stop_buf, sizeof(rd->stop_buf),
					 "%s at LSN %" PRIu64 " (file offset %" PRIu64 "): %s",
					 rd->segs[rd->cur].name, rd->pos, off, why);
				rd->stop = rd->stop_buf;
			} else {
				rd->stop = NULL;
				reader_unmap(rd);
			}
			return 0;
		}
		rd->pos += len;
		if (r->type == JR_SEAL) {
			size_t next = rd->cur + 1;
			if (next >= rd->nseg || rd->segs[next].first_lsn != rd->pos) {
				/* sealed, next segment not started: the end */
				reader_unmap(rd);
				rd->sealed = true;
				if (r->lsn >= rd->skip_below)
					return 1;
				return 0;
			}
			ret = reader_map(rd, next);
			if (ret < 0)
				return ret;
		}
		if (r->lsn >= rd->skip_below)
			return 1;
	}
}

bool jreader_sealed(struct jreader *rd)
{
	return rd->sealed;
}

const char *jreader_stop(struct jreader *rd)
{
	return rd->stop;
}

uint64_t jreader_lsn(struct jreader *rd)
{
	return rd->pos;
}

void jreader_close(struct jreader *rd)
{
	if (!rd)
		return;
	reader_unmap(rd);
	close(rd->dirfd);
	free(rd->segs);
	free(rd);
}

int jlog_valid_after(const char *dir, uint64_t pos, uint64_t *found)
{
	struct jreader *rd;
	int ret = jreader_open(dir, pos, &rd);

	if (ret)
		return ret;
	ret = 0;
	if (rd->map && pos >= rd->first) {
		struct jrec r;
		for (uint64_t p = pos + 8; JSEG_HEADER + (p - rd->first) + JREC_HEADER <= rd->map_size;
		     p += 8) {
			uint64_t off = JSEG_HEADER + (p - rd->first);
			if (jrec_decode(rd->map + off, (size_t)(rd->map_size - off), p, &r, NULL)) {
				*found = p;
				ret = 1;
				break;
			}
		}
	}
	/* a later segment with a valid header means the log went on */
	for (size_t i = 0; !ret && i < rd->nseg; i++)
		if (rd->segs[i].first_lsn > pos && reader_map(rd, i) == 0) {
			*found = rd->segs[i].first_lsn;
			ret = 1;
		}
	jreader_close(rd);
	return ret;
}

ssize_t jlog_read(const char *dir, uint64_t lsn, void *buf, size_t len, uint32_t *timeline)
{
	int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	struct jseg *segs = NULL;
	size_t n = 0, i;
	ssize_t ret;

	if (dirfd < 0)
		return -errno;
	ret = jseg_list(dirfd, &segs, &n);
	if (ret)
		goto out;
	for (i = 0; i < n && !(segs[i].first_lsn <= lsn &&
			       (i + 1 == n || segs[i + 1].first_lsn > lsn)); i++)
		;
	if (i == n) {
		ret = -ENOENT;
		goto out;
	}
	if (i + 1 < n && segs[i + 1].first_lsn - lsn < len)
		len = segs[i + 1].first_lsn - lsn;
	int fd = openat(dirfd, segs[i].name, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ret = errno == ENOENT ? -ENOENT : -errno;
		goto out;
	}
	struct stat st;
	off_t at = (off_t)(JSEG_HEADER + (lsn - segs[i].first_lsn));
	if (fstat(fd, &st) == 0 && st.st_size - at < (off_t)len)
		len = st.st_size > at ? (size_t)(st.st_size - at) : 0;
	ret = pread_all(fd, buf, len, at) ?: (ssize_t)len;
	/*
	 * Leave no pages cached: the journal thread writes the segment with
	 * O_DIRECT, and a direct write over a cached page cannot be issued
	 * without waiting, so the ring would hand it to a worker thread (with
	 * a replica shipping every few milliseconds, nearly every write).  To
	 * the end of the file: readahead cached the pages after the log's end.
	 */
	posix_fadvise(fd, at, 0, POSIX_FADV_DONTNEED);
	close(fd);
	if (timeline)
		*timeline = segs[i].timeline;
out:
	free(segs);
	close(dirfd);
	return ret;
}

int jseg_write_records(const char *dir, uint32_t timeline, uint64_t first_lsn, const void *rec,
		       size_t len)
{
	unsigned char head[JSEG_HEADER];
	char name[40], path[4200];
	uint64_t size = (JSEG_HEADER + len + 4095) / 4096 * 4096;
	int fd, ret;

	if (size < JSEG_MIN)
		size = JSEG_MIN;
	if (size > JSEG_MAX)
		return -EFBIG;
	jseg_name(name, timeline, first_lsn);
	jseg_header(head, timeline, first_lsn, size);
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	/* the rest stays a hole: zeros, which read as the log's clean end */
	ret = pwrite_all(fd, head, sizeof(head), 0) ?: pwrite_all(fd, rec, len, JSEG_HEADER);
	if (!ret && ftruncate(fd, (off_t)size))
		ret = -errno;
	close(fd);
	return ret;
}
