/*
 * reconcile.c - the namespace part of a full replay (after a machine
 * restart), by end state rather than by history.
 *
 * After a machine restart the backing tree holds the checkpoint plus some
 * unknown part of the changes after it.  Walking the namespace records in
 * order on such a tree is not safe: a name changed several times may pass a
 * record's precondition by coincidence.  Instead, the records give, for
 * every name they touch, what that name holds at the end of the log (an
 * object, or nothing), and the tree is brought to exactly that:
 *
 *  1. every touched name holding something else than its end state is moved
 *     aside (into STATE's "replay-aside" directory, on the same filesystem);
 *  2. objects created in the range that have a name at the end but no longer
 *     exist are made again (in the aside directory), with the attributes of
 *     their CREATE record; their fid is mapped to the new object;
 *  3. every touched name is given its object: a file by a new hard link, a
 *     directory by a rename from wherever it is (repeated while that makes
 *     progress, since a directory may still sit inside one that must move);
 *  4. what is left aside is deleted: nothing at the end of the log names it.
 *
 * The data, attributes and xattrs of objects are then replayed in order by
 * apply_record(); objects with no name at the end are gone and skipped.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/common.h"
#include "journal_i.h"

#define NS_BUCKETS 4096
#define ASIDE ".drfs/replay-aside"

struct ns_name {
	struct jfid parent, final;  /* final: zero fid with ABSENT */
	bool absent;
	char *name;
	size_t order;               /* index of the last record that set it */
	struct ns_name *next;
};

struct ns_obj {
	struct jfid fid;
	struct jrec create;         /* with name and target copied */
	char *target;
	struct ns_obj *next;
};

struct ns_log {
	struct ns_name *names[NS_BUCKETS];
	struct ns_obj *objs[NS_BUCKETS];
	size_t count, records;
};

static bool fid_same(struct jfid a, struct jfid b)
{
	return a.ino == b.ino && a.gen == b.gen;
}

static size_t name_slot(struct jfid p, const char *n, size_t len)
{
	uint64_t h = p.ino * 0x9E3779B97F4A7C15ull ^ p.gen;

	for (size_t i = 0; i < len; i++)
		h = (h ^ (unsigned char)n[i]) * 0x100000001B3ull;
	return (size_t)(h % NS_BUCKETS);
}

struct ns_log *ns_log_new(void)
{
	return calloc(1, sizeof(struct ns_log));
}

void ns_log_free(struct ns_log *l)
{
	if (!l)
		return;
	for (size_t i = 0; i < NS_BUCKETS; i++) {
		for (struct ns_name *e = l->names[i], *n; e; e = n) {
			n = e->next;
			free(e->name);
			free(e);
		}
		for (struct ns_obj *o = l->objs[i], *n; o; o = n) {
			n = o->next;
			free((char *)o->create.name);
			free(o->target);
			free(o);
		}
	}
	free(l);
}

static int set_name(struct ns_log *l, struct jfid parent, const char *name, uint16_t len,
		    bool absent, struct jfid final)
{
	size_t s = name_slot(parent, name, len);
	struct ns_name *e;

	for (e = l->names[s]; e; e = e->next)
		if (fid_same(e->parent, parent) && strlen(e->name) == len && !memcmp(e->name, name, len))
			break;
	if (!e) {
		e = calloc(1, sizeof(*e));
		if (!e || !(e->name = strndup(name, len))) {
			free(e);
			return -ENOMEM;
		}
		e->parent = parent;
		e->next = l->names[s];
		l->names[s] = e;
		l->count++;
	}
	e->absent = absent;
	e->final = absent ? (struct jfid){ 0, 0 } : final;
	e->order = l->records;
	return 0;
}

