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
#include "../replicate/replicate.h"
#include "../store/store.h"
#include "tools_i.h"

static const char status_usage[] =
	"usage: drfs status MOUNTPOINT|BACKING [--json] [--prometheus FILE]\n"
	"\n"
	"Show the backing directory, its state directory, whether it is mounted, the\n"
	"journal, the snapshots (the latest, its age, journal bytes since), what a\n"
	"point-in-time restore reaches, and the replica: RPO in seconds and bytes,\n"
	"queue, requests, retries, the last error and the last success.  A replica\n"
	"failing for a minute or more is also reported on standard error.\n"
	"\n"
	"options:\n"
	"  --json             machine-readable output\n"
	"  --prometheus FILE  also write the figures to FILE in the node_exporter\n"
	"                     textfile format (written whole, then renamed)\n"
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

/* The node_exporter textfile format: FILE written whole, then renamed into place. */
static int write_prometheus(const char *file, const struct backing *b,
			    const struct journal_stats *js, size_t nsnaps, double snap_age,
			    const struct replica_status *rs, bool mounted)
{
	char tmp[4200];
	snprintf(tmp, sizeof(tmp), "%s.tmp", file);
	FILE *f = fopen(tmp, "w");
	if (!f)
		return -1;
	char lbl[1200];
	snprintf(lbl, sizeof(lbl), "backing=\"%s\"", b->path);
#define G(name, help, fmt, v)                                                                 \
	fprintf(f, "# HELP drfs_" name " " help "\n# TYPE drfs_" name " gauge\ndrfs_" name "{%s} " fmt \
		   "\n", lbl, v)
	G("mounted", "1 when the backing is mounted", "%d", mounted ? 1 : 0);
	if (js) {
		G("journal_head_lsn", "journal head LSN", "%llu", (unsigned long long)js->head_lsn);
		G("journal_durable_lsn", "journal durable LSN", "%llu",
		  (unsigned long long)js->durable_lsn);
	}
	G("snapshots", "snapshots in the local repository", "%zu", nsnaps);
	if (snap_age >= 0)
		G("snapshot_latest_age_seconds", "age of the latest snapshot", "%.0f", snap_age);
	if (rs) {
		G("replica_up", "1 when the replica is not failing", "%d", rs->failing_seconds ? 0 : 1);
		G("replica_lag_seconds", "age of the oldest record not on the replica (RPO)", "%.3f",
		  rs->lag_seconds);
		G("replica_lag_bytes", "durable journal bytes not on the replica", "%llu",
		  (unsigned long long)rs->lag_bytes);
		G("replica_failing_seconds", "how long the replica has been failing", "%.0f",
		  rs->failing_seconds);
		G("replica_queue_objects", "repository objects waiting to be shipped", "%llu",
		  (unsigned long long)rs->queue_objects);
		G("replica_queue_bytes", "pack bytes waiting to be shipped", "%llu",
		  (unsigned long long)rs->queue_bytes);
		G("replica_retries", "failed attempts since the mount", "%llu",
		  (unsigned long long)rs->retries);
		G("replica_requests", "requests sent to the replica since the mount", "%llu",
		  (unsigned long long)rs->requests);
		G("replica_put_bytes", "bytes shipped since the mount", "%llu",
		  (unsigned long long)rs->put_bytes);
	}
#undef G
	if (fclose(f))
		return -1;
	return rename(tmp, file);
}

