/*
 * fs_i.h - private to fs/: the inode table, open-file state and the mutation
 * interface.
 *
 * Inode identity: the FUSE node id of every object is its backing inode
 * number (the root is FUSE_ROOT_ID), and its generation is the backing
 * file handle's generation where the backing filesystem exposes one.  Both
 * survive remounts, so exported handles stay valid.  The daemon does not hold
 * an fd per cached inode: non-directories are reopened from a kernel file
 * handle (open_by_handle_at) when needed; directories keep an O_PATH fd so
 * that lookups in them cost no extra system call.  Backing filesystems
 * without file handles fall back to an O_PATH fd per inode.
 *
 * Inode lifetime follows the FUSE lookup count: lookup-type replies add one,
 * forget subtracts, and the entry is freed at zero.
 */
#ifndef DRFS_FS_I_H
#define DRFS_FS_I_H

#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/stat.h>

#include "../journal/journal.h"
#include "fs.h"

#define INODE_HANDLE_MAX 40  /* larger handles: keep an O_PATH fd instead */

/*
 * A backing inode number can be reused once its file is deleted and no fd
 * pins it.  An entry that holds an fd pins its inode, so only handle-based
 * entries can go stale; inode_lookup() then rebinds the entry to the new
 * object (new handle, generation and type, lookup counts carried over) and
 * the kernel, seeing the new generation, retires its old inode.
 */
struct drfs_inode {
	uint64_t ino;              /* backing st_ino; the FUSE node id (root: FUSE_ROOT_ID) */
	uint64_t nlookup;          /* protected by fs->lock */
	struct drfs_inode *next;   /* hash chain, protected by fs->lock */
	uint32_t gen;              /* backing generation; protected by fs->lock */
	mode_t type;               /* S_IFMT bits; protected by fs->lock */
	int fd;                    /* O_PATH fd (directories, or no handles), else -1; set once */
	_Atomic uint64_t data_lsn; /* end of the last data record (WRITE, COPY, FALLOCATE, size) */
	_Atomic bool anon;         /* made with O_TMPFILE, not linked yet: not journaled (mutate.c) */
	_Atomic uint32_t writers;  /* open handles that can write: the kernel may hold dirty pages (ops.c, drfs_lseek) */
	int handle_type;           /* valid when fd < 0; protected by fs->lock */
	unsigned int handle_bytes;
	unsigned char handle[INODE_HANDLE_MAX];
};

struct drfs_fs {
	struct fs_config cfg;
	struct fuse_session *se;
	int backing_fd;            /* O_PATH fd of the backing root */
	int mount_fd;              /* O_RDONLY fd of the backing root, for open_by_handle_at */
	int atime_fd;              /* root of a detached strictatime clone of the backing mount, or -1 */
	uint64_t mnt_id;           /* unique id of our mount (statmount), 0 if unknown */
	dev_t backing_dev;
	struct drfs_inode *root;
	double timeout;            /* entry and attribute cache timeout in seconds */
	pthread_mutex_t lock;      /* protects the inode table and every nlookup */
	struct drfs_inode **table;
	size_t table_size, table_count;
	struct drfs_inode *retired; /* entries whose node id went to a new object; freed with the table */
	bool use_handles;
	bool mounted;
	struct journal *journal;   /* NULL only in unit tests that run without one */
	struct replay_result recovery; /* what journal_open replayed */
	struct pending *pending;   /* WRITEs acknowledged, not yet applied (pending.c) */
	/*
	 * Every journaled mutation holds it for reading; fs_freeze() takes it for
	 * writing (writers preferred, so a stream of changes cannot starve it).
	 */
	pthread_rwlock_t freeze;
	/* Orders changes to files without a name and their first link (mutate.c). */
	pthread_mutex_t anon_lock;
	int snapshot_hold;         /* journal hold id for the next snapshot, or -1 */
	struct furing *uring;      /* requests over io_uring (uring.c), or NULL */
	bool kernel_times;         /* the kernel keeps regular files' mtime and ctime (writeback cache) */
	struct ctimes *ctimes;     /* the ctimes the kernel shows (times.c), or NULL */
};

