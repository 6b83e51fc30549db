/*
 * repo.c - the snapshot repository: its config, the in-memory index of
 * every blob, putting and reading blobs, and snapshot objects
 * (docs/format.md "The snapshot repository"; packs and index files
 * themselves are pack.c).
 *
 * Invariants:
 * - Every object is written once, durably, under the name of its SHA-256;
 *   nothing is rewritten.  Order on disk: packs, then the index file naming
 *   them (repo_flush), then the snapshot (snap_write).
 * - The in-memory index holds every blob of every index file plus every
 *   blob put since the repository was opened (those of open packs too, so
 *   that a tree builder can read back what it just put).  Entries
 *   [flush_ent, n) are exactly the blobs not yet named by an index file.
 * - A blob read is returned only when its plaintext hashes to its id; a
 *   pack is used only after its header, footer and table check out.
 *
 * Memory of the index (repo_get_stats reports it exactly): a dense array
 * of 48-byte entries (struct pack_blob), presized from the index files at
 * open and grown by 1/8 when puts fill it, plus an open-addressing table of
 * u32 slots (entry number + 1, 0 empty; linear probing from the first 8
 * bytes of the id scaled to the table size; the full id is compared)
 * kept between 1/2 and 3/4 full.  That is 48 + 4 / load = 53.3 to 56
 * bytes per blob after an open and at most 48 * 9/8 + 8 = 62 bytes per blob
 * while puts grow it: within the 64 of docs/snapshot-design.md.  Packs
 * cost about 45 bytes each on top (id and slots), counted too.
 *
 * Locking: R->lock (rwlock) protects the index, the pack list and the open
 * pack buffers; repo_put takes it for writing, readers for reading.  One
 * writer at a time (the caller's business).  R->fd_lock protects the cache
 * of open pack files.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../common/common.h"
#include "store_i.h"

#define REPO_FORMAT "1"
#define REPO_CHUNKER "gear-fastcdc-1"
#define PACK_SIZE_DEFAULT (16ull << 20)
#define PACK_SIZE_MIN 4096ull
#define PACK_SIZE_MAX (1ull << 30)
#define ZSTD_LEVEL_MIN (-7)
#define ZSTD_LEVEL_MAX 22
#define FD_CACHE_SLOTS 32
#define HEX_LEN (2 * STORE_ID_LEN)

/* Pack numbers of blobs still in an open pack (in memory). */
#define PACK_OPEN(type) (UINT32_MAX - (uint32_t)(type))
#define PACK_IS_OPEN(p) ((p) >= PACK_OPEN(BLOB_TREE))

struct fd_slot {
	uint32_t pack;
	int fd;                       /* -1: empty */
	unsigned refs;
	uint32_t end;                 /* where the pack's table starts */
	uint64_t used;
};

struct repo {
	char *dir;
	int dirfd, packs_fd, index_fd, snaps_fd;
	int lock_fd;                  /* REPO/lock, flocked; -1 when read-only */
	bool writable;
	struct repo_config cfg;

	pthread_rwlock_t lock;
	struct pack_blob *ent;        /* protected by lock */
	size_t n, ent_cap;            /* protected by lock */
	uint32_t *slot;               /* protected by lock */
	size_t nslot;                 /* protected by lock */
	struct store_id *packs;       /* protected by lock */
	uint32_t npacks, packs_cap;   /* protected by lock */
	uint32_t *pslot;              /* protected by lock */
	size_t npslot;                /* protected by lock */
	struct pack_writer open[2];   /* by type - 1; protected by lock */

	/* the writer's own */
	size_t flush_ent;
	uint64_t added_bytes;
	uint64_t index_files;

	pthread_mutex_t fd_lock;
	struct fd_slot fds[FD_CACHE_SLOTS]; /* protected by fd_lock */
	uint64_t fd_clock;            /* protected by fd_lock */
};

/* ---- small helpers ---- */

/* "YYYY-MM-DDTHH:MM:SS.NNNNNNNNNZ" (NSEC true) or "...SSZ" into BUF (at least 40 bytes). */
static void format_time(int64_t ns, bool nsec, char *buf, size_t size)
{
	int64_t sec = ns / 1000000000, rem = ns % 1000000000;
	struct tm tm;
	time_t t;

	if (rem < 0) {
		rem += 1000000000;
		sec--;
	}
	t = (time_t)sec;
	gmtime_r(&t, &tm);
	if (nsec)
		snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%09dZ", tm.tm_year + 1900,
			 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)rem);
	else
		snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900,
			 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* A whole decimal u64 (no sign, no blanks).  0 or -EINVAL. */
