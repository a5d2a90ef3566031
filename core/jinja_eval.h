/* jinja_eval.h — the render context shared by jinja_eval.c (statements, expressions) and
 * jinja_builtins.c (filters, tests, methods, globals). Internal to core/jinja*.c. */
#ifndef LR_JINJA_EVAL_H
#define LR_JINJA_EVAL_H

#include <math.h>

#include "jinja_int.h"

typedef struct jj_frame jj_frame;
struct jj_frame {
    jj_frame *parent;
    jj_dict vars;
};

typedef struct jj_loop {
    jj_list *items;
    size_t i;
} jj_loop;

typedef struct jj_method {
    jv self;
    const char *name;
    size_t nlen;
} jj_method;

typedef struct jj_caller {
    const jj_node *blk; /* the JN_CALLBLK */
    jj_frame *frame;    /* where the call block stands */
} jj_caller;

enum { JF_RANGE = 1, JF_NAMESPACE, JF_DICT, JF_RAISE, JF_STRFTIME };
enum { JJ_CTL_BREAK = 1, JJ_CTL_CONTINUE = 2 };

typedef struct jj_ctx {
    const jj_template *t;
    lr_error *err;
    jj_options opt;
    jj_arena arena;
    jj_buf *out;
    jj_frame *root, *frame;
    uint64_t steps;
    int depth;       /* macro / caller calls */
    int edepth;      /* expression recursion */
    int ctl;         /* pending break / continue */
    jv filter_input; /* operand of a {% filter %} block's first filter */
} jj_ctx;

/* Evaluated call arguments (arena memory). kw[j] is the JN_KWARG node, kwv[j] its value. */
typedef struct jj_args {
    jv *pos;
    size_t npos;
    const jj_node **kw;
    jv *kwv;
    size_t nkw;
} jj_args;

int jj_fail(jj_ctx *c, const jj_node *n, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int jj_oom(jj_ctx *c, const jj_node *n);
void *jj_alloc(jj_ctx *c, const jj_node *n, size_t size);
int jj_step(jj_ctx *c, const jj_node *n);
int jj_mkstr(jj_ctx *c, const jj_node *n, const char *s, size_t len, jv *out);
jj_list *jj_list_new(jj_ctx *c, const jj_node *n, size_t cap);
int jj_list_push(jj_ctx *c, const jj_node *n, jj_list *l, jv v);
int jj_dict_set(jj_ctx *c, const jj_node *n, jj_dict *d, const char *k, size_t kn, jv v);
int jj_frame_set(jj_ctx *c, const jj_node *n, jj_frame *f, const char *k, size_t kn, jv v);
jv jj_undef(const char *name);
int jj_undef_error(jj_ctx *c, const jj_node *n, jv u);

int jj_eval(jj_ctx *c, const jj_node *n, jv *out);
int jj_exec(jj_ctx *c, const jj_node *n);
int jj_exec_body(jj_ctx *c, jj_node *const *kids, size_t n);
int jj_getattr(jj_ctx *c, const jj_node *n, jv obj, const char *name, size_t nlen, jv *out);
int jj_getitem(jj_ctx *c, const jj_node *n, jv obj, jv key, jv *out);
int jj_contains(jj_ctx *c, const jj_node *n, jv container, jv item, int *res);
int jj_eval_args(jj_ctx *c, const jj_node *call, jj_args *a);
int jj_arg(const jj_args *a, size_t i, const char *name, jv *out);
int jj_check_args(jj_ctx *c, const jj_node *n, const jj_args *a, const char *what, size_t npos,
                  const char *const *names);

/* Small value constructors. */
static inline jv jv_mkbool(int b)
{
    jv v = {.t = JV_BOOL};
    v.u.i = b != 0;
    return v;
}

static inline jv jv_mkint(int64_t i)
{
    jv v = {.t = JV_INT};
    v.u.i = i;
    return v;
}

static inline jv jv_mkfloat(double f)
{
    jv v = {.t = JV_FLOAT};
    v.u.f = f;
    return v;
}

static inline jv jv_mklist(jj_list *l)
{
    jv v = {.t = JV_LIST};
    v.u.l = l;
    return v;
}

static inline jv jv_mkslice(const char *p, size_t n)
{
    jv v = {.t = JV_STR};
    v.u.s.p = p;
    v.u.s.n = n;
    return v;
}

/* jinja_text.c — Python str semantics */
enum { JJ_CASE_UPPER, JJ_CASE_LOWER, JJ_CASE_CAPITALIZE, JJ_CASE_TITLE_PY, JJ_CASE_TITLE_JINJA };
int jj_to_str(jj_ctx *c, const jj_node *n, jv v, jv *out);              /* str(v); strings as is */
int jj_arg_bool(const jj_args *a, size_t i, const char *name, int def); /* truthiness of an arg */
int32_t jj_next_cp(const char *s, size_t n, size_t *i);                 /* decode, advance *i */
int jj_map_case(jj_ctx *c, const jj_node *n, jv s, int mode, jv *out);  /* JJ_CASE_* */
jv jj_strip(jv s, const char *chars, size_t cn, int left, int right);   /* chars NULL: blanks */
int jj_strip_args(jj_ctx *c, const jj_node *n, const jj_args *a, const char **chars, size_t *cn);
int jj_replace_args(jj_ctx *c, const jj_node *n, jv s, const jj_args *a, jv *out);
int jj_split(jj_ctx *c, const jj_node *n, jv s, const jj_args *a, jv *out);
int jj_starts_ends(jj_ctx *c, const jj_node *n, jv s, const jj_args *a, int ends, jv *out);
/* Python's fmt % args (printf-style: s r d i f e g x o and %%, flags - + space # 0, width,
 * precision, %(key)s with a dict); args a tuple for several values. */
int jj_percent_format(jj_ctx *c, const jj_node *n, jv fmt, jv args, jv *out);

/* jinja_filters.c */
int jj_items_of(jj_ctx *c, const jj_node *n, jv v, jj_list **out); /* iterate any value */
int jj_attr_path(jj_ctx *c, const jj_node *n, jv item, jv path, jv *out);
int jj_sorted(jj_ctx *c, const jj_node *n, jj_list *in, jv attribute, int fold, int rev,
              jj_list **out);
/* Filter `name` on in with evaluated arguments a. */
int jj_call_filter(jj_ctx *c, const jj_node *n, const char *name, size_t nlen, jv in,
                   const jj_args *a, jv *out);

/* jinja_builtins.c (and jinja_filters.c: jj_apply_filter) */
int jj_apply_filter(jj_ctx *c, const jj_node *f, jv in, jv *out);
/* Test `name` on v with extra arguments args[0:nargs] (`x is divisibleby 3`). */
int jj_apply_test(jj_ctx *c, const jj_node *at, const char *name, size_t nlen, jv v, const jv *args,
                  size_t nargs, int *res);
int jj_call_global(jj_ctx *c, const jj_node *n, int id, const jj_args *a, jv *out);
int jj_call_method(jj_ctx *c, const jj_node *n, jj_method *m, const jj_args *a, jv *out);
int jj_method_exists(jv self, const char *name, size_t nlen);
int jj_loop_attr(jj_ctx *c, const jj_node *n, jv loop, const char *name, size_t nlen, jv *out);

#endif