static int add_create(struct ns_log *l, const struct jrec *r)
{
	size_t s = name_slot(r->fid, "", 0);
	struct ns_obj *o;

	for (o = l->objs[s]; o; o = o->next)
		if (fid_same(o->fid, r->fid))
			return 0;                /* the first CREATE of a fid counts */
	o = calloc(1, sizeof(*o));
	if (!o)
		return -ENOMEM;
	o->fid = r->fid;
	o->create = *r;
	o->create.name = strndup(r->name, r->name_len);
	o->target = strndup(r->name2 ? r->name2 : "", r->name2_len);
	o->create.name2 = o->target;
	o->create.data = NULL;
	if (!o->create.name || !o->target) {
		free((char *)o->create.name);
		free(o->target);
		free(o);
		return -ENOMEM;
	}
	o->next = l->objs[s];
	l->objs[s] = o;
	return 0;
}

static const struct ns_obj *find_create(const struct ns_log *l, struct jfid f)
{
	for (const struct ns_obj *o = l->objs[name_slot(f, "", 0)]; o; o = o->next)
		if (fid_same(o->fid, f))
			return o;
	return NULL;
}

int ns_log_add(struct ns_log *l, const struct jrec *r)
{
	int ret = 0;

	switch (r->type) {
	case JR_CREATE:
		ret = add_create(l, r);
		if (!ret)
			ret = set_name(l, r->fid2, r->name, r->name_len, false, r->fid);
		break;
	case JR_LINK:
		ret = set_name(l, r->fid2, r->name, r->name_len, false, r->fid);
		break;
	case JR_UNLINK:
		ret = set_name(l, r->fid2, r->name, r->name_len, true, r->fid);
		break;
	case JR_RENAME:
		if (r->xflags & RENAME_EXCHANGE)
			ret = set_name(l, r->fid, r->name, r->name_len, false, r->fid4);
		else
			ret = set_name(l, r->fid, r->name, r->name_len, true, r->fid3);
		if (!ret)
			ret = set_name(l, r->fid2, r->name2, r->name2_len, false, r->fid3);
		break;
	default:
		return 0;
	}
	l->records++;
	return ret;
}

static int by_order(const void *a, const void *b)
{
	const struct ns_name *x = *(struct ns_name *const *)a, *y = *(struct ns_name *const *)b;

	return x->order < y->order ? -1 : x->order > y->order;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path) < 0 && errno != ENOENT ? -1 : 0;
}