static int parse_u64(const char *s, uint64_t *out)
{
	uint64_t v = 0;

	if (!s || !*s)
		return -EINVAL;
	for (; *s; s++) {
		if (*s < '0' || *s > '9' || v > (UINT64_MAX - (uint64_t)(*s - '0')) / 10)
			return -EINVAL;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	*out = v;
	return 0;
}

static int parse_i64(const char *s, int64_t *out)
{
	uint64_t v;
	bool neg = s && *s == '-';

	if (parse_u64(neg ? s + 1 : s, &v) || v > (uint64_t)INT64_MAX)
		return -EINVAL;
	*out = neg ? -(int64_t)v : (int64_t)v;
	return 0;
}

static int parse_u32(const char *s, uint32_t *out)
{
	uint64_t v;

	if (parse_u64(s, &v) || v > UINT32_MAX)
		return -EINVAL;
	*out = (uint32_t)v;
	return 0;
}

/* Where ID starts probing in a table of NSLOT slots. */
static size_t slot_home(const struct store_id *id, size_t nslot)
{
	uint64_t h;

	memcpy(&h, id->b, 8);
	return (size_t)(((unsigned __int128)h * nslot) >> 64);
}

/*
 * Looks ID up in the table SLOT of NSLOT slots over the array BASE of
 * elements of STRIDE bytes, each starting with a store_id.  The element
 * number or -1.
 */
static ssize_t idtab_find(const uint32_t *slot, size_t nslot, const void *base, size_t stride,
			  const struct store_id *id)
{
	if (!nslot)
		return -1;
	for (size_t i = slot_home(id, nslot);; i = i + 1 == nslot ? 0 : i + 1) {
		uint32_t s = slot[i];

		if (!s)
			return -1;
		if (!memcmp((const char *)base + (size_t)(s - 1) * stride, id->b, STORE_ID_LEN))
			return (ssize_t)(s - 1);
	}
}

static void idtab_insert(uint32_t *slot, size_t nslot, const struct store_id *id, size_t elem)
{
	size_t i = slot_home(id, nslot);

	while (slot[i])
		i = i + 1 == nslot ? 0 : i + 1;
	slot[i] = (uint32_t)(elem + 1);
}

/*
 * Makes room for one more of N elements in *SLOT (*NSLOT slots): a new
 * table of 2 (N + 1) slots when it would pass 3/4 full.  0 or -ENOMEM.
 */
static int idtab_room(uint32_t **slot, size_t *nslot, size_t n, const void *base, size_t stride)
{
	size_t ns;
	uint32_t *s;

	if ((n + 1) * 4 <= *nslot * 3)
		return 0;
	ns = 2 * (n + 1);
	if (ns < 64)
		ns = 64;
	s = calloc(ns, sizeof(*s));
	if (!s)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		idtab_insert(s, ns, (const struct store_id *)((const char *)base + i * stride), i);
	free(*slot);
	*slot = s;
	*nslot = ns;
	return 0;
}

static struct pack_blob *index_find(struct repo *r, const struct store_id *id)
{
	ssize_t i = idtab_find(r->slot, r->nslot, r->ent, sizeof(*r->ent), id);

	return i < 0 ? NULL : &r->ent[i];
}

/* Adds B (not in the index).  Caller holds r->lock for writing.  0, -ENOMEM, -EFBIG. */
static int index_add(struct repo *r, const struct pack_blob *b)
{
	int ret;

	if (r->n >= UINT32_MAX - 1)
		return -EFBIG;
	if (r->n == r->ent_cap) {
		size_t cap = r->ent_cap + (r->ent_cap / 8 > 1024 ? r->ent_cap / 8 : 1024);
		struct pack_blob *e = realloc(r->ent, cap * sizeof(*e));

		if (!e)
			return -ENOMEM;
		r->ent = e;
		r->ent_cap = cap;
	}
	ret = idtab_room(&r->slot, &r->nslot, r->n, r->ent, sizeof(*r->ent));
	if (ret)
		return ret;
	r->ent[r->n] = *b;
	idtab_insert(r->slot, r->nslot, &b->id, r->n);
	r->n++;
	return 0;
}

/* Room for one more pack.  Caller holds r->lock for writing.  0 or -ENOMEM. */
static int pack_room(struct repo *r)
{
	if (r->npacks >= PACK_OPEN(BLOB_TREE) - 1)
		return -EFBIG;
	if (r->npacks == r->packs_cap) {
		uint32_t cap = r->packs_cap ? r->packs_cap * 2 : 16;
		struct store_id *p = realloc(r->packs, cap * sizeof(*p));

		if (!p)
			return -ENOMEM;
		r->packs = p;
		r->packs_cap = cap;
	}
	return idtab_room(&r->pslot, &r->npslot, r->npacks, r->packs, sizeof(*r->packs));
}

/* The number of pack ID, added when new.  Caller holds r->lock for writing.  0 or -errno. */
static int pack_number(struct repo *r, const struct store_id *id, uint32_t *num)
{
	ssize_t i = idtab_find(r->pslot, r->npslot, r->packs, sizeof(*r->packs), id);
	int ret;

	if (i >= 0) {
		*num = (uint32_t)i;
		return 0;
	}
	ret = pack_room(r);
	if (ret)
		return ret;
	r->packs[r->npacks] = *id;
	idtab_insert(r->pslot, r->npslot, id, r->npacks);
	*num = r->npacks++;
	return 0;
}

/* ---- config ---- */

void repo_config_default(struct repo_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->chunk.min = CHUNK_MIN_DEFAULT;
	cfg->chunk.avg = CHUNK_AVG_DEFAULT;
	cfg->chunk.max = CHUNK_MAX_DEFAULT;
	cfg->zstd_level = 5;
	cfg->pack_size = PACK_SIZE_DEFAULT;
}

static int config_check(const struct repo_config *cfg)
{
	if (chunker_check(&cfg->chunk) || cfg->chunk.max > CHUNK_MAX_LIMIT)
		return -EINVAL;
	if (cfg->zstd_level < ZSTD_LEVEL_MIN || cfg->zstd_level > ZSTD_LEVEL_MAX)
		return -EINVAL;
	if (cfg->pack_size < PACK_SIZE_MIN || cfg->pack_size > PACK_SIZE_MAX)
		return -EINVAL;
	return 0;
}

bool repo_exists(const char *dir)
{
	char *p = path_join(dir, "config");
	bool ok = p && access(p, F_OK) == 0;

	free(p);
	return ok;
}

/* fsyncs the directory holding PATH (after PATH was made in it).  0 or -errno. */
static int fsync_parent(const char *path)
{
	char *copy = strdup(path), *slash;
	int fd, ret = 0;

	if (!copy)
		return -ENOMEM;
	slash = strrchr(copy, '/');
	if (slash == copy)
		slash[1] = '\0';
	else if (slash)
		*slash = '\0';
	fd = open(slash ? copy : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || fsync(fd))
		ret = -errno;
	if (fd >= 0)
		close(fd);
	free(copy);
	return ret;
}

int repo_create(const char *dir, const struct repo_config *cfg)
{
	static const char *const subdirs[] = { "packs", "index", "snapshots" };
	struct repo_config def;
	unsigned char rnd[16];
	char text[1024], created[64], idhex[33];
	struct timespec now;
	int dirfd, ret;

	if (!cfg) {
		repo_config_default(&def);
		cfg = &def;
	}
	if (config_check(cfg))
		return -EINVAL;
	if (mkdir(dir, 0755) == 0) {
		ret = fsync_parent(dir);
		if (ret)
			return ret;
	} else if (errno != EEXIST) {
		return -errno;
	}
	dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0)
		return -errno;
	if (faccessat(dirfd, "config", F_OK, 0) == 0) {
		ret = -EEXIST;
		goto out_close;
	}
	for (size_t i = 0; i < ARRAY_SIZE(subdirs); i++) {
		if (mkdirat(dirfd, subdirs[i], 0755) && errno != EEXIST) {
			ret = -errno;
			goto out_close;
		}
	}
	if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
		ret = -errno;
		goto out_close;
	}
	for (size_t i = 0; i < sizeof(rnd); i++)
		snprintf(idhex + 2 * i, 3, "%02x", rnd[i]);
	clock_gettime(CLOCK_REALTIME, &now);
	format_time((int64_t)now.tv_sec * 1000000000, false, created, sizeof(created));
	snprintf(text, sizeof(text),
		 "# drfs snapshot repository (docs/format.md); never edit the chunker keys\n"
		 "format=%s\nid=%s\ncreated=%s\nchunker=%s\n"
		 "chunk_min=%u\nchunk_avg=%u\nchunk_max=%u\nzstd_level=%d\npack_size=%llu\n",
		 REPO_FORMAT, idhex, created, REPO_CHUNKER, cfg->chunk.min, cfg->chunk.avg,
		 cfg->chunk.max, cfg->zstd_level, (unsigned long long)cfg->pack_size);
	/* the config last: it is what makes the directory a repository (and the
	 * fsync of DIR that write_file_durable ends with keeps the subdirectories) */
	ret = write_file_durable(dirfd, "config", text, strlen(text));