int cmd_status(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "prometheus", required_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct mount_record rec;
	struct backing b;
	struct statvfs sv;
	bool json = false, mounted;
	const char *target, *prom = NULL;
	int c, ret;

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 'p':
			prom = optarg;
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
	/* how requests reach the daemon, as it wrote it */
	char *transport = NULL;
	if (mounted) {
		char tpath[64];
		transport_path(rec.mountpoint, tpath, sizeof(tpath));
		if (read_file_small(tpath, &transport, NULL) == 0)
			transport[strcspn(transport, "\n")] = '\0';
	}
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
		store_id_hex(&last->id, last_hex);
		utc_time(last->time_ns / 1000000000, last_when, sizeof(last_when));
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
	if (pitr)
		utc_time(pitr->time_ns / 1000000000, pitr_when, sizeof(pitr_when));

	/* the replica, as the daemon last wrote it */
	struct replica_status rs;
	bool have_rs = replica_status_read(b.state_dir, &rs) == 0;
	double rs_age = 0;
	if (have_rs) {
		struct timespec now;
		clock_gettime(CLOCK_REALTIME, &now);
		rs_age = now.tv_sec + now.tv_nsec / 1e9 - rs.updated;
		/* a daemon that stopped writing it (not mounted, hung) makes it old news */
		if (mounted && rs_age > 5) {
			snprintf(rs.last_error, sizeof(rs.last_error),
				 "the replicator has not reported for %.0f s (not running for this mount?); see %s/drfs.log",
				 rs_age, b.state_dir);
			if (rs.failing_seconds < rs_age)
				rs.failing_seconds = rs_age;
		}
		if (rs.failing_seconds >= 60)
			fprintf(stderr, "drfs: WARNING: replication to %s has been failing for %.0f s: %s\n",
				rs.url, rs.failing_seconds, rs.last_error);
	}
	double gib = have_rs ? rs.put_bytes / 1073741824.0 : 0;
	if (prom && write_prometheus(prom, &b, jret ? NULL : &js, nsnaps, last ? age : -1,
				     have_rs ? &rs : NULL, mounted)) {
		say_error("cannot write %s: %s", prom, strerror(errno));
		ret = EXIT_FAIL;
	}

	if (json) {
		printf("{\"backing\":");
		json_str(b.path);
		printf(",\"state_dir\":");
		json_str(b.state_dir);
		printf(",\"format\":%d,\"mounted\":%s", b.format, mounted ? "true" : "false");
		if (mounted && transport) {
			printf(",\"requests\":");
			json_str(transport);
		}
		if (mounted) {
			printf(",\"mountpoint\":");
			json_str(rec.mountpoint);
			printf(",\"pid\":%ld,\"started\":", (long)rec.pid);
			json_str(rec.started);
		}
		if (!jret) {
			printf(",\"journal\":{\"head_lsn\":%llu,\"durable_lsn\":%llu,"
			       "\"checkpoint_lsn\":%llu,\"segments\":%llu,\"segment_bytes\":%llu,"
			       "\"error\":%s,\"max_bytes\":%llu,\"min_free\":%llu,"
			       "\"yielded_segments\":%llu,\"yielded_at\":%llu,\"yielded_holds\":",
			       (unsigned long long)js.head_lsn, (unsigned long long)js.durable_lsn,
			       (unsigned long long)js.checkpoint_lsn, (unsigned long long)js.segments,
			       (unsigned long long)js.segment_bytes, js.error ? "true" : "false",
			       (unsigned long long)js.max_bytes, (unsigned long long)js.min_free,
			       (unsigned long long)js.yielded, (unsigned long long)js.yielded_at);
			json_str(js.yielded_holds);
			printf(",\"yield_reason\":");
			json_str(js.yield_reason);
			printf("}");
		}
		if (last)
			printf(",\"snapshots\":{\"count\":%zu,\"latest\":\"%s\",\"latest_time\":\"%s\","
			       "\"latest_age_seconds\":%.0f,\"latest_lsn\":%llu,\"journal_bytes_since\":%llu}",
			       nsnaps, last_hex, last_when, age, (unsigned long long)last->lsn,
			       (unsigned long long)(!jret && js.head_lsn > last->lsn ? js.head_lsn - last->lsn : 0));
		else if (sret && sret != -ENOENT)
			printf(",\"snapshots\":{\"error\":\"%s\"}", strerror(-sret));
		if (pitr)
			printf(",\"point_in_time_from\":\"%s\"", pitr_when);
		if (have_rs) {
			printf(",\"replica\":{\"url\":");
			json_str(rs.url);
			printf(",\"running\":%s,\"ok\":%s,\"lag_seconds\":%.3f,\"lag_bytes\":%llu,"
			       "\"durable_at\":%.3f,\"remote_lsn\":%llu,\"durable_lsn\":%llu,\"queue_objects\":%llu,"
			       "\"queue_bytes\":%llu,\"pieces\":%llu,\"objects\":%llu,\"retries\":%llu,"
			       "\"requests\":%llu,\"put_bytes\":%llu,\"requests_per_gib\":%.1f,"
			       "\"failing_seconds\":%.0f,\"piece_lag_count\":%llu,\"piece_lag_p50\":%.3f,"
			       "\"piece_lag_p99\":%.3f,\"piece_lag_max\":%.3f,\"last_success\":",
			       mounted ? "true" : "false", rs.failing_seconds ? "false" : "true",
			       rs.lag_seconds, (unsigned long long)rs.lag_bytes, rs.durable_at,
			       (unsigned long long)rs.remote_lsn, (unsigned long long)rs.durable_lsn,
			       (unsigned long long)rs.queue_objects, (unsigned long long)rs.queue_bytes,
			       (unsigned long long)rs.pieces, (unsigned long long)rs.objects,
			       (unsigned long long)rs.retries, (unsigned long long)rs.requests,
			       (unsigned long long)rs.put_bytes, gib > 0 ? rs.requests / gib : 0.0,
			       rs.failing_seconds, (unsigned long long)rs.piece_lag_count,
			       rs.piece_lag_p50, rs.piece_lag_p99, rs.piece_lag_max);
			json_str(rs.last_success);
			printf(",\"last_error\":");
			json_str(rs.last_error);
			printf(",\"last_error_code\":");
			json_str(rs.last_error_code);
			printf(",\"head_snapshot\":");
			json_str(rs.head_snapshot);
			printf("}");
		}
		printf(",\"disk_bytes\":%llu,\"disk_free_bytes\":%llu}\n", total, avail);
	} else {
		printf("backing:     %s\n", b.path);
		printf("state:       %s\n", b.state_dir);
		printf("format:      %d\n", b.format);
		if (mounted) {
			printf("mounted:     on %s by pid %ld since %s\n", rec.mountpoint,
			       (long)rec.pid, rec.started ? rec.started : "?");
			if (transport)
				printf("requests:    over %s\n", transport);
		}
		else
			printf("mounted:     no\n");
		printf("disk:        %.1f GiB free of %.1f GiB\n", avail / 1073741824.0,
		       total / 1073741824.0);
		if (jret == -ENOENT)
			printf("journal:     none yet (made at the first mount)\n");
		else if (jret)
			printf("journal:     unreadable: %s\n", strerror(-jret));
		else {
			char cap[64] = "";
			if (js.max_bytes)
				snprintf(cap, sizeof(cap), " (journal_max %.0f MiB)",
					 js.max_bytes / 1048576.0);
			printf("journal:     head LSN %llu, durable %llu (%llu bytes behind), checkpoint %llu; "
			       "%llu segments, %.1f MiB%s%s\n",
			       (unsigned long long)js.head_lsn, (unsigned long long)js.durable_lsn,
			       (unsigned long long)(js.head_lsn - js.durable_lsn),
			       (unsigned long long)js.checkpoint_lsn, (unsigned long long)js.segments,
			       js.segment_bytes / 1048576.0, cap, js.error ? "; FAILED, see the log" : "");
		}
		if (!jret && js.yielded) {
			char when[32];
			utc_time((int64_t)js.yielded_at, when, sizeof(when));
			printf("             WARNING: %llu segments the %s hold kept were recycled, the last at %s: %s; raise journal_max or free space\n",
			       (unsigned long long)js.yielded, js.yielded_holds, when, js.yield_reason);
		}
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
		if (have_rs) {
			if (rs.failing_seconds)
				printf("replica:     %s  FAILING for %.0f s: %s\n", rs.url, rs.failing_seconds,
				       rs.last_error);
			else
				printf("replica:     %s  ok%s\n", rs.url,
				       mounted ? "" : " (not mounted: figures from the last mount)");
			printf("rpo:         %.1f s, %llu bytes behind the durable journal (replica at LSN %llu); last success %s\n",
			       rs.lag_seconds, (unsigned long long)rs.lag_bytes,
			       (unsigned long long)rs.remote_lsn,
			       rs.last_success[0] ? rs.last_success : "never");
			if (rs.piece_lag_count)
				printf("rpo history: when each of the last %llu pieces landed its oldest record was p50 %.2f s, p99 %.2f s, max %.2f s old\n",
				       (unsigned long long)rs.piece_lag_count, rs.piece_lag_p50,
				       rs.piece_lag_p99, rs.piece_lag_max);
			printf("shipping:    %llu objects (%.1f MiB) waiting; %llu journal pieces and %llu objects shipped, %.1f MiB; %llu requests (%.0f per GiB), %llu retries\n",
			       (unsigned long long)rs.queue_objects, rs.queue_bytes / 1048576.0,
			       (unsigned long long)rs.pieces, (unsigned long long)rs.objects,
			       rs.put_bytes / 1048576.0, (unsigned long long)rs.requests,
			       gib > 0 ? rs.requests / gib : 0.0, (unsigned long long)rs.retries);
		}
	}
	free(snaps);
	free(rdir);
	free(transport);
	mount_record_release(&rec);
	backing_release(&b);
	return ret;
}
