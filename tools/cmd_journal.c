/*
 * cmd_journal.c - drfs journal dump: the journal of a backing directory,
 * one line per record; and the journal lines of drfs status.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/common.h"
#include "../journal/journal.h"
#include "tools_i.h"

static const char journal_usage[] =
	"usage: drfs journal dump BACKING [--from LSN] [--to LSN]\n"
	"\n"
	"Print the journal of BACKING, one line per record: LSN, time (UTC), type,\n"
	"the objects it names (fid = inode:generation on the machine that wrote it;\n"
	"0:0 is the root) and sizes.  Reading stops at the end of the valid log; when\n"
	"that end is not clean, the last line says where and why.  Works while mounted.\n"
	"\n"
	"options:\n"
	"  --from LSN   start at the first record at or after LSN (default: the oldest kept)\n"
	"  --to LSN     stop before LSN\n"
	"  -h, --help   show this help\n";

static void print_time(uint64_t ns)
{
	time_t s = (time_t)(ns / 1000000000ull);
	struct tm tm;
	char buf[32];

	gmtime_r(&s, &tm);
	strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
	printf("%s.%06" PRIu64 "Z", buf, (uint64_t)((ns % 1000000000ull) / 1000));
}

static void print_name(const char *key, const char *s, uint16_t n)
{
	printf(" %s=\"", key);
	for (uint16_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20 || c == 0x7f)
			printf("\\x%02x", c);
		else
			putchar(c);
	}
	putchar('"');
}

static void print_fid(const char *key, struct jfid f)
{
	printf(" %s=%" PRIu64 ":%" PRIu32, key, f.ino, f.gen);
}

static void print_record(const struct jrec *r)
{
	printf("%016" PRIx64 " ", r->lsn);
	print_time(r->time_ns);
	printf(" %-11s", jrec_type_name(r->type));
	switch (r->type) {
	case JR_WRITE:
		print_fid("fid", r->fid);
		printf(" off=%" PRIu64 " len=%zu", r->offset, r->data_len);
		break;
	case JR_COPY:
		print_fid("fid", r->fid);
		printf(" off=%" PRIu64, r->offset);
		print_fid("from", r->fid2);
		printf(" from_off=%" PRIu64 " len=%zu", r->offset2, r->data_len);
		break;
	case JR_SETATTR:
		print_fid("fid", r->fid);
		if (r->mask & JA_MODE)
			printf(" mode=%o", r->mode);
		if (r->mask & JA_UID)
			printf(" uid=%" PRIu32, r->uid);
		if (r->mask & JA_GID)
			printf(" gid=%" PRIu32, r->gid);
		if (r->mask & JA_SIZE)
			printf(" size=%" PRIu64, r->size);
		if (r->mask & JA_ATIME)
			printf(" atime=%lld.%09ld", (long long)r->atime.tv_sec, r->atime.tv_nsec);
		if (r->mask & JA_MTIME)
			printf(" mtime=%lld.%09ld", (long long)r->mtime.tv_sec, r->mtime.tv_nsec);
		break;
	case JR_CREATE:
		print_fid("parent", r->fid2);
		print_name("name", r->name, r->name_len);
		print_fid("fid", r->fid);
		printf(" mode=%o uid=%" PRIu32 " gid=%" PRIu32, r->mode, r->uid, r->gid);
		if (r->rdev)
			printf(" rdev=%" PRIx64, r->rdev);
		if (r->name2_len)
			print_name("target", r->name2, r->name2_len);
		break;
	case JR_LINK:
		print_fid("fid", r->fid);
		print_fid("parent", r->fid2);
		print_name("name", r->name, r->name_len);
		break;
	case JR_UNLINK:
		print_fid("parent", r->fid2);
		print_name("name", r->name, r->name_len);
		print_fid("fid", r->fid);
		if (r->flags & JR_UNLINK_DIR)
			printf(" dir");
		break;
	case JR_RENAME:
		print_fid("from", r->fid);
		print_name("name", r->name, r->name_len);
		print_fid("to", r->fid2);
		print_name("newname", r->name2, r->name2_len);
		print_fid("fid", r->fid3);
		print_fid("replaced", r->fid4);
		if (r->xflags)
			printf(" flags=%" PRIu32, r->xflags);
		break;
	case JR_FALLOCATE:
		print_fid("fid", r->fid);
		printf(" mode=%" PRIu32 " off=%" PRIu64 " len=%" PRIu64, r->xflags, r->offset, r->size);
		break;
	case JR_SETXATTR:
	case JR_REMOVEXATTR:
		print_fid("fid", r->fid);
		print_name("name", r->name, r->name_len);
		if (r->type == JR_SETXATTR)
			printf(" len=%zu", r->data_len);
		break;
	case JR_ABORT:
		printf(" lsn=%016" PRIx64, r->lsn2);
		break;
	case JR_RECOVERED:
		printf(" replayed=%016" PRIx64 "..%016" PRIx64 "%s", r->lsn2, r->offset,
		       (r->xflags & JR_RECOVERED_REBOOT) ? " reboot" : "");
		break;
	default:
		break;
	}
	putchar('\n');
}

static int parse_lsn(const char *s, uint64_t *out)
{
	char *end;

	errno = 0;
	*out = strtoull(s, &end, 0);
	return errno || end == s || *end ? -1 : 0;
}

static int journal_dump(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "from", required_argument, NULL, 'f' },
		{ "to", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	uint64_t from = 0, to = UINT64_MAX;
	struct jreader *rd;
	struct backing b;
	struct jrec r;
	char *dir;
	int c, ret;
	uint64_t n = 0;

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'f':
		case 't':
			if (parse_lsn(optarg, c == 'f' ? &from : &to)) {
				say_error("--%s needs an LSN (decimal, or hex with 0x), not '%s'",
					  c == 'f' ? "from" : "to", optarg);
				return EXIT_USAGE;
			}
			break;
		case 'h':
			fputs(journal_usage, stdout);
			return EXIT_OK;
		default:
			fputs(journal_usage, stderr);
			return EXIT_USAGE;
		}
	}
	if (argc - optind != 1) {
		say_error("journal dump takes one BACKING; see 'drfs journal --help'");
		return EXIT_USAGE;
	}
	ret = backing_load(argv[optind], &b);
	if (ret)
		return ret;
	dir = path_join(b.state_dir, "journal");
	if (!dir || !journal_exists(dir)) {
		say_error("%s has no journal yet; it is made at the first mount", b.path);
		free(dir);
		backing_release(&b);
		return EXIT_FAIL;
	}
	ret = jreader_open(dir, from, &rd);
	if (ret) {
		say_error("cannot read the journal in %s: %s", dir, strerror(-ret));
		free(dir);
		backing_release(&b);
		return EXIT_FAIL;
	}
	while ((ret = jreader_next(rd, &r)) == 1 && r.lsn < to) {
		print_record(&r);
		n++;
	}
	if (ret < 0) {
		say_error("reading the journal in %s: %s", dir, strerror(-ret));
		ret = EXIT_FAIL;
	} else {
		if (jreader_stop(rd) && r.lsn < to)
			printf("# the valid log ends at LSN %016" PRIx64 ": %s\n", jreader_lsn(rd),
			       jreader_stop(rd));
		printf("# %" PRIu64 " records\n", n);
		ret = EXIT_OK;
	}
	jreader_close(rd);
	free(dir);
	backing_release(&b);
	return ret;
}

int cmd_journal(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "dump"))
		return journal_dump(argc - 1, argv + 1);
	if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		fputs(journal_usage, stdout);
		return EXIT_OK;
	}
	say_error("journal needs a subcommand: dump; see 'drfs journal --help'");
	return EXIT_USAGE;
}

int journal_status(const char *state_dir, const char *mountpoint, struct journal_stats *st)
{
	char *dir = path_join(state_dir, "journal"), path[64];
	struct jsuper sb;
	struct kv *kv;
	int ret;

	memset(st, 0, sizeof(*st));
	if (!dir)
		return -ENOMEM;
	if (!journal_exists(dir)) {
		free(dir);
		return -ENOENT;
	}
	if (mountpoint) {
		journal_stats_path(mountpoint, path, sizeof(path));
		if (kv_load(path, &kv) == 0) {
			const char *keys[] = { "head", "written", "durable", "checkpoint",
					       "segments", "segment_bytes", "flushes", "records",
					       "yielded", "yielded_at", "max_bytes", "min_free" };
			uint64_t *vals[] = { &st->head_lsn, &st->written_lsn, &st->durable_lsn,
					     &st->checkpoint_lsn, &st->segments, &st->segment_bytes,
					     &st->flushes, &st->records, &st->yielded,
					     &st->yielded_at, &st->max_bytes, &st->min_free };
			for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
				const char *v = kv_get(kv, keys[i]);
				*vals[i] = v ? strtoull(v, NULL, 10) : 0;
			}
			const char *e = kv_get(kv, "error");
			st->error = e && strcmp(e, "none") ? -EIO : 0;
			snprintf(st->yielded_holds, sizeof(st->yielded_holds), "%s",
				 kv_get(kv, "yielded_holds") ?: "");
			snprintf(st->yield_reason, sizeof(st->yield_reason), "%s",
				 kv_get(kv, "yield_reason") ?: "");
			kv_free(kv);
			free(dir);
			return 0;
		}
	}
	/* not mounted (or no counters yet): what is on disk */
	ret = jsuper_read(dir, &sb);
	if (!ret) {
		struct jreader *rd;
		struct jrec r;
		st->checkpoint_lsn = sb.checkpoint_lsn;
		ret = jreader_open(dir, sb.checkpoint_lsn, &rd);
		if (!ret) {
			while (jreader_next(rd, &r) == 1)
				;
			st->head_lsn = st->written_lsn = st->durable_lsn = jreader_lsn(rd);
			jreader_close(rd);
		}
		DIR *d = opendir(dir);
		if (d) {
			struct dirent *de;
			while ((de = readdir(d)))
				if (strlen(de->d_name) == 29 && !strcmp(de->d_name + 25, ".seg"))
					st->segments++;
			closedir(d);
		}
		st->segment_bytes = st->segments * sb.segment_size;
	}
	free(dir);
	return ret;
}