out_close:
	close(dirfd);
	return ret;
}

/* Reads REPO/config into R->cfg.  0, -EBADMSG or -EPROTONOSUPPORT (logged), -errno. */
static int config_load(struct repo *r)
{
	char *path = path_join(r->dir, "config");
	const char *v, *bad = NULL;
	struct kv *kv;
	uint64_t u;
	int64_t level;
	int ret;

	if (!path)
		return -ENOMEM;
	ret = kv_load(path, &kv);
	if (ret == -EINVAL) {
		log_error("repository config %s is damaged: a line without '='", path);
		ret = -EBADMSG;
	}
	if (ret)
		goto out_free;
	v = kv_get(kv, "format");
	if (!v) {
		bad = "no format key";
		goto out_bad;
	}
	if (strcmp(v, REPO_FORMAT)) {
		log_error("repository config %s: format %s is not known to this drfs (it knows %s)",
			  path, v, REPO_FORMAT);
		ret = -EPROTONOSUPPORT;
		goto out_kv;
	}
	v = kv_get(kv, "chunker");
	if (!v) {
		bad = "no chunker key";
		goto out_bad;
	}
	if (strcmp(v, REPO_CHUNKER)) {
		log_error("repository config %s: chunker %s is not known to this drfs", path, v);
		ret = -EPROTONOSUPPORT;
		goto out_kv;
	}
	repo_config_default(&r->cfg);
	if ((v = kv_get(kv, "chunk_min")) && parse_u32(v, &r->cfg.chunk.min))
		bad = "chunk_min";
	if ((v = kv_get(kv, "chunk_avg")) && parse_u32(v, &r->cfg.chunk.avg))
		bad = "chunk_avg";
	if ((v = kv_get(kv, "chunk_max")) && parse_u32(v, &r->cfg.chunk.max))
		bad = "chunk_max";
	if ((v = kv_get(kv, "zstd_level"))) {
		if (parse_i64(v, &level) || level < ZSTD_LEVEL_MIN || level > ZSTD_LEVEL_MAX)
			bad = "zstd_level";
		else
			r->cfg.zstd_level = (int)level;
	}
	if ((v = kv_get(kv, "pack_size"))) {
		if (parse_u64(v, &u))
			bad = "pack_size";
		else
			r->cfg.pack_size = u;
	}
	if (bad)
		goto out_bad;
	if (config_check(&r->cfg)) {
		bad = "chunk sizes, zstd_level or pack_size out of range";
		goto out_bad;
	}
	kv_free(kv);
	free(path);
	return 0;

out_bad:
	log_error("repository config %s is damaged: %s", path, bad);
	ret = -EBADMSG;
out_kv:
	kv_free(kv);
out_free:
	free(path);
	return ret;
}

/* ---- opening: the index ---- */

/* Whether NAME is 64 lower-case hex digits followed by SUFFIX; the id into *ID. */
static bool object_name(const char *name, const char *suffix, struct store_id *id)
{
	char hex[HEX_LEN + 1];

	if (strlen(name) != HEX_LEN + strlen(suffix) || strcmp(name + HEX_LEN, suffix))
		return false;
	memcpy(hex, name, HEX_LEN);
	hex[HEX_LEN] = '\0';
	for (int i = 0; i < HEX_LEN; i++)
		if (!((hex[i] >= '0' && hex[i] <= '9') || (hex[i] >= 'a' && hex[i] <= 'f')))
			return false;
	return store_id_parse(hex, id) == 0;
}

static int open_sub(int dirfd, const char *name)
{
	int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	return fd < 0 ? -errno : fd;
}

/* Reads, checks and adds the index file index/NAME (id ID).  0 or -errno (logged). */
static int index_load_file(struct repo *r, const char *name, const struct store_id *id)
{
	char *path = path_join(r->dir, "index"), *full = NULL, *buf = NULL;
	struct store_id got, *packs = NULL;
	struct pack_blob *e = NULL;
	uint32_t np, n, *map = NULL;
	size_t len;
	int ret = -ENOMEM;

	if (!path || !(full = path_join(path, name)))
		goto out;
	ret = read_file_small(full, &buf, &len);
	if (ret) {
		log_error("cannot read index file %s: %s", full, strerror(-ret));
		goto out;
	}
	store_hash(buf, len, &got);
	if (memcmp(got.b, id->b, STORE_ID_LEN)) {
		log_error("index file %s is damaged: its content does not match its name", full);
		ret = -EBADMSG;
		goto out;
	}
	ret = pack_index_decode(full, buf, len, &packs, &np, &e, &n);
	if (ret)
		goto out;
	map = malloc((size_t)np * sizeof(*map) + 1);
	if (!map) {
		ret = -ENOMEM;
		goto out;
	}
	for (uint32_t i = 0; i < np; i++) {
		ret = pack_number(r, &packs[i], &map[i]);
		if (ret)
			goto out;
	}
	for (uint32_t i = 0; i < n; i++) {
		if (index_find(r, &e[i].id))
			continue;     /* listed twice: either copy will do */
		e[i].pack = map[e[i].pack];
		ret = index_add(r, &e[i]);
		if (ret)
			goto out;
	}
	r->index_files++;
out:
	free(map);
	free(e);
	free(packs);
	free(buf);
	free(full);
	free(path);
	return ret;
}