/* inode.c */
/*
 * Opens fs->cfg.backing, sets up the root inode and an empty table.
 * Returns 0 or -errno (logged).  inode_table_release() undoes it all.
 */
int inode_table_init(struct drfs_fs *fs);
void inode_table_release(struct drfs_fs *fs);
/* Node id -> inode; NULL when the kernel names an inode we do not know. */
struct drfs_inode *inode_get(struct drfs_fs *fs, fuse_ino_t ino);
/*
 * Looks NAME up in directory DIR on the backing tree, adds one lookup
 * reference and fills E for a FUSE entry reply.  Returns 0 or -errno.
 */
int inode_lookup(struct drfs_fs *fs, struct drfs_inode *dir, const char *name,
		 struct fuse_entry_param *e);
/*
 * The entry for node id INO itself (the kernel's lookup of "." when it
 * decodes an exported file handle), found even when it is not cached.
 */
int inode_lookup_self(struct drfs_fs *fs, fuse_ino_t ino, struct fuse_entry_param *e);
/*
 * The entry for the file without a name (O_TMPFILE) open as FD: kept by an
 * O_PATH fd and marked anonymous; fills E as inode_lookup() does.  0 or -errno.
 */
int inode_lookup_anon(struct drfs_fs *fs, int fd, struct fuse_entry_param *e);
void inode_forget(struct drfs_fs *fs, struct drfs_inode *inode, uint64_t n);
/*
 * An fd that reaches INODE: the cached O_PATH fd (borrowed: *OWNED false) or
 * a new one from its handle opened with FLAGS (caller closes: *OWNED true).
 * Returns the fd or -errno.
 */
int inode_fd(struct drfs_fs *fs, struct drfs_inode *inode, int flags, bool *owned);
/* Opens INODE for I/O with open(2) FLAGS; the caller owns the fd.  Returns fd or -errno. */
int inode_open(struct drfs_fs *fs, struct drfs_inode *inode, int flags);
/* Opens INODE by its handle on the mount of MOUNT_FD.  Returns fd or -errno. */
int inode_open_via(struct drfs_fs *fs, struct drfs_inode *inode, int mount_fd, int flags);
/* fstat of INODE.  Returns 0 or -errno. */
int inode_stat(struct drfs_fs *fs, struct drfs_inode *inode, struct stat *st);
/* true when NAME in DIR is the hidden state directory. */
bool fs_is_hidden(struct drfs_fs *fs, struct drfs_inode *dir, const char *name);

/*
 * The mutation interface.  Every change the filesystem makes to the backing
 * tree is described by one struct mutation and carried out by fs_mutate(),
 * so that journaling (write the record, then apply) happens in one place.
 * Records carry absolute state: offsets with bytes, new sizes, new modes,
 * target names.
 */
enum mutation_type {
	MUT_CREATE,        /* dir, name, mode, uid, gid, umask, open_flags -> fd */
	MUT_TMPFILE,       /* dir, mode, uid, gid, umask, open_flags -> fd of a file without a name */
	MUT_MKNOD,         /* dir, name, mode, rdev, uid, gid, umask */
	MUT_MKDIR,         /* dir, name, mode, uid, gid, umask */
	MUT_SYMLINK,       /* dir, name, target, uid, gid */
	MUT_LINK,          /* node -> dir, name */
	MUT_UNLINK,        /* dir, name */
	MUT_RMDIR,         /* dir, name */
	MUT_RENAME,        /* dir, name -> newdir, newname, flags */
	MUT_SETATTR,       /* node, fd (optional), valid, attr */
	MUT_WRITE,         /* node, fd, offset, data, size -> bytes written */
	MUT_FALLOCATE,     /* node, fd, flags (mode), offset, length */
	MUT_COPY_RANGE,    /* node, fd, offset <- src node, src fd, src offset, length -> bytes */
	MUT_SETXATTR,      /* node, xname, data, size, flags */
	MUT_REMOVEXATTR,   /* node, xname */
};

