/* jinja_eval.c — the chat-template interpreter: scopes, statements and expressions.
 *
 * Semantics are Python Jinja2's as transformers configures it (ImmutableSandboxedEnvironment,
 * default Undefined, loopcontrols): a missing variable or attribute is Undefined, which prints
 * as "", is false, iterates as empty and has length 0, but using it in arithmetic or taking an
 * attribute of it is an error; `set` inside a loop or macro stays local (namespace() objects
 * carry state out); lists and dicts from the request cannot be mutated.
 *
 * Every render owns a ctx: an arena for values (capped by jj_options.max_memory), the output
 * buffer (capped by max_output), a step counter (loop iterations, statements, calls) and a call
 * depth — hostile templates end in an error, never a crash or a hang. Filters, tests and methods
 * are in jinja_builtins.c. Not here: parsing (jinja_parse.c), value printing (jinja_value.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja_eval.h"

int jj_fail(jj_ctx *c, const jj_node *n, int code, const char *fmt, ...)
{
    if (c->err && c->err->code) return c->err->code; /* the first error wins */
    char msg[440];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n) {
        int line, col;
        jj_line_col(c->t->src, c->t->len, n->pos, &line, &col);
        lr_error_set(c->err, code, "chat template line %d, column %d: %s", line, col, msg);
    } else {
        lr_error_set(c->err, code, "chat template: %s", msg);
    }
    if (code == LR_EINTERNAL && c->err) c->err->http = 500;
    return code;
}

int jj_oom(jj_ctx *c, const jj_node *n)
{
    if (c->arena.limit && c->arena.used + (1 << 17) > c->arena.limit)
        return jj_fail(c, n, LR_EINTERNAL, "memory limit of %zu bytes exceeded", c->arena.limit);
    return jj_fail(c, n, LR_ENOMEM, "out of memory");
}

void *jj_alloc(jj_ctx *c, const jj_node *n, size_t size)
{
    void *p = jj_arena_alloc(&c->arena, size);
    if (!p) {
        if (c->arena.limit && c->arena.used + size + (64 << 10) + 64 > c->arena.limit)
            jj_fail(c, n, LR_EINTERNAL, "memory limit of %zu bytes exceeded", c->arena.limit);
        else
            jj_oom(c, n);
    }
    return p;
}

int jj_step(jj_ctx *c, const jj_node *n)
{
    if (++c->steps > c->opt.max_steps)
        return jj_fail(c, n, LR_EINTERNAL, "the template ran more than %llu steps",
                       (unsigned long long)c->opt.max_steps);
    return 0;
}

int jj_mkstr(jj_ctx *c, const jj_node *n, const char *s, size_t len, jv *out)
{
    char *p = jj_alloc(c, n, len + 1);
    if (!p) return c->err->code;
    if (len) memcpy(p, s, len);
    out->t = JV_STR;
    out->tuple = 0;
    out->u.s.p = p;
    out->u.s.n = len;
    return 0;
}

jj_list *jj_list_new(jj_ctx *c, const jj_node *n, size_t cap)
{
    jj_list *l = jj_alloc(c, n, sizeof *l);
    if (!l) return NULL;
    if (cap && !(l->v = jj_alloc(c, n, cap * sizeof *l->v))) return NULL;
    l->cap = cap;
    return l;
}

int jj_list_push(jj_ctx *c, const jj_node *n, jj_list *l, jv v)
{
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 8;
        jv *nv = jj_alloc(c, n, nc * sizeof *nv);
        if (!nv) return c->err->code;
        if (l->n) memcpy(nv, l->v, l->n * sizeof *nv);
        l->v = nv;
        l->cap = nc;
    }
    l->v[l->n++] = v;
    return 0;
}

int jj_dict_set(jj_ctx *c, const jj_node *n, jj_dict *d, const char *k, size_t kn, jv v)
{
    jv *old = jj_dict_get(d, k, kn);
    if (old) {
        *old = v;
        return 0;
    }
    if (d->n == d->cap) {
        size_t nc = d->cap ? d->cap * 2 : 8;
        jj_kv *nkv = jj_alloc(c, n, nc * sizeof *nkv);
        if (!nkv) return c->err->code;
        if (d->n) memcpy(nkv, d->kv, d->n * sizeof *nkv);
        d->kv = nkv;
        d->cap = nc;
    }
    d->kv[d->n].k = k;
    d->kv[d->n].kn = kn;
    d->kv[d->n].v = v;
    d->n++;
    return 0;
}

jv jj_undef(const char *name)
{
    jv v = {.t = JV_UNDEF};
    v.u.s.p = name;
    v.u.s.n = name ? strlen(name) : 0;
    return v;
}

/* ---- scopes ---------------------------------------------------------------------------------- */

static jj_frame *frame_new(jj_ctx *c, const jj_node *n, jj_frame *parent)
{
    jj_frame *f = jj_alloc(c, n, sizeof *f);
    if (f) f->parent = parent;
    return f;
}

int jj_frame_set(jj_ctx *c, const jj_node *n, jj_frame *f, const char *k, size_t kn, jv v)
{
    return jj_dict_set(c, n, &f->vars, k, kn, v);
}

static const struct {
    const char *name;
    int id;
} GLOBALS[] = {{"range", JF_RANGE},
               {"namespace", JF_NAMESPACE},
               {"dict", JF_DICT},
               {"raise_exception", JF_RAISE},
               {"strftime_now", JF_STRFTIME}};

static jv lookup(jj_ctx *c, const char *k, size_t kn)
{
    for (jj_frame *f = c->frame; f; f = f->parent) {
        jv *v = jj_dict_get(&f->vars, k, kn);
        if (v) return *v;
    }
    for (size_t g = 0; g < sizeof GLOBALS / sizeof GLOBALS[0]; g++)
        if (strlen(GLOBALS[g].name) == kn && memcmp(GLOBALS[g].name, k, kn) == 0) {
            jv v = {.t = JV_FUNC};
            v.u.i = GLOBALS[g].id;
            return v;
        }
    jv u = {.t = JV_UNDEF};
    u.u.s.p = k;
    u.u.s.n = kn;
    return u;
}

