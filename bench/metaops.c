/*
 * metaops - metadata benchmark: create N small files (100 bytes each), stat
 * them all, unlink them all, in one directory.  Prints one line per phase:
 * "<phase> <seconds> <ops per second>".
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	char name[4096], payload[100];
	long n;
	double t;

	if (argc != 3) {
		fprintf(stderr, "usage: metaops DIR N\n");
		return 2;
	}
	n = atol(argv[2]);
	memset(payload, 'm', sizeof(payload));
	t = now();
	for (long i = 0; i < n; i++) {
		snprintf(name, sizeof(name), "%s/f%07ld", argv[1], i);
		int fd = open(name, O_WRONLY | O_CREAT | O_EXCL, 0644);
		if (fd < 0 || write(fd, payload, sizeof(payload)) != sizeof(payload) || close(fd)) {
			perror(name);
			return 1;
		}
	}
	t = now() - t;
	printf("create %.3f %.0f\n", t, (double)n / t);
	t = now();
	for (long i = 0; i < n; i++) {
		struct stat st;
		snprintf(name, sizeof(name), "%s/f%07ld", argv[1], i);
		if (stat(name, &st) < 0 || st.st_size != sizeof(payload)) {
			perror(name);
			return 1;
		}
	}
	t = now() - t;
	printf("stat %.3f %.0f\n", t, (double)n / t);
	t = now();
	for (long i = 0; i < n; i++) {
		snprintf(name, sizeof(name), "%s/f%07ld", argv[1], i);
		if (unlink(name) < 0) {
			perror(name);
			return 1;
		}
	}
	t = now() - t;
	printf("unlink %.3f %.0f\n", t, (double)n / t);
	return 0;
}
