/*
 * log.c - leveled logging to stderr.  A mounted daemon redirects stderr to
 * its log file, so one call serves the terminal and the log alike.
 */
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

static enum log_level current_level = LOG_LVL_INFO;
static bool with_timestamps;

void log_set_level(enum log_level level)
{
	current_level = level;
}

void log_set_timestamps(bool on)
{
	with_timestamps = on;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	static const char *const names[] = { "error", "warning", "info", "debug" };
	char stamp[40] = "";
	va_list ap;

	if (level > current_level)
		return;
	if (with_timestamps) {
		struct timespec ts;
		struct tm tm;

		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ ", &tm);
	}
	/* One fprintf per line keeps lines from different threads whole. */
	char line[1024];
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	fprintf(stderr, "%sdrfs: %s%s%s\n", stamp,
		level == LOG_LVL_INFO ? "" : names[level],
		level == LOG_LVL_INFO ? "" : ": ", line);
}