/* "'x' is undefined" — Jinja2's UndefinedError text. */
int jj_undef_error(jj_ctx *c, const jj_node *n, jv u)
{
    if (u.u.s.p)
        return jj_fail(c, n, LR_EINVAL, "'%.*s' is undefined", (int)(u.u.s.n > 200 ? 200 : u.u.s.n),
                       u.u.s.p);
    return jj_fail(c, n, LR_EINVAL, "a value is undefined");
}

/* ---- expressions ----------------------------------------------------------------------------- */

static int to_int_index(jv v, int64_t *out)
{
    if (v.t == JV_INT || v.t == JV_BOOL) {
        *out = v.u.i;
        return 1;
    }
    return 0;
}

/* Attribute `name` of `obj` (obj.name); Jinja2's getattr falls back to the item. */
int jj_getattr(jj_ctx *c, const jj_node *n, jv obj, const char *name, size_t nlen, jv *out)
{
    switch (obj.t) {
    case JV_UNDEF:
        return jj_undef_error(c, n, obj);
    case JV_DICT: {
        /* Jinja2's getattr tries the Python attribute first: d.items is the method even when
         * d has an "items" key (d['items'] is the item) */
        if (jj_method_exists(obj, name, nlen)) break;
        jv *v = jj_dict_get(obj.u.d, name, nlen);
        if (v) {
            *out = *v;
            return 0;
        }
        break;
    }
    case JV_NS: {
        jv *v = jj_dict_get(obj.u.d, name, nlen);
        if (v) {
            *out = *v;
            return 0;
        }
        *out = jj_undef(NULL);
        out->u.s.p = name;
        out->u.s.n = nlen;
        return 0;
    }
    case JV_LOOP:
        return jj_loop_attr(c, n, obj, name, nlen, out);
    default:
        break;
    }
    if (jj_method_exists(obj, name, nlen)) {
        jj_method *m = jj_alloc(c, n, sizeof *m);
        if (!m) return c->err->code;
        m->self = obj;
        m->name = name;
        m->nlen = nlen;
        out->t = JV_METHOD;
        out->u.ptr = m;
        return 0;
    }
    *out = jj_undef(NULL);
    out->u.s.p = name;
    out->u.s.n = nlen;
    return 0;
}

/* obj[key] */
int jj_getitem(jj_ctx *c, const jj_node *n, jv obj, jv key, jv *out)
{
    int64_t i;
    switch (obj.t) {
    case JV_UNDEF:
        return jj_undef_error(c, n, obj);
    case JV_DICT:
    case JV_NS:
        if (key.t == JV_STR) {
            jv *v =
                jj_dict_get(obj.u.d, key.u.s.p, key.u.s.n); /* the item first, then attributes */
            if (v) {
                *out = *v;
                return 0;
            }
            return jj_getattr(c, n, obj, key.u.s.p, key.u.s.n, out);
        }
        break;
    case JV_LIST:
        if (to_int_index(key, &i)) {
            if (i < 0) i += (int64_t)obj.u.l->n;
            if (i >= 0 && (size_t)i < obj.u.l->n) {
                *out = obj.u.l->v[i];
                return 0;
            }
        }
        break;
    case JV_STR:
        if (to_int_index(key, &i)) {
            size_t len = jj_utf8_len(obj.u.s.p, obj.u.s.n);
            if (i < 0) i += (int64_t)len;
            if (i >= 0 && (size_t)i < len) {
                size_t a = jj_utf8_offset(obj.u.s.p, obj.u.s.n, (size_t)i);
                size_t b = jj_utf8_offset(obj.u.s.p, obj.u.s.n, (size_t)i + 1);
                out->t = JV_STR;
                out->tuple = 0;
                out->u.s.p = obj.u.s.p + a;
                out->u.s.n = b - a;
                return 0;
            }
        }
        break;
    case JV_LOOP:
        if (key.t == JV_STR) return jj_getattr(c, n, obj, key.u.s.p, key.u.s.n, out);
        break;
    default:
        break;
    }
    *out = jj_undef(NULL);
    return 0;
}

static int slice_bound(jj_ctx *c, const jj_node *n, const jj_node *e, int64_t *out, int *given)
{
    *given = 0;
    if (!e) return 0;
    jv v;
    int rc = jj_eval(c, e, &v);
    if (rc) return rc;
    if (v.t == JV_NONE || v.t == JV_UNDEF) return 0;
    if (!to_int_index(v, out))
        return jj_fail(c, n, LR_EINVAL, "slice indices must be integers, not %s", jv_type_name(v));
    *given = 1;
    return 0;
}

