/*
 * journal_i.h - private to journal/: segment files and the superblock.
 */
#ifndef DRFS_JOURNAL_I_H
#define DRFS_JOURNAL_I_H

#include "journal.h"

#define JSEG_MAGIC "DRFSJRNL"
#define JSUP_MAGIC "DRFSJSUP"
#define JFORMAT 1u
#define JSUP_SLOT 4096u
#define JTIMELINE 1u
#define JSEG_DEFAULT (64ull << 20)
#define JSEG_MIN (4ull << 20)
#define JSEG_MAX (1ull << 30)

struct jseg {
	uint64_t first_lsn;
	uint32_t timeline;
	char name[40];
};

/* "TTTTTTTT-LLLLLLLLLLLLLLLL.seg" into NAME (at least 40 bytes). */
void jseg_name(char *name, uint32_t timeline, uint64_t first_lsn);
/*
 * The segments of directory DIRFD, sorted by first LSN, in a malloc'd
 * array (*OUT, *N).  0 or -errno.
 */
int jseg_list(int dirfd, struct jseg **out, size_t *n);
/* Builds the 4096-byte header of a segment into BUF. */
void jseg_header(void *buf, uint32_t timeline, uint64_t first_lsn, uint64_t size);
/*
 * Checks the header at BUF of segment NAME; fills *FIRST and *SIZE.
 * Returns NULL or why it is not valid.
 */
const char *jseg_check(const void *buf, const char *name, uint64_t *first, uint64_t *size);

/*
 * Encodes the header and the payload before the data of a WRITE or COPY
 * record into BUF (*HEAD_LEN bytes); the payload CRC covers R->data too.
 * Returns the full record length (data and padding follow the head), 0 for
 * other types.
 */
size_t jrec_encode_head(const struct jrec *r, void *buf, size_t *head_len);
/* Puts LSN into the encoded record header at BUF and refreshes its CRC. */
void jrec_set_lsn(void *buf, uint64_t lsn);

/* Creates segment NAME in DIRFD, SIZE bytes written in full, header first.  0 or -errno. */
int jseg_create(int dirfd, const char *name, uint32_t timeline, uint64_t first, uint64_t size);

/* Whether reading ended right after a SEAL whose next segment was never made. */
bool jreader_sealed(struct jreader *rd);

/*
 * Whether the log of DIR holds a valid record after position POS (in the
 * segment holding POS, or any later segment): then an invalid record at
 * POS is damage, not a torn tail.  1 (with *FOUND), 0, or -errno.
 */
int jlog_valid_after(const char *dir, uint64_t pos, uint64_t *found);

/* apply.c: fids to fds through the replay's translations */
int replay_open_fid(int root_fd, struct replay_map *m, struct jfid fid, int flags);
struct jfid replay_map_get(struct replay_map *m, struct jfid f);
int replay_map_put(struct replay_map *m, struct jfid from, struct jfid to);

/* reconcile.c: the namespace of a full replay, brought to the log's end state */
struct ns_log;
struct ns_log *ns_log_new(void);
void ns_log_free(struct ns_log *l);
/* Takes namespace record R into account (others are ignored).  0 or -errno. */
int ns_log_add(struct ns_log *l, const struct jrec *r);
/* Brings the names L touched to their end state under ROOT_FD.  0 or -errno. */
int ns_reconcile(struct ns_log *l, int root_fd, struct replay_map *m, uint64_t *applied);

/* Superblock slot write: slot SB->seq % 2 of DIRFD/super, made durable.  0 or -errno. */
int jsuper_write(int dirfd, const struct jsuper *sb);
void boot_id(unsigned char id[16]);

#endif /* DRFS_JOURNAL_I_H */
