/* jinja_parse.c — tokens to syntax tree.
 *
 * The grammar is Jinja2's (parser.py): conditional expressions, or/and/not, chained comparisons,
 * + - then ~ then * / // % then **, unary signs, postfix . [] (), filters and `is` tests;
 * statements if/elif/else, for (tuple targets, `if` filter, else), set (names, tuples,
 * namespace attributes, blocks), macro, call, filter, generation, break/continue, raw (in the
 * lexer). Filters and tests are checked against the known names at compile time, as Jinja2 does.
 * Nesting is capped so that hostile sources cannot exhaust the stack.
 * Not here: lexing (jinja_lex.c), evaluation (jinja_eval.c); template inheritance, includes and
 * imports (refused with an error naming the statement).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja_int.h"

#define MAX_PARSE_DEPTH 200

/* ---- parser -----------------------------------------------------------------------------------
 */

typedef struct parser {
    jj_template *t;
    lr_error *err;
    jj_tok *v;
    size_t n, i;
    int depth;
    int loops; /* enclosing for-loops (break/continue are legal only inside one) */
} parser;

static int pfail(parser *P, const jj_tok *k, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int pfail(parser *P, const jj_tok *k, const char *fmt, ...)
{
    if (P->err && P->err->code) return P->err->code; /* keep the first, innermost message */
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int line, col;
    jj_line_col(P->t->src, P->t->len, k->pos, &line, &col);
    lr_error_set(P->err, LR_EFORMAT, "chat template line %d, column %d: %s", line, col, msg);
    return LR_EFORMAT;
}

#define PEEK(P) (&(P)->v[(P)->i])
static int is_op(const jj_tok *k, const char *op)
{
    return k->type == TK_OP && strcmp(k->s, op) == 0;
}
static int is_name(const jj_tok *k, const char *name)
{
    return k->type == TK_NAME && k->n == strlen(name) && memcmp(k->s, name, k->n) == 0;
}
static const char *tk_desc(const jj_tok *k)
{
    switch (k->type) {
    case TK_TEXT:
        return "text";
    case TK_BB:
        return "'{%'";
    case TK_BE:
        return "'%}'";
    case TK_VB:
        return "'{{'";
    case TK_VE:
        return "'}}'";
    case TK_NAME:
        return "a name";
    case TK_STR:
        return "a string";
    case TK_INT:
    case TK_FLOAT:
        return "a number";
    case TK_OP:
        return k->s;
    default:
        return "the end of the template";
    }
}

static jj_node *node(parser *P, int kind, const jj_tok *at)
{
    jj_node *x = jj_arena_alloc(&P->t->arena, sizeof *x);
    if (!x) {
        lr_error_set(P->err, LR_ENOMEM, "chat template: out of memory while parsing");
        return NULL;
    }
    x->kind = (uint8_t)kind;
    x->pos = at->pos;
    return x;
}

/* Growable node vectors live in malloc while parsing and move to the arena when done. */
typedef struct nvec {
    jj_node **v;
    size_t n, cap;
} nvec;

static int nv_push(parser *P, nvec *a, jj_node *x)
{
    if (a->n == a->cap) {
        size_t nc = a->cap ? a->cap * 2 : 8;
        jj_node **nv = realloc(a->v, nc * sizeof *nv);
        if (!nv)
            return lr_error_set(P->err, LR_ENOMEM, "chat template: out of memory while parsing");
        a->v = nv;
        a->cap = nc;
    }
    a->v[a->n++] = x;
    return 0;
}

static jj_node **nv_finish(parser *P, nvec *a, size_t *n)
{
    *n = a->n;
    jj_node **out = NULL;
    if (a->n) {
        out = jj_arena_alloc(&P->t->arena, a->n * sizeof *out);
        if (out)
            memcpy(out, a->v, a->n * sizeof *out);
        else
            lr_error_set(P->err, LR_ENOMEM, "chat template: out of memory while parsing");
    }
    free(a->v);
    a->v = NULL;
    return out;
}

static int expect_op(parser *P, const char *op)
{
    const jj_tok *k = PEEK(P);
    if (!is_op(k, op)) return pfail(P, k, "expected '%s', got %s", op, tk_desc(k));
    P->i++;
    return 0;
}

static int expect_type(parser *P, int type, const char *what)
{
    const jj_tok *k = PEEK(P);
    if (k->type != type) return pfail(P, k, "expected %s, got %s", what, tk_desc(k));
    P->i++;
    return 0;
}

static jj_node *p_expr(parser *P, int condexpr);
static jj_node *p_unary(parser *P, int with_filter);
static jj_node *p_primary(parser *P);
static jj_node *p_postfix(parser *P, jj_node *x);

static int enter(parser *P)
{
    if (++P->depth > MAX_PARSE_DEPTH) {
        pfail(P, PEEK(P), "nesting deeper than %d levels", MAX_PARSE_DEPTH);
        return -1;
    }
    return 0;
}

/* Call arguments after '(' up to and including ')': positional, then name=value. */
static int p_args(parser *P, jj_node *call)
{
    nvec a = {0};
    int kw = 0;
    while (!is_op(PEEK(P), ")")) {
        const jj_tok *k = PEEK(P);
        jj_node *arg;
        if (k->type == TK_NAME && is_op(&P->v[P->i + 1], "=")) {
            arg = node(P, JN_KWARG, k);
            if (!arg) goto fail;
            arg->s = k->s;
            arg->slen = k->n;
            P->i += 2;
            if (!(arg->a = p_expr(P, 1))) goto fail;
            kw = 1;
        } else {
            if (kw) {
                pfail(P, k, "positional argument after a keyword argument");
                goto fail;
            }
            if (!(arg = p_expr(P, 1))) goto fail;
        }
        if (nv_push(P, &a, arg)) goto fail;
        if (!is_op(PEEK(P), ",")) {
            if (!is_op(PEEK(P), ")")) {
                pfail(P, PEEK(P), "expected ',' or ')' in argument list, got %s", tk_desc(PEEK(P)));
                goto fail;
            }
            break;
        }
        P->i++;
    }
    P->i++;
    call->kids = nv_finish(P, &a, &call->nkids);
    return (call->nkids && !call->kids) ? -1 : 0;
fail:
    free(a.v);
    return -1;
}

static jj_node *p_filter_or_test(parser *P, jj_node *x, int test)
{
    const jj_tok *at = PEEK(P);
    jj_node *f = node(P, test ? JN_TEST : JN_FILTER, at);
    if (!f) return NULL;
    f->a = x;
    P->i++; /* '|' or 'is' */
    if (test && is_name(PEEK(P), "not")) {
        f->i = 1;
        P->i++;
    }
    const jj_tok *nk = PEEK(P);
    if (nk->type != TK_NAME) {
        pfail(P, nk, "expected a %s name after '%s', got %s", test ? "test" : "filter",
              test ? "is" : "|", tk_desc(nk));
        return NULL;
    }
    f->s = nk->s;
    f->slen = nk->n;
    P->i++;
    if (test ? !jj_test_known(f->s, f->slen) : !jj_filter_known(f->s, f->slen)) {
        pfail(P, nk, "unknown %s '%.*s'", test ? "test" : "filter", (int)f->slen, f->s);
        return NULL;
    }
    if (is_op(PEEK(P), "(")) {
        P->i++;
        if (p_args(P, f)) return NULL;
    } else if (test) {
        /* `x is divisibleby 3`, `x is sameas none`: one bare argument */
        const jj_tok *k = PEEK(P);
        int starts =
            k->type == TK_STR || k->type == TK_INT || k->type == TK_FLOAT || is_op(k, "[") ||
            is_op(k, "{") ||
            (k->type == TK_NAME && !is_name(k, "else") && !is_name(k, "or") && !is_name(k, "and") &&
             !is_name(k, "if") && !is_name(k, "in") && !is_name(k, "is") && !is_name(k, "not"));
        if (starts) {
            jj_node *arg = p_primary(P);
            if (!arg || !(arg = p_postfix(P, arg))) return NULL;
            f->kids = jj_arena_alloc(&P->t->arena, sizeof *f->kids);
            if (!f->kids) return NULL;
            f->kids[0] = arg;
            f->nkids = 1;
        }
    }
    return f;
}

static jj_node *p_postfix(parser *P, jj_node *x)
{
    for (;;) {
        const jj_tok *k = PEEK(P);
        if (is_op(k, ".")) {
            P->i++;
            const jj_tok *nk = PEEK(P);
            if (nk->type == TK_NAME) {
                jj_node *a = node(P, JN_ATTR, nk);
                if (!a) return NULL;
                a->a = x;
                a->s = nk->s;
                a->slen = nk->n;
                x = a;
            } else if (nk->type == TK_INT) {
                jj_node *a = node(P, JN_ITEM, nk), *ix = node(P, JN_INT, nk);
                if (!a || !ix) return NULL;
                ix->i = nk->i;
                a->a = x;
                a->b = ix;
                x = a;
            } else {
                pfail(P, nk, "expected an attribute name after '.', got %s", tk_desc(nk));
                return NULL;
            }
            P->i++;
        } else if (is_op(k, "[")) {
            P->i++;
            jj_node *parts[3] = {NULL, NULL, NULL};
            int slice = 0;
            if (!is_op(PEEK(P), ":") && !(parts[0] = p_expr(P, 1))) return NULL;
            for (int s = 1; s < 3 && is_op(PEEK(P), ":"); s++) {
                slice = 1;
                P->i++;
                if (!is_op(PEEK(P), ":") && !is_op(PEEK(P), "]") && !(parts[s] = p_expr(P, 1)))
                    return NULL;
            }
            if (expect_op(P, "]")) return NULL;
            if (!slice && !parts[0]) {
                pfail(P, k, "empty subscript");
                return NULL;
            }
            jj_node *a = node(P, slice ? JN_SLICE : JN_ITEM, k);
            if (!a) return NULL;
            a->a = x;
            if (slice) {
                a->kids = jj_arena_alloc(&P->t->arena, 3 * sizeof *a->kids);
                if (!a->kids) return NULL;
                memcpy(a->kids, parts, sizeof parts);
                a->nkids = 3;
            } else {
                a->b = parts[0];
            }
            x = a;
        } else if (is_op(k, "(")) {
            P->i++;
            jj_node *c = node(P, JN_CALL, k);
            if (!c) return NULL;
            c->a = x;
            if (p_args(P, c)) return NULL;
            x = c;
        } else {
            return x;
        }
    }
}

static jj_node *p_primary(parser *P)
{
    const jj_tok *k = PEEK(P);
    jj_node *x = NULL;
    if (enter(P)) return NULL;
    switch (k->type) {
    case TK_NAME:
        P->i++;
        if (is_name(k, "true") || is_name(k, "True") || is_name(k, "false") ||
            is_name(k, "False")) {
            if ((x = node(P, JN_BOOL, k))) x->i = k->s[0] == 't' || k->s[0] == 'T';
        } else if (is_name(k, "none") || is_name(k, "None")) {
            x = node(P, JN_NONE, k);
        } else if ((x = node(P, JN_NAME, k))) {
            x->s = k->s;
            x->slen = k->n;
        }
        break;
    case TK_STR: {
        size_t total = 0, j = P->i;
        while (P->v[j].type == TK_STR)
            total += P->v[j++].n;
        char *s = jj_arena_alloc(&P->t->arena, total + 1);
        if (!s || !(x = node(P, JN_STR, k))) break;
        size_t o = 0;
        while (P->v[P->i].type == TK_STR) {
            memcpy(s + o, P->v[P->i].s, P->v[P->i].n);
            o += P->v[P->i++].n;
        }
        x->s = s;
        x->slen = total;
        break;
    }
    case TK_INT:
        P->i++;
        if ((x = node(P, JN_INT, k))) x->i = k->i;
        break;
    case TK_FLOAT:
        P->i++;
        if ((x = node(P, JN_FLOAT, k))) x->f = k->f;
        break;
    case TK_OP:
        if (is_op(k, "(")) {
            P->i++;
            if (is_op(PEEK(P), ")")) { /* () is the empty tuple */
                P->i++;
                x = node(P, JN_TUPLE, k);
                break;
            }
            jj_node *e = p_expr(P, 1);
            if (!e) break;
            if (is_op(PEEK(P), ",")) {
                nvec a = {0};
                if (nv_push(P, &a, e)) break;
                while (is_op(PEEK(P), ",")) {
                    P->i++;
                    if (is_op(PEEK(P), ")")) break;
                    jj_node *e2 = p_expr(P, 1);
                    if (!e2 || nv_push(P, &a, e2)) {
                        free(a.v);
                        a.v = NULL;
                        break;
                    }
                }
                if (!a.v) break;
                if (!(x = node(P, JN_TUPLE, k))) {
                    free(a.v);
                    break;
                }
                x->kids = nv_finish(P, &a, &x->nkids);
            } else {
                x = e;
            }
            if (expect_op(P, ")")) x = NULL;
            break;
        }
        if (is_op(k, "[") || is_op(k, "{")) {
            int dict = k->s[0] == '{';
            const char *close = dict ? "}" : "]";
            P->i++;
            nvec a = {0}, b = {0};
            int ok = 1;
            while (ok && !is_op(PEEK(P), close)) {
                jj_node *e = p_expr(P, 1);
                if (!e || nv_push(P, &a, e)) {
                    ok = 0;
                    break;
                }
                if (dict) {
                    jj_node *v;
                    if (expect_op(P, ":") || !(v = p_expr(P, 1)) || nv_push(P, &b, v)) {
                        ok = 0;
                        break;
                    }
                }
                if (is_op(PEEK(P), ","))
                    P->i++;
                else if (!is_op(PEEK(P), close)) {
                    pfail(P, PEEK(P), "expected ',' or '%s', got %s", close, tk_desc(PEEK(P)));
                    ok = 0;
                }
            }
            if (!ok || !(x = node(P, dict ? JN_DICT : JN_LIST, k))) {
                free(a.v);
                free(b.v);
                x = NULL;
                break;
            }
            P->i++;
            x->kids = nv_finish(P, &a, &x->nkids);
            x->kids2 = nv_finish(P, &b, &x->nkids2);
            break;
        }
        /* fall through */
    default:
        pfail(P, k, "unexpected %s in expression", tk_desc(k));
    }
    P->depth--;
    return x;
}

static jj_node *p_unary(parser *P, int with_filter)
{
    const jj_tok *k = PEEK(P);
    jj_node *x;
    if (enter(P)) return NULL;
    if (is_op(k, "-") || is_op(k, "+")) {
        P->i++;
        x = node(P, JN_UNARY, k);
        if (x) {
            x->op = k->s[0] == '-' ? JO_NEG : JO_POS;
            if (!(x->a = p_unary(P, 0))) x = NULL;
        }
    } else {
        x = p_primary(P);
    }
    if (x) x = p_postfix(P, x);
    while (x && with_filter) {
        if (is_op(PEEK(P), "|"))
            x = p_filter_or_test(P, x, 0);
        else if (is_name(PEEK(P), "is"))
            x = p_filter_or_test(P, x, 1);
        else if (is_op(PEEK(P), "("))
            x = p_postfix(P, x);
        else
            break;
    }
    P->depth--;
    return x;
}

typedef jj_node *(*level_fn)(parser *);

static jj_node *binop(parser *P, const jj_tok *at, int op, jj_node *l, jj_node *r)
{
    jj_node *x = node(P, JN_BINOP, at);
    if (x) {
        x->op = (uint8_t)op;
        x->a = l;
        x->b = r;
    }
    return x;
}

static jj_node *p_pow(parser *P)
{
    jj_node *l = p_unary(P, 1);
    while (l && is_op(PEEK(P), "**")) {
        const jj_tok *at = &P->v[P->i++];
        jj_node *r = p_unary(P, 1);
        l = r ? binop(P, at, JO_POW, l, r) : NULL;
    }
    return l;
}

static jj_node *p_math2(parser *P)
{
    jj_node *l = p_pow(P);
    for (;;) {
        const jj_tok *at = PEEK(P);
        int op = is_op(at, "*")    ? JO_MUL
                 : is_op(at, "/")  ? JO_DIV
                 : is_op(at, "//") ? JO_FLOORDIV
                 : is_op(at, "%")  ? JO_MOD
                                   : -1;
        if (!l || op < 0) return l;
        P->i++;
        jj_node *r = p_pow(P);
        l = r ? binop(P, at, op, l, r) : NULL;
    }
}

static jj_node *p_concat(parser *P)
{
    jj_node *l = p_math2(P);
    while (l && is_op(PEEK(P), "~")) {
        const jj_tok *at = &P->v[P->i++];
        jj_node *r = p_math2(P);
        l = r ? binop(P, at, JO_CONCAT, l, r) : NULL;
    }
    return l;
}

static jj_node *p_math1(parser *P)
{
    jj_node *l = p_concat(P);
    for (;;) {
        const jj_tok *at = PEEK(P);
        int op = is_op(at, "+") ? JO_ADD : is_op(at, "-") ? JO_SUB : -1;
        if (!l || op < 0) return l;
        P->i++;
        jj_node *r = p_concat(P);
        l = r ? binop(P, at, op, l, r) : NULL;
    }
}

/* a < b < c is (a < b) and (b < c), as in Python. */
static jj_node *p_compare(parser *P)
{
    jj_node *l = p_math1(P), *result = NULL;
    for (;;) {
        const jj_tok *at = PEEK(P);
        int op = -1;
        if (is_op(at, "=="))
            op = JO_EQ;
        else if (is_op(at, "!="))
            op = JO_NE;
        else if (is_op(at, "<"))
            op = JO_LT;
        else if (is_op(at, ">"))
            op = JO_GT;
        else if (is_op(at, "<="))
            op = JO_LE;
        else if (is_op(at, ">="))
            op = JO_GE;
        else if (is_name(at, "in"))
            op = JO_IN;
        else if (is_name(at, "not") && is_name(&P->v[P->i + 1], "in"))
            op = JO_NOTIN;
        if (!l || op < 0) return l ? (result ? result : l) : NULL;
        P->i += op == JO_NOTIN ? 2 : 1;
        jj_node *r = p_math1(P);
        jj_node *cmp = r ? binop(P, at, op, l, r) : NULL;
        if (!cmp) return NULL;
        if (result) {
            jj_node *both = node(P, JN_AND, at);
            if (!both) return NULL;
            both->a = result;
            both->b = cmp;
            result = both;
        } else {
            result = cmp;
        }
        l = r;
    }
}

static jj_node *p_not(parser *P)
{
    const jj_tok *k = PEEK(P);
    if (is_name(k, "not")) {
        if (enter(P)) return NULL;
        P->i++;
        jj_node *x = node(P, JN_UNARY, k);
        if (x) {
            x->op = JO_NOT;
            if (!(x->a = p_not(P))) x = NULL;
        }
        P->depth--;
        return x;
    }
    return p_compare(P);
}

static jj_node *p_andor(parser *P, int is_or)
{
    jj_node *l = is_or ? p_andor(P, 0) : p_not(P);
    while (l && is_name(PEEK(P), is_or ? "or" : "and")) {
        const jj_tok *at = &P->v[P->i++];
        jj_node *r = is_or ? p_andor(P, 0) : p_not(P);
        jj_node *x = r ? node(P, is_or ? JN_OR : JN_AND, at) : NULL;
        if (!x) return NULL;
        x->a = l;
        x->b = r;
        l = x;
    }
    return l;
}

static jj_node *p_expr(parser *P, int condexpr)
{
    if (enter(P)) return NULL;
    jj_node *x = p_andor(P, 1);
    while (x && condexpr && is_name(PEEK(P), "if")) {
        const jj_tok *at = &P->v[P->i++];
        jj_node *c = node(P, JN_COND, at);
        if (!c || !(c->a = p_andor(P, 1))) {
            x = NULL;
            break;
        }
        c->b = x;
        if (is_name(PEEK(P), "else")) {
            P->i++;
            if (!(c->c = p_expr(P, 1))) {
                x = NULL;
                break;
            }
        }
        x = c;
    }
    P->depth--;
    return x;
}

/* Statements ---------------------------------------------------------------------------------- */

static int p_body(parser *P, jj_node *owner, int second, const char *const *ends,
                  const jj_tok *opener);

/* After a body stopped at one of its end tags: which one (index in ends), consuming "{% name". */
static int end_tag(parser *P, const char *const *ends)
{
    const jj_tok *k = &P->v[P->i + 1];
    for (int e = 0; ends[e]; e++)
        if (is_name(k, ends[e])) {
            P->i += 2;
            return e;
        }
    return -1;
}

static int p_params(parser *P, jj_node *x)
{
    /* (a, b=default, …) */
    const char **names = NULL;
    jj_node **defs = NULL;
    size_t n = 0, cap = 0;
    if (expect_op(P, "(")) return -1;
    while (!is_op(PEEK(P), ")")) {
        const jj_tok *k = PEEK(P);
        if (k->type != TK_NAME) return pfail(P, k, "expected a parameter name, got %s", tk_desc(k));
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            const char **nn = jj_arena_alloc(&P->t->arena, cap * sizeof *nn);
            jj_node **nd = jj_arena_alloc(&P->t->arena, cap * sizeof *nd);
            if (!nn || !nd) return lr_error_set(P->err, LR_ENOMEM, "chat template: out of memory");
            if (n) {
                memcpy(nn, names, n * sizeof *nn);
                memcpy(nd, defs, n * sizeof *nd);
            }
            names = nn;
            defs = nd;
        }
        char *nm = jj_arena_alloc(&P->t->arena, k->n + 1);
        if (!nm) return LR_ENOMEM;
        memcpy(nm, k->s, k->n);
        names[n] = nm;
        defs[n] = NULL;
        P->i++;
        if (is_op(PEEK(P), "=")) {
            P->i++;
            if (!(defs[n] = p_expr(P, 1))) return -1;
        } else if (n > 0 && defs[n - 1]) {
            return pfail(P, k, "parameter '%s' without a default follows one with a default", nm);
        }
        n++;
        if (is_op(PEEK(P), ","))
            P->i++;
        else if (!is_op(PEEK(P), ")"))
            return pfail(P, PEEK(P), "expected ',' or ')' in parameter list, got %s",
                         tk_desc(PEEK(P)));
    }
    P->i++;
    x->params = names;
    x->defs = defs;
    x->nparams = n;
    return 0;
}

