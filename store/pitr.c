/*
 * pitr.c - point-in-time restore: the journal after a snapshot, replayed
 * onto a restored copy of it (docs/snapshot-design.md "Point-in-time
 * restore").
 *
 * Records name objects by fid (backing inode, generation).  The restored
 * copy has its own inode numbers, so every object a record names is found
 * once, before anything changes, through the snapshot's trees (an entry
 * keeps the backing inode as its identity), and held by an O_PATH
 * descriptor from then on: renames cannot lose it.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "../journal/journal.h"
#include "store_i.h"

#define WANTED ((void *)1)            /* imap value: named by a record, not found yet */

struct pobj {
	int fd;                       /* O_PATH | O_NOFOLLOW */
	int wfd;                      /* O_WRONLY, opened on the first data record; -1 */
	uint32_t gen;
	bool gen_known;
	int64_t touch_ns;             /* implicit mtime to set at the end; 0: none */
};

struct pitr {
	struct repo *r;
	struct imap objs;             /* backing ino -> WANTED or struct pobj */
	struct pobj root;
	uint64_t *aborted;            /* sorted LSNs named by ABORT records */
	size_t naborted, abcap;
	struct snap_replay_stats *st;
	uint64_t found;
};

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static bool is_aborted(const struct pitr *p, uint64_t lsn)
{
	return p->naborted && bsearch(&lsn, p->aborted, p->naborted, sizeof(lsn), cmp_u64);
}

/* The objects record R names, marked as wanted. */
static int want(struct pitr *p, struct jfid f)
{
	if (!f.ino)
		return 0;
	void **v = imap_slot(&p->objs, f.ino, true);
	if (!v)
		return -ENOMEM;
	if (!*v)
		*v = WANTED;
	return 0;
}

static int want_record(struct pitr *p, const struct jrec *r)
{
	int ret = want(p, r->fid);

	if (!ret && (r->type == JR_CREATE || r->type == JR_LINK || r->type == JR_UNLINK ||
		     r->type == JR_RENAME))
		ret = want(p, r->fid2);
	return ret;
}

/*
 * Pass 1: reads the log from the snapshot's LSN to its end; collects the
 * ABORTed LSNs and the objects named by the records to apply (those before
 * the first one made after UNTIL).  *END gets the LSN replay stops at.
 * 0, 1 when the journal does not reach back to FROM (ST->why says so), or
 * -errno.
 */
static int scan_log(struct pitr *p, const char *dir, uint64_t from, int64_t until,
		    uint64_t *end)
{
	struct snap_replay_stats *st = p->st;
	struct jreader *rd;
	struct jrec r;
	bool cut = false;
	int ret = snap_replay_check(dir, from, st->why, sizeof(st->why));

	*end = from;
	if (ret)
		return ret;
	ret = jreader_open(dir, from, &rd);
	if (ret)
		return ret;
	while ((ret = jreader_next(rd, &r)) > 0) {
		if (r.type == JR_ABORT) {
			if (p->naborted == p->abcap) {
				size_t cap = p->abcap ? p->abcap * 2 : 64;
				uint64_t *a = realloc(p->aborted, cap * sizeof(*a));
				if (!a) {
					ret = -ENOMEM;
					break;
				}
				p->aborted = a;
				p->abcap = cap;
			}
			p->aborted[p->naborted++] = r.lsn2;
		}
		if (cut)
			continue;
		if ((int64_t)r.time_ns > until) {
			cut = true;
			st->more = true;
			continue;
		}
		*end = jreader_lsn(rd);
		if (r.type == JR_ABORT || r.type == JR_SEAL || r.type == JR_RECOVERED)
			continue;
		ret = want_record(p, &r);
		if (ret)
			break;
	}
	st->journal_end = jreader_lsn(rd);
	if (ret == 0 && !cut && jreader_stop(rd))
		snprintf(st->stop, sizeof(st->stop), "%s", jreader_stop(rd));
	jreader_close(rd);
	if (ret == 0 && p->naborted)
		qsort(p->aborted, p->naborted, sizeof(*p->aborted), cmp_u64);
	return ret;
}

