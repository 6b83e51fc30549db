/*
 * apply.c - applying records to a tree: fids and file handles, the replay
 * rules of docs/format.md ("Replay"), and journal_replay_dir().
 *
 * A fid is turned back into an object with a file handle of the ext2/3/4
 * layout {u32 ino, u32 gen}; the filesystem checks the generation, so a
 * fid whose inode number was reused by another file does not resolve.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "../common/common.h"
#include "journal_i.h"

#define FILEID_INO32_GEN 1

struct fh8 {
	struct file_handle fh;
	unsigned char buf[128];
};

bool apply_handles_supported(int dirfd)
{
	struct fh8 h;
	int mount_id;

	h.fh.handle_bytes = sizeof(h.buf);
	if (name_to_handle_at(dirfd, "", &h.fh, &mount_id, AT_EMPTY_PATH) < 0)
		return false;
	return h.fh.handle_type == FILEID_INO32_GEN && h.fh.handle_bytes == 8;
}

int apply_fid_of(int dirfd, const char *name, struct jfid *fid)
{
	struct fh8 h;
	uint32_t ino, gen;
	int mount_id;

	h.fh.handle_bytes = sizeof(h.buf);
	if (name_to_handle_at(dirfd, name, &h.fh, &mount_id, *name ? 0 : AT_EMPTY_PATH) < 0)
		return -errno;
	if (h.fh.handle_type != FILEID_INO32_GEN || h.fh.handle_bytes != 8)
		return -EOPNOTSUPP;
	memcpy(&ino, h.fh.f_handle, 4);
	memcpy(&gen, h.fh.f_handle + 4, 4);
	fid->ino = ino;
	fid->gen = gen;
	return 0;
}

static bool fid_eq(struct jfid a, struct jfid b)
{
	return a.ino == b.ino && a.gen == b.gen;
}

static bool fid_zero(struct jfid a)
{
	return a.ino == 0 && a.gen == 0;
}

/* ---- fids of objects this replay recreated ---- */

#define MAP_BUCKETS 4096

struct map_ent {
	struct jfid from, to;
	struct map_ent *next;
};

struct replay_map {
	struct map_ent *b[MAP_BUCKETS];
	int fd;                    /* replay.map, or -1 */
};

struct replay_map *replay_map_new(void)
{
	struct replay_map *m = calloc(1, sizeof(struct replay_map));

	if (m)
		m->fd = -1;
	return m;
}

void replay_map_free(struct replay_map *m)
{
	if (!m)
		return;
	if (m->fd >= 0)
		close(m->fd);
	for (size_t i = 0; i < MAP_BUCKETS; i++)
		for (struct map_ent *e = m->b[i], *n; e; e = n) {
			n = e->next;
			free(e);
		}
	free(m);
}

static size_t map_slot(struct jfid f)
{
	return (size_t)((f.ino * 0x9E3779B97F4A7C15ull) ^ f.gen) % MAP_BUCKETS;
}

struct jfid replay_map_get(struct replay_map *m, struct jfid f)
{
	for (struct map_ent *e = m ? m->b[map_slot(f)] : NULL; e; e = e->next)
		if (fid_eq(e->from, f))
			return e->to;
	return f;
}