/* Python slice semantics on lists and strings (code points). */
static int eval_slice(jj_ctx *c, const jj_node *n, jv obj, jv *out)
{
    int64_t start = 0, stop = 0, step = 1;
    int gs, ge, gt, rc;
    if ((rc = slice_bound(c, n, n->kids[0], &start, &gs)) ||
        (rc = slice_bound(c, n, n->kids[1], &stop, &ge)) ||
        (rc = slice_bound(c, n, n->kids[2], &step, &gt)))
        return rc;
    if (step == 0) return jj_fail(c, n, LR_EINVAL, "slice step cannot be zero");
    if (obj.t == JV_UNDEF) return jj_undef_error(c, n, obj);
    if (obj.t != JV_LIST && obj.t != JV_STR)
        return jj_fail(c, n, LR_EINVAL, "cannot slice a %s", jv_type_name(obj));
    int64_t len =
        obj.t == JV_LIST ? (int64_t)obj.u.l->n : (int64_t)jj_utf8_len(obj.u.s.p, obj.u.s.n);
    if (step > 0) {
        if (!gs)
            start = 0;
        else if (start < 0)
            start = start + len < 0 ? 0 : start + len;
        else if (start > len)
            start = len;
        if (!ge)
            stop = len;
        else if (stop < 0)
            stop = stop + len < 0 ? 0 : stop + len;
        else if (stop > len)
            stop = len;
    } else {
        if (!gs)
            start = len - 1;
        else if (start < 0)
            start = start + len < -1 ? -1 : start + len;
        else if (start > len - 1)
            start = len - 1;
        if (!ge)
            stop = -1;
        else if (stop < 0)
            stop = stop + len < -1 ? -1 : stop + len;
        else if (stop > len - 1)
            stop = len - 1;
    }
    if (obj.t == JV_LIST) {
        jj_list *l = jj_list_new(c, n, 0);
        if (!l) return c->err->code;
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
            if ((rc = jj_list_push(c, n, l, obj.u.l->v[i]))) return rc;
        out->t = JV_LIST;
        out->tuple = obj.tuple;
        out->u.l = l;
        return 0;
    }
    /* strings: byte offset of every code point, then copy the chosen ones */
    size_t *off = jj_alloc(c, n, ((size_t)len + 1) * sizeof *off);
    char *buf = jj_alloc(c, n, obj.u.s.n + 1);
    if (!off || !buf) return c->err->code;
    size_t k = 0;
    for (size_t i = 0; i < obj.u.s.n; i++)
        if (((unsigned char)obj.u.s.p[i] & 0xC0) != 0x80) off[k++] = i;
    off[k] = obj.u.s.n;
    size_t o = 0;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        size_t a = off[i], b = off[i + 1];
        memcpy(buf + o, obj.u.s.p + a, b - a);
        o += b - a;
    }
    out->t = JV_STR;
    out->tuple = 0;
    out->u.s.p = buf;
    out->u.s.n = o;
    return 0;
}

int jj_eval_args(jj_ctx *c, const jj_node *call, jj_args *a)
{
    memset(a, 0, sizeof *a);
    if (!call->nkids) return 0;
    a->pos = jj_alloc(c, call, call->nkids * sizeof *a->pos);
    a->kw = jj_alloc(c, call, call->nkids * sizeof *a->kw);
    a->kwv = jj_alloc(c, call, call->nkids * sizeof *a->kwv);
    if (!a->pos || !a->kw || !a->kwv) return c->err->code;
    for (size_t i = 0; i < call->nkids; i++) {
        const jj_node *k = call->kids[i];
        int rc;
        if (k->kind == JN_KWARG) {
            for (size_t j = 0; j < a->nkw; j++)
                if (a->kw[j]->slen == k->slen && memcmp(a->kw[j]->s, k->s, k->slen) == 0)
                    return jj_fail(c, k, LR_EINVAL, "keyword argument '%.*s' given twice",
                                   (int)k->slen, k->s);
            a->kw[a->nkw] = k;
            rc = jj_eval(c, k->a, &a->kwv[a->nkw]);
            a->nkw++;
        } else {
            rc = jj_eval(c, k, &a->pos[a->npos++]);
        }
        if (rc) return rc;
    }
    return 0;
}

/* Argument i (positional) or `name` (keyword); 1 when given. */
int jj_arg(const jj_args *a, size_t i, const char *name, jv *out)
{
    if (i < a->npos) {
        *out = a->pos[i];
        return 1;
    }
    for (size_t j = 0; name && j < a->nkw; j++)
        if (a->kw[j]->slen == strlen(name) && memcmp(a->kw[j]->s, name, a->kw[j]->slen) == 0) {
            *out = a->kwv[j];
            return 1;
        }
    return 0;
}

/* Refuse arguments a builtin does not take: at most npos positional, keywords from names. */
int jj_check_args(jj_ctx *c, const jj_node *n, const jj_args *a, const char *what, size_t npos,
                  const char *const *names)
{
    if (a->npos > npos)
        return jj_fail(c, n, LR_EINVAL, "%s takes at most %zu positional argument%s (%zu given)",
                       what, npos, npos == 1 ? "" : "s", a->npos);
    for (size_t j = 0; j < a->nkw; j++) {
        int ok = 0;
        for (size_t k = 0; names && names[k]; k++)
            ok |= strlen(names[k]) == a->kw[j]->slen &&
                  memcmp(names[k], a->kw[j]->s, a->kw[j]->slen) == 0;
        if (!ok)
            return jj_fail(c, n, LR_EINVAL, "%s got an unexpected keyword argument '%.*s'", what,
                           (int)a->kw[j]->slen, a->kw[j]->s);
    }
    return 0;
}

/* Render body (kids) into a fresh string (for macros, callers, block set, filter blocks). */
static int capture(jj_ctx *c, const jj_node *n, jj_node *const *kids, size_t nk, jv *out)
{
    jj_buf *saved = c->out, b = {.limit = c->opt.max_output};
    c->out = &b;
    int rc = jj_exec_body(c, kids, nk);
    c->out = saved;
    if (!rc) rc = jj_mkstr(c, n, b.p ? b.p : "", b.n, out);
    free(b.p);
    return rc;
}

