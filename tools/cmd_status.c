/*
 * cmd_status.c - drfs status: what drfs knows about a backing directory and
 * its mount.  Later modules add their lines (journal, snapshots, replica).
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>

#include "../common/common.h"
#include "../journal/journal.h"
#include "../store/store.h"
#include "tools_i.h"

static const char status_usage[] =
	"usage: drfs status MOUNTPOINT|BACKING [--json]\n"
	"\n"
	"Show the backing directory, its state directory, whether it is mounted, the\n"
	"journal and the snapshots (the latest, its age, journal bytes since).\n"
	"\n"
	"options:\n"
	"  --json       machine-readable output\n"
	"  -h, --help   show this help\n";

/* Prints S as a JSON string. */
static void json_str(const char *s)
{
	putchar('"');
	for (; s && *s; s++) {
		if (*s == '"' || *s == '\\')
			printf("\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			printf("\\u%04x", *s);
		else
			putchar(*s);
	}
	putchar('"');
}

int cmd_status(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct mount_record rec;
	struct backing b;
	struct statvfs sv;
	bool json = false, mounted;
	const char *target;
	int c, ret;

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 'h':
			fputs(status_usage, stdout);
			return EXIT_OK;
		default:
			fputs(status_usage, stderr);
			return EXIT_USAGE;
		}
	}
	if (argc - optind != 1) {
		say_error("status takes one MOUNTPOINT or BACKING; see 'drfs status --help'");
		return EXIT_USAGE;
	}
	target = argv[optind];
	/* A mount point leads to its backing directory through the mount record. */
	if (mount_record_for_mountpoint(target, &rec) == 0 && rec.backing) {
		ret = backing_load(rec.backing, &b);
		mount_record_release(&rec);
	} else {
		ret = backing_load(target, &b);
	}
	if (ret)
		return ret;
	mounted = mount_record_read(b.state_dir, &rec) == 0 && pid_alive(rec.pid);
	if (statvfs(b.path, &sv) < 0)
		memset(&sv, 0, sizeof(sv));
	unsigned long long total = (unsigned long long)sv.f_blocks * sv.f_frsize;
	unsigned long long avail = (unsigned long long)sv.f_bavail * sv.f_frsize;
	struct journal_stats js;
	int jret = journal_status(b.state_dir, mounted ? rec.mountpoint : NULL, &js);

	/* the snapshots: how many, the latest, and how far the journal is past it */
	struct snap_info *snaps = NULL, *last = NULL;
	size_t nsnaps = 0;
	int sret = -ENOENT;
	char *rdir = backing_repo_dir(&b);
	struct repo *repo;
	if (rdir && repo_exists(rdir)) {
		log_capture_errors(true);
		sret = repo_open(rdir, false, &repo);
		if (!sret) {
			sret = snap_list(repo, &snaps, &nsnaps);
			repo_close(repo);
		}
		if (!sret && nsnaps)
			last = &snaps[nsnaps - 1];
	}
	char last_hex[65] = "", last_when[32] = "";
	double age = 0;
	if (last) {
		struct timespec now;
		time_t t = (time_t)(last->time_ns / 1000000000);
		struct tm tm;
		store_id_hex(&last->id, last_hex);
		gmtime_r(&t, &tm);
		strftime(last_when, sizeof(last_when), "%Y-%m-%dT%H:%M:%SZ", &tm);
		clock_gettime(CLOCK_REALTIME, &now);
		age = (now.tv_sec * 1e9 + now.tv_nsec - (double)last->time_ns) / 1e9;
	}

	/* point-in-time restore reaches back to the oldest snapshot the journal still follows */
	const struct snap_info *pitr = NULL;
	char pitr_when[32] = "";
	char *jdir = path_join(b.state_dir, "journal");
	if (jdir && !jret && journal_exists(jdir)) {
		char why[256];
		for (size_t i = 0; i < nsnaps && !pitr; i++)
			if (snap_replay_check(jdir, snaps[i].lsn, why, sizeof(why)) == 0)
				pitr = &snaps[i];
	}
	free(jdir);
	if (pitr) {
		time_t t = (time_t)(pitr->time_ns / 1000000000);
		struct tm tm;
		gmtime_r(&t, &tm);
		strftime(pitr_when, sizeof(pitr_when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	}

	if (json) {
		printf("{\"backing\":");
		json_str(b.path);
		printf(",\"state_dir\":");
		json_str(b.state_dir);
		printf(",\"format\":%d,\"mounted\":%s", b.format, mounted ? "true" : "false");
		if (mounted) {
			printf(",\"mountpoint\":");
			json_str(rec.mountpoint);
			printf(",\"pid\":%ld,\"started\":", (long)rec.pid);
			json_str(rec.started);
		}
		if (!jret)
			printf(",\"journal\":{\"head_lsn\":%llu,\"durable_lsn\":%llu,"
			       "\"checkpoint_lsn\":%llu,\"segments\":%llu,\"segment_bytes\":%llu,"
			       "\"error\":%s}",
			       (unsigned long long)js.head_lsn, (unsigned long long)js.durable_lsn,
			       (unsigned long long)js.checkpoint_lsn, (unsigned long long)js.segments,
			       (unsigned long long)js.segment_bytes, js.error ? "true" : "false");
		if (last)
			printf(",\"snapshots\":{\"count\":%zu,\"latest\":\"%s\",\"latest_time\":\"%s\","
			       "\"latest_age_seconds\":%.0f,\"latest_lsn\":%llu,\"journal_bytes_since\":%llu}",
			       nsnaps, last_hex, last_when, age, (unsigned long long)last->lsn,
			       (unsigned long long)(!jret && js.head_lsn > last->lsn ? js.head_lsn - last->lsn : 0));
		else if (sret && sret != -ENOENT)
			printf(",\"snapshots\":{\"error\":\"%s\"}", strerror(-sret));
		if (pitr)
			printf(",\"point_in_time_from\":\"%s\"", pitr_when);
		printf(",\"disk_bytes\":%llu,\"disk_free_bytes\":%llu}\n", total, avail);
	} else {
		printf("backing:     %s\n", b.path);
		printf("state:       %s\n", b.state_dir);
		printf("format:      %d\n", b.format);
		if (mounted)
			printf("mounted:     on %s by pid %ld since %s\n", rec.mountpoint,
			       (long)rec.pid, rec.started ? rec.started : "?");
		else
			printf("mounted:     no\n");
		printf("disk:        %.1f GiB free of %.1f GiB\n", avail / 1073741824.0,
		       total / 1073741824.0);
		if (jret == -ENOENT)
			printf("journal:     none yet (made at the first mount)\n");
		else if (jret)
			printf("journal:     unreadable: %s\n", strerror(-jret));
		else
			printf("journal:     head LSN %llu, durable %llu (%llu bytes behind), checkpoint %llu; "
			       "%llu segments, %.1f MiB%s\n",
			       (unsigned long long)js.head_lsn, (unsigned long long)js.durable_lsn,
			       (unsigned long long)(js.head_lsn - js.durable_lsn),
			       (unsigned long long)js.checkpoint_lsn, (unsigned long long)js.segments,
			       js.segment_bytes / 1048576.0, js.error ? "; FAILED, see the log" : "");
		if (last)
			printf("snapshots:   %zu; latest %.16s at %s (%.0f s ago), LSN %llu; %llu journal bytes since\n",
			       nsnaps, last_hex, last_when, age, (unsigned long long)last->lsn,
			       (unsigned long long)(!jret && js.head_lsn > last->lsn ? js.head_lsn - last->lsn : 0));
		else if (sret == -ENOENT || !nsnaps)
			printf("snapshots:   none yet (one is taken at init, at unmount and by 'drfs snapshot')\n");
		else
			printf("snapshots:   repository unreadable: %s\n", log_last_error());
		if (pitr) {
			char hex[65];
			store_id_hex(&pitr->id, hex);
			printf("restorable:  any moment from %s (snapshot %.16s and the journal after it) on\n",
			       pitr_when, hex);
		}
		else if (last)
			printf("restorable:  the snapshots only (the journal after them is not kept)\n");
	}
	free(snaps);
	free(rdir);
	mount_record_release(&rec);
	backing_release(&b);
	return EXIT_OK;
}