/* Loads every index file (index/ID.idx).  0 or -errno (logged). */
static int index_load(struct repo *r)
{
	DIR *d;
	struct dirent *de;
	struct store_id id;
	uint64_t bytes = 0;
	int fd, ret = 0;

	/* first pass: presize the entry array from the file sizes (an upper bound) */
	fd = open_sub(r->dirfd, "index");
	if (fd < 0)
		return fd;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	while ((de = readdir(d))) {
		struct stat st;

		if (object_name(de->d_name, ".idx", &id) &&
		    fstatat(r->index_fd, de->d_name, &st, 0) == 0)
			bytes += (uint64_t)st.st_size;
	}
	if (bytes / 48 > r->ent_cap) {
		size_t cap = (size_t)(bytes / 48);
		struct pack_blob *e = realloc(r->ent, cap * sizeof(*e));

		if (!e) {
			closedir(d);
			return -ENOMEM;
		}
		r->ent = e;
		r->ent_cap = cap;
	}
	rewinddir(d);
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		if (!object_name(de->d_name, ".idx", &id)) {
			log_warn("repository %s: index/%s is not an index file name; ignored",
				 r->dir, de->d_name);
			continue;
		}
		ret = index_load_file(r, de->d_name, &id);
		if (ret)
			break;
	}
	closedir(d);
	r->flush_ent = r->n;
	return ret;
}

int repo_open(const char *dir, bool writable, struct repo **out)
{
	struct repo *r = calloc(1, sizeof(*r));
	int ret;

	if (!r)
		return -ENOMEM;
	r->dirfd = r->packs_fd = r->index_fd = r->snaps_fd = r->lock_fd = -1;
	for (int i = 0; i < FD_CACHE_SLOTS; i++)
		r->fds[i].fd = -1;
	pthread_rwlock_init(&r->lock, NULL);
	pthread_mutex_init(&r->fd_lock, NULL);
	pack_writer_init(&r->open[0], BLOB_DATA);
	pack_writer_init(&r->open[1], BLOB_TREE);
	r->writable = writable;
	r->dir = strdup(dir);
	if (!r->dir) {
		ret = -ENOMEM;
		goto out_close;
	}
	r->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (r->dirfd < 0) {
		ret = -errno;
		goto out_close;
	}
	ret = config_load(r);
	if (ret)
		goto out_close;
	if (writable) {
		r->lock_fd = openat(r->dirfd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0644);
		if (r->lock_fd < 0) {
			ret = -errno;
			goto out_close;
		}
		if (flock(r->lock_fd, LOCK_EX | LOCK_NB)) {
			ret = -errno;
			goto out_close;
		}
	}
	if ((r->packs_fd = open_sub(r->dirfd, "packs")) < 0 ||
	    (r->index_fd = open_sub(r->dirfd, "index")) < 0 ||
	    (r->snaps_fd = open_sub(r->dirfd, "snapshots")) < 0) {
		ret = -errno;
		log_error("repository %s: cannot open packs/, index/ or snapshots/: %s", dir,
			  strerror(errno));
		goto out_close;
	}
	ret = index_load(r);
	if (ret)
		goto out_close;
	*out = r;
	return 0;

out_close:
	repo_close(r);
	return ret;
}

void repo_close(struct repo *r)
{
	if (!r)
		return;
	for (int i = 0; i < FD_CACHE_SLOTS; i++)
		if (r->fds[i].fd >= 0)
			close(r->fds[i].fd);
	pack_writer_release(&r->open[0]);
	pack_writer_release(&r->open[1]);
	free(r->ent);
	free(r->slot);
	free(r->packs);
	free(r->pslot);
	if (r->snaps_fd >= 0)
		close(r->snaps_fd);
	if (r->index_fd >= 0)
		close(r->index_fd);
	if (r->packs_fd >= 0)
		close(r->packs_fd);
	if (r->lock_fd >= 0)
		close(r->lock_fd);   /* drops the flock */
	if (r->dirfd >= 0)
		close(r->dirfd);
	pthread_mutex_destroy(&r->fd_lock);
	pthread_rwlock_destroy(&r->lock);
	free(r->dir);
	free(r);
}

const struct repo_config *repo_get_config(const struct repo *r)
{
	return &r->cfg;
}

const char *repo_dir(const struct repo *r)
{
	return r->dir;
}

/* ---- putting blobs ---- */

/*
 * Writes the open pack W and points its blobs at it.  Caller holds
 * r->lock for writing.  0 or -errno (logged); W is unchanged on failure.
 */
static int pack_close(struct repo *r, struct pack_writer *w)
{
	struct store_id id;
	uint64_t bytes;
	uint32_t num;
	int ret;

	/* room first, so that nothing can fail once the pack is written */
	ret = pack_room(r);
	if (ret)
		return ret;
	ret = pack_writer_finish(w, r->packs_fd, &id, &bytes);
	if (ret)
		return ret;
	pack_number(r, &id, &num);   /* cannot fail: room was made */
	for (uint32_t i = 0; i < w->n; i++) {
		struct pack_blob *b = index_find(r, &w->ent[i].id);

		if (b && b->pack == PACK_OPEN(w->type))
			b->pack = num;
	}
	w->n = 0;
	r->added_bytes += bytes;
	return 0;
}

/*
 * Adds blob ID to the open pack of TYPE: from its plaintext DATA (LEN
 * bytes, encoded here) when STORED is NULL, else already encoded.
 */
static int put_blob(struct repo *r, enum blob_type type, const struct store_id *id,
		    const void *data, size_t len, const void *stored, size_t stored_len,
		    enum blob_enc enc, bool *added)
{
	struct pack_writer *w;
	struct pack_blob b;
	int ret;

	if (!r->writable)
		return -EROFS;
	if (type != BLOB_DATA && type != BLOB_TREE)
		return -EINVAL;
	/* the one writer reads the index without the lock: nobody else changes it */
	if (index_find(r, id)) {
		if (added)
			*added = false;
		return 0;
	}
	w = &r->open[type - 1];
	pthread_rwlock_wrlock(&r->lock);
	ret = stored ? pack_writer_add_encoded(w, id, stored, stored_len, enc, len, &b)
		     : pack_writer_add(w, id, data, len, r->cfg.zstd_level, &b);
	if (ret)
		goto out_unlock;
	b.pack = PACK_OPEN(type);
	ret = index_add(r, &b);
	if (ret) {
		w->n--;
		w->len = b.offset;
		goto out_unlock;
	}
	if (w->len >= r->cfg.pack_size)
		ret = pack_close(r, w);   /* on failure the blob stays in the open pack */
	if (!ret && added)
		*added = true;
out_unlock:
	pthread_rwlock_unlock(&r->lock);
	return ret;
}

int repo_put_id(struct repo *r, enum blob_type type, const void *data, size_t len,
		const struct store_id *id, bool *added)
{
	return put_blob(r, type, id, data, len, NULL, 0, BLOB_RAW, added);
}