/* Does this code refer to `caller` (not counting macros nested in it)? */
static int uses_caller(jj_node *const *kids, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const jj_node *x = kids[i];
        if (!x || x->kind == JN_MACRO) continue;
        if (x->kind == JN_NAME && x->slen == 6 && memcmp(x->s, "caller", 6) == 0) return 1;
        jj_node *const abc[3] = {x->a, x->b, x->c};
        if (uses_caller(abc, 3) || uses_caller(x->kids, x->nkids) ||
            uses_caller(x->kids2, x->nkids2) || (x->defs && uses_caller(x->defs, x->nparams)))
            return 1;
    }
    return 0;
}

static jj_node *p_statement(parser *P)
{
    const jj_tok *open = PEEK(P); /* {% */
    const jj_tok *k = &P->v[P->i + 1];
    if (k->type != TK_NAME) {
        pfail(P, k, "expected a statement name after '{%%', got %s", tk_desc(k));
        return NULL;
    }
    P->i += 2;
    jj_node *x = NULL;
    if (is_name(k, "if") || is_name(k, "elif")) {
        /* elif is only reached through the if below, which consumed "{% elif" itself */
        if (is_name(k, "elif")) {
            pfail(P, k, "'elif' outside of an if block");
            return NULL;
        }
        x = node(P, JN_IF, k);
        jj_node *cur = x;
        /* Jinja2 parses the test without a conditional expression (parse_tuple(with_condexpr=
         * False)): `{% if a if b else c %}` is a syntax error there too */
        if (!x || !(x->a = p_expr(P, 0)) || expect_type(P, TK_BE, "'%}'")) return NULL;
        static const char *const ends[] = {"elif", "else", "endif", NULL};
        for (;;) {
            if (p_body(P, cur, 0, ends, open)) return NULL;
            const jj_tok *which = &P->v[P->i + 1];
            int e = end_tag(P, ends);
            if (e == 0) {
                jj_node *nx = node(P, JN_IF, which);
                if (!nx || !(nx->a = p_expr(P, 0)) || expect_type(P, TK_BE, "'%}'")) return NULL;
                cur->kids2 = jj_arena_alloc(&P->t->arena, sizeof *cur->kids2);
                if (!cur->kids2) return NULL;
                cur->kids2[0] = nx;
                cur->nkids2 = 1;
                cur = nx;
                continue;
            }
            if (e == 1) {
                static const char *const endif[] = {"endif", NULL};
                if (expect_type(P, TK_BE, "'%}'") || p_body(P, cur, 1, endif, open)) return NULL;
                end_tag(P, endif);
            }
            break;
        }
    } else if (is_name(k, "for")) {
        x = node(P, JN_FOR, k);
        if (!x) return NULL;
        const char **names = jj_arena_alloc(&P->t->arena, 8 * sizeof *names);
        if (!names) return NULL;
        int paren = is_op(PEEK(P), "(");
        if (paren) P->i++;
        for (;;) {
            const jj_tok *nk = PEEK(P);
            if (nk->type != TK_NAME || x->nparams == 8) {
                pfail(P, nk, "expected a loop variable name, got %s", tk_desc(nk));
                return NULL;
            }
            char *nm = jj_arena_alloc(&P->t->arena, nk->n + 1);
            if (!nm) return NULL;
            memcpy(nm, nk->s, nk->n);
            names[x->nparams++] = nm;
            P->i++;
            if (!is_op(PEEK(P), ",")) break;
            P->i++;
        }
        if (paren && expect_op(P, ")")) return NULL;
        x->params = (const char **)names;
        x->i = x->nparams > 1 || paren; /* unpack each item */
        if (!is_name(PEEK(P), "in")) {
            pfail(P, PEEK(P), "expected 'in' in for statement, got %s", tk_desc(PEEK(P)));
            return NULL;
        }
        P->i++;
        if (!(x->a = p_expr(P, 0))) return NULL;
        if (is_name(PEEK(P), "if")) {
            P->i++;
            if (!(x->b = p_expr(P, 1))) return NULL;
        }
        if (is_name(PEEK(P), "recursive")) {
            pfail(P, PEEK(P), "recursive for loops are not supported");
            return NULL;
        }
        if (expect_type(P, TK_BE, "'%}'")) return NULL;
        static const char *const ends[] = {"else", "endfor", NULL};
        P->loops++;
        int rc = p_body(P, x, 0, ends, open);
        P->loops--;
        if (rc) return NULL;
        if (end_tag(P, ends) == 0) {
            static const char *const endfor[] = {"endfor", NULL};
            if (expect_type(P, TK_BE, "'%}'") || p_body(P, x, 1, endfor, open)) return NULL;
            end_tag(P, endfor);
        }
    } else if (is_name(k, "set")) {
        x = node(P, JN_SET, k);
        if (!x) return NULL;
        const jj_tok *nk = PEEK(P);
        if (nk->type != TK_NAME) {
            pfail(P, nk, "expected a variable name after 'set', got %s", tk_desc(nk));
            return NULL;
        }
        jj_node *target = node(P, JN_NAME, nk);
        if (!target) return NULL;
        target->s = nk->s;
        target->slen = nk->n;
        P->i++;
        if (is_op(PEEK(P), ".")) {
            P->i++;
            const jj_tok *ak = PEEK(P);
            if (ak->type != TK_NAME) {
                pfail(P, ak, "expected an attribute name, got %s", tk_desc(ak));
                return NULL;
            }
            jj_node *at = node(P, JN_ATTR, ak);
            if (!at) return NULL;
            at->a = target;
            at->s = ak->s;
            at->slen = ak->n;
            target = at;
            P->i++;
        } else if (is_op(PEEK(P), ",")) {
            nvec a = {0};
            if (nv_push(P, &a, target)) return NULL;
            while (is_op(PEEK(P), ",")) {
                P->i++;
                const jj_tok *tk = PEEK(P);
                jj_node *nm = tk->type == TK_NAME ? node(P, JN_NAME, tk) : NULL;
                if (!nm) {
                    free(a.v);
                    pfail(P, tk, "expected a variable name, got %s", tk_desc(tk));
                    return NULL;
                }
                nm->s = tk->s;
                nm->slen = tk->n;
                P->i++;
                if (nv_push(P, &a, nm)) return NULL;
            }
            target = node(P, JN_TUPLE, nk);
            if (!target) {
                free(a.v);
                return NULL;
            }
            target->kids = nv_finish(P, &a, &target->nkids);
        }
        x->a = target;
        if (is_op(PEEK(P), "=")) {
            P->i++;
            jj_node *v = p_expr(P, 1);
            if (!v) return NULL;
            if (is_op(PEEK(P), ",")) { /* set x = a, b  → a tuple */
                nvec a = {0};
                if (nv_push(P, &a, v)) return NULL;
                while (is_op(PEEK(P), ",")) {
                    P->i++;
                    jj_node *e = p_expr(P, 1);
                    if (!e || nv_push(P, &a, e)) {
                        free(a.v);
                        return NULL;
                    }
                }
                jj_node *tp = node(P, JN_TUPLE, k);
                if (!tp) {
                    free(a.v);
                    return NULL;
                }
                tp->kids = nv_finish(P, &a, &tp->nkids);
                v = tp;
            }
            x->b = v;
        } else {
            if (target->kind != JN_NAME) {
                pfail(P, PEEK(P), "a block set needs a plain variable name");
                return NULL;
            }
            static const char *const ends[] = {"endset", NULL};
            if (expect_type(P, TK_BE, "'%}'") || p_body(P, x, 0, ends, open)) return NULL;
            end_tag(P, ends);
        }
    } else if (is_name(k, "macro")) {
        x = node(P, JN_MACRO, k);
        const jj_tok *nk = PEEK(P);
        if (!x) return NULL;
        if (nk->type != TK_NAME) {
            pfail(P, nk, "expected a macro name, got %s", tk_desc(nk));
            return NULL;
        }
        x->s = nk->s;
        x->slen = nk->n;
        P->i++;
        if (p_params(P, x) || expect_type(P, TK_BE, "'%}'")) return NULL;
        static const char *const ends[] = {"endmacro", NULL};
        int loops = P->loops;
        P->loops = 0;
        int rc = p_body(P, x, 0, ends, open);
        P->loops = loops;
        if (rc) return NULL;
        end_tag(P, ends);
        if (PEEK(P)->type == TK_NAME) /* {% endmacro name %} */
            P->i++;
        x->i = uses_caller(x->kids, x->nkids); /* only such macros accept a {% call %} block */
    } else if (is_name(k, "call")) {
        x = node(P, JN_CALLBLK, k);
        if (!x) return NULL;
        if (is_op(PEEK(P), "(") && p_params(P, x)) return NULL;
        jj_node *c = p_expr(P, 1);
        if (!c) return NULL;
        if (c->kind != JN_CALL) {
            pfail(P, k, "{%% call %%} needs a macro call");
            return NULL;
        }
        x->a = c;
        static const char *const ends[] = {"endcall", NULL};
        int loops = P->loops;
        P->loops = 0;
        int rc = expect_type(P, TK_BE, "'%}'") || p_body(P, x, 0, ends, open);
        P->loops = loops;
        if (rc) return NULL;
        end_tag(P, ends);
    } else if (is_name(k, "filter")) {
        x = node(P, JN_FILTBLK, k);
        if (!x) return NULL;
        /* parse "name(args) | name2" as filters applied to a placeholder operand (NULL) */
        P->i--; /* reuse the filter parser: it expects to skip one token ('|') */
        jj_node *f = p_filter_or_test(P, NULL, 0);
        while (f && is_op(PEEK(P), "|"))
            f = p_filter_or_test(P, f, 0);
        if (!f) return NULL;
        x->a = f;
        static const char *const ends[] = {"endfilter", NULL};
        if (expect_type(P, TK_BE, "'%}'") || p_body(P, x, 0, ends, open)) return NULL;
        end_tag(P, ends);
    } else if (is_name(k, "generation")) {
        x = node(P, JN_BLOCK, k);
        static const char *const ends[] = {"endgeneration", NULL};
        if (!x || expect_type(P, TK_BE, "'%}'") || p_body(P, x, 0, ends, open)) return NULL;
        end_tag(P, ends);
    } else if (is_name(k, "break") || is_name(k, "continue")) {
        if (!P->loops) {
            pfail(P, k, "'%.*s' outside of a for loop", (int)k->n, k->s);
            return NULL;
        }
        x = node(P, k->s[0] == 'b' ? JN_BREAK : JN_CONTINUE, k);
    } else {
        pfail(P, k, "unknown or unsupported statement '%.*s'", (int)k->n, k->s);
        return NULL;
    }
    if (x && expect_type(P, TK_BE, "'%}'")) return NULL;
    return x;
}