/* Makes the object of CREATE record R as NAME in DFD (umask 0).  0 or -errno. */
static int make_object(int dfd, const char *name, const struct jrec *r)
{
	int fd, ret = 0;

	switch (r->mode & S_IFMT) {
	case S_IFREG:
		fd = openat(dfd, name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0);
		if (fd < 0)
			return -errno;
		close(fd);
		break;
	case S_IFDIR:
		ret = mkdirat(dfd, name, 0) < 0 ? -errno : 0;
		break;
	case S_IFLNK:
		ret = symlinkat(r->name2, dfd, name) < 0 ? -errno : 0;
		break;
	default:
		ret = mknodat(dfd, name, r->mode & (S_IFMT | 07777), (dev_t)r->rdev) < 0 ? -errno : 0;
		break;
	}
	if (ret)
		return ret;
	if (fchownat(dfd, name, r->uid, r->gid, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	if ((r->mode & S_IFMT) != S_IFLNK && fchmodat(dfd, name, r->mode & 07777, 0) < 0)
		return -errno;
	return 0;
}

/* Gives NAME in PFD the object at OFD (an O_PATH fd): a link, or for a directory a move. */
static int place(int pfd, const char *name, int ofd)
{
	struct stat st;
	char proc[40], path[4096];
	ssize_t n;

	if (fstat(ofd, &st) < 0)
		return -errno;
	if (!S_ISDIR(st.st_mode))
		return linkat(ofd, "", pfd, name, AT_EMPTY_PATH) < 0 ? -errno : 0;
	proc_fd_path(proc, ofd);
	n = readlink(proc, path, sizeof(path) - 1);
	if (n < 0)
		return -errno;
	path[n] = 0;
	return renameat(AT_FDCWD, path, pfd, name) < 0 ? -errno : 0;
}

int ns_reconcile(struct ns_log *l, int root_fd, struct replay_map *m, uint64_t *applied)
{
	struct ns_name **v = calloc(l->count ? l->count : 1, sizeof(*v));
	char aside_path[4200], proc[40], tmp[32];
	size_t n = 0, k = 0, left;
	ssize_t len;
	bool progress;
	int afd = -1, ret = 0;

	if (!v)
		return -ENOMEM;
	for (size_t i = 0; i < NS_BUCKETS; i++)
		for (struct ns_name *e = l->names[i]; e; e = e->next)
			v[n++] = e;
	qsort(v, n, sizeof(*v), by_order);

	mkdirat(root_fd, ".drfs", 0700);
	proc_fd_path(proc, root_fd);
	len = readlink(proc, aside_path, sizeof(aside_path) - sizeof(ASIDE) - 2);
	if (len < 0) {
		ret = -errno;
		goto out;
	}
	aside_path[len] = 0;
	strcat(aside_path, "/" ASIDE);
	nftw(aside_path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	if (mkdirat(root_fd, ASIDE, 0700) < 0 ||
	    (afd = openat(root_fd, ASIDE, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
		ret = -errno;
		goto out;
	}

	/* 1: names that hold something else than their end state: moved aside */
	for (size_t i = 0; i < n; i++) {
		struct ns_name *e = v[i];
		struct jfid cur;
		int pfd = replay_open_fid(root_fd, m, e->parent, O_PATH | O_DIRECTORY);

		if (pfd < 0)
			continue;                       /* the directory is gone */
		if (apply_fid_of(pfd, e->name, &cur) == 0 &&
		    (e->absent || !fid_same(cur, replay_map_get(m, e->final)))) {
			snprintf(tmp, sizeof(tmp), "%zu", k++);
			if (renameat(pfd, e->name, afd, tmp) < 0)
				ret = -errno;
			else
				(*applied)++;
		}
		close(pfd);
		if (ret)
			goto out;
	}
	/* 2: objects named at the end that no longer exist: made again, aside */
	for (size_t i = 0; i < n; i++) {
		struct ns_name *e = v[i];
		const struct ns_obj *o;
		struct jfid nf;
		int ofd;

		if (e->absent)
			continue;
		ofd = replay_open_fid(root_fd, m, e->final, O_PATH);
		if (ofd >= 0) {
			close(ofd);
			continue;
		}
		if (!(o = find_create(l, e->final)))
			continue;                       /* gone, and not made in this range */
		snprintf(tmp, sizeof(tmp), "%zu", k++);
		ret = make_object(afd, tmp, &o->create);
		if (!ret)
			ret = apply_fid_of(afd, tmp, &nf);
		if (!ret)
			ret = replay_map_put(m, e->final, nf);
		if (ret)
			goto out;
		(*applied)++;
	}
	/* 3: every name given its object; repeated while directories still move */
	do {
		progress = false;
		left = 0;
		for (size_t i = 0; i < n; i++) {
			struct ns_name *e = v[i];
			struct jfid cur;
			int pfd, ofd, r;

			if (e->absent)
				continue;
			pfd = replay_open_fid(root_fd, m, e->parent, O_PATH | O_DIRECTORY);
			if (pfd < 0)
				continue;
			if (apply_fid_of(pfd, e->name, &cur) == 0) {
				close(pfd);
				continue;                   /* in place (step 1 cleared the rest) */
			}
			ofd = replay_open_fid(root_fd, m, e->final, O_PATH | O_NOFOLLOW);
			if (ofd < 0) {
				close(pfd);
				continue;
			}
			r = place(pfd, e->name, ofd);
			close(ofd);
			close(pfd);
			if (r == 0) {
				progress = true;
				(*applied)++;
			} else {
				left++;
			}
		}
	} while (left && progress);
	if (left)
		log_warn("journal replay: %zu names could not be given their object", left);
	/* 4: what is left aside has no name at the end of the log */
	close(afd);
	afd = -1;
	nftw(aside_path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
out:
	if (afd >= 0)
		close(afd);
	free(v);
	return ret;
}