int repo_put_encoded(struct repo *r, enum blob_type type, const struct store_id *id,
		     const void *stored, size_t stored_len, enum blob_enc enc, size_t raw_len,
		     bool *added)
{
	return put_blob(r, type, id, NULL, raw_len, stored, stored_len, enc, added);
}

int repo_put(struct repo *r, enum blob_type type, const void *data, size_t len,
	     struct store_id *id, bool *added)
{
	struct store_id tmp;
	int ret;

	store_hash(data, len, &tmp);
	ret = repo_put_id(r, type, data, len, &tmp, added);
	if (!ret)
		*id = tmp;
	return ret;
}

bool repo_has(struct repo *r, const struct store_id *id)
{
	bool found;

	pthread_rwlock_rdlock(&r->lock);
	found = index_find(r, id) != NULL;
	pthread_rwlock_unlock(&r->lock);
	return found;
}

/* ---- reading blobs ---- */

static void pack_path(const struct store_id *pack, char *buf, size_t size)
{
	char hex[HEX_LEN + 1];

	store_id_hex(pack, hex);
	snprintf(buf, size, "packs/%.2s/%s.pack", hex, hex);
}

static void log_damage(const struct store_id *id, const char *pack_hex, const char *what)
{
	char hex[HEX_LEN + 1];

	store_id_hex(id, hex);
	log_error("blob %s in pack %s: %s", hex, pack_hex, what);
}

/*
 * An fd of pack number NUM (id PACK), checked (header, footer, table) and
 * of the type TREE says.  *SLOT the cache slot to release, or -1: the
 * caller closes the fd.  *END where the pack's table starts.  fd,
 * -EBADMSG with *WHY, or -errno.
 */
static int pack_fd_get(struct repo *r, uint32_t num, const struct store_id *pack, bool tree,
		       int *slot, uint32_t *end, const char **why)
{
	char path[HEX_LEN + 32];
	struct pack_blob *table;
	enum blob_type type;
	struct fd_slot *victim = NULL;
	uint32_t n;
	int fd, ret;

	pthread_mutex_lock(&r->fd_lock);
	for (int i = 0; i < FD_CACHE_SLOTS; i++) {
		struct fd_slot *s = &r->fds[i];

		if (s->fd >= 0 && s->pack == num) {
			s->refs++;
			s->used = ++r->fd_clock;
			*slot = i;
			*end = s->end;
			pthread_mutex_unlock(&r->fd_lock);
			return s->fd;
		}
	}
	pack_path(pack, path, sizeof(path));
	fd = openat(r->dirfd, path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		if (ret == -ENOENT) {
			*why = "the pack file is missing";
			ret = -EBADMSG;
		} else {
			*why = "cannot open the pack file";
		}
		goto out_unlock;
	}
	ret = pack_read_table(fd, &type, &table, &n, why);
	if (ret) {
		if (ret != -EBADMSG)
			*why = "cannot read the pack's table";
		close(fd);
		goto out_unlock;
	}
	*end = n ? table[n - 1].offset + table[n - 1].stored_len : PACK_HEADER_LEN;
	free(table);
	if ((type == BLOB_TREE) != tree) {
		*why = "the pack holds another blob type than the index says";
		close(fd);
		ret = -EBADMSG;
		goto out_unlock;
	}
	for (int i = 0; i < FD_CACHE_SLOTS; i++) {
		struct fd_slot *s = &r->fds[i];

		if (s->fd < 0 || (!s->refs && (!victim || (victim->fd >= 0 && s->used < victim->used))))
			victim = s;
		if (s->fd < 0)
			break;
	}
	*slot = -1;
	if (victim) {
		if (victim->fd >= 0)
			close(victim->fd);
		victim->fd = fd;
		victim->pack = num;
		victim->refs = 1;
		victim->end = *end;
		victim->used = ++r->fd_clock;
		*slot = (int)(victim - r->fds);
	}
	ret = fd;
out_unlock:
	pthread_mutex_unlock(&r->fd_lock);
	return ret;
}

static void pack_fd_put(struct repo *r, int slot, int fd)
{
	if (slot < 0) {
		close(fd);
		return;
	}
	pthread_mutex_lock(&r->fd_lock);
	r->fds[slot].refs--;
	pthread_mutex_unlock(&r->fd_lock);
}

int repo_get(struct repo *r, const struct store_id *id, void **data, size_t *len)
{
	char pack_hex[HEX_LEN + 1] = "(open, not yet written)";
	const char *why = NULL;
	struct pack_blob e, *b;
	struct store_id pack, got;
	unsigned char *raw, *stored = NULL;
	size_t raw_len;
	uint32_t end = 0;
	int ret, fd, slot = -1;

	pthread_rwlock_rdlock(&r->lock);
	b = index_find(r, id);
	if (!b) {
		pthread_rwlock_unlock(&r->lock);
		return -ENOENT;
	}
	e = *b;
	raw_len = e.raw & PACK_RAW_LEN_MAX;
	raw = malloc(raw_len ? raw_len : 1);
	if (!raw) {
		pthread_rwlock_unlock(&r->lock);
		return -ENOMEM;
	}
	if (PACK_IS_OPEN(e.pack)) {
		/* put since the last pack was written: it is in memory */
		const struct pack_writer *w = &r->open[UINT32_MAX - e.pack - 1];

		ret = blob_decode(w->buf + e.offset, e.stored_len,
				  (e.raw & PACK_RAW_ZSTD) ? BLOB_ZSTD : BLOB_RAW, raw, raw_len);
		pthread_rwlock_unlock(&r->lock);
		if (ret) {
			why = "does not decode";
			goto out_bad;
		}
		goto out_verify;
	}
	pack = r->packs[e.pack];
	pthread_rwlock_unlock(&r->lock);

	store_id_hex(&pack, pack_hex);
	fd = pack_fd_get(r, e.pack, &pack, e.raw & PACK_RAW_TREE, &slot, &end, &why);
	if (fd < 0) {
		ret = fd;
		goto out_bad;
	}
	if ((uint64_t)e.offset + e.stored_len > end) {
		why = "the index places it outside the pack's blobs";
		ret = -EBADMSG;
	} else if (e.raw & PACK_RAW_ZSTD) {
		stored = malloc(e.stored_len ? e.stored_len : 1);
		ret = stored ? store_pread(fd, stored, e.stored_len, e.offset) : -ENOMEM;
		if (!ret) {
			ret = blob_decode(stored, e.stored_len, BLOB_ZSTD, raw, raw_len);
			if (ret)
				why = "does not decode";
		}
	} else {
		ret = store_pread(fd, raw, raw_len, e.offset);
	}
	pack_fd_put(r, slot, fd);
	if (ret == -EBADMSG && !why)
		why = "the pack file is shorter than the index says";
	if (ret)
		goto out_bad;
out_verify:
	store_hash(raw, raw_len, &got);
	if (memcmp(got.b, id->b, STORE_ID_LEN)) {
		why = "the SHA-256 of its plaintext is not its id";
		ret = -EBADMSG;
		goto out_bad;
	}
	free(stored);
	*data = raw;
	*len = raw_len;
	return 0;

out_bad:
	if (why)
		log_damage(id, pack_hex, why);
	free(stored);
	free(raw);
	return ret;
}