/* Call macro m with args; caller (may be NULL) becomes the `caller` variable. */
static int call_macro(jj_ctx *c, const jj_node *n, const jj_node *m, const jj_args *a,
                      jj_caller *caller, jv *out)
{
    if (c->depth >= c->opt.max_depth)
        return jj_fail(c, n, LR_EINTERNAL, "macro calls nested deeper than %d", c->opt.max_depth);
    if (caller && !m->i)
        return jj_fail(c, n, LR_EINVAL,
                       "macro '%.*s' is called from a {%% call %%} block but "
                       "never uses caller()",
                       (int)m->slen, m->s);
    if (a->npos > m->nparams)
        return jj_fail(c, n, LR_EINVAL, "macro '%.*s' takes at most %zu argument%s (%zu given)",
                       (int)m->slen, m->s, m->nparams, m->nparams == 1 ? "" : "s", a->npos);
    int rc = jj_step(c, n);
    if (rc) return rc;
    jj_frame *f = frame_new(c, n, c->root);
    if (!f) return c->err->code;
    jj_frame *saved = c->frame;
    for (size_t j = 0; j < a->nkw; j++) {
        size_t p;
        for (p = 0; p < m->nparams; p++)
            if (strlen(m->params[p]) == a->kw[j]->slen &&
                memcmp(m->params[p], a->kw[j]->s, a->kw[j]->slen) == 0)
                break;
        if (p == m->nparams)
            return jj_fail(c, n, LR_EINVAL, "macro '%.*s' has no parameter '%.*s'", (int)m->slen,
                           m->s, (int)a->kw[j]->slen, a->kw[j]->s);
        if (p < a->npos)
            return jj_fail(c, n, LR_EINVAL, "macro '%.*s' got parameter '%s' twice", (int)m->slen,
                           m->s, m->params[p]);
    }
    c->frame = f;
    c->depth++;
    for (size_t p = 0; p < m->nparams && !rc; p++) {
        jv v;
        if (!jj_arg(a, p, m->params[p], &v)) {
            if (m->defs[p])
                rc = jj_eval(c, m->defs[p], &v);
            else
                v = jj_undef(m->params[p]);
        }
        if (!rc) rc = jj_frame_set(c, n, f, m->params[p], strlen(m->params[p]), v);
    }
    if (!rc && caller) {
        jv cv = {.t = JV_CALLER};
        cv.u.ptr = caller;
        rc = jj_frame_set(c, n, f, "caller", 6, cv);
    }
    if (!rc) rc = capture(c, n, m->kids, m->nkids, out);
    c->depth--;
    c->frame = saved;
    return rc;
}

static int call_caller(jj_ctx *c, const jj_node *n, jj_caller *cl, const jj_args *a, jv *out)
{
    if (c->depth >= c->opt.max_depth)
        return jj_fail(c, n, LR_EINTERNAL, "calls nested deeper than %d", c->opt.max_depth);
    const jj_node *blk = cl->blk;
    jj_frame *f = frame_new(c, n, cl->frame);
    if (!f) return c->err->code;
    jj_frame *saved = c->frame;
    c->frame = f;
    c->depth++;
    int rc = 0;
    for (size_t p = 0; p < blk->nparams && !rc; p++) {
        jv v;
        if (!jj_arg(a, p, blk->params[p], &v)) {
            if (blk->defs[p])
                rc = jj_eval(c, blk->defs[p], &v);
            else
                v = jj_undef(blk->params[p]);
        }
        if (!rc) rc = jj_frame_set(c, n, f, blk->params[p], strlen(blk->params[p]), v);
    }
    if (!rc) rc = capture(c, n, blk->kids, blk->nkids, out);
    c->depth--;
    c->frame = saved;
    return rc;
}

static int eval_call(jj_ctx *c, const jj_node *n, jj_caller *caller, jv *out)
{
    jv fn;
    jj_args a;
    int rc = jj_eval(c, n->a, &fn);
    if (!rc) rc = jj_eval_args(c, n, &a);
    if (rc) return rc;
    switch (fn.t) {
    case JV_MACRO:
        return call_macro(c, n, fn.u.ptr, &a, caller, out);
    case JV_CALLER:
        return call_caller(c, n, fn.u.ptr, &a, out);
    case JV_FUNC:
        return jj_call_global(c, n, (int)fn.u.i, &a, out);
    case JV_METHOD:
        return jj_call_method(c, n, fn.u.ptr, &a, out);
    case JV_UNDEF:
        return jj_undef_error(c, n, fn);
    default:
        return jj_fail(c, n, LR_EINVAL, "a %s is not callable", jv_type_name(fn));
    }
}

static int arith_error(jj_ctx *c, const jj_node *n, const char *op, jv a, jv b)
{
    if (a.t == JV_UNDEF) return jj_undef_error(c, n, a);
    if (b.t == JV_UNDEF) return jj_undef_error(c, n, b);
    return jj_fail(c, n, LR_EINVAL, "unsupported operand types for %s: '%s' and '%s'", op,
                   jv_type_name(a), jv_type_name(b));
}

static int is_numv(jv v)
{
    return v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL;
}

static double numv(jv v)
{
    return v.t == JV_FLOAT ? v.u.f : (double)v.u.i;
}

static int concat_str(jj_ctx *c, const jj_node *n, const char *a, size_t an, const char *b,
                      size_t bn, jv *out)
{
    char *p = jj_alloc(c, n, an + bn + 1);
    if (!p) return c->err->code;
    if (an) memcpy(p, a, an);
    if (bn) memcpy(p + an, b, bn);
    out->t = JV_STR;
    out->tuple = 0;
    out->u.s.p = p;
    out->u.s.n = an + bn;
    return 0;
}

/* Python `a in b`. */
int jj_contains(jj_ctx *c, const jj_node *n, jv b, jv a, int *res)
{
    *res = 0;
    switch (b.t) {
    case JV_STR:
        if (a.t != JV_STR)
            return jj_fail(c, n, LR_EINVAL, "'in <string>' requires a string on the left, not %s",
                           jv_type_name(a));
        *res = a.u.s.n == 0 || memmem(b.u.s.p, b.u.s.n, a.u.s.p, a.u.s.n) != NULL;
        return 0;
    case JV_LIST:
        for (size_t i = 0; i < b.u.l->n && !*res; i++)
            *res = jv_equal(b.u.l->v[i], a);
        return 0;
    case JV_DICT:
    case JV_NS:
        *res = a.t == JV_STR && jj_dict_get(b.u.d, a.u.s.p, a.u.s.n) != NULL;
        return 0;
    case JV_UNDEF:
        return 0;
    default:
        return jj_fail(c, n, LR_EINVAL, "argument of type '%s' is not iterable", jv_type_name(b));
    }
}

