/* jinja_int.h — what the jinja_*.c files share: the syntax tree, runtime values and the arena.
 * Not a public header: only core/jinja*.c include it. */
#ifndef LR_JINJA_INT_H
#define LR_JINJA_INT_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "jinja.h"

/* ---- arena: bump allocation in chunks, freed all at once; an optional byte cap ------------ */
typedef struct jj_chunk jj_chunk;
typedef struct jj_arena {
    jj_chunk *head;
    size_t used;  /* bytes handed out (incl. chunk overhead) */
    size_t limit; /* 0 = unlimited */
} jj_arena;

void *jj_arena_alloc(jj_arena *a, size_t n); /* 16-byte aligned, zeroed; NULL on limit/OOM */
void jj_arena_free(jj_arena *a);

/* ---- syntax tree ---------------------------------------------------------------------------- */
typedef enum {
    /* statements */
    JN_TEXT,    /* s: literal text */
    JN_OUTPUT,  /* a: expression to print */
    JN_IF,      /* a: test, kids: body, kids2: else body (elif = a nested JN_IF there) */
    JN_FOR,     /* targets (names), a: iterable, b: filter test or NULL, kids, kids2: else */
    JN_SET,     /* a: target (JN_NAME / JN_TUPLE of names / JN_ATTR), b: value or NULL, kids */
    JN_MACRO,   /* s: name, kids: body, params: names, defs: default exprs (NULL = none) */
    JN_CALLBLK, /* a: call expression, kids: caller body, params/defs: caller's parameters */
    JN_FILTBLK, /* a: JN_FILTER whose operand is NULL (the body), kids: body */
    JN_BREAK,
    JN_CONTINUE,
    JN_BLOCK, /* kids: a plain sequence (the whole template, {% generation %}) */
    /* expressions */
    JN_NONE,
    JN_BOOL,   /* i */
    JN_INT,    /* i */
    JN_FLOAT,  /* f */
    JN_STR,    /* s */
    JN_NAME,   /* s */
    JN_LIST,   /* kids */
    JN_TUPLE,  /* kids */
    JN_DICT,   /* kids: keys, kids2: values */
    JN_ATTR,   /* a.s */
    JN_ITEM,   /* a[b] */
    JN_SLICE,  /* a[kids[0]:kids[1]:kids[2]] (NULL parts omitted) */
    JN_CALL,   /* a(kids...) ; a kid may be JN_KWARG */
    JN_KWARG,  /* s = a */
    JN_FILTER, /* a | s(kids...) */
    JN_TEST,   /* a is [not] s(kids...) ; i = negate */
    JN_BINOP,  /* a op b */
    JN_UNARY,  /* op a (JO_NEG, JO_POS, JO_NOT) */
    JN_AND,
    JN_OR,
    JN_COND, /* b if a else c (c may be NULL) */
} jj_kind;

typedef enum {
    JO_ADD,
    JO_SUB,
    JO_MUL,
    JO_DIV,
    JO_FLOORDIV,
    JO_MOD,
    JO_POW,
    JO_CONCAT,
    JO_EQ,
    JO_NE,
    JO_LT,
    JO_GT,
    JO_LE,
    JO_GE,
    JO_IN,
    JO_NOTIN,
    JO_NEG,
    JO_POS,
    JO_NOT,
} jj_op;

typedef struct jj_node jj_node;
struct jj_node {
    uint8_t kind, op;
    uint32_t pos; /* byte offset in the original source, for error messages */
    jj_node *a, *b, *c;
    jj_node **kids, **kids2;
    size_t nkids, nkids2;
    const char **params; /* macro / caller parameter names; for-loop targets */
    jj_node **defs;
    size_t nparams;
    const char *s;
    size_t slen;
    int64_t i;
    double f;
};

/* ---- runtime values ---------------------------------------------------------------------- */
typedef enum {
    JV_UNDEF,
    JV_NONE,
    JV_BOOL,
    JV_INT,
    JV_FLOAT,
    JV_STR,
    JV_LIST,
    JV_DICT,
    JV_NS,
    JV_LOOP,
    JV_MACRO,
    JV_FUNC,
    JV_METHOD,
    JV_CALLER,
} jv_type;

typedef struct jj_list jj_list;
typedef struct jj_dict jj_dict;