/* Opens a descriptor on every wanted object of tree ID (at PATH under ROOT_FD). */
static int find_objects(struct pitr *p, int root_fd, const struct store_id *id, char *path,
			size_t plen)
{
	struct tree t;
	int ret = tree_load(p->r, id, &t);

	if (ret)
		return ret;
	for (uint32_t i = 0; i < t.n && !ret; i++) {
		struct tree_entry *e = &t.e[i];
		size_t nl = strlen(e->name);
		if (plen + nl + 2 > PATH_MAX) {
			ret = -ENAMETOOLONG;
			break;
		}
		size_t l = plen;
		if (l)
			path[l++] = '/';
		memcpy(path + l, e->name, nl + 1);
		void **v = imap_slot(&p->objs, e->ident, false);
		if (v && *v == WANTED) {
			struct pobj *o = calloc(1, sizeof(*o));
			int fd = openat(root_fd, path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
			if (!o || fd < 0) {
				ret = !o ? -ENOMEM : -errno;
				log_error("point-in-time restore: cannot open %s in the restored tree: %s",
					  path, strerror(-ret));
				free(o);
				if (fd >= 0)
					close(fd);
				break;
			}
			o->fd = fd;
			o->wfd = -1;
			*v = o;
			p->found++;
		}
		if (e->type == TT_DIR)
			ret = find_objects(p, root_fd, &e->subtree, path, l + nl);
		path[plen] = 0;
	}
	tree_release(&t);
	return ret;
}

/* The object of fid F, or NULL when neither the snapshot nor a record made it. */
static struct pobj *obj_of(struct pitr *p, struct jfid f)
{
	if (!f.ino)
		return &p->root;
	struct pobj *o = imap_get(&p->objs, f.ino);
	if (!o || o == WANTED)
		return NULL;
	if (!o->gen_known) {
		o->gen = f.gen;
		o->gen_known = true;
	}
	return o->gen == f.gen ? o : NULL;
}

static void obj_free(struct pobj *o)
{
	if (o->fd >= 0)
		close(o->fd);
	if (o->wfd >= 0)
		close(o->wfd);
	free(o);
}

static void touch(struct pobj *o, const struct jrec *r)
{
	if (o)
		o->touch_ns = (int64_t)r->time_ns;
}

static int data_fd(struct pobj *o)
{
	if (o->wfd < 0) {
		char p[40];
		proc_fd_path(p, o->fd);
		o->wfd = open(p, O_WRONLY | O_CLOEXEC);
		if (o->wfd < 0)
			return -errno;
	}
	return o->wfd;
}

/* NAME of R (not NUL-terminated there) into BUF of NAME_MAX + 1 bytes. */
static const char *name_of(const char *name, uint16_t len, char *buf)
{
	size_t n = len > NAME_MAX ? NAME_MAX : len;
	memcpy(buf, name, n);
	buf[n] = 0;
	return buf;
}

static int apply_create(struct pitr *p, struct pobj *dir, const struct jrec *r, const char *name)
{
	mode_t perm = r->mode & 07777;
	int fd;

	switch (r->mode & S_IFMT) {
	case S_IFREG:
		fd = openat(dir->fd, name, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, perm);
		if (fd < 0)
			return -errno;
		close(fd);
		break;
	case S_IFDIR:
		if (mkdirat(dir->fd, name, perm))
			return -errno;
		break;
	case S_IFLNK: {
		char *target = strndup(r->name2, r->name2_len);
		int ret = target ? symlinkat(target, dir->fd, name) : -1;
		free(target);
		if (ret)
			return -errno;
		break;
	}
	default:
		if (mknodat(dir->fd, name, r->mode, (dev_t)r->rdev))
			return -errno;
	}
	if (fchownat(dir->fd, name, r->uid, r->gid, AT_SYMLINK_NOFOLLOW))
		return -errno;
	if (!S_ISLNK(r->mode) && fchmodat(dir->fd, name, perm, 0))
		return -errno;
	struct pobj *o = calloc(1, sizeof(*o));
	void **v = imap_slot(&p->objs, r->fid.ino, true);
	if (!o || !v) {
		free(o);
		return -ENOMEM;
	}
	o->fd = openat(dir->fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (o->fd < 0) {
		free(o);
		return -errno;
	}
	o->wfd = -1;
	o->gen = r->fid.gen;
	o->gen_known = true;
	o->touch_ns = (int64_t)r->time_ns;
	/* a live inode number names one object: the old one with this number is gone */
	if (*v && *v != WANTED)
		obj_free(*v);
	*v = o;
	return 1;
}

static int apply_xattr(struct pobj *o, const struct jrec *r)
{
	char p[40], *name = strndup(r->name, r->name_len);
	int ret;

	if (!name)
		return -ENOMEM;
	proc_fd_path(p, o->fd);
	if (r->type == JR_SETXATTR)
		ret = setxattr(p, name, r->data, r->data_len, 0) ? -errno : 1;
	else
		ret = removexattr(p, name) ? -errno : 1;
	free(name);
	return ret;
}

/*
 * A namespace record whose directory (or, for LINK, whose object) neither
 * the snapshot nor an earlier record made: the replay cannot be trusted on.
 */
#define MISSING_OBJECT (-EBADSLT)

/*
 * Applies R.  1 applied; 0 skipped (data or attributes of an object nothing
 * holds: a file unlinked while open); MISSING_OBJECT; -errno.
 */
static int apply(struct pitr *p, const struct jrec *r)
{
	char n1[NAME_MAX + 1], n2[NAME_MAX + 1];
	struct pobj *o, *d;
	int fd;

	switch (r->type) {
	case JR_WRITE:
	case JR_COPY:
	case JR_FALLOCATE:
		if (!(o = obj_of(p, r->fid)))
			return 0;
		if ((fd = data_fd(o)) < 0)
			return fd;
		touch(o, r);
		if (r->type == JR_FALLOCATE)
			return fallocate(fd, (int)r->xflags, (off_t)r->offset, (off_t)r->size) ? -errno
											       : 1;
		return pwrite_all(fd, r->data, r->data_len, (off_t)r->offset) ?: 1;
	case JR_SETATTR: {
		if (!(o = obj_of(p, r->fid)))
			return 0;
		int ret = apply_setattr_fd(o->fd, r);
		if (r->mask & JA_MTIME)
			o->touch_ns = 0;
		else if (r->mask & JA_SIZE)
			touch(o, r);
		return ret;
	}
	case JR_SETXATTR:
	case JR_REMOVEXATTR:
		if (!(o = obj_of(p, r->fid)))
			return 0;
		return apply_xattr(o, r);
	case JR_CREATE:
		if (!(d = obj_of(p, r->fid2)))
			return MISSING_OBJECT;
		touch(d, r);
		return apply_create(p, d, r, name_of(r->name, r->name_len, n1));
	case JR_LINK:
		if (!(o = obj_of(p, r->fid)) || !(d = obj_of(p, r->fid2)))
			return MISSING_OBJECT;
		touch(d, r);
		if (linkat(o->fd, "", d->fd, name_of(r->name, r->name_len, n1), AT_EMPTY_PATH))
			return -errno;
		return 1;
	case JR_UNLINK:
		if (!(d = obj_of(p, r->fid2)))
			return MISSING_OBJECT;
		touch(d, r);
		if (unlinkat(d->fd, name_of(r->name, r->name_len, n1),
			     (r->flags & JR_UNLINK_DIR) ? AT_REMOVEDIR : 0))
			return -errno;
		return 1;
	case JR_RENAME: {
		struct pobj *from = obj_of(p, r->fid), *to = obj_of(p, r->fid2);
		if (!from || !to)
			return MISSING_OBJECT;
		touch(from, r);
		touch(to, r);
		if (renameat2(from->fd, name_of(r->name, r->name_len, n1), to->fd,
			      name_of(r->name2, r->name2_len, n2),
			      r->xflags & (RENAME_NOREPLACE | RENAME_EXCHANGE)))
			return -errno;
		return 1;
	}
	default:
		return 0;       /* ABORT, SEAL, RECOVERED */
	}
}

/* What record R was about, for the message when it cannot be applied. */
static void describe(const struct jrec *r, char *buf, size_t len)
{
	if (r->name_len && r->type != JR_SETXATTR && r->type != JR_REMOVEXATTR)
		snprintf(buf, len, " on '%.*s'%s%.*s%s", (int)r->name_len, r->name,
			 r->type == JR_RENAME ? " -> '" : "", r->type == JR_RENAME ? (int)r->name2_len : 0,
			 r->type == JR_RENAME ? r->name2 : "", r->type == JR_RENAME ? "'" : "");
	else
		snprintf(buf, len, " on object %llu", (unsigned long long)r->fid.ino);
}

/* Pass 2: applies the records in [FROM, END) that no ABORT names. */
static int replay_log(struct pitr *p, const char *dir, uint64_t from, uint64_t end)
{
	struct snap_replay_stats *st = p->st;
	struct jreader *rd;
	struct jrec r;
	int ret = jreader_open(dir, from, &rd);

	if (ret) {
		snprintf(st->why, sizeof(st->why), "cannot read the journal in %s: %s", dir,
			 strerror(-ret));
		return ret;
	}
	while (jreader_lsn(rd) < end) {
		ret = jreader_next(rd, &r);
		if (ret <= 0) {
			if (ret == 0) {
				snprintf(st->why, sizeof(st->why),
					 "the journal changed while it was read (it ends at 0x%llx now%s%s)",
					 (unsigned long long)jreader_lsn(rd), jreader_stop(rd) ? ": " : "",
					 jreader_stop(rd) ? jreader_stop(rd) : "");
				ret = -ESTALE;
			} else {
				snprintf(st->why, sizeof(st->why), "cannot read the journal in %s at 0x%llx: %s",
					 dir, (unsigned long long)jreader_lsn(rd), strerror(-ret));
			}
			break;
		}
		if (r.type == JR_ABORT || r.type == JR_SEAL || r.type == JR_RECOVERED)
			continue;
		if (is_aborted(p, r.lsn)) {
			st->skipped++;
			continue;
		}
		ret = apply(p, &r);
		if (ret < 0) {
			char what[600];
			describe(&r, what, sizeof(what));
			snprintf(st->why, sizeof(st->why), "the %s record at LSN 0x%llx%s cannot be applied: %s",
				 jrec_type_name(r.type), (unsigned long long)r.lsn, what,
				 ret == MISSING_OBJECT
					 ? "a directory or file it names is neither in the snapshot nor made by an earlier record (the journal and the snapshot disagree)"
					 : strerror(-ret));
			break;
		}
		if (ret)
			st->applied++;
		else
			st->skipped++;
		st->last_lsn = jreader_lsn(rd);
		st->last_time_ns = (int64_t)r.time_ns;
		ret = 0;
	}
	jreader_close(rd);
	/* a SEAL, ABORT or skipped record last leaves the reader's 1 in RET: that is no error */
	return ret > 0 ? 0 : ret;
}

static void set_touched(struct pobj *o)
{
	if (!o->touch_ns)
		return;
	struct timespec tv[2] = {
		{ .tv_sec = o->touch_ns / 1000000000, .tv_nsec = o->touch_ns % 1000000000 },
	};
	tv[1] = tv[0];
	if (utimensat(o->fd, "", tv, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW))
		log_warn("point-in-time restore: cannot set a time: %s", strerror(errno));
}

static void raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

int snap_replay_check(const char *journal_dir, uint64_t from, char *why, size_t len)
{
	struct jreader *rd;
	struct jrec r;
	int ret = jreader_open(journal_dir, from, &rd);

	if (ret) {
		snprintf(why, len, "the journal from LSN 0x%llx on is not kept (%s)",
			 (unsigned long long)from, strerror(-ret));
		return 1;
	}
	ret = jreader_next(rd, &r);
	if (ret > 0 && r.lsn != from) {
		snprintf(why, len, "the journal from LSN 0x%llx on is not kept (it starts at 0x%llx)",
			 (unsigned long long)from, (unsigned long long)r.lsn);
		ret = 1;
	} else if (ret == 0 && jreader_lsn(rd) != from) {
		snprintf(why, len, "the journal from LSN 0x%llx on is not kept (it ends at 0x%llx)",
			 (unsigned long long)from, (unsigned long long)jreader_lsn(rd));
		ret = 1;
	} else if (ret < 0) {
		snprintf(why, len, "cannot read the journal in %s: %s", journal_dir, strerror(-ret));
	} else {
		ret = 0;
	}
	jreader_close(rd);
	return ret;
}

int snap_replay(struct repo *r, const struct snap_info *s, const char *journal_dir,
		int64_t until_ns, const char *target, struct snap_replay_stats *st)
{
	struct pitr p = { .r = r, .st = st, .root = { .fd = -1, .wfd = -1, .gen_known = true } };
	uint64_t end;
	int ret;

	memset(st, 0, sizeof(*st));
	st->last_lsn = s->lsn;
	ret = scan_log(&p, journal_dir, s->lsn, until_ns, &end);
	if (ret)
		goto out;
	st->last_lsn = s->lsn;
	if (end == s->lsn)
		goto out;       /* nothing to apply */
	raise_fd_limit();
	p.root.fd = open(target, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (p.root.fd < 0) {
		ret = -errno;
		snprintf(st->why, sizeof(st->why), "cannot open %s: %s", target, strerror(errno));
		goto out;
	}
	char *path = malloc(PATH_MAX);
	if (!path) {
		ret = -ENOMEM;
		goto out;
	}
	path[0] = 0;
	ret = find_objects(&p, p.root.fd, &s->tree, path, 0);
	free(path);
	if (ret) {
		snprintf(st->why, sizeof(st->why), "cannot find the objects the journal names in %s (%s): %s",
			 target, strerror(-ret), log_last_error());
		goto out;
	}
	ret = replay_log(&p, journal_dir, s->lsn, end);
	/* implicit times, also after a failure: what was applied stays applied */
	set_touched(&p.root);
	for (size_t i = 0; i < p.objs.cap; i++)
		if (p.objs.s[i].ino && p.objs.s[i].val != WANTED)
			set_touched(p.objs.s[i].val);
out:
	for (size_t i = 0; i < p.objs.cap; i++)
		if (p.objs.s[i].ino && p.objs.s[i].val && p.objs.s[i].val != WANTED)
			obj_free(p.objs.s[i].val);
	free(p.objs.s);
	free(p.aborted);
	if (p.root.fd >= 0)
		close(p.root.fd);
	if (p.root.wfd >= 0)
		close(p.root.wfd);
	return ret;
}