struct mutation {
	enum mutation_type type;
	struct drfs_inode *dir, *newdir, *node, *src;
	const char *name, *newname, *target, *xname;
	mode_t mode, umask;
	dev_t rdev;
	uid_t uid;
	gid_t gid;
	int flags, open_flags;
	int fd, src_fd;
	int valid;              /* FUSE_SET_ATTR_* bits for MUT_SETATTR */
	struct stat attr;       /* new attributes for MUT_SETATTR */
	off_t offset, src_offset;
	const void *data;
	size_t size;
	bool created;           /* out: MUT_CREATE made a new file */
	bool times_deferred;    /* out: SETATTR's times wait behind pending writes; attr has them */
};

/*
 * Journals M and applies it to the backing tree (mutate.c; see there for
 * the order of the two).  Returns a non-negative result (bytes written or
 * copied; the new fd for MUT_CREATE; otherwise 0) or -errno.
 */
ssize_t fs_mutate(struct drfs_fs *fs, struct mutation *m);
/*
 * fsync: waits until every change made so far is durable in the journal.
 * fdatasync (DATASYNC, with INODE): until INODE's data records are; they
 * were made durable before they were applied, so this does not wait.
 * 0 or -errno.
 */
int fs_sync(struct drfs_fs *fs, struct drfs_inode *inode, bool datasync);
/* The journal's identity of INODE. */
struct jfid fs_fid(struct drfs_fs *fs, struct drfs_inode *inode);

/* pending.c: WRITEs acknowledged once journaled, applied once durable. */
struct pending;
int pending_start(struct drfs_fs *fs);
/* Applies everything still pending (the journal must still run) and stops. */
void pending_stop(struct drfs_fs *fs);
/* Journals the WRITE M as record R and queues its apply.  Bytes accepted or -errno. */
ssize_t pending_write(struct drfs_fs *fs, struct mutation *m, struct jrec *r);
/*
 * Journals SETATTR record R (times only, absolute) of NODE and queues
 * setting them through FD (duplicated) behind the file's pending writes,
 * which keep the mtime they find (times.c).  CTIME, when not NULL, is the
 * ctime the kernel set with them.  0 or -errno.
 */
int pending_times(struct drfs_fs *fs, struct drfs_inode *node, int fd, struct jrec *r,
		  const struct timespec *ctime);
/*
 * Waits until no write of backing inode INO is pending.  With TAKE_ERROR,
 * returns (and forgets) the error of a write that could not be applied.
 */
int pending_wait(struct drfs_fs *fs, uint64_t ino, bool take_error);
/* Waits until nothing at all is pending (the caller keeps new writes out). */
void pending_drain(struct drfs_fs *fs);
/* Whether anything is pending on backing inode INO. */
bool pending_busy(struct drfs_fs *fs, uint64_t ino);
/* The LSN of the oldest pending write (UINT64_MAX: none); ARG is the drfs_fs. */
uint64_t pending_min(void *arg);

/* times.c: the times drfs keeps (docs/design.md, "Times: who keeps them") */
/*
 * After the mount: learns the mount's id and clones the backing mount for
 * atime updates (without either, atime follows relatime or stays put, said
 * once in the log).
 */
void times_setup(struct drfs_fs *fs);
/* At INIT: whether the kernel keeps file times (writeback cache); if so reads STATE/ctimes. */
void times_start(struct drfs_fs *fs, bool kernel_times);
/* Once every apply is done: writes STATE/ctimes and frees the table. */
void times_release(struct drfs_fs *fs);
/*
 * INODE (node id INO) was opened with open(2) FLAGS as FD: applies the
 * mount's atime rule and, when atime moved, drops the kernel's attributes.
 */
void atime_opened(struct drfs_fs *fs, struct drfs_inode *inode, fuse_ino_t ino, int fd, int flags);
/* Attributes about to go to the kernel: a regular file shows the kernel's ctime. */
void times_show(struct drfs_fs *fs, struct stat *st);
/*
 * The kernel set INO's ctime to K (a SETATTR), now applied: AFTER is the
 * backing's stat.  MTIME: the mtime it set, if it set one; else
 * MTIME_MOVED says whether the backing mtime moved to an unknown time.
 */