static int eval_binop(jj_ctx *c, const jj_node *n, jv *out)
{
    jv a, b;
    int rc = jj_eval(c, n->a, &a);
    if (!rc) rc = jj_eval(c, n->b, &b);
    if (rc) return rc;
    out->tuple = 0;
    switch (n->op) {
    case JO_EQ:
    case JO_NE:
        out->t = JV_BOOL;
        out->u.i = jv_equal(a, b) == (n->op == JO_EQ);
        return 0;
    case JO_LT:
    case JO_GT:
    case JO_LE:
    case JO_GE: {
        int r = jv_compare(a, b, 0);
        if (r == -2) {
            static const char *const names[] = {"<", ">", "<=", ">="};
            if (a.t == JV_UNDEF || b.t == JV_UNDEF) return arith_error(c, n, "", a, b);
            return jj_fail(c, n, LR_EINVAL, "'%s' not supported between '%s' and '%s'",
                           names[n->op - JO_LT], jv_type_name(a), jv_type_name(b));
        }
        out->t = JV_BOOL;
        out->u.i = n->op == JO_LT   ? r < 0
                   : n->op == JO_GT ? r > 0
                   : n->op == JO_LE ? r <= 0
                                    : r >= 0;
        return 0;
    }
    case JO_IN:
    case JO_NOTIN: {
        int r;
        if ((rc = jj_contains(c, n, b, a, &r))) return rc;
        out->t = JV_BOOL;
        out->u.i = r == (n->op == JO_IN);
        return 0;
    }
    case JO_CONCAT: {
        jj_buf s = {.limit = c->opt.max_output};
        rc = jv_str(&s, a);
        if (!rc) rc = jv_str(&s, b);
        if (!rc)
            rc = jj_mkstr(c, n, s.p ? s.p : "", s.n, out);
        else
            rc = jj_fail(c, n, LR_EINTERNAL, "string too long");
        free(s.p);
        return rc;
    }
    default:
        break;
    }
    static const char *const opname[] = {"+", "-", "*", "/", "//", "%", "**"};
    const char *on = opname[n->op];
    if (a.t == JV_STR && b.t == JV_STR && n->op == JO_ADD)
        return concat_str(c, n, a.u.s.p, a.u.s.n, b.u.s.p, b.u.s.n, out);
    if (a.t == JV_LIST && b.t == JV_LIST && n->op == JO_ADD && a.tuple != b.tuple)
        return arith_error(c, n, on, a, b); /* list + tuple is a TypeError in Python */
    if (a.t == JV_LIST && b.t == JV_LIST && n->op == JO_ADD) {
        jj_list *l = jj_list_new(c, n, a.u.l->n + b.u.l->n);
        if (!l) return c->err->code;
        if (a.u.l->n) memcpy(l->v, a.u.l->v, a.u.l->n * sizeof *l->v);
        if (b.u.l->n) memcpy(l->v + a.u.l->n, b.u.l->v, b.u.l->n * sizeof *l->v);
        l->n = a.u.l->n + b.u.l->n;
        out->t = JV_LIST;
        out->tuple = a.tuple && b.tuple;
        out->u.l = l;
        return 0;
    }
    if (n->op == JO_MUL && ((a.t == JV_STR && (b.t == JV_INT || b.t == JV_BOOL)) ||
                            (b.t == JV_STR && (a.t == JV_INT || a.t == JV_BOOL)))) {
        jv s = a.t == JV_STR ? a : b;
        int64_t k = a.t == JV_STR ? b.u.i : a.u.i;
        if (k < 0) k = 0;
        if (s.u.s.n && (uint64_t)k > c->opt.max_output / s.u.s.n)
            return jj_fail(c, n, LR_EINTERNAL, "string repetition larger than the output limit");
        char *p = jj_alloc(c, n, s.u.s.n * (size_t)k + 1);
        if (!p) return c->err->code;
        for (int64_t i = 0; i < k; i++)
            memcpy(p + (size_t)i * s.u.s.n, s.u.s.p, s.u.s.n);
        out->t = JV_STR;
        out->u.s.p = p;
        out->u.s.n = s.u.s.n * (size_t)k;
        return 0;
    }
    if (n->op == JO_MUL && ((a.t == JV_LIST && (b.t == JV_INT || b.t == JV_BOOL)) ||
                            (b.t == JV_LIST && (a.t == JV_INT || a.t == JV_BOOL)))) {
        jv s = a.t == JV_LIST ? a : b;
        int64_t k = a.t == JV_LIST ? b.u.i : a.u.i;
        if (k < 0) k = 0;
        if (s.u.l->n && (uint64_t)k > 1000000 / s.u.l->n)
            return jj_fail(c, n, LR_EINTERNAL, "list repetition longer than 1000000 items");
        jj_list *l = jj_list_new(c, n, s.u.l->n * (size_t)k);
        if (!l) return c->err->code;
        for (int64_t i = 0; i < k; i++)
            for (size_t j = 0; j < s.u.l->n; j++)
                l->v[l->n++] = s.u.l->v[j];
        out->t = JV_LIST;
        out->tuple = s.tuple;
        out->u.l = l;
        return 0;
    }
    if (n->op == JO_MOD && a.t == JV_STR) return jj_percent_format(c, n, a, b, out);
    if (!is_numv(a) || !is_numv(b)) return arith_error(c, n, on, a, b);
    int fl = a.t == JV_FLOAT || b.t == JV_FLOAT;
    if (!fl && n->op != JO_DIV) {
        int64_t x = a.u.i, y = b.u.i, r = 0;
        int ovf = 0;
        switch (n->op) {
        case JO_ADD:
            ovf = __builtin_add_overflow(x, y, &r);
            break;
        case JO_SUB:
            ovf = __builtin_sub_overflow(x, y, &r);
            break;
        case JO_MUL:
            ovf = __builtin_mul_overflow(x, y, &r);
            break;
        case JO_FLOORDIV:
        case JO_MOD:
            if (y == 0) return jj_fail(c, n, LR_EINVAL, "integer division or modulo by zero");
            if (x == INT64_MIN && y == -1) {
                ovf = 1;
                break;
            }
            r = n->op == JO_FLOORDIV ? x / y : x % y;
            if (n->op == JO_FLOORDIV && (x % y != 0) && ((x < 0) != (y < 0))) r--;
            if (n->op == JO_MOD && r != 0 && ((r < 0) != (y < 0))) r += y;
            break;
        case JO_POW:
            if (y < 0) {
                fl = 1;
                break;
            }
            r = 1;
            for (int64_t i = 0; i < y && !ovf; i++)
                ovf = __builtin_mul_overflow(r, x, &r);
            if (x == 0 || x == 1) ovf = 0, r = y == 0 ? 1 : x;
            break;
        }
        if (!fl) {
            if (ovf) return jj_fail(c, n, LR_EINVAL, "integer overflow in '%s'", on);
            out->t = JV_INT;
            out->u.i = r;
            return 0;
        }
    }
    double x = numv(a), y = numv(b), r;
    switch (n->op) {
    case JO_ADD:
        r = x + y;
        break;
    case JO_SUB:
        r = x - y;
        break;
    case JO_MUL:
        r = x * y;
        break;
    case JO_DIV:
        if (y == 0) return jj_fail(c, n, LR_EINVAL, "division by zero");
        r = x / y;
        break;
    case JO_FLOORDIV:
    case JO_MOD:
        if (y == 0) return jj_fail(c, n, LR_EINVAL, "float division or modulo by zero");
        r = n->op == JO_FLOORDIV ? floor(x / y) : x - floor(x / y) * y;
        break;
    default:
        if (x == 0 && y < 0)
            return jj_fail(c, n, LR_EINVAL, "0.0 cannot be raised to a negative power");
        r = pow(x, y);
    }
    out->t = JV_FLOAT;
    out->u.f = r;
    return 0;
}