/* Passed by value. Strings are (p, n) slices, not NUL-terminated, borrowed from the context, the
 * template or the render arena — all of which outlive the render. Lists and dicts from the
 * context are immutable; namespaces (JV_NS) are the only mutable container. */
typedef struct jv {
    uint8_t t;
    uint8_t tuple; /* JV_LIST built from a tuple: prints as (a, b) */
    union {
        int64_t i; /* JV_BOOL, JV_INT, JV_FUNC (builtin id) */
        double f;
        struct {
            const char *p;
            size_t n;
        } s; /* JV_STR; JV_UNDEF: the name that was missing (may be NULL) */
        jj_list *l;
        jj_dict *d; /* JV_DICT, JV_NS */
        void *ptr;  /* JV_LOOP, JV_MACRO (jj_node), JV_METHOD, JV_CALLER */
    } u;
} jv;

struct jj_list {
    jv *v;
    size_t n, cap;
};

typedef struct jj_kv {
    const char *k;
    size_t kn;
    jv v;
} jj_kv;

struct jj_dict {
    jj_kv *kv;
    size_t n, cap;
};

/* ---- the compiled template ---------------------------------------------------------------- */
struct jj_template {
    char *src; /* original source, for line/column in messages */
    size_t len;
    jj_arena arena; /* nodes and literal strings */
    jj_node *root;
};

/* Line and column (1-based) of byte offset pos in src. */
void jj_line_col(const char *src, size_t len, size_t pos, int *line, int *col);

/* ---- tokens (jinja_lex.c) ---------------------------------------------------------------- */
typedef enum {
    TK_TEXT,
    TK_BB,
    TK_BE,
    TK_VB,
    TK_VE,
    TK_NAME,
    TK_STR,
    TK_INT,
    TK_FLOAT,
    TK_OP,
    TK_EOF
} tk_type;

typedef struct jj_tok {
    uint8_t type;
    uint32_t pos;  /* original offset */
    const char *s; /* TEXT/STR/NAME: arena copy; OP: static */
    size_t n;
    int64_t i;
    double f;
} jj_tok;

/* Tokens of t->src, ending with TK_EOF; *out is malloc'd (free it). Errors name line/column. */
int jj_lex(jj_template *t, lr_error *err, jj_tok **out, size_t *n);

/* Parse t->src into t->root (jinja_parse.c). */
int jj_parse(jj_template *t, lr_error *err);

/* Is name a known filter / test (checked at compile time, as Jinja2 does)? */
int jj_filter_known(const char *name, size_t n);
int jj_test_known(const char *name, size_t n);

/* ---- small helpers shared by the value and evaluation code (jinja_value.c) --------------- */
typedef struct jj_buf {
    char *p;
    size_t n, cap;
    size_t limit; /* 0 = none */
} jj_buf;

int jj_buf_put(jj_buf *b, const char *s, size_t n); /* 0, LR_ENOMEM, or LR_ETOOLARGE */
int jj_buf_putc(jj_buf *b, char c);

int jj_is_space_at(const char *s, size_t n, size_t i, size_t *clen); /* Unicode whitespace */
size_t jj_utf8_len(const char *s, size_t n);                         /* code points */
size_t jj_utf8_offset(const char *s, size_t n, size_t cp);           /* byte offset of cp */

int jv_truthy(jv v);
const char *jv_type_name(jv v);
/* Python str(v) / repr(v) appended to b; tojson (indent < 0 = none). */
int jv_str(jj_buf *b, jv v);
int jv_repr(jj_buf *b, jv v);
/* json.dumps options: indent < 0 = None; separators as Python picks them by default: ", " and
 * ": " without indent, "," and ": " with it. */
typedef struct jj_json_opts {
    int indent;             /* < 0: None (one line); otherwise indent_str per level */
    const char *indent_str; /* NUL-terminated */
    int sort_keys;
    int ensure_ascii; /* escape everything outside ' '..'~' as \uXXXX (Python's rule) */
    const char *item_sep, *key_sep;
} jj_json_opts;
int jv_tojson(jj_buf *b, jv v, const jj_json_opts *o, int depth, char **why);
int jv_equal(jv a, jv b);
/* -2 when the values cannot be ordered, else -1/0/1 (case-folded strings when fold) */
int jv_compare(jv a, jv b, int fold);
jv *jj_dict_get(const jj_dict *d, const char *k, size_t kn);

#endif