int64_t repo_blob_size(struct repo *r, const struct store_id *id)
{
	struct pack_blob *b;
	int64_t ret = -ENOENT;

	pthread_rwlock_rdlock(&r->lock);
	b = index_find(r, id);
	if (b)
		ret = b->raw & PACK_RAW_LEN_MAX;
	pthread_rwlock_unlock(&r->lock);
	return ret;
}

int repo_blob_pack(struct repo *r, const struct store_id *id, char *pack_hex)
{
	struct pack_blob *b;
	int ret = 0;

	pthread_rwlock_rdlock(&r->lock);
	b = index_find(r, id);
	if (!b)
		ret = -ENOENT;
	else if (PACK_IS_OPEN(b->pack))
		snprintf(pack_hex, HEX_LEN + 1, "(open, not yet written)");
	else
		store_id_hex(&r->packs[b->pack], pack_hex);
	pthread_rwlock_unlock(&r->lock);
	return ret;
}

/* ---- flushing ---- */

/* Writes an index file of the blobs [r->flush_ent, r->n).  Caller holds r->lock.  0 or -errno. */
static int index_write(struct repo *r)
{
	size_t n = r->n - r->flush_ent, len;
	struct pack_blob *e = malloc(n * sizeof(*e) + 1);
	uint32_t *map = malloc((size_t)r->npacks * sizeof(*map) + 1);
	struct store_id *packs = malloc((size_t)r->npacks * sizeof(*packs) + 1);
	char name[HEX_LEN + 8];
	struct store_id id;
	uint32_t np = 0;
	void *buf;
	int ret = -ENOMEM;

	if (!e || !map || !packs)
		goto out;
	memset(map, 0xff, (size_t)r->npacks * sizeof(*map));
	for (size_t i = 0; i < n; i++) {
		e[i] = r->ent[r->flush_ent + i];
		if (map[e[i].pack] == UINT32_MAX) {
			map[e[i].pack] = np;
			packs[np++] = r->packs[e[i].pack];
		}
		e[i].pack = map[e[i].pack];
	}
	ret = pack_index_encode(packs, np, e, (uint32_t)n, &buf, &len);
	if (ret)
		goto out;
	store_hash(buf, len, &id);
	store_id_hex(&id, name);
	strcat(name, ".idx");
	ret = write_file_durable(r->index_fd, name, buf, len);
	free(buf);
	if (ret) {
		log_error("cannot write index file %s/index/%s: %s", r->dir, name, strerror(-ret));
		goto out;
	}
	r->flush_ent = r->n;
	r->index_files++;
out:
	free(packs);
	free(map);
	free(e);
	return ret;
}

int repo_flush(struct repo *r, uint64_t *added_bytes)
{
	int ret = 0;

	if (r->writable) {
		pthread_rwlock_wrlock(&r->lock);
		for (int t = 0; t < 2 && !ret; t++)
			if (r->open[t].len)
				ret = pack_close(r, &r->open[t]);
		if (!ret && r->n > r->flush_ent)
			ret = index_write(r);
		pthread_rwlock_unlock(&r->lock);
	}
	if (!ret && added_bytes)
		*added_bytes = r->added_bytes;
	return ret;
}

void repo_get_stats(struct repo *r, struct repo_stats *st)
{
	pthread_rwlock_rdlock(&r->lock);
	st->blobs = r->n;
	st->packs = r->npacks;
	st->index_files = r->index_files;
	st->index_mem_bytes = r->ent_cap * sizeof(*r->ent) + r->nslot * sizeof(*r->slot) +
			      r->packs_cap * sizeof(*r->packs) + r->npslot * sizeof(*r->pslot);
	pthread_rwlock_unlock(&r->lock);
}

/* ---- time arguments ---- */

/* Exactly N decimal digits at *P (advanced).  0 or -EINVAL. */
static int digits(const char **p, int n, int *out)
{
	int v = 0;

	for (int i = 0; i < n; i++, (*p)++) {
		if (**p < '0' || **p > '9')
			return -EINVAL;
		v = v * 10 + (**p - '0');
	}
	*out = v;
	return 0;
}

/* ".ddd" (1 to 9 digits) at *P, if any, as nanoseconds.  0 or -EINVAL. */
static int fraction(const char **p, int64_t *ns)
{
	int64_t v = 0, scale = 100000000;
	int n = 0;

	*ns = 0;
	if (**p != '.')
		return 0;
	for ((*p)++; **p >= '0' && **p <= '9'; (*p)++, n++) {
		if (n == 9)
			return -EINVAL;
		v += (**p - '0') * scale;
		scale /= 10;
	}
	if (!n)
		return -EINVAL;
	*ns = v;
	return 0;
}

/* SEC seconds and NS nanoseconds (0..999999999) as ns, when in range.  0 or -EINVAL. */
static int to_ns(int64_t sec, int64_t ns, int64_t *out)
{
	if (sec > INT64_MAX / 1000000000 - 1 || sec < INT64_MIN / 1000000000 + 1)
		return -EINVAL;
	*out = sec * 1000000000 + ns;
	return 0;
}

