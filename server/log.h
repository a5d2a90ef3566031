/* log.h — timestamped one-line logs on stderr, filtered by a process-wide level.
 *
 * Every line reads "2026-11-28T23:40:08.123Z info  message". Safe from any thread (one fprintf
 * per line, stderr unbuffered). Messages never contain secrets (API keys are not logged).
 */
#ifndef LR_LOG_H
#define LR_LOG_H

typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } log_level;

/* Set the minimum level that is printed (default LOG_INFO). */
void log_set_level(log_level level);
log_level log_get_level(void);
/* Parse "debug" | "info" | "warn" | "error" into *out. Returns 0, or -1 for anything else. */
int log_parse_level(const char *s, log_level *out);
/* Print one line at `level` if it passes the filter. A trailing newline is added. */
void log_msg(log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