/* Name a missing item for the UndefinedError a later use raises: "messages[0]". */
static void name_missing_item(jj_ctx *c, const jj_node *n, jv key, jv *out)
{
    char buf[160];
    const jj_node *o = n->a;
    int on = (o->kind == JN_NAME || o->kind == JN_ATTR) ? (int)(o->slen > 60 ? 60 : o->slen) : 0;
    const char *os = on ? o->s : "";
    int len;
    if (key.t == JV_INT)
        len = snprintf(buf, sizeof buf, "%.*s[%lld]", on, os, (long long)key.u.i);
    else if (key.t == JV_STR)
        len = snprintf(buf, sizeof buf, "%.*s['%.*s']", on, os,
                       (int)(key.u.s.n > 60 ? 60 : key.u.s.n), key.u.s.p);
    else
        return;
    char *p = jj_arena_alloc(&c->arena, (size_t)len + 1);
    if (p) {
        memcpy(p, buf, (size_t)len + 1);
        out->u.s.p = p;
        out->u.s.n = (size_t)len;
    }
}

int jj_eval(jj_ctx *c, const jj_node *n, jv *out)
{
    int rc;
    if (c->edepth >= 400) return jj_fail(c, n, LR_EINTERNAL, "expression nested too deeply");
    c->edepth++;
    memset(out, 0, sizeof *out);
    switch (n->kind) {
    case JN_NONE:
        out->t = JV_NONE;
        rc = 0;
        break;
    case JN_BOOL:
        out->t = JV_BOOL;
        out->u.i = n->i;
        rc = 0;
        break;
    case JN_INT:
        out->t = JV_INT;
        out->u.i = n->i;
        rc = 0;
        break;
    case JN_FLOAT:
        out->t = JV_FLOAT;
        out->u.f = n->f;
        rc = 0;
        break;
    case JN_STR:
        out->t = JV_STR;
        out->u.s.p = n->s;
        out->u.s.n = n->slen;
        rc = 0;
        break;
    case JN_NAME:
        *out = lookup(c, n->s, n->slen);
        rc = 0;
        break;
    case JN_LIST:
    case JN_TUPLE: {
        jj_list *l = jj_list_new(c, n, n->nkids);
        rc = l ? 0 : c->err->code;
        for (size_t i = 0; !rc && i < n->nkids; i++)
            rc = jj_eval(c, n->kids[i], &l->v[l->n++]);
        if (!rc) {
            out->t = JV_LIST;
            out->tuple = n->kind == JN_TUPLE;
            out->u.l = l;
        }
        break;
    }
    case JN_DICT: {
        jj_dict *d = jj_alloc(c, n, sizeof *d);
        rc = d ? 0 : c->err->code;
        for (size_t i = 0; !rc && i < n->nkids; i++) {
            jv k, v;
            rc = jj_eval(c, n->kids[i], &k);
            if (!rc && k.t != JV_STR)
                rc = jj_fail(c, n->kids[i], LR_EINVAL, "dict keys must be strings, not %s",
                             jv_type_name(k));
            if (!rc) rc = jj_eval(c, n->kids2[i], &v);
            if (!rc) rc = jj_dict_set(c, n, d, k.u.s.p, k.u.s.n, v);
        }
        if (!rc) {
            out->t = JV_DICT;
            out->u.d = d;
        }
        break;
    }
    case JN_ATTR: {
        jv obj;
        rc = jj_eval(c, n->a, &obj);
        if (!rc) rc = jj_getattr(c, n, obj, n->s, n->slen, out);
        break;
    }
    case JN_ITEM: {
        jv obj, key;
        rc = jj_eval(c, n->a, &obj);
        if (!rc) rc = jj_eval(c, n->b, &key);
        if (!rc) rc = jj_getitem(c, n, obj, key, out);
        if (!rc && out->t == JV_UNDEF && !out->u.s.p) name_missing_item(c, n, key, out);
        break;
    }
    case JN_SLICE: {
        jv obj;
        rc = jj_eval(c, n->a, &obj);
        if (!rc) rc = eval_slice(c, n, obj, out);
        break;
    }
    case JN_CALL:
        rc = eval_call(c, n, NULL, out);
        break;
    case JN_FILTER: {
        jv in;
        rc = n->a ? jj_eval(c, n->a, &in) : (in = c->filter_input, 0);
        if (!rc) rc = jj_apply_filter(c, n, in, out);
        break;
    }
    case JN_TEST: {
        jv in;
        jj_args a;
        int r;
        rc = jj_eval(c, n->a, &in);
        if (!rc) rc = jj_eval_args(c, n, &a);
        if (!rc) rc = jj_apply_test(c, n, n->s, n->slen, in, a.pos, a.npos, &r);
        if (!rc) {
            out->t = JV_BOOL;
            out->u.i = n->i ? !r : r;
        }
        break;
    }
    case JN_BINOP:
        rc = eval_binop(c, n, out);
        break;
    case JN_UNARY: {
        jv a;
        rc = jj_eval(c, n->a, &a);
        if (rc) break;
        if (n->op == JO_NOT) {
            out->t = JV_BOOL;
            out->u.i = !jv_truthy(a);
        } else if (a.t == JV_INT || a.t == JV_BOOL) {
            if (n->op == JO_NEG && a.u.i == INT64_MIN) {
                rc = jj_fail(c, n, LR_EINVAL, "integer overflow in unary '-'");
                break;
            }
            out->t = JV_INT;
            out->u.i = n->op == JO_NEG ? -a.u.i : a.u.i;
        } else if (a.t == JV_FLOAT) {
            out->t = JV_FLOAT;
            out->u.f = n->op == JO_NEG ? -a.u.f : a.u.f;
        } else {
            rc = arith_error(c, n, n->op == JO_NEG ? "unary -" : "unary +", a, a);
        }
        break;
    }
    case JN_AND:
    case JN_OR:
        rc = jj_eval(c, n->a, out);
        if (!rc && jv_truthy(*out) == (n->kind == JN_AND)) rc = jj_eval(c, n->b, out);
        break;
    case JN_COND: {
        jv t;
        rc = jj_eval(c, n->a, &t);
        if (!rc) {
            if (jv_truthy(t))
                rc = jj_eval(c, n->b, out);
            else if (n->c)
                rc = jj_eval(c, n->c, out);
            else
                *out = jj_undef(NULL);
        }
        break;
    }
    default:
        rc = jj_fail(c, n, LR_EINTERNAL, "not an expression");
    }
    c->edepth--;
    return rc;
}