/* Parse nodes into owner->kids (or kids2 when second) until "{% <one of ends>" (not consumed) or,
 * when ends is NULL, the end of the template. */
static int p_body(parser *P, jj_node *owner, int second, const char *const *ends,
                  const jj_tok *opener)
{
    nvec a = {0};
    if (enter(P)) return -1;
    for (;;) {
        const jj_tok *k = PEEK(P);
        jj_node *x = NULL;
        if (k->type == TK_EOF) {
            if (ends) {
                int last = 0;
                while (ends[last + 1])
                    last++;
                pfail(P, opener, "'{%% %.*s %%}' is never closed (expected '{%% %s %%}')",
                      (int)P->v[opener - P->v + 1].n, P->v[opener - P->v + 1].s, ends[last]);
                goto fail;
            }
            break;
        }
        if (k->type == TK_TEXT) {
            P->i++;
            if ((x = node(P, JN_TEXT, k))) {
                x->s = k->s;
                x->slen = k->n;
            }
        } else if (k->type == TK_VB) {
            P->i++;
            x = node(P, JN_OUTPUT, k);
            if (x && (!(x->a = p_expr(P, 1)) || expect_type(P, TK_VE, "'}}'"))) x = NULL;
        } else if (k->type == TK_BB) {
            const jj_tok *nk = &P->v[P->i + 1];
            int stop = 0;
            for (int e = 0; ends && ends[e]; e++)
                stop |= is_name(nk, ends[e]);
            if (stop) break;
            x = p_statement(P);
        } else {
            pfail(P, k, "unexpected %s", tk_desc(k));
        }
        if (!x || nv_push(P, &a, x)) goto fail;
    }
    P->depth--;
    if (second)
        owner->kids2 = nv_finish(P, &a, &owner->nkids2);
    else
        owner->kids = nv_finish(P, &a, &owner->nkids);
    return (P->err && P->err->code) ? -1 : 0;
fail:
    free(a.v);
    if (P->err && !P->err->code) lr_error_set(P->err, LR_EFORMAT, "chat template: syntax error");
    return -1;
}

int jj_parse(jj_template *t, lr_error *err)
{
    lr_error local;
    if (!err) err = &local;
    lr_error_clear(err);
    jj_tok *toks = NULL;
    size_t n = 0;
    int rc = jj_lex(t, err, &toks, &n);
    if (rc) return rc;
    parser P = {.t = t, .err = err, .v = toks, .n = n};
    t->root = node(&P, JN_BLOCK, &toks[0]);
    if (!t->root || p_body(&P, t->root, 0, NULL, NULL)) rc = err->code ? err->code : LR_EFORMAT;
    free(toks);
    return rc;
}