int snap_parse_time(const char *s, int64_t *ns)
{
	const char *p = s;
	int year, mon, day, hour, min, sec;
	int64_t frac;
	struct tm tm = { 0 }, back;
	time_t t;

	if (!s || !*s)
		return -EINVAL;
	/* seconds since the epoch: [-]digits[.fraction] */
	if (s[strspn(s, "-0123456789.")] == '\0' && strchr("-0123456789", s[0])) {
		const char *dot = strchr(s, '.');
		char whole[32];
		size_t wl = dot ? (size_t)(dot - s) : strlen(s);
		int64_t v;

		if (wl == 0 || wl >= sizeof(whole))
			return -EINVAL;
		memcpy(whole, s, wl);
		whole[wl] = '\0';
		p = s + wl;
		if (parse_i64(whole, &v) || fraction(&p, &frac) || *p)
			return -EINVAL;
		if (v < 0 || whole[0] == '-') {
			/* -1.5 is 1.5 s before the epoch */
			if (to_ns(v, 0, ns) || *ns < INT64_MIN + frac)
				return -EINVAL;
			*ns -= frac;
			return 0;
		}
		return to_ns(v, frac, ns);
	}
	/* YYYY-MM-DDTHH:MM:SS[.fraction]Z or YYYY-MM-DD HH:MM:SS[.fraction][Z] */
	if (digits(&p, 4, &year) || *p++ != '-' || digits(&p, 2, &mon) || *p++ != '-' ||
	    digits(&p, 2, &day))
		return -EINVAL;
	char sep = *p++;
	if ((sep != 'T' && sep != ' ') || digits(&p, 2, &hour) || *p++ != ':' ||
	    digits(&p, 2, &min) || *p++ != ':' || digits(&p, 2, &sec) || fraction(&p, &frac))
		return -EINVAL;
	if (*p == 'Z')
		p++;
	else if (sep == 'T')
		return -EINVAL;   /* a 'T' time without 'Z' would read as local time elsewhere */
	if (*p || mon < 1 || mon > 12 || day < 1 || day > 31 || hour > 23 || min > 59 ||
	    sec > 59)
		return -EINVAL;
	tm.tm_year = year - 1900;
	tm.tm_mon = mon - 1;
	tm.tm_mday = day;
	tm.tm_hour = hour;
	tm.tm_min = min;
	tm.tm_sec = sec;
	t = timegm(&tm);
	if (!gmtime_r(&t, &back) || back.tm_mday != day || back.tm_mon != mon - 1)
		return -EINVAL;   /* February 30 and the like */
	return to_ns((int64_t)t, frac, ns);
}

/* ---- snapshot objects ---- */

/* Whether S can be a value in a key=value file and read back the same. */
static bool text_value_ok(const char *s)
{
	size_t n = strlen(s);

	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return false;
	return !n || (s[0] != ' ' && s[n - 1] != ' ');
}

int snap_write(struct repo *r, struct snap_info *s)
{
	char text[2048], tree[HEX_LEN + 1], parent[HEX_LEN + 1], when[64], name[HEX_LEN + 8];
	struct store_id id;
	int len, ret;

	if (!r->writable)
		return -EROFS;
	if (!memchr(s->host, 0, sizeof(s->host)) || !memchr(s->tags, 0, sizeof(s->tags)) ||
	    !memchr(s->source, 0, sizeof(s->source)) || !text_value_ok(s->host) ||
	    !text_value_ok(s->tags) || !text_value_ok(s->source))
		return -EINVAL;
	/* the snapshot is the last object: everything it names must be durable */
	ret = repo_flush(r, NULL);
	if (ret)
		return ret;
	if (!repo_has(r, &s->tree)) {
		store_id_hex(&s->tree, tree);
		log_error("snapshot in %s: its root tree %s is not in the repository", r->dir, tree);
		return -ENOENT;
	}
	store_id_hex(&s->tree, tree);
	store_id_hex(&s->parent, parent);
	format_time(s->time_ns, true, when, sizeof(when));
	len = snprintf(text, sizeof(text),
		       "format=1\ntree=%s\n%s%s%stimeline=%u\nlsn=%llu\ntime=%s\nhost=%s\n"
		       "tags=%s\nfiles=%llu\nbytes=%llu\nchanged=%llu\nadded=%llu\nsource=%s\n"
		       "root=%04o:%u:%u:%lld.%09u\n",
		       tree, store_id_is_zero(&s->parent) ? "" : "parent=",
		       store_id_is_zero(&s->parent) ? "" : parent,
		       store_id_is_zero(&s->parent) ? "" : "\n", s->timeline,
		       (unsigned long long)s->lsn, when, s->host, s->tags,
		       (unsigned long long)s->files, (unsigned long long)s->bytes,
		       (unsigned long long)s->changed, (unsigned long long)s->added, s->source,
		       s->root_mode, s->root_uid, s->root_gid, (long long)s->root_mtime_sec,
		       s->root_mtime_nsec);
	if (len < 0 || (size_t)len >= sizeof(text))
		return -EINVAL;
	store_hash(text, (size_t)len, &id);
	store_id_hex(&id, name);
	strcat(name, ".snap");
	ret = write_file_durable(r->snaps_fd, name, text, (size_t)len);
	if (ret) {
		log_error("cannot write snapshot %s/snapshots/%s: %s", r->dir, name, strerror(-ret));
		return ret;
	}
	s->id = id;
	return 0;
}

static int copy_text(char *dst, size_t size, const char *v)
{
	if (strlen(v) >= size)
		return -EINVAL;
	strcpy(dst, v);
	return 0;
}

/* "MODE:UID:GID:SEC.NSEC" into S.  0 or -EINVAL. */
static int parse_root(const char *v, struct snap_info *s)
{
	char buf[128], *f[4], *save, *dot, *end;
	unsigned long mode;

	if (copy_text(buf, sizeof(buf), v))
		return -EINVAL;
	f[0] = strtok_r(buf, ":", &save);
	for (int i = 1; i < 4; i++)
		f[i] = f[0] ? strtok_r(NULL, ":", &save) : NULL;
	if (!f[3] || strtok_r(NULL, ":", &save))
		return -EINVAL;
	errno = 0;
	mode = strtoul(f[0], &end, 8);
	if (errno || *end || !*f[0] || mode > 07777)
		return -EINVAL;
	dot = strchr(f[3], '.');
	if (!dot || strlen(dot + 1) != 9)
		return -EINVAL;
	*dot = '\0';
	if (parse_u32(f[1], &s->root_uid) || parse_u32(f[2], &s->root_gid) ||
	    parse_i64(f[3], &s->root_mtime_sec) || parse_u32(dot + 1, &s->root_mtime_nsec) ||
	    s->root_mtime_nsec > 999999999)
		return -EINVAL;
	s->root_mode = (uint32_t)mode;
	return 0;
}

/*
 * Parses the snapshot text TEXT (modified) of file PATH into S.  0,
 * -EBADMSG (logged), -EPROTONOSUPPORT (logged).
 */
