/*
 * log.c - leveled logging to stderr.  A mounted daemon redirects stderr to
 * its log file, so one call serves the terminal and the log alike.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

static enum log_level current_level = LOG_LVL_INFO;
static bool with_timestamps;
/* capture mode: the last error is kept for the command's one-line message */
static pthread_mutex_t capture_lock = PTHREAD_MUTEX_INITIALIZER;
static bool capturing;                 /* protected by capture_lock */
static char last_error[1024];          /* protected by capture_lock */

void log_capture_errors(bool on)
{
	pthread_mutex_lock(&capture_lock);
	capturing = on;
	last_error[0] = 0;
	pthread_mutex_unlock(&capture_lock);
}

const char *log_last_error(void)
{
	static char copy[1024];

	pthread_mutex_lock(&capture_lock);
	memcpy(copy, last_error, sizeof(copy));
	pthread_mutex_unlock(&capture_lock);
	return copy[0] ? copy : "see the log";
}

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
	if (level <= LOG_LVL_WARN) {
		pthread_mutex_lock(&capture_lock);
		bool keep = capturing;
		if (keep && level == LOG_LVL_ERROR)
			snprintf(last_error, sizeof(last_error), "%s", line);
		pthread_mutex_unlock(&capture_lock);
		if (keep)
			return;
	}
	fprintf(stderr, "%sdrfs: %s%s%s\n", stamp,
		level == LOG_LVL_INFO ? "" : names[level],
		level == LOG_LVL_INFO ? "" : ": ", line);
}