int replay_map_put(struct replay_map *m, struct jfid from, struct jfid to)
{
	struct map_ent *e;
	size_t s = map_slot(from);

	for (e = m->b[s]; e; e = e->next)
		if (fid_eq(e->from, from)) {
			e->to = to;
			return 0;
		}
	e = malloc(sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->from = from;
	e->to = to;
	e->next = m->b[s];
	m->b[s] = e;
	if (m->fd >= 0) {
		unsigned char rec[24] = { 0 };
		memcpy(rec, &from.ino, 8);
		memcpy(rec + 8, &from.gen, 4);
		memcpy(rec + 12, &to.ino, 8);
		memcpy(rec + 20, &to.gen, 4);
		if (write_all(m->fd, rec, sizeof(rec)) < 0)
			return -errno;
	}
	return 0;
}

/* Loads DIR/replay.map (left by an interrupted replay) and keeps it open for appending. */
static int map_load(struct replay_map *m, const char *dir)
{
	char path[4200];
	unsigned char rec[24];
	int fd;

	snprintf(path, sizeof(path), "%s/replay.map", dir);
	fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	while (read(fd, rec, sizeof(rec)) == (ssize_t)sizeof(rec)) {
		struct jfid from, to;
		memcpy(&from.ino, rec, 8);
		memcpy(&from.gen, rec + 8, 4);
		memcpy(&to.ino, rec + 12, 8);
		memcpy(&to.gen, rec + 20, 4);
		if (replay_map_put(m, from, to) < 0) {
			close(fd);
			return -ENOMEM;
		}
	}
	m->fd = fd;
	return 0;
}

/* An fd for FID with open FLAGS; -ESTALE when the object is gone. */
int replay_open_fid(int root_fd, struct replay_map *m, struct jfid fid, int flags)
{
	struct fh8 h;
	uint32_t ino32, gen;
	int fd;

	fid = replay_map_get(m, fid);
	if (fid_zero(fid)) {
		fd = openat(root_fd, ".", flags | O_CLOEXEC);
		return fd < 0 ? -errno : fd;
	}
	if (fid.ino > UINT32_MAX)
		return -ESTALE;
	ino32 = (uint32_t)fid.ino;
	gen = fid.gen;
	h.fh.handle_type = FILEID_INO32_GEN;
	h.fh.handle_bytes = 8;
	memcpy(h.fh.f_handle, &ino32, 4);
	memcpy(h.fh.f_handle + 4, &gen, 4);
	fd = open_by_handle_at(root_fd, &h.fh, flags | O_CLOEXEC);
	if (fd < 0)
		return errno == ESTALE || errno == ENOENT ? -ESTALE : -errno;
	return fd;
}

static int replay_data(int root_fd, struct replay_map *m, const struct jrec *r)
{
	int fd = replay_open_fid(root_fd, m, r->fid, O_WRONLY), ret;
	struct stat before;
	bool keep;

	if (fd < 0)
		return fd == -ESTALE ? 0 : fd;
	/* a data record keeps the file's mtime, as on the live mount (fs/times.c) */
	keep = fstat(fd, &before) == 0;
	if (r->type == JR_FALLOCATE)
		ret = fallocate(fd, (int)r->xflags, (off_t)r->offset, (off_t)r->size) < 0 ? -errno : 1;
	else
		ret = pwrite_all(fd, r->data, r->data_len, (off_t)r->offset) ?: 1;
	if (keep && ret > 0)
		futimens(fd, (struct timespec[2]){ { .tv_nsec = UTIME_OMIT }, before.st_mtim });
	close(fd);
	if (ret == -EFBIG || ret == -EINVAL || ret == -EOPNOTSUPP) {
		/* the tree can never take it: retrying at every mount would not help */
		log_warn("journal replay: %s at LSN %llu refused by the backing filesystem (%s); "
			 "skipped", jrec_type_name(r->type), (unsigned long long)r->lsn,
			 strerror(-ret));
		return 0;
	}
	return ret;
}

int apply_setattr_fd(int fd, const struct jrec *r)
{
	char p[40];
	struct stat st;

	proc_fd_path(p, fd);
	if (fstat(fd, &st) < 0)
		return -errno;
	if (r->mask & (JA_UID | JA_GID)) {
		uid_t uid = (r->mask & JA_UID) ? r->uid : (uid_t)-1;
		gid_t gid = (r->mask & JA_GID) ? r->gid : (gid_t)-1;
		if (fchownat(fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
			return -errno;
	}
	if ((r->mask & JA_MODE) && !S_ISLNK(st.st_mode) && chmod(p, r->mode & 07777) < 0)
		return -errno;
	if ((r->mask & JA_SIZE) && truncate(p, (off_t)r->size) < 0)
		return -errno;
	if (r->mask & (JA_ATIME | JA_MTIME)) {
		struct timespec tv[2] = { { .tv_nsec = UTIME_OMIT }, { .tv_nsec = UTIME_OMIT } };
		if (r->mask & JA_ATIME)
			tv[0] = r->atime;
		if (r->mask & JA_MTIME)
			tv[1] = r->mtime;
		if (utimensat(fd, "", tv, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
			return -errno;
	}
	return 1;
}

static int replay_xattr(int root_fd, struct replay_map *m, const struct jrec *r)
{
	char *name = strndup(r->name, r->name_len), p[40];
	int fd = replay_open_fid(root_fd, m, r->fid, O_PATH), ret;

	if (fd < 0 || !name) {
		free(name);
		if (fd >= 0)
			close(fd);
		return fd == -ESTALE ? 0 : fd < 0 ? fd : -ENOMEM;
	}
	proc_fd_path(p, fd);
	if (r->type == JR_SETXATTR)
		ret = setxattr(p, name, r->data, r->data_len, 0) < 0 ? -errno : 1;
	else
		ret = removexattr(p, name) < 0 ? (errno == ENODATA ? 0 : -errno) : 1;
	close(fd);
	free(name);
	return ret;
}

int apply_record(int root_fd, struct replay_map *m, const struct jrec *r)
{
	int fd, ret;

	switch (r->type) {
	case JR_WRITE:
	case JR_COPY:
	case JR_FALLOCATE:
		return replay_data(root_fd, m, r);
	case JR_SETATTR:
		fd = replay_open_fid(root_fd, m, r->fid, O_PATH | O_NOFOLLOW);
		if (fd < 0)
			return fd == -ESTALE ? 0 : fd;
		ret = apply_setattr_fd(fd, r);
		close(fd);
		return ret;
	case JR_SETXATTR:
	case JR_REMOVEXATTR:
		return replay_xattr(root_fd, m, r);
	default:
		return 0;       /* namespace records: ns_reconcile(); ABORT, SEAL, RECOVERED: nothing */
	}
}

/* ---- replaying a journal directory ---- */

struct lsn_set {
	uint64_t *v;
	size_t n, cap;
};

static int set_add(struct lsn_set *s, uint64_t x)
{
	if (s->n == s->cap) {
		uint64_t *nv = realloc(s->v, (s->cap = s->cap ? s->cap * 2 : 16) * sizeof(*nv));
		if (!nv)
			return -ENOMEM;
		s->v = nv;
	}
	s->v[s->n++] = x;
	return 0;
}

static bool set_has(const struct lsn_set *s, uint64_t x)
{
	for (size_t i = 0; i < s->n; i++)
		if (s->v[i] == x)
			return true;
	return false;
}

int journal_replay_dir(const char *dir, int root_fd, uint64_t from, bool full,
		       struct replay_result *rr)
{
	struct lsn_set aborted = { 0 };
	struct replay_map *map = replay_map_new();
	struct ns_log *ns = full ? ns_log_new() : NULL;
	struct jreader *rd = NULL;
	struct jrec r;
	mode_t old_mask;
	int ret;

	memset(rr, 0, sizeof(*rr));
	rr->from = from;
	if (!map || (full && !ns)) {
		replay_map_free(map);
		ns_log_free(ns);
		return -ENOMEM;
	}
	/* pass 1: which records were aborted */
	ret = jreader_open(dir, from, &rd);
	while (!ret && (ret = jreader_next(rd, &r)) == 1)
		ret = r.type == JR_ABORT ? set_add(&aborted, r.lsn2) : ns ? ns_log_add(ns, &r) : 0;
	if (ret < 0)
		goto out;
	rr->to = jreader_lsn(rd);
	if (jreader_stop(rd))
		snprintf(rr->stop_reason, sizeof(rr->stop_reason), "%s", jreader_stop(rd));
	jreader_close(rd);
	rd = NULL;

	/* pass 2: apply */
	ret = map_load(map, dir);
	if (ret) {
		log_error("journal replay: cannot open %s/replay.map: %s", dir, strerror(-ret));
		goto out;
	}
	old_mask = umask(0);
	if (ns) {
		ret = ns_reconcile(ns, root_fd, map, &rr->applied);
		if (ret) {
			log_error("journal replay: cannot bring the names in the tree in line with the "
				  "journal: %s", strerror(-ret));
			umask(old_mask);
			goto out;
		}
	}
	ret = jreader_open(dir, from, &rd);
	while (!ret && jreader_lsn(rd) < rr->to && (ret = jreader_next(rd, &r)) == 1) {
		ret = 0;
		rr->records++;
		if (set_has(&aborted, r.lsn)) {
			rr->skipped++;
			continue;
		}
		ret = apply_record(root_fd, map, &r);
		if (ret < 0) {
			log_error("journal replay: record at LSN %" PRIu64 " (%s) could not be applied: %s",
				  r.lsn, jrec_type_name(r.type), strerror(-ret));
			break;
		}
		if (ret)
			rr->applied++;
		else
			rr->skipped++;
		ret = 0;
	}
	umask(old_mask);
	if (!ret && fdatasync(map->fd) < 0)
		ret = -errno;
out:
	jreader_close(rd);
	free(aborted.v);
	ns_log_free(ns);
	replay_map_free(map);
	return ret < 0 ? ret : 0;
}
