/* jinja.h — the Jinja subset HuggingFace chat templates use, rendered the way transformers does.
 *
 * transformers renders `chat_template` in an ImmutableSandboxedEnvironment with trim_blocks and
 * lstrip_blocks on, the loopcontrols extension, globals raise_exception / strftime_now and a
 * tojson filter that keeps non-ASCII text and key order (SPEC-HF.md E.7). This module compiles a
 * template once into an immutable jj_template and renders it against a JSON context.
 *
 * Ownership: jj_compile copies the source; a jj_template is read-only after compilation, so any
 * number of threads may render the same template at once (each render keeps all of its state in
 * a per-call arena). jj_render borrows the context (strings are not copied) and returns a new
 * malloc'd string.
 *
 * Errors (lr_error, messages start with "chat template line L, column C: " where a construct
 * is to blame):
 *   compile: LR_EFORMAT (400) — bad syntax, unknown filter or test, unclosed block.
 *   render:  LR_EINVAL  (400) — raise_exception("…") (message "raise_exception: …"), and type
 *            errors the request data provokes (adding a string to a list, undefined attribute of
 *            an undefined value, …).
 *            LR_EINTERNAL (500) — a limit was hit (output size, loop steps, nesting depth,
 *            memory); LR_ENOMEM on allocation failure.
 * Semantics follow Python Jinja2 3.1 as transformers configures it (checked against it by
 * tests/jinja/gen_jinja2.py); @huggingface/jinja, the oracle the issue names, agrees on every
 * real template case in tests/data/jinja/golden.json, and gen.mjs lists where it differs.
 * Not supported (an error names them): include/extends/import/block, recursive loops, *args /
 * **kwargs and varargs/kwargs in macros, format specs in str.format. Integers are 64-bit
 * (overflow is an error, Python would grow). Known Jinja2 artefacts not reproduced: range()
 * and generators print as lists; a name read in a loop or macro before a later top-level
 * `set` of it gives the context's value (Jinja2: undefined); full case mapping only for ß,
 * the Latin ligatures and İ.
 */
#ifndef LR_JINJA_H
#define LR_JINJA_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "err.h"

typedef struct jj_template jj_template;

/* Per-render limits and hooks; zero fields take the defaults below. Plain data. */
typedef struct jj_options {
    size_t max_output;  /* bytes of rendered text (default 16 MiB) */
    size_t max_memory;  /* bytes of per-render scratch: values, strings (default 256 MiB) */
    uint64_t max_steps; /* loop iterations + calls + output statements (default 4,000,000) */
    int max_depth;      /* nesting of macro calls / recursion (default 64) */
    time_t now;         /* strftime_now's time (local time); 0 = the current time */
} jj_options;

#define JJ_DEFAULT_MAX_OUTPUT ((size_t)16 << 20)
#define JJ_DEFAULT_MAX_MEMORY ((size_t)256 << 20)
#define JJ_DEFAULT_MAX_STEPS 4000000u
#define JJ_DEFAULT_MAX_DEPTH 64
#define JJ_MAX_SOURCE ((size_t)4 << 20) /* templates longer than this are refused */

/* Compile src[0:len] (UTF-8). On success *out is a new template (free with jj_destroy).
 * Returns 0 or a negative lr_err with err filled ("chat template line 3, column 7: unknown
 * filter 'foo'"). */
int jj_compile(const char *src, size_t len, lr_error *err, jj_template **out);
void jj_destroy(jj_template *t);

/* Render with ctx, a JSON object whose members become template variables (borrowed):
 * messages, tools, documents, add_generation_prompt, bos_token, eos_token, … — whatever the
 * caller puts there. ctx may be NULL (no variables). opts may be NULL (defaults). On success
 * *out is a new NUL-terminated malloc'd string (free it) and *out_len its length (may be NULL).
 * Thread-safe for the same template. */
int jj_render(const jj_template *t, const json_t *ctx, const jj_options *opts, char **out,
              size_t *out_len, lr_error *err);

/* Convenience for chat: builds the context {messages, add_generation_prompt, tools (when
 * non-NULL), bos_token, eos_token (when non-NULL), plus every member of extra (when non-NULL,
 * e.g. enable_thinking or documents)} and renders. All JSON arguments are borrowed. */
int jj_render_chat(const jj_template *t, const json_t *messages, int add_generation_prompt,
                   const json_t *tools, const char *bos_token, const char *eos_token,
                   const json_t *extra, const jj_options *opts, char **out, size_t *out_len,
                   lr_error *err);

#endif