/* ---- statements ------------------------------------------------------------------------------ */

/* The items a for-loop walks: lists, dict keys, string characters; Undefined is empty. */
static int iter_items(jj_ctx *c, const jj_node *n, jv v, jj_list **out)
{
    switch (v.t) {
    case JV_LIST:
        *out = v.u.l;
        return 0;
    case JV_DICT: {
        jj_list *l = jj_list_new(c, n, v.u.d->n);
        if (!l) return c->err->code;
        for (size_t i = 0; i < v.u.d->n; i++) {
            l->v[i].t = JV_STR;
            l->v[i].u.s.p = v.u.d->kv[i].k;
            l->v[i].u.s.n = v.u.d->kv[i].kn;
        }
        l->n = v.u.d->n;
        *out = l;
        return 0;
    }
    case JV_STR: {
        jj_list *l = jj_list_new(c, n, jj_utf8_len(v.u.s.p, v.u.s.n));
        if (!l) return c->err->code;
        for (size_t i = 0; i < v.u.s.n;) {
            size_t j = i + 1;
            while (j < v.u.s.n && ((unsigned char)v.u.s.p[j] & 0xC0) == 0x80)
                j++;
            l->v[l->n].t = JV_STR;
            l->v[l->n].u.s.p = v.u.s.p + i;
            l->v[l->n].u.s.n = j - i;
            l->n++;
            i = j;
        }
        *out = l;
        return 0;
    }
    case JV_UNDEF: {
        *out = jj_list_new(c, n, 0);
        return *out ? 0 : c->err->code;
    }
    default:
        return jj_fail(c, n, LR_EINVAL, "'%s' object is not iterable", jv_type_name(v));
    }
}

static int bind_targets(jj_ctx *c, const jj_node *n, jj_frame *f, jv item)
{
    if (!n->i) return jj_frame_set(c, n, f, n->params[0], strlen(n->params[0]), item);
    jj_list *parts = NULL;
    if (item.t == JV_LIST)
        parts = item.u.l;
    else if (item.t == JV_STR) {
        int rc = iter_items(c, n, item, &parts);
        if (rc) return rc;
    }
    if (!parts)
        return jj_fail(c, n, LR_EINVAL, "cannot unpack a %s into %zu loop variables",
                       jv_type_name(item), n->nparams);
    if (parts->n != n->nparams)
        return jj_fail(c, n, LR_EINVAL, "cannot unpack %zu values into %zu loop variables",
                       parts->n, n->nparams);
    for (size_t i = 0; i < n->nparams; i++) {
        int rc = jj_frame_set(c, n, f, n->params[i], strlen(n->params[i]), parts->v[i]);
        if (rc) return rc;
    }
    return 0;
}

