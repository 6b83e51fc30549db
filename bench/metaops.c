/*
 * metaops - metadata benchmark: create N small files (100 bytes each), stat
 * them all, unlink them all, in one directory.  Prints one line per phase:
 * "<phase> <seconds> <ops per second>".
 *
 *   metaops DIR N [PHASE...]
 *
 * PHASE is create, stat, unlink (the default is these three, in this order)
 * or statfs: N statfs(2) calls on DIR.  On a FUSE mount each statfs is one
 * request the kernel never answers from its caches, so that phase measures
 * the transport's round trip (bench/requests.sh).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* One operation of PHASE on file I of DIR; 0 or -1 (errno set, NAME filled). */
static int one(const char *phase, const char *dir, long i, char *name, size_t len)
{
	static const char payload[100] = { [0 ... 99] = 'm' };
	struct statfs sfs;
	struct stat st;
	int fd;

	if (!strcmp(phase, "statfs")) {
		if (statfs(dir, &sfs) == 0)
			return 0;
		snprintf(name, len, "%s", dir);
		return -1;
	}
	snprintf(name, len, "%s/f%07ld", dir, i);
	if (!strcmp(phase, "create")) {
		fd = open(name, O_WRONLY | O_CREAT | O_EXCL, 0644);
		if (fd < 0)
			return -1;
		if (write(fd, payload, sizeof(payload)) != sizeof(payload)) {
			close(fd);
			return -1;
		}
		return close(fd);
	}
	if (!strcmp(phase, "stat"))
		return stat(name, &st) < 0 || st.st_size != sizeof(payload) ? -1 : 0;
	return unlink(name);   /* main() took only the four phases */
}

int main(int argc, char **argv)
{
	static char *all[] = { "create", "stat", "unlink" };
	char **phases = all, name[4096];
	int nphases = 3;
	long n;

	if (argc < 3) {
		fprintf(stderr, "usage: metaops DIR N [create|stat|unlink|statfs ...]\n");
		return 2;
	}
	n = atol(argv[2]);
	if (argc > 3) {
		phases = argv + 3;
		nphases = argc - 3;
	}
	for (int p = 0; p < nphases; p++) {
		const char *ph = phases[p];
		double t;

		if (strcmp(ph, "create") && strcmp(ph, "stat") && strcmp(ph, "unlink") &&
		    strcmp(ph, "statfs")) {
			fprintf(stderr, "metaops: no phase %s (create, stat, unlink, statfs)\n", ph);
			return 2;
		}
		t = now();
		for (long i = 0; i < n; i++)
			if (one(ph, argv[1], i, name, sizeof(name)) < 0) {
				perror(name);
				return 1;
			}
		t = now() - t;
		printf("%s %.3f %.0f\n", ph, t, (double)n / t);
		fflush(stdout);
	}
	return 0;
}