static int snap_parse(const char *path, char *text, struct snap_info *s)
{
	unsigned seen = 0;
	char *line, *save;
	const char *bad = NULL;

	memset(s, 0, sizeof(*s));
	for (line = strtok_r(text, "\n", &save); line && !bad; line = strtok_r(NULL, "\n", &save)) {
		char *k = line, *v, *eq;

		while (*k == ' ' || *k == '\t' || *k == '\r')
			k++;
		if (!*k || *k == '#')
			continue;
		eq = strchr(k, '=');
		if (!eq) {
			bad = "a line without '='";
			break;
		}
		v = eq + 1;
		while (eq > k && (eq[-1] == ' ' || eq[-1] == '\t'))
			eq--;
		*eq = '\0';
		while (*v == ' ' || *v == '\t')
			v++;
		for (char *e = v + strlen(v); e > v && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r');)
			*--e = '\0';

		if (!strcmp(k, "format")) {
			if (strcmp(v, "1")) {
				log_error("snapshot %s: format %s is not known to this drfs", path, v);
				return -EPROTONOSUPPORT;
			}
			seen |= 1;
		} else if (!strcmp(k, "tree")) {
			if (store_id_parse(v, &s->tree))
				bad = "tree";
			seen |= 2;
		} else if (!strcmp(k, "parent")) {
			if (store_id_parse(v, &s->parent))
				bad = "parent";
		} else if (!strcmp(k, "timeline")) {
			if (parse_u32(v, &s->timeline))
				bad = "timeline";
			seen |= 4;
		} else if (!strcmp(k, "lsn")) {
			if (parse_u64(v, &s->lsn))
				bad = "lsn";
			seen |= 8;
		} else if (!strcmp(k, "time")) {
			if (snap_parse_time(v, &s->time_ns))
				bad = "time";
			seen |= 16;
		} else if (!strcmp(k, "host")) {
			if (copy_text(s->host, sizeof(s->host), v))
				bad = "host";
		} else if (!strcmp(k, "tags")) {
			if (copy_text(s->tags, sizeof(s->tags), v))
				bad = "tags";
		} else if (!strcmp(k, "source")) {
			if (copy_text(s->source, sizeof(s->source), v))
				bad = "source";
		} else if (!strcmp(k, "files")) {
			if (parse_u64(v, &s->files))
				bad = "files";
		} else if (!strcmp(k, "bytes")) {
			if (parse_u64(v, &s->bytes))
				bad = "bytes";
		} else if (!strcmp(k, "changed")) {
			if (parse_u64(v, &s->changed))
				bad = "changed";
		} else if (!strcmp(k, "added")) {
			if (parse_u64(v, &s->added))
				bad = "added";
		} else if (!strcmp(k, "root")) {
			if (parse_root(v, s))
				bad = "root";
		}
		/* other keys: a later version's; kept in the file, ignored here */
	}
	if (!bad && seen != 31)
		bad = "a required key (format, tree, timeline, lsn, time) is missing";
	if (bad) {
		log_error("snapshot %s is damaged: %s", path, bad);
		return -EBADMSG;
	}
	return 0;
}

static int snap_cmp(const void *a, const void *b)
{
	const struct snap_info *x = a, *y = b;

	if (x->time_ns != y->time_ns)
		return x->time_ns < y->time_ns ? -1 : 1;
	if (x->lsn != y->lsn)
		return x->lsn < y->lsn ? -1 : 1;
	return memcmp(x->id.b, y->id.b, STORE_ID_LEN);
}

int snap_list(struct repo *r, struct snap_info **out, size_t *n)
{
	struct snap_info *list = NULL;
	size_t cnt = 0, cap = 0;
	struct dirent *de;
	DIR *d;
	int fd, ret = 0;

	/* a stream of its own: concurrent listings must not share an offset */
	fd = open_sub(r->dirfd, "snapshots");
	if (fd < 0)
		return fd;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	while ((de = readdir(d))) {
		char path[PATH_MAX];
		struct store_id id, got;
		char *text;
		size_t len;

		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/snapshots/%s", r->dir, de->d_name);
		if (!object_name(de->d_name, ".snap", &id)) {
			log_warn("%s is not a snapshot file name; ignored", path);
			continue;
		}
		ret = read_file_small(path, &text, &len);
		if (ret) {
			log_error("cannot read snapshot %s: %s", path, strerror(-ret));
			break;
		}
		store_hash(text, len, &got);
		if (memcmp(got.b, id.b, STORE_ID_LEN)) {
			log_error("snapshot %s is damaged: its content does not match its name", path);
			free(text);
			ret = -EBADMSG;
			break;
		}
		if (cnt == cap) {
			size_t nc = cap ? cap * 2 : 16;
			struct snap_info *nl = realloc(list, nc * sizeof(*nl));

			if (!nl) {
				free(text);
				ret = -ENOMEM;
				break;
			}
			list = nl;
			cap = nc;
		}
		ret = snap_parse(path, text, &list[cnt]);
		free(text);
		if (ret)
			break;
		list[cnt++].id = id;
	}
	closedir(d);
	if (ret) {
		free(list);
		return ret;
	}
	if (cnt)
		qsort(list, cnt, sizeof(*list), snap_cmp);
	*out = list;
	*n = cnt;
	return 0;
}

int snap_resolve(struct repo *r, const char *spec, struct snap_info *out)
{
	struct snap_info *list;
	size_t n, plen = strlen(spec);
	ssize_t found = -1;
	int64_t t = 0;
	int ret;

	if (strcmp(spec, "latest")) {
		if (spec[0] == '@') {
			if (snap_parse_time(spec + 1, &t))
				return -EINVAL;
		} else if (plen < 8 || plen > HEX_LEN || spec[strspn(spec, "0123456789abcdefABCDEF")]) {
			return -EINVAL;
		}
	}
	ret = snap_list(r, &list, &n);
	if (ret)
		return ret;
	if (!strcmp(spec, "latest")) {
		found = (ssize_t)n - 1;
	} else if (spec[0] == '@') {
		for (size_t i = 0; i < n && list[i].time_ns <= t; i++)
			found = (ssize_t)i;
	} else {
		char hex[HEX_LEN + 1];

		for (size_t i = 0; i < n; i++) {
			store_id_hex(&list[i].id, hex);
			if (strncasecmp(hex, spec, plen))
				continue;
			if (found >= 0) {
				ret = -EEXIST;
				break;
			}
			found = (ssize_t)i;
		}
	}
	if (!ret && found < 0)
		ret = -ENOENT;
	if (!ret)
		*out = list[found];
	free(list);
	return ret;
}