void times_kernel_ctime(struct drfs_fs *fs, uint64_t ino, const struct timespec *k,
			const struct stat *after, const struct timespec *mtime, bool mtime_moved);
/*
 * The kernel no longer knows INO (FORGET) and nothing is pending on it: a
 * stale B is read now through FD, while the file can still be reached
 * (STATE/ctimes is written at unmount from the inode table).  Callers ask
 * times_stale() first, which spares the fstat and the fd.
 */
void times_settle(struct drfs_fs *fs, uint64_t ino, int fd);
/* Whether INO's pair has a stale B (times_settle would read it). */
bool times_stale(struct drfs_fs *fs, uint64_t ino);
/*
 * The kernel's times for INO were applied without a stat of the backing
 * file (the applier): the kernel's ctime K, or NULL when it sent none (the
 * pair is dropped); MTIME as set, an explicit time (UTIME_OMIT or NULL:
 * unchanged; the applier's times are never "now", journal_setattr made
 * them explicit).
 */
void times_kernel_applied(struct drfs_fs *fs, uint64_t ino, const struct timespec *k,
			  const struct timespec *mtime);
/*
 * INO changed in a way drfs does not account for (a name removed or added,
 * a rename, an xattr, a truncate, a chmod without the kernel's ctime): its
 * ctime is no longer kept, and the backing ctime is shown.
 */
void times_forget(struct drfs_fs *fs, uint64_t ino);
/*
 * Around applying data to regular file FD, node INO (WRITE, COPY,
 * FALLOCATE): when times_data_before() returns true, call
 * times_data_after() with the same CACHED once the data is in; it puts
 * BEFORE's mtime back and keeps the ctime the kernel shows.  CACHED: the
 * mtime came from the table, not from a stat of FD (times.c).
 */
bool times_data_before(struct drfs_fs *fs, uint64_t ino, int fd, struct stat *before, bool *cached);
void times_data_after(struct drfs_fs *fs, uint64_t ino, int fd, const struct stat *before, bool cached);

/* The FUSE operation table (ops.c). */
extern const struct fuse_lowlevel_ops drfs_ops;

/* uring.c: FUSE requests over io_uring */
/*
 * Before the mount (the kernel offers the transport in INIT only when its
 * fuse module allows it then): decides, unless cfg.fuse_uring is off, and
 * allows it in the module when it may.  0 or -errno.
 */
int furing_setup(struct drfs_fs *fs);
/*
 * After the mount: puts the session on custom I/O (whatever the transport),
 * so that the INIT reply can ask for it and for FUSE_HANDLE_KILLPRIV_V2.
 * 0 or -errno.
 */
int furing_attach(struct drfs_fs *fs);
/*
 * In the serving process, before INIT is answered: starts the ring threads
 * (they register once INIT has asked for io_uring); on failure INIT does not
 * ask.  Without the transport (fuse_uring=off) it only says so for status.
 */
void furing_start(struct drfs_fs *fs);
/* Joins the ring threads (they end when the session does) and frees it all. */
void furing_stop(struct drfs_fs *fs);
/*
 * On a ring thread, the buffer the current request's reply is sent from
 * (*SIZE bytes): a reply built in it is not copied.  NULL elsewhere.
 */
void *furing_reply_buffer(size_t *size);
/*
 * Whether the request this thread serves carries FUSE_WRITE_KILL_SUIDGID
 * (WRITE) or FUSE_OPEN_KILL_SUIDGID (OPEN, CREATE): the kernel leaves the
 * clearing of set-id bits to the daemon (FUSE_HANDLE_KILLPRIV_V2).
 */
bool furing_kills_setid(void);
/* Whether the request being served came as FUSE_TMPFILE (served as a CREATE). */
bool furing_is_tmpfile(void);

#endif /* DRFS_FS_I_H */