static int exec_for(jj_ctx *c, const jj_node *n)
{
    jv it;
    jj_list *items;
    int rc = jj_eval(c, n->a, &it);
    if (!rc) rc = iter_items(c, n->a, it, &items);
    if (rc) return rc;
    jj_frame *f = frame_new(c, n, c->frame);
    if (!f) return c->err->code;
    jj_frame *saved = c->frame;
    c->frame = f;
    if (n->b) { /* {% for x in xs if cond %}: filter first, so loop.* counts what is kept */
        jj_list *kept = jj_list_new(c, n, 0);
        rc = kept ? 0 : c->err->code;
        for (size_t i = 0; !rc && i < items->n; i++) {
            jv t;
            rc = jj_step(c, n);
            if (!rc) rc = bind_targets(c, n, f, items->v[i]);
            if (!rc) rc = jj_eval(c, n->b, &t);
            if (!rc && jv_truthy(t)) rc = jj_list_push(c, n, kept, items->v[i]);
        }
        items = kept;
    }
    /* in the arena, not on the stack: a template may keep `loop` past the loop's end */
    jj_loop *lp = rc ? NULL : jj_alloc(c, n, sizeof *lp);
    if (!lp) {
        c->frame = saved;
        return c->err->code ? c->err->code : rc;
    }
    lp->items = items;
    jv lv = {.t = JV_LOOP};
    lv.u.ptr = lp;
    /* Jinja2 runs the else block unless some iteration reached the end of the body: a loop
     * whose every iteration ends in break/continue runs it too */
    int completed = 0;
    for (size_t i = 0; !rc && i < items->n; i++) {
        lp->i = i;
        /* each iteration starts from the enclosing scope again: a `set` in the body is seen
         * later in the same iteration only (Jinja2) */
        f->vars.n = 0;
        rc = jj_step(c, n);
        if (!rc) rc = bind_targets(c, n, f, items->v[i]);
        if (!rc) rc = jj_frame_set(c, n, f, "loop", 4, lv);
        if (!rc) rc = jj_exec_body(c, n->kids, n->nkids);
        if (!rc && !c->ctl) completed = 1;
        if (c->ctl == JJ_CTL_BREAK) {
            c->ctl = 0;
            break;
        }
        c->ctl = 0;
    }
    if (!rc && !completed) rc = jj_exec_body(c, n->kids2, n->nkids2);
    c->frame = saved;
    return rc;
}

static int exec_set(jj_ctx *c, const jj_node *n)
{
    jv v;
    int rc = n->b ? jj_eval(c, n->b, &v) : capture(c, n, n->kids, n->nkids, &v);
    if (rc) return rc;
    const jj_node *t = n->a;
    if (t->kind == JN_NAME) return jj_frame_set(c, n, c->frame, t->s, t->slen, v);
    if (t->kind == JN_ATTR) {
        jv obj = lookup(c, t->a->s, t->a->slen);
        if (obj.t != JV_NS)
            return jj_fail(c, n, LR_EINVAL,
                           "cannot assign attribute '%.*s' on a %s (only "
                           "namespace() objects can be changed)",
                           (int)t->slen, t->s, jv_type_name(obj));
        return jj_dict_set(c, n, obj.u.d, t->s, t->slen, v);
    }
    /* tuple of names */
    if (v.t != JV_LIST) return jj_fail(c, n, LR_EINVAL, "cannot unpack a %s", jv_type_name(v));
    if (v.u.l->n != t->nkids)
        return jj_fail(c, n, LR_EINVAL, "cannot unpack %zu values into %zu names", v.u.l->n,
                       t->nkids);
    for (size_t i = 0; i < t->nkids && !rc; i++)
        rc = jj_frame_set(c, n, c->frame, t->kids[i]->s, t->kids[i]->slen, v.u.l->v[i]);
    return rc;
}

int jj_exec(jj_ctx *c, const jj_node *n)
{
    int rc = jj_step(c, n);
    if (rc) return rc;
    switch (n->kind) {
    case JN_TEXT:
        rc = jj_buf_put(c->out, n->s, n->slen);
        break;
    case JN_OUTPUT: {
        jv v;
        rc = jj_eval(c, n->a, &v);
        if (rc) return rc;
        rc = jv_str(c->out, v);
        break;
    }
    case JN_IF: {
        jv t;
        if ((rc = jj_eval(c, n->a, &t))) return rc;
        return jv_truthy(t) ? jj_exec_body(c, n->kids, n->nkids)
                            : jj_exec_body(c, n->kids2, n->nkids2);
    }
    case JN_FOR:
        return exec_for(c, n);
    case JN_SET:
        return exec_set(c, n);
    case JN_MACRO: {
        jv m = {.t = JV_MACRO};
        m.u.ptr = (void *)n;
        return jj_frame_set(c, n, c->frame, n->s, n->slen, m);
    }
    case JN_CALLBLK: {
        jj_caller *cl = jj_alloc(c, n, sizeof *cl);
        if (!cl) return c->err->code;
        cl->blk = n;
        cl->frame = c->frame;
        jv v;
        if ((rc = eval_call(c, n->a, cl, &v))) return rc;
        rc = jv_str(c->out, v);
        break;
    }
    case JN_FILTBLK: {
        jv body, v;
        if ((rc = capture(c, n, n->kids, n->nkids, &body))) return rc;
        jv saved = c->filter_input;
        c->filter_input = body;
        rc = jj_eval(c, n->a, &v);
        c->filter_input = saved;
        if (rc) return rc;
        rc = jv_str(c->out, v);
        break;
    }
    case JN_BREAK:
        c->ctl = JJ_CTL_BREAK;
        return 0;
    case JN_CONTINUE:
        c->ctl = JJ_CTL_CONTINUE;
        return 0;
    case JN_BLOCK:
        return jj_exec_body(c, n->kids, n->nkids);
    default:
        return jj_fail(c, n, LR_EINTERNAL, "not a statement");
    }
    if (rc == LR_ETOOLARGE)
        return jj_fail(c, n, LR_EINTERNAL, "rendered text larger than %zu bytes",
                       c->opt.max_output);
    if (rc == LR_ENOMEM) return jj_fail(c, n, LR_ENOMEM, "out of memory");
    return rc;
}

int jj_exec_body(jj_ctx *c, jj_node *const *kids, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int rc = jj_exec(c, kids[i]);
        if (rc) return rc;
        if (c->ctl) return 0;
    }
    return 0;
}
