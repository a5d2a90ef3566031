/* jinja_builtins.c — the filters, tests, globals and methods chat templates call.
 *
 * Each behaves like its Jinja2 / Python counterpart as transformers sets them up: filters from
 * jinja2.filters (tojson replaced by transformers' json.dumps(ensure_ascii=False) version),
 * tests from jinja2.tests, globals raise_exception / strftime_now / range / namespace / dict, and
 * the str and dict methods templates use (startswith, strip, split, get, items, …). Mutating
 * methods of lists and dicts are refused, as ImmutableSandboxedEnvironment does. Case mapping
 * uses utf8proc's simple mappings (Python's full mappings differ for a few letters such as ß).
 * Not here: the evaluator itself (jinja_eval.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <utf8proc.h>

#include "jinja_eval.h"

#define MAX_RANGE 100000 /* Jinja2's sandbox MAX_RANGE */

typedef int (*filter_fn)(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out);

static jv mkbool(int b)
{
    jv v = {.t = JV_BOOL};
    v.u.i = b != 0;
    return v;
}

static jv mkint(int64_t i)
{
    jv v = {.t = JV_INT};
    v.u.i = i;
    return v;
}

static jv mkfloat(double f)
{
    jv v = {.t = JV_FLOAT};
    v.u.f = f;
    return v;
}

static jv mklist(jj_list *l)
{
    jv v = {.t = JV_LIST};
    v.u.l = l;
    return v;
}

static jv sslice(const char *p, size_t n)
{
    jv v = {.t = JV_STR};
    v.u.s.p = p;
    v.u.s.n = n;
    return v;
}

/* str(v) as a new string value (strings pass through). */
static int to_str(jj_ctx *c, const jj_node *n, jv v, jv *out)
{
    if (v.t == JV_STR) {
        *out = v;
        return 0;
    }
    jj_buf b = {.limit = c->opt.max_output};
    int rc = jv_str(&b, v);
    if (!rc)
        rc = jj_mkstr(c, n, b.p ? b.p : "", b.n, out);
    else
        rc = jj_fail(c, n, LR_EINTERNAL, "string too long");
    free(b.p);
    return rc;
}

static int arg_bool(const jj_args *a, size_t i, const char *name, int def)
{
    jv v;
    return jj_arg(a, i, name, &v) ? jv_truthy(v) : def;
}

/* ---- Unicode helpers -------------------------------------------------------------------------- */

static int32_t next_cp(const char *s, size_t n, size_t *i)
{
    utf8proc_int32_t cp;
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + *i, (utf8proc_ssize_t)(n - *i), &cp);
    if (k <= 0) {
        cp = (unsigned char)s[*i];
        k = 1;
    }
    *i += (size_t)k;
    return cp;
}

static int is_cased(int32_t cp)
{
    utf8proc_category_t k = utf8proc_category(cp);
    return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT;
}

enum { CASE_UPPER, CASE_LOWER, CASE_CAPITALIZE, CASE_TITLE_PY, CASE_TITLE_JINJA };

/* Python's full case mappings (SpecialCasing.txt) where they differ from the simple ones
 * utf8proc gives: NULL when the simple mapping is right. title: titlecase instead of upper. */
static const char *special_case(int32_t cp, int up, int title)
{
    if (up) {
        switch (cp) {
        case 0xDF: return title ? "Ss" : "SS";
        case 0x149: return "\xca\xbcN";
        case 0xFB00: return title ? "Ff" : "FF";
        case 0xFB01: return title ? "Fi" : "FI";
        case 0xFB02: return title ? "Fl" : "FL";
        case 0xFB03: return title ? "Ffi" : "FFI";
        case 0xFB04: return title ? "Ffl" : "FFL";
        case 0xFB05:
        case 0xFB06: return title ? "St" : "ST";
        }
        return NULL;
    }
    return cp == 0x130 ? "i\xcc\x87" : NULL;
}

static int map_case(jj_ctx *c, const jj_node *n, jv s, int mode, jv *out)
{
    char *o = jj_alloc(c, n, s.u.s.n * 2 + 8);
    if (!o)
        return c->err->code;
    size_t on = 0, cap = s.u.s.n * 2 + 8;
    int32_t prev = -1;
    for (size_t i = 0; i < s.u.s.n;) {
        size_t start = i;
        int32_t cp = next_cp(s.u.s.p, s.u.s.n, &i);
        int up;
        switch (mode) {
        case CASE_UPPER: up = 1; break;
        case CASE_LOWER: up = 0; break;
        case CASE_CAPITALIZE: up = start == 0; break;
        case CASE_TITLE_PY: up = prev < 0 || !is_cased(prev); break;
        default:
            up = prev < 0 || prev == '-' || prev == '(' || prev == '{' || prev == '[' ||
                 prev == '<' || (prev < 0x80 && (prev == ' ' || (prev >= 9 && prev <= 13))) ||
                 (prev >= 0x80 && (utf8proc_category(prev) == UTF8PROC_CATEGORY_ZS ||
                                   prev == 0x2028 || prev == 0x2029 || prev == 0x85));
        }
        prev = cp;
        int title = up && (mode == CASE_CAPITALIZE || mode == CASE_TITLE_PY);
        int32_t m = !up ? utf8proc_tolower(cp) : title ? utf8proc_totitle(cp) : utf8proc_toupper(cp);
        const char *sp = special_case(cp, up, title);
        if (on + 4 > cap)
            return jj_fail(c, n, LR_EINTERNAL, "case mapping grew the string unexpectedly");
        if (sp) {
            memcpy(o + on, sp, strlen(sp));
            on += strlen(sp);
        } else if (m == cp) {
            memcpy(o + on, s.u.s.p + start, i - start);
            on += i - start;
        } else {
            on += (size_t)utf8proc_encode_char(m, (utf8proc_uint8_t *)o + on);
        }
    }
    *out = sslice(o, on);
    return 0;
}

/* Is the code point at s[i] one of chars (or whitespace when chars is NULL)? */
static int strip_match(const char *s, size_t n, size_t i, const char *chars, size_t cn, size_t *cl)
{
    if (!chars)
        return jj_is_space_at(s, n, i, cl);
    size_t j = i;
    int32_t cp = next_cp(s, n, &j);
    *cl = j - i;
    for (size_t k = 0; k < cn;) {
        if (next_cp(chars, cn, &k) == cp)
            return 1;
    }
    return 0;
}

static jv do_strip(jv s, const char *chars, size_t cn, int left, int right)
{
    size_t a = 0, b = s.u.s.n, cl;
    if (left)
        while (a < b && strip_match(s.u.s.p, b, a, chars, cn, &cl))
            a += cl;
    if (right)
        while (b > a) {
            size_t i = b - 1;
            while (i > a && ((unsigned char)s.u.s.p[i] & 0xC0) == 0x80)
                i--;
            if (!strip_match(s.u.s.p, b, i, chars, cn, &cl) || i + cl != b)
                break;
            b = i;
        }
    return sslice(s.u.s.p + a, b - a);
}

static int strip_args(jj_ctx *c, const jj_node *n, const jj_args *a, const char **chars, size_t *cn)
{
    jv v;
    *chars = NULL;
    *cn = 0;
    if (jj_arg(a, 0, "chars", &v) && v.t != JV_NONE) {
        if (v.t != JV_STR)
            return jj_fail(c, n, LR_EINVAL, "strip arg must be None or str, not %s", jv_type_name(v));
        *chars = v.u.s.p;
        *cn = v.u.s.n;
    }
    return 0;
}

/* Python str.replace(old, new, count). */
static int do_replace(jj_ctx *c, const jj_node *n, jv s, jv old, jv new, int64_t count, jv *out)
{
    if (old.t != JV_STR || new.t != JV_STR)
        return jj_fail(c, n, LR_EINVAL, "replace() arguments must be strings");
    jj_buf b = {.limit = c->opt.max_output};
    int rc = 0;
    size_t i = 0;
    int64_t done = 0;
    if (old.u.s.n == 0) {
        while (!rc && (count < 0 || done < count)) {
            rc = jj_buf_put(&b, new.u.s.p, new.u.s.n);
            done++;
            if (i >= s.u.s.n)
                break;
            size_t j = i;
            next_cp(s.u.s.p, s.u.s.n, &j);
            if (!rc)
                rc = jj_buf_put(&b, s.u.s.p + i, j - i);
            i = j;
        }
    } else {
        while (!rc && (count < 0 || done < count)) {
            const char *hit = memmem(s.u.s.p + i, s.u.s.n - i, old.u.s.p, old.u.s.n);
            if (!hit)
                break;
            size_t at = (size_t)(hit - s.u.s.p);
            rc = jj_buf_put(&b, s.u.s.p + i, at - i);
            if (!rc)
                rc = jj_buf_put(&b, new.u.s.p, new.u.s.n);
            i = at + old.u.s.n;
            done++;
        }
    }
    if (!rc && i < s.u.s.n)
        rc = jj_buf_put(&b, s.u.s.p + i, s.u.s.n - i);
    if (!rc)
        rc = jj_mkstr(c, n, b.p ? b.p : "", b.n, out);
    else
        rc = jj_fail(c, n, LR_EINTERNAL, "replace() result larger than the output limit");
    free(b.p);
    return rc;
}

static int replace_args(jj_ctx *c, const jj_node *n, jv s, const jj_args *a, jv *out)
{
    jv old, new, cnt;
    if (!jj_arg(a, 0, "old", &old) || !jj_arg(a, 1, "new", &new))
        return jj_fail(c, n, LR_EINVAL, "replace() needs two arguments");
    int64_t count = -1;
    if (jj_arg(a, 2, "count", &cnt) && cnt.t != JV_NONE) {
        if (cnt.t != JV_INT)
            return jj_fail(c, n, LR_EINVAL, "replace() count must be an integer");
        count = cnt.u.i;
    }
    return do_replace(c, n, s, old, new, count, out);
}

/* Python str.split(sep=None, maxsplit=-1). */
static int do_split(jj_ctx *c, const jj_node *n, jv s, const jj_args *a, jv *out)
{
    jv sep = {.t = JV_NONE}, mx;
    int64_t maxsplit = -1;
    jj_arg(a, 0, "sep", &sep);
    if (jj_arg(a, 1, "maxsplit", &mx)) {
        if (mx.t != JV_INT)
            return jj_fail(c, n, LR_EINVAL, "split() maxsplit must be an integer");
        maxsplit = mx.u.i;
    }
    jj_list *l = jj_list_new(c, n, 0);
    if (!l)
        return c->err->code;
    int rc = 0;
    const char *p = s.u.s.p;
    size_t len = s.u.s.n, i = 0, cl;
    if (sep.t == JV_NONE || sep.t == JV_UNDEF) {
        for (;;) {
            while (i < len && jj_is_space_at(p, len, i, &cl))
                i += cl;
            if (i >= len)
                break;
            if (maxsplit >= 0 && (int64_t)l->n >= maxsplit) {
                rc = jj_list_push(c, n, l, sslice(p + i, len - i)); /* trailing blanks stay */
                break;
            }
            size_t st = i;
            while (i < len && !jj_is_space_at(p, len, i, &cl))
                i += cl;
            if ((rc = jj_list_push(c, n, l, sslice(p + st, i - st))))
                break;
        }
    } else {
        if (sep.t != JV_STR)
            return jj_fail(c, n, LR_EINVAL, "split() separator must be a string or None");
        if (sep.u.s.n == 0)
            return jj_fail(c, n, LR_EINVAL, "split(): empty separator");
        for (;;) {
            const char *hit = (maxsplit >= 0 && (int64_t)l->n >= maxsplit)
                                  ? NULL
                                  : memmem(p + i, len - i, sep.u.s.p, sep.u.s.n);
            size_t end = hit ? (size_t)(hit - p) : len;
            if ((rc = jj_list_push(c, n, l, sslice(p + i, end - i))) || !hit)
                break;
            i = end + sep.u.s.n;
            if ((rc = jj_step(c, n)))
                break;
        }
    }
    *out = mklist(l);
    return rc;
}

static int starts_ends(jj_ctx *c, const jj_node *n, jv s, const jj_args *a, int ends, jv *out)
{
    jv pre;
    if (!jj_arg(a, 0, NULL, &pre))
        return jj_fail(c, n, LR_EINVAL, "%s() takes one argument", ends ? "endswith" : "startswith");
    size_t k = pre.t == JV_LIST ? pre.u.l->n : 1;
    for (size_t i = 0; i < k; i++) {
        jv p = pre.t == JV_LIST ? pre.u.l->v[i] : pre;
        if (p.t != JV_STR)
            return jj_fail(c, n, LR_EINVAL, "%s() needs a string or a tuple of strings",
                           ends ? "endswith" : "startswith");
        if (p.u.s.n <= s.u.s.n &&
            memcmp(s.u.s.p + (ends ? s.u.s.n - p.u.s.n : 0), p.u.s.p, p.u.s.n) == 0) {
            *out = mkbool(1);
            return 0;
        }
    }
    *out = mkbool(0);
    return 0;
}

/* Items of an iterable for filters: lists as is, dict keys, string characters, Undefined empty. */
static int items_of(jj_ctx *c, const jj_node *n, jv v, jj_list **out)
{
    switch (v.t) {
    case JV_LIST:
        *out = v.u.l;
        return 0;
    case JV_UNDEF:
        *out = jj_list_new(c, n, 0);
        return *out ? 0 : c->err->code;
    case JV_DICT: {
        jj_list *l = jj_list_new(c, n, v.u.d->n);
        if (!l)
            return c->err->code;
        for (size_t i = 0; i < v.u.d->n; i++)
            l->v[l->n++] = sslice(v.u.d->kv[i].k, v.u.d->kv[i].kn);
        *out = l;
        return 0;
    }
    case JV_STR: {
        jj_list *l = jj_list_new(c, n, 0);
        if (!l)
            return c->err->code;
        for (size_t i = 0; i < v.u.s.n;) {
            size_t st = i;
            next_cp(v.u.s.p, v.u.s.n, &i);
            int rc = jj_list_push(c, n, l, sslice(v.u.s.p + st, i - st));
            if (rc)
                return rc;
        }
        *out = l;
        return 0;
    }
    default:
        return jj_fail(c, n, LR_EINVAL, "'%s' object is not iterable", jv_type_name(v));
    }
}

/* environment.getattr along a dotted path ("a.b", "0"): Jinja2's make_attrgetter. */
static int attr_path(jj_ctx *c, const jj_node *n, jv item, jv path, jv *out)
{
    if (path.t == JV_INT)
        return jj_getitem(c, n, item, path, out);
    if (path.t != JV_STR)
        return jj_fail(c, n, LR_EINVAL, "attribute must be a string or an integer");
    size_t i = 0;
    *out = item;
    while (i <= path.u.s.n) {
        const char *dot = memchr(path.u.s.p + i, '.', path.u.s.n - i);
        size_t end = dot ? (size_t)(dot - path.u.s.p) : path.u.s.n;
        const char *part = path.u.s.p + i;
        size_t pl = end - i;
        int isnum = pl > 0 && pl < 18;
        for (size_t k = 0; k < pl; k++)
            isnum &= part[k] >= '0' && part[k] <= '9';
        int rc;
        if (out->t == JV_UNDEF)
            return 0;
        if (isnum && out->t == JV_LIST) {
            rc = jj_getitem(c, n, *out, mkint(strtoll(part, NULL, 10)), out);
        } else {
            rc = jj_getattr(c, n, *out, part, pl, out);
        }
        if (rc)
            return rc;
        if (!dot)
            break;
        i = end + 1;
    }
    return 0;
}

/* Stable merge sort of v[0:n] by key (keys[i] belongs to v[i]). */
static int sort_cmp_err;
static int msort(jv *v, jv *keys, jv *tv, jv *tk, size_t n, int fold, int rev)
{
    if (n < 2)
        return 0;
    size_t h = n / 2;
    if (msort(v, keys, tv, tk, h, fold, rev) || msort(v + h, keys + h, tv, tk, n - h, fold, rev))
        return -1;
    size_t i = 0, j = h, o = 0;
    while (i < h && j < n) {
        int r = jv_compare(keys[j], keys[i], fold);
        if (r == -2) {
            sort_cmp_err = 1;
            return -1;
        }
        int take_right = rev ? r > 0 : r < 0;
        if (take_right) {
            tv[o] = v[j];
            tk[o++] = keys[j++];
        } else {
            tv[o] = v[i];
            tk[o++] = keys[i++];
        }
    }
    while (i < h) {
        tv[o] = v[i];
        tk[o++] = keys[i++];
    }
    while (j < n) {
        tv[o] = v[j];
        tk[o++] = keys[j++];
    }
    memcpy(v, tv, n * sizeof *v);
    memcpy(keys, tk, n * sizeof *keys);
    return 0;
}

static int sorted(jj_ctx *c, const jj_node *n, jj_list *in, jv attribute, int fold, int rev,
                  jj_list **out)
{
    size_t k = in->n;
    jj_list *l = jj_list_new(c, n, k);
    jv *keys = jj_alloc(c, n, (k + 1) * sizeof *keys);
    jv *tv = jj_alloc(c, n, (k + 1) * sizeof *tv);
    jv *tk = jj_alloc(c, n, (k + 1) * sizeof *tk);
    if (!l || !keys || !tv || !tk)
        return c->err->code;
    if (k)
        memcpy(l->v, in->v, k * sizeof *l->v);
    l->n = k;
    for (size_t i = 0; i < k; i++) {
        int rc = attribute.t == JV_NONE ? (keys[i] = in->v[i], 0)
                                        : attr_path(c, n, in->v[i], attribute, &keys[i]);
        if (rc)
            return rc;
    }
    /* rev with a stable sort: Python sorts with reverse=True keeping equal items in order */
    sort_cmp_err = 0;
    if (msort(l->v, keys, tv, tk, k, fold, rev) || sort_cmp_err)
        return jj_fail(c, n, LR_EINVAL, "cannot sort values of different types");
    *out = l;
    return 0;
}

/* ---- filters ---------------------------------------------------------------------------------- */

static int f_abs(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    if (in.t == JV_INT || in.t == JV_BOOL) {
        if (in.u.i == INT64_MIN)
            return jj_fail(c, n, LR_EINVAL, "integer overflow in abs");
        *out = mkint(in.u.i < 0 ? -in.u.i : in.u.i);
    } else if (in.t == JV_FLOAT) {
        *out = mkfloat(fabs(in.u.f));
    } else {
        return jj_fail(c, n, LR_EINVAL, "bad operand type for abs(): '%s'", jv_type_name(in));
    }
    return 0;
}

static int f_attr(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv name;
    if (!jj_arg(a, 0, "name", &name) || name.t != JV_STR)
        return jj_fail(c, n, LR_EINVAL, "attr() needs an attribute name");
    /* Python getattr only: a dict's keys are not attributes */
    if (in.t == JV_DICT && !jj_method_exists(in, name.u.s.p, name.u.s.n)) {
        *out = jj_undef(NULL);
        return 0;
    }
    return jj_getattr(c, n, in, name.u.s.p, name.u.s.n, out);
}

static int f_batch(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv cnt, fill;
    jj_list *items, *res, *cur = NULL;
    if (!jj_arg(a, 0, "linecount", &cnt) || cnt.t != JV_INT || cnt.u.i <= 0)
        return jj_fail(c, n, LR_EINVAL, "batch() needs a positive line count");
    int has_fill = jj_arg(a, 1, "fill_with", &fill) && fill.t != JV_NONE;
    int rc = items_of(c, n, in, &items);
    if (rc || !(res = jj_list_new(c, n, 0)))
        return rc ? rc : c->err->code;
    for (size_t i = 0; i < items->n; i++) {
        if (!cur || (int64_t)cur->n == cnt.u.i) {
            if (!(cur = jj_list_new(c, n, 0)) || (rc = jj_list_push(c, n, res, mklist(cur))))
                return rc ? rc : c->err->code;
        }
        if ((rc = jj_list_push(c, n, cur, items->v[i])))
            return rc;
    }
    while (has_fill && cur && (int64_t)cur->n < cnt.u.i)
        if ((rc = jj_list_push(c, n, cur, fill)))
            return rc;
    *out = mklist(res);
    return 0;
}

static int f_capitalize(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv s;
    int rc = to_str(c, n, in, &s);
    return rc ? rc : map_case(c, n, s, CASE_CAPITALIZE, out);
}

static int f_default(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv def = sslice("", 0);
    jj_arg(a, 0, "default_value", &def);
    int boolean = arg_bool(a, 1, "boolean", 0);
    *out = (in.t == JV_UNDEF || (boolean && !jv_truthy(in))) ? def : in;
    return 0;
}

static int f_dictsort(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    if (in.t != JV_DICT)
        return jj_fail(c, n, LR_EINVAL, "dictsort expects a dict, got %s", jv_type_name(in));
    int cs = arg_bool(a, 0, "case_sensitive", 0);
    jv by = sslice("key", 3);
    jj_arg(a, 1, "by", &by);
    int rev = arg_bool(a, 2, "reverse", 0);
    int by_value = by.t == JV_STR && by.u.s.n == 5 && memcmp(by.u.s.p, "value", 5) == 0;
    jj_list *pairs = jj_list_new(c, n, in.u.d->n);
    if (!pairs)
        return c->err->code;
    for (size_t i = 0; i < in.u.d->n; i++) {
        jj_list *p = jj_list_new(c, n, 2);
        if (!p)
            return c->err->code;
        p->v[0] = sslice(in.u.d->kv[i].k, in.u.d->kv[i].kn);
        p->v[1] = in.u.d->kv[i].v;
        p->n = 2;
        pairs->v[pairs->n] = mklist(p);
        pairs->v[pairs->n++].tuple = 1;
    }
    jj_list *res;
    int rc = sorted(c, n, pairs, mkint(by_value ? 1 : 0), !cs, rev, &res);
    if (!rc)
        *out = mklist(res);
    return rc;
}

static int f_escape(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv s;
    int rc = to_str(c, n, in, &s);
    if (rc)
        return rc;
    jj_buf b = {.limit = c->opt.max_output};
    for (size_t i = 0; !rc && i < s.u.s.n; i++) {
        const char *e = NULL;
        switch (s.u.s.p[i]) {
        case '&': e = "&amp;"; break;
        case '<': e = "&lt;"; break;
        case '>': e = "&gt;"; break;
        case '"': e = "&#34;"; break;
        case '\'': e = "&#39;"; break;
        }
        rc = e ? jj_buf_put(&b, e, strlen(e)) : jj_buf_putc(&b, s.u.s.p[i]);
    }
    rc = rc ? jj_fail(c, n, LR_EINTERNAL, "escaped text too long") : jj_mkstr(c, n, b.p ? b.p : "", b.n, out);
    free(b.p);
    return rc;
}

static int f_first_last(jj_ctx *c, const jj_node *n, jv in, int last, jv *out)
{
    jj_list *items;
    int rc = items_of(c, n, in, &items);
    if (rc)
        return rc;
    *out = items->n ? items->v[last ? items->n - 1 : 0] : jj_undef(NULL);
    return 0;
}

static int f_first(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    return f_first_last(c, n, in, 0, out);
}

static int f_last(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    return f_first_last(c, n, in, 1, out);
}

static int parse_number(jv s, int want_int, jv *out)
{
    char tmp[64];
    jv t = do_strip(s, NULL, 0, 1, 1);
    if (t.u.s.n == 0 || t.u.s.n >= sizeof tmp)
        return 0;
    memcpy(tmp, t.u.s.p, t.u.s.n);
    tmp[t.u.s.n] = '\0';
    char *end;
    if (want_int) {
        long long v = strtoll(tmp, &end, 10);
        if (*end == '\0') {
            *out = mkint(v);
            return 1;
        }
    }
    double d = strtod(tmp, &end);
    if (*end != '\0' || end == tmp)
        return 0;
    if (want_int) {
        if (!(d > -9.2e18 && d < 9.2e18))
            return 0;
        *out = mkint((int64_t)d);
    } else {
        *out = mkfloat(d);
    }
    return 1;
}

static int f_float(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv def = mkfloat(0.0);
    jj_arg(a, 0, "default", &def);
    if (in.t == JV_FLOAT)
        *out = in;
    else if (in.t == JV_INT || in.t == JV_BOOL)
        *out = mkfloat((double)in.u.i);
    else if (!(in.t == JV_STR && parse_number(in, 0, out)))
        *out = def;
    return 0;
}

static int f_int(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv def = mkint(0);
    jj_arg(a, 0, "default", &def);
    if (in.t == JV_INT)
        *out = in;
    else if (in.t == JV_BOOL)
        *out = mkint(in.u.i);
    else if (in.t == JV_FLOAT && in.u.f > -9.2e18 && in.u.f < 9.2e18)
        *out = mkint((int64_t)in.u.f);
    else if (!(in.t == JV_STR && parse_number(in, 1, out)))
        *out = def;
    return 0;
}

static int f_indent(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv w = mkint(4), s;
    jj_arg(a, 0, "width", &w);
    int first = arg_bool(a, 1, "first", 0), blank = arg_bool(a, 2, "blank", 0);
    int rc = to_str(c, n, in, &s);
    if (rc)
        return rc;
    jv ind;
    if (w.t == JV_STR) {
        ind = w;
    } else if (w.t == JV_INT && w.u.i >= 0 && w.u.i <= 1000) {
        char *sp = jj_alloc(c, n, (size_t)w.u.i + 1);
        if (!sp)
            return c->err->code;
        memset(sp, ' ', (size_t)w.u.i);
        ind = sslice(sp, (size_t)w.u.i);
    } else {
        return jj_fail(c, n, LR_EINVAL, "indent width must be an integer in [0, 1000] or a string");
    }
    /* Jinja2: s += "\n"; lines = s.splitlines() — the pieces between line breaks, an empty one
     * after a final break included (splitting at \n, \r\n and \r here) */
    jj_buf b = {.limit = c->opt.max_output};
    size_t i = 0, line = 0;
    if (first)
        rc = jj_buf_put(&b, ind.u.s.p, ind.u.s.n);
    while (!rc && i < s.u.s.n + 1) {
        size_t st = i;
        while (i < s.u.s.n && s.u.s.p[i] != '\n' && s.u.s.p[i] != '\r')
            i++;
        size_t len = i - st;
        if (i < s.u.s.n)
            i += (s.u.s.p[i] == '\r' && i + 1 < s.u.s.n && s.u.s.p[i + 1] == '\n') ? 2 : 1;
        else
            i = s.u.s.n + 1;
        if (line > 0) {
            rc = jj_buf_putc(&b, '\n');
            if (!rc && (blank || len > 0))
                rc = jj_buf_put(&b, ind.u.s.p, ind.u.s.n);
        }
        if (!rc)
            rc = jj_buf_put(&b, s.u.s.p + st, len);
        line++;
    }
    rc = rc ? jj_fail(c, n, LR_EINTERNAL, "indented text too long") : jj_mkstr(c, n, b.p ? b.p : "", b.n, out);
    free(b.p);
    return rc;
}

static int f_items(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    if (in.t == JV_UNDEF) {
        jj_list *l = jj_list_new(c, n, 0);
        *out = mklist(l);
        return l ? 0 : c->err->code;
    }
    if (in.t != JV_DICT)
        return jj_fail(c, n, LR_EINVAL, "items expects a mapping, got %s", jv_type_name(in));
    jj_list *l = jj_list_new(c, n, in.u.d->n);
    if (!l)
        return c->err->code;
    for (size_t i = 0; i < in.u.d->n; i++) {
        jj_list *p = jj_list_new(c, n, 2);
        if (!p)
            return c->err->code;
        p->v[0] = sslice(in.u.d->kv[i].k, in.u.d->kv[i].kn);
        p->v[1] = in.u.d->kv[i].v;
        p->n = 2;
        l->v[l->n] = mklist(p);
        l->v[l->n++].tuple = 1;
    }
    *out = mklist(l);
    return 0;
}

static int f_join(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv sep = sslice("", 0), attr = {.t = JV_NONE};
    jj_arg(a, 0, "d", &sep);
    jj_arg(a, 1, "attribute", &attr);
    if (sep.t != JV_STR)
        return jj_fail(c, n, LR_EINVAL, "join separator must be a string");
    jj_list *items;
    int rc = items_of(c, n, in, &items);
    if (rc)
        return rc;
    jj_buf b = {.limit = c->opt.max_output};
    for (size_t i = 0; !rc && i < items->n; i++) {
        jv v = items->v[i];
        if (attr.t != JV_NONE && (rc = attr_path(c, n, v, attr, &v)))
            break;
        if (i)
            rc = jj_buf_put(&b, sep.u.s.p, sep.u.s.n);
        if (!rc)
            rc = jv_str(&b, v);
        if (rc)
            rc = jj_fail(c, n, LR_EINTERNAL, "joined text too long");
    }
    if (!rc)
        rc = jj_mkstr(c, n, b.p ? b.p : "", b.n, out);
    free(b.p);
    return rc;
}

static int f_length(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    switch (in.t) {
    case JV_STR: *out = mkint((int64_t)jj_utf8_len(in.u.s.p, in.u.s.n)); return 0;
    case JV_LIST: *out = mkint((int64_t)in.u.l->n); return 0;
    case JV_DICT: *out = mkint((int64_t)in.u.d->n); return 0;
    case JV_UNDEF: *out = mkint(0); return 0;
    default:
        return jj_fail(c, n, LR_EINVAL, "object of type '%s' has no len()", jv_type_name(in));
    }
}

static int f_list(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jj_list *items, *l;
    int rc = items_of(c, n, in, &items);
    if (rc)
        return rc;
    if (!(l = jj_list_new(c, n, items->n)))
        return c->err->code;
    if (items->n)
        memcpy(l->v, items->v, items->n * sizeof *l->v);
    l->n = items->n;
    *out = mklist(l);
    return 0;
}

static int f_lower(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv s;
    int rc = to_str(c, n, in, &s);
    return rc ? rc : map_case(c, n, s, CASE_LOWER, out);
}

static int call_filter_named(jj_ctx *c, const jj_node *n, const char *name, size_t nlen, jv in,
                             const jj_args *a, jv *out);

static int f_map(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv attr, def = jj_undef(NULL), fname;
    jj_list *items, *l;
    int rc = items_of(c, n, in, &items);
    if (rc || !(l = jj_list_new(c, n, items->n)))
        return rc ? rc : c->err->code;
    int by_attr = jj_arg(a, SIZE_MAX, "attribute", &attr);
    jj_arg(a, SIZE_MAX, "default", &def);
    jj_args rest = *a;
    if (!by_attr) {
        if (!jj_arg(a, 0, NULL, &fname) || fname.t != JV_STR)
            return jj_fail(c, n, LR_EINVAL, "map() needs a filter name or attribute=");
        if (!jj_filter_known(fname.u.s.p, fname.u.s.n))
            return jj_fail(c, n, LR_EINVAL, "map(): unknown filter '%.*s'", (int)fname.u.s.n, fname.u.s.p);
        rest.pos++;
        rest.npos--;
    }
    for (size_t i = 0; i < items->n && !rc; i++) {
        jv v;
        if (by_attr) {
            rc = attr_path(c, n, items->v[i], attr, &v);
            if (!rc && v.t == JV_UNDEF)
                v = def;
        } else {
            rc = call_filter_named(c, n, fname.u.s.p, fname.u.s.n, items->v[i], &rest, &v);
        }
        if (!rc)
            l->v[l->n++] = v;
    }
    *out = mklist(l);
    return rc;
}

static int f_minmax(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out, int want_max)
{
    jj_list *items, *s;
    jv attr = {.t = JV_NONE};
    jj_arg(a, 1, "attribute", &attr);
    int rc = items_of(c, n, in, &items);
    if (!rc)
        rc = sorted(c, n, items, attr, !arg_bool(a, 0, "case_sensitive", 0), 0, &s);
    if (rc)
        return rc;
    *out = s->n ? s->v[want_max ? s->n - 1 : 0] : jj_undef(NULL);
    /* max() returns the first of equal maxima in Python; a stable sort puts it first of its run */
    if (want_max && s->n > 1) {
        size_t k = s->n - 1;
        jv key_last, key_prev;
        while (k > 0) {
            if (attr.t == JV_NONE) {
                key_last = s->v[s->n - 1];
                key_prev = s->v[k - 1];
            } else if (attr_path(c, n, s->v[s->n - 1], attr, &key_last) ||
                       attr_path(c, n, s->v[k - 1], attr, &key_prev)) {
                return c->err->code;
            }
            if (jv_compare(key_prev, key_last, !arg_bool(a, 0, "case_sensitive", 0)) != 0)
                break;
            k--;
        }
        *out = s->v[k];
    }
    return 0;
}

static int f_max(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    return f_minmax(c, n, in, a, out, 1);
}

static int f_min(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    return f_minmax(c, n, in, a, out, 0);
}

static int f_replace(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv s;
    int rc = to_str(c, n, in, &s);
    return rc ? rc : replace_args(c, n, s, a, out);
}

static int f_reverse(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jj_list *items, *l;
    int rc = items_of(c, n, in, &items);
    if (rc || !(l = jj_list_new(c, n, items->n)))
        return rc ? rc : c->err->code;
    for (size_t i = 0; i < items->n; i++)
        l->v[i] = items->v[items->n - 1 - i];
    l->n = items->n;
    if (in.t != JV_STR) {
        *out = mklist(l);
        return 0;
    }
    char *p = jj_alloc(c, n, in.u.s.n + 1);
    if (!p)
        return c->err->code;
    size_t o = 0;
    for (size_t i = 0; i < l->n; i++) {
        memcpy(p + o, l->v[i].u.s.p, l->v[i].u.s.n);
        o += l->v[i].u.s.n;
    }
    *out = sslice(p, o);
    return 0;
}

static int f_round(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv prec = mkint(0), method = sslice("common", 6);
    jj_arg(a, 0, "precision", &prec);
    jj_arg(a, 1, "method", &method);
    if (in.t != JV_INT && in.t != JV_FLOAT && in.t != JV_BOOL)
        return jj_fail(c, n, LR_EINVAL, "round expects a number, got %s", jv_type_name(in));
    if (in.t != JV_FLOAT && method.t == JV_STR && method.u.s.n == 6 &&
        memcmp(method.u.s.p, "common", 6) == 0 && prec.t == JV_INT && prec.u.i >= 0) {
        *out = mkint(in.u.i); /* Python round(int, n ≥ 0) is the int itself */
        return 0;
    }
    if (prec.t != JV_INT || prec.u.i < 0 || prec.u.i > 15 || method.t != JV_STR)
        return jj_fail(c, n, LR_EINVAL, "round(): bad precision or method");
    double x = in.t == JV_FLOAT ? in.u.f : (double)in.u.i, m = pow(10.0, (double)prec.u.i), r;
    if (method.u.s.n == 4 && memcmp(method.u.s.p, "ceil", 4) == 0)
        r = ceil(x * m) / m;
    else if (method.u.s.n == 5 && memcmp(method.u.s.p, "floor", 5) == 0)
        r = floor(x * m) / m;
    else if (method.u.s.n == 6 && memcmp(method.u.s.p, "common", 6) == 0)
        r = nearbyint(x * m) / m; /* Python round(): halves to even */
    else
        return jj_fail(c, n, LR_EINVAL, "round(): method must be 'common', 'ceil' or 'floor'");
    *out = mkfloat(r);
    return 0;
}

static int f_safe(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    *out = in;
    return 0;
}

/* select / reject / selectattr / rejectattr */
static int select_impl(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, int by_attr, int keep,
                       jv *out)
{
    jj_list *items, *l;
    int rc = items_of(c, n, in, &items);
    if (rc || !(l = jj_list_new(c, n, 0)))
        return rc ? rc : c->err->code;
    size_t first = by_attr ? 1 : 0;
    jv attr, test = {.t = JV_NONE};
    if (by_attr && (!jj_arg(a, 0, NULL, &attr)))
        return jj_fail(c, n, LR_EINVAL, "selectattr/rejectattr need an attribute name");
    int has_test = jj_arg(a, first, NULL, &test);
    if (has_test && test.t != JV_STR)
        return jj_fail(c, n, LR_EINVAL, "the test name must be a string");
    if (has_test && !jj_test_known(test.u.s.p, test.u.s.n))
        return jj_fail(c, n, LR_EINVAL, "unknown test '%.*s'", (int)test.u.s.n, test.u.s.p);
    size_t targs = a->npos > first + 1 ? a->npos - first - 1 : 0;
    for (size_t i = 0; i < items->n && !rc; i++) {
        jv v = items->v[i];
        int r;
        if (by_attr && (rc = attr_path(c, n, v, attr, &v)))
            break;
        if (has_test)
            rc = jj_apply_test(c, n, test.u.s.p, test.u.s.n, v, a->pos + first + 1, targs, &r);
        else
            r = jv_truthy(v);
        if (!rc && (r != 0) == keep)
            rc = jj_list_push(c, n, l, items->v[i]);
    }
    *out = mklist(l);
    return rc;
}

static int f_select(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    return select_impl(c, n, in, a, 0, 1, out);
}
static int f_reject(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    return select_impl(c, n, in, a, 0, 0, out);
}
static int f_selectattr(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    return select_impl(c, n, in, a, 1, 1, out);
}
static int f_rejectattr(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    return select_impl(c, n, in, a, 1, 0, out);
}

static int f_sort(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jj_list *items, *s;
    jv attr = {.t = JV_NONE};
    jj_arg(a, 2, "attribute", &attr);
    int rc = items_of(c, n, in, &items);
    if (!rc)
        rc = sorted(c, n, items, attr, !arg_bool(a, 1, "case_sensitive", 0),
                    arg_bool(a, 0, "reverse", 0), &s);
    if (!rc)
        *out = mklist(s);
    return rc;
}

static int f_string(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    return to_str(c, n, in, out);
}

static int f_sum(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jj_list *items;
    jv attr = {.t = JV_NONE}, acc = mkint(0);
    jj_arg(a, 0, "attribute", &attr);
    jj_arg(a, 1, "start", &acc);
    int rc = items_of(c, n, in, &items);
    for (size_t i = 0; !rc && i < items->n; i++) {
        jv v = items->v[i];
        if (attr.t != JV_NONE && (rc = attr_path(c, n, v, attr, &v)))
            break;
        if ((acc.t != JV_INT && acc.t != JV_FLOAT && acc.t != JV_BOOL) ||
            (v.t != JV_INT && v.t != JV_FLOAT && v.t != JV_BOOL))
            return jj_fail(c, n, LR_EINVAL, "sum() can only add numbers, got %s", jv_type_name(v));
        if (acc.t == JV_FLOAT || v.t == JV_FLOAT)
            acc = mkfloat((acc.t == JV_FLOAT ? acc.u.f : (double)acc.u.i) +
                          (v.t == JV_FLOAT ? v.u.f : (double)v.u.i));
        else if (__builtin_add_overflow(acc.u.i, v.u.i, &acc.u.i))
            return jj_fail(c, n, LR_EINVAL, "integer overflow in sum()");
        else
            acc.t = JV_INT;
    }
    *out = acc;
    return rc;
}

static int f_title(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv s;
    int rc = to_str(c, n, in, &s);
    return rc ? rc : map_case(c, n, s, CASE_TITLE_JINJA, out);
}

/* transformers: tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) */
static int f_tojson(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv v;
    jj_json_opts o = {.indent = -1};
    static const char *const names[] = {"ensure_ascii", "indent", "separators", "sort_keys", NULL};
    int rc = jj_check_args(c, n, a, "tojson", 4, names);
    if (rc)
        return rc;
    o.ensure_ascii = arg_bool(a, 0, "ensure_ascii", 0);
    if (jj_arg(a, 1, "indent", &v) && v.t != JV_NONE) {
        jv ind;
        if (v.t == JV_STR) { /* json.dumps takes a string indent as is */
            if ((rc = jj_mkstr(c, n, v.u.s.p, v.u.s.n, &ind)))
                return rc;
        } else if ((v.t == JV_INT || v.t == JV_BOOL) && v.u.i <= 64) {
            char *sp = jj_alloc(c, n, 65);
            if (!sp)
                return c->err->code;
            memset(sp, ' ', v.u.i > 0 ? (size_t)v.u.i : 0);
            ind = sslice(sp, v.u.i > 0 ? (size_t)v.u.i : 0);
        } else {
            return jj_fail(c, n, LR_EINVAL, "tojson indent must be an integer up to 64 or a string");
        }
        o.indent = 0;
        o.indent_str = ind.u.s.p;
    }
    o.item_sep = o.indent >= 0 ? "," : ", ";
    o.key_sep = ": ";
    if (jj_arg(a, 2, "separators", &v) && v.t != JV_NONE) {
        if (v.t != JV_LIST || v.u.l->n != 2 || v.u.l->v[0].t != JV_STR || v.u.l->v[1].t != JV_STR)
            return jj_fail(c, n, LR_EINVAL, "tojson separators must be a pair of strings");
        /* NUL-terminated copies */
        jv s0, s1;
        if ((rc = jj_mkstr(c, n, v.u.l->v[0].u.s.p, v.u.l->v[0].u.s.n, &s0)) ||
            (rc = jj_mkstr(c, n, v.u.l->v[1].u.s.p, v.u.l->v[1].u.s.n, &s1)))
            return rc;
        o.item_sep = s0.u.s.p;
        o.key_sep = s1.u.s.p;
    }
    o.sort_keys = arg_bool(a, 3, "sort_keys", 0);
    jj_buf b = {.limit = c->opt.max_output};
    char *why = NULL;
    rc = jv_tojson(&b, in, &o, 0, &why);
    if (rc == LR_EINVAL)
        rc = in.t == JV_UNDEF ? jj_undef_error(c, n, in)
                              : jj_fail(c, n, LR_EINVAL, "tojson: %s is not JSON serializable", why);
    else if (rc)
        rc = jj_fail(c, n, LR_EINTERNAL, "tojson output larger than the output limit");
    else
        rc = jj_mkstr(c, n, b.p ? b.p : "", b.n, out);
    free(b.p);
    return rc;
}

static int f_trim(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv s;
    const char *chars;
    size_t cn;
    int rc = to_str(c, n, in, &s);
    if (!rc)
        rc = strip_args(c, n, a, &chars, &cn);
    if (!rc)
        *out = do_strip(s, chars, cn, 1, 1);
    return rc;
}

static int f_unique(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jj_list *items, *l, *keys;
    jv attr = {.t = JV_NONE};
    jj_arg(a, 1, "attribute", &attr);
    int fold = !arg_bool(a, 0, "case_sensitive", 0);
    int rc = items_of(c, n, in, &items);
    if (rc || !(l = jj_list_new(c, n, 0)) || !(keys = jj_list_new(c, n, 0)))
        return rc ? rc : c->err->code;
    for (size_t i = 0; i < items->n && !rc; i++) {
        jv k = items->v[i];
        if (attr.t != JV_NONE && (rc = attr_path(c, n, k, attr, &k)))
            break;
        if (fold && k.t == JV_STR && (rc = map_case(c, n, k, CASE_LOWER, &k)))
            break;
        int seen = 0;
        for (size_t j = 0; j < keys->n && !seen; j++)
            seen = jv_equal(keys->v[j], k);
        if (!seen && !(rc = jj_list_push(c, n, keys, k)))
            rc = jj_list_push(c, n, l, items->v[i]);
        if (!rc)
            rc = jj_step(c, n);
    }
    *out = mklist(l);
    return rc;
}

static int f_upper(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv s;
    int rc = to_str(c, n, in, &s);
    return rc ? rc : map_case(c, n, s, CASE_UPPER, out);
}

static int f_wordcount(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv s;
    int rc = to_str(c, n, in, &s);
    if (rc)
        return rc;
    int64_t k = 0;
    int inw = 0;
    for (size_t i = 0; i < s.u.s.n;) {
        int32_t cp = next_cp(s.u.s.p, s.u.s.n, &i);
        utf8proc_category_t cat = utf8proc_category(cp);
        int w = cp == '_' || (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
                (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
        k += w && !inw;
        inw = w;
    }
    *out = mkint(k);
    return 0;
}

static const struct {
    const char *name;
    filter_fn fn;
} FILTERS[] = {
    {"abs", f_abs},         {"attr", f_attr},           {"batch", f_batch},
    {"capitalize", f_capitalize}, {"count", f_length},  {"d", f_default},
    {"default", f_default}, {"dictsort", f_dictsort},   {"e", f_escape},
    {"escape", f_escape},   {"first", f_first},         {"float", f_float},
    {"indent", f_indent},   {"int", f_int},             {"items", f_items},
    {"join", f_join},       {"last", f_last},           {"length", f_length},
    {"list", f_list},       {"lower", f_lower},         {"map", f_map},
    {"max", f_max},         {"min", f_min},             {"reject", f_reject},
    {"rejectattr", f_rejectattr}, {"replace", f_replace}, {"reverse", f_reverse},
    {"round", f_round},     {"safe", f_safe},           {"select", f_select},
    {"selectattr", f_selectattr}, {"sort", f_sort},     {"string", f_string},
    {"sum", f_sum},         {"title", f_title},         {"tojson", f_tojson},
    {"trim", f_trim},       {"unique", f_unique},       {"upper", f_upper},
    {"wordcount", f_wordcount},
};

static filter_fn find_filter(const char *name, size_t n)
{
    for (size_t i = 0; i < sizeof FILTERS / sizeof FILTERS[0]; i++)
        if (strlen(FILTERS[i].name) == n && memcmp(FILTERS[i].name, name, n) == 0)
            return FILTERS[i].fn;
    return NULL;
}

int jj_filter_known(const char *name, size_t n)
{
    return find_filter(name, n) != NULL;
}

static int call_filter_named(jj_ctx *c, const jj_node *n, const char *name, size_t nlen, jv in,
                             const jj_args *a, jv *out)
{
    filter_fn fn = find_filter(name, nlen);
    if (!fn)
        return jj_fail(c, n, LR_EINVAL, "unknown filter '%.*s'", (int)nlen, name);
    int rc = jj_step(c, n);
    return rc ? rc : fn(c, n, in, a, out);
}

int jj_apply_filter(jj_ctx *c, const jj_node *f, jv in, jv *out)
{
    jj_args a;
    int rc = jj_eval_args(c, f, &a);
    return rc ? rc : call_filter_named(c, f, f->s, f->slen, in, &a, out);
}

/* ---- tests ------------------------------------------------------------------------------------ */

static const char *const TESTS[] = {
    "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "even", "false", "float",
    "ge", "gt", "greaterthan", "in", "integer", "iterable", "le", "lower", "lt", "lessthan",
    "mapping", "ne", "none", "number", "odd", "sameas", "sequence", "string", "true",
    "undefined", "upper", NULL};

int jj_test_known(const char *name, size_t n)
{
    for (int i = 0; TESTS[i]; i++)
        if (strlen(TESTS[i]) == n && memcmp(TESTS[i], name, n) == 0)
            return 1;
    return 0;
}

#define IS(s) (nlen == strlen(s) && memcmp(name, s, nlen) == 0)

int jj_apply_test(jj_ctx *c, const jj_node *at, const char *name, size_t nlen, jv v,
                  const jv *args, size_t nargs, int *res)
{
    int rc = 0;
    jv arg = nargs ? args[0] : jj_undef(NULL);
    int isint = v.t == JV_INT;
    if (IS("defined")) *res = v.t != JV_UNDEF;
    else if (IS("undefined")) *res = v.t == JV_UNDEF;
    else if (IS("none")) *res = v.t == JV_NONE;
    else if (IS("boolean")) *res = v.t == JV_BOOL;
    else if (IS("true")) *res = v.t == JV_BOOL && v.u.i;
    else if (IS("false")) *res = v.t == JV_BOOL && !v.u.i;
    else if (IS("string")) *res = v.t == JV_STR;
    else if (IS("number")) *res = v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL;
    else if (IS("integer")) *res = isint;
    else if (IS("float")) *res = v.t == JV_FLOAT;
    else if (IS("mapping")) *res = v.t == JV_DICT;
    else if (IS("iterable")) *res = v.t == JV_LIST || v.t == JV_DICT || v.t == JV_STR || v.t == JV_UNDEF;
    else if (IS("sequence")) *res = v.t == JV_LIST || v.t == JV_DICT || v.t == JV_STR;
    else if (IS("callable")) /* Jinja2's Undefined has __call__ (that raises): callable */
        *res = v.t == JV_MACRO || v.t == JV_FUNC || v.t == JV_METHOD || v.t == JV_CALLER || v.t == JV_UNDEF;
    else if (IS("lower") || IS("upper")) {
        jv m;
        if (v.t != JV_STR) {
            *res = 0;
            return 0;
        }
        if ((rc = map_case(c, at, v, IS("lower") ? CASE_LOWER : CASE_UPPER, &m)))
            return rc;
        *res = jv_equal(m, v);
    } else if (IS("odd") || IS("even") || IS("divisibleby")) {
        int64_t d = 2;
        if (!isint && v.t != JV_BOOL)
            return jj_fail(c, at, LR_EINVAL, "test '%.*s' needs an integer, got %s", (int)nlen, name,
                           jv_type_name(v));
        if (IS("divisibleby")) {
            if (arg.t != JV_INT || arg.u.i == 0)
                return jj_fail(c, at, LR_EINVAL, "divisibleby needs a non-zero integer");
            d = arg.u.i;
        }
        int64_t r = d == -1 ? 0 : v.u.i % d;
        *res = IS("odd") ? r != 0 : r == 0;
    } else if (IS("eq") || IS("equalto")) *res = jv_equal(v, arg);
    else if (IS("ne")) *res = !jv_equal(v, arg);
    else if (IS("sameas")) *res = jv_equal(v, arg) && v.t == arg.t;
    else if (IS("in")) rc = jj_contains(c, at, arg, v, res);
    else {
        int r = jv_compare(v, arg, 0);
        if (r == -2)
            return jj_fail(c, at, LR_EINVAL, "test '%.*s' cannot compare %s and %s", (int)nlen, name,
                           jv_type_name(v), jv_type_name(arg));
        if (IS("lt") || IS("lessthan")) *res = r < 0;
        else if (IS("le")) *res = r <= 0;
        else if (IS("gt") || IS("greaterthan")) *res = r > 0;
        else if (IS("ge")) *res = r >= 0;
        else return jj_fail(c, at, LR_EINVAL, "unknown test '%.*s'", (int)nlen, name);
    }
    return rc;
}

/* ---- globals ---------------------------------------------------------------------------------- */

static int g_namespace_or_dict(jj_ctx *c, const jj_node *n, const jj_args *a, int ns, jv *out)
{
    jj_dict *d = jj_alloc(c, n, sizeof *d);
    if (!d)
        return c->err->code;
    int rc = 0;
    if (a->npos > 1)
        return jj_fail(c, n, LR_EINVAL, "%s() takes at most one positional argument",
                       ns ? "namespace" : "dict");
    if (a->npos == 1) {
        jv src = a->pos[0];
        if (src.t == JV_DICT || src.t == JV_NS) {
            for (size_t i = 0; i < src.u.d->n && !rc; i++)
                rc = jj_dict_set(c, n, d, src.u.d->kv[i].k, src.u.d->kv[i].kn, src.u.d->kv[i].v);
        } else if (src.t == JV_LIST) {
            for (size_t i = 0; i < src.u.l->n && !rc; i++) {
                jv p = src.u.l->v[i];
                if (p.t != JV_LIST || p.u.l->n != 2 || p.u.l->v[0].t != JV_STR)
                    return jj_fail(c, n, LR_EINVAL, "expected (key, value) pairs with string keys");
                rc = jj_dict_set(c, n, d, p.u.l->v[0].u.s.p, p.u.l->v[0].u.s.n, p.u.l->v[1]);
            }
        } else {
            return jj_fail(c, n, LR_EINVAL, "cannot build a mapping from a %s", jv_type_name(src));
        }
    }
    for (size_t j = 0; j < a->nkw && !rc; j++)
        rc = jj_dict_set(c, n, d, a->kw[j]->s, a->kw[j]->slen, a->kwv[j]);
    out->t = ns ? JV_NS : JV_DICT;
    out->u.d = d;
    return rc;
}

int jj_call_global(jj_ctx *c, const jj_node *n, int id, const jj_args *a, jv *out)
{
    switch (id) {
    case JF_RANGE: {
        int64_t v[3] = {0, 0, 1};
        if (a->npos < 1 || a->npos > 3 || a->nkw)
            return jj_fail(c, n, LR_EINVAL, "range() takes 1 to 3 integer arguments");
        for (size_t i = 0; i < a->npos; i++)
            if (a->pos[i].t != JV_INT && a->pos[i].t != JV_BOOL)
                return jj_fail(c, n, LR_EINVAL, "range() arguments must be integers, not %s",
                               jv_type_name(a->pos[i]));
        if (a->npos == 1) {
            v[1] = a->pos[0].u.i;
        } else {
            v[0] = a->pos[0].u.i;
            v[1] = a->pos[1].u.i;
            if (a->npos == 3)
                v[2] = a->pos[2].u.i;
        }
        if (v[2] == 0)
            return jj_fail(c, n, LR_EINVAL, "range() step must not be zero");
        double count = ceil(((double)v[1] - (double)v[0]) / (double)v[2]);
        if (count > MAX_RANGE)
            return jj_fail(c, n, LR_EINTERNAL, "range() is limited to %d items", MAX_RANGE);
        jj_list *l = jj_list_new(c, n, count > 0 ? (size_t)count : 0);
        if (!l)
            return c->err->code;
        for (int64_t x = v[0]; v[2] > 0 ? x < v[1] : x > v[1]; x += v[2])
            l->v[l->n++] = mkint(x);
        *out = mklist(l);
        return 0;
    }
    case JF_NAMESPACE:
        return g_namespace_or_dict(c, n, a, 1, out);
    case JF_DICT:
        return g_namespace_or_dict(c, n, a, 0, out);
    case JF_RAISE: {
        jv msg = sslice("", 0), s;
        jj_arg(a, 0, "message", &msg);
        int rc = to_str(c, n, msg, &s);
        if (rc)
            return rc;
        return lr_error_set(c->err, LR_EINVAL, "raise_exception: %.*s",
                            (int)(s.u.s.n > 480 ? 480 : s.u.s.n), s.u.s.p);
    }
    case JF_STRFTIME: {
        jv fmt;
        if (!jj_arg(a, 0, "format", &fmt) || fmt.t != JV_STR || fmt.u.s.n > 200)
            return jj_fail(c, n, LR_EINVAL, "strftime_now() needs a format string (at most 200 bytes)");
        char f[256], buf[1024];
        memcpy(f, fmt.u.s.p, fmt.u.s.n);
        f[fmt.u.s.n] = '\0';
        time_t now = c->opt.now ? c->opt.now : time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        size_t k = fmt.u.s.n ? strftime(buf, sizeof buf, f, &tm) : 0;
        if (fmt.u.s.n && k == 0 && buf[0] != '\0')
            return jj_fail(c, n, LR_EINVAL, "strftime_now(): result too long");
        return jj_mkstr(c, n, buf, k, out);
    }
    default:
        return jj_fail(c, n, LR_EINTERNAL, "unknown builtin function");
    }
}

/* ---- methods ---------------------------------------------------------------------------------- */

static const char *const STR_METHODS[] = {"startswith", "endswith", "strip", "lstrip", "rstrip",
                                          "split", "upper", "lower", "title", "capitalize",
                                          "replace", "join", "find", "count", NULL};
static const char *const DICT_METHODS[] = {"get", "items", "keys", "values", NULL};
/* mutating methods: present (so `x.append` is not Undefined) but refused when called */
static const char *const LIST_MUTATORS[] = {"append", "extend", "insert", "pop", "remove", "clear",
                                            "sort", "reverse", NULL};
static const char *const DICT_MUTATORS[] = {"update", "pop", "popitem", "setdefault", "clear", NULL};

static int in_names(const char *const *names, const char *name, size_t nlen)
{
    for (int i = 0; names[i]; i++)
        if (IS(names[i]))
            return 1;
    return 0;
}

int jj_method_exists(jv self, const char *name, size_t nlen)
{
    switch (self.t) {
    case JV_STR:
        return in_names(STR_METHODS, name, nlen);
    case JV_DICT:
        return in_names(DICT_METHODS, name, nlen) || in_names(DICT_MUTATORS, name, nlen);
    case JV_LIST:
        return in_names(LIST_MUTATORS, name, nlen);
    default:
        return 0;
    }
}

static int str_method(jj_ctx *c, const jj_node *n, jv s, const char *name, size_t nlen,
                      const jj_args *a, jv *out)
{
    if (IS("startswith") || IS("endswith"))
        return starts_ends(c, n, s, a, name[0] == 'e', out);
    if (IS("strip") || IS("lstrip") || IS("rstrip")) {
        const char *chars;
        size_t cn;
        int rc = strip_args(c, n, a, &chars, &cn);
        if (!rc)
            *out = do_strip(s, chars, cn, name[0] != 'r', name[0] != 'l');
        return rc;
    }
    if (IS("split"))
        return do_split(c, n, s, a, out);
    if (IS("upper"))
        return map_case(c, n, s, CASE_UPPER, out);
    if (IS("lower"))
        return map_case(c, n, s, CASE_LOWER, out);
    if (IS("title"))
        return map_case(c, n, s, CASE_TITLE_PY, out);
    if (IS("capitalize"))
        return map_case(c, n, s, CASE_CAPITALIZE, out);
    if (IS("replace"))
        return replace_args(c, n, s, a, out);
    if (IS("join")) {
        jv it;
        jj_args ja = {0};
        if (!jj_arg(a, 0, NULL, &it))
            return jj_fail(c, n, LR_EINVAL, "join() takes one argument");
        jj_list *items;
        int rc = items_of(c, n, it, &items);
        for (size_t i = 0; !rc && i < items->n; i++)
            if (items->v[i].t != JV_STR)
                return jj_fail(c, n, LR_EINVAL, "join(): item %zu is a %s, not a string", i,
                               jv_type_name(items->v[i]));
        jv pos[1] = {s};
        ja.pos = pos;
        ja.npos = 1;
        return rc ? rc : f_join(c, n, mklist(items), &ja, out);
    }
    if (IS("find") || IS("count")) {
        jv sub;
        if (!jj_arg(a, 0, NULL, &sub) || sub.t != JV_STR)
            return jj_fail(c, n, LR_EINVAL, "%.*s() needs a string argument", (int)nlen, name);
        if (IS("find")) {
            const char *hit = memmem(s.u.s.p, s.u.s.n, sub.u.s.p, sub.u.s.n);
            *out = mkint(hit ? (int64_t)jj_utf8_len(s.u.s.p, (size_t)(hit - s.u.s.p)) : -1);
            return 0;
        }
        int64_t k = 0;
        if (sub.u.s.n == 0) {
            k = (int64_t)jj_utf8_len(s.u.s.p, s.u.s.n) + 1;
        } else {
            for (size_t i = 0; i + sub.u.s.n <= s.u.s.n;) {
                const char *hit = memmem(s.u.s.p + i, s.u.s.n - i, sub.u.s.p, sub.u.s.n);
                if (!hit)
                    break;
                k++;
                i = (size_t)(hit - s.u.s.p) + sub.u.s.n;
            }
        }
        *out = mkint(k);
        return 0;
    }
    return jj_fail(c, n, LR_EINVAL, "str has no method '%.*s'", (int)nlen, name);
}

int jj_call_method(jj_ctx *c, const jj_node *n, jj_method *m, const jj_args *a, jv *out)
{
    const char *name = m->name;
    size_t nlen = m->nlen;
    jv self = m->self;
    int rc = jj_step(c, n);
    if (rc)
        return rc;
    if (self.t == JV_STR)
        return str_method(c, n, self, name, nlen, a, out);
    if (self.t == JV_LOOP && IS("cycle")) {
        if (a->npos == 0)
            return jj_fail(c, n, LR_EINVAL, "loop.cycle() needs at least one argument");
        const jj_loop *lp = self.u.ptr;
        *out = a->pos[lp->i % a->npos];
        return 0;
    }
    if (self.t == JV_DICT && in_names(DICT_METHODS, name, nlen)) {
        if (IS("get")) {
            jv key, def = {.t = JV_NONE};
            if (!jj_arg(a, 0, NULL, &key))
                return jj_fail(c, n, LR_EINVAL, "get() needs a key");
            jj_arg(a, 1, "default", &def);
            jv *v = key.t == JV_STR ? jj_dict_get(self.u.d, key.u.s.p, key.u.s.n) : NULL;
            *out = v ? *v : def;
            return 0;
        }
        if (IS("items")) {
            jj_args none = {0};
            return f_items(c, n, self, &none, out);
        }
        jj_list *l = jj_list_new(c, n, self.u.d->n);
        if (!l)
            return c->err->code;
        for (size_t i = 0; i < self.u.d->n; i++)
            l->v[l->n++] = IS("keys") ? sslice(self.u.d->kv[i].k, self.u.d->kv[i].kn)
                                      : self.u.d->kv[i].v;
        *out = mklist(l);
        return 0;
    }
    return jj_fail(c, n, LR_EINVAL, "access to '%.*s' of a %s is not allowed: the template "
                   "environment is immutable", (int)nlen, name, jv_type_name(self));
}

int jj_loop_attr(jj_ctx *c, const jj_node *n, jv loop, const char *name, size_t nlen, jv *out)
{
    const jj_loop *lp = loop.u.ptr;
    int64_t i = (int64_t)lp->i, len = (int64_t)lp->items->n;
    if (IS("index")) *out = mkint(i + 1);
    else if (IS("index0")) *out = mkint(i);
    else if (IS("revindex")) *out = mkint(len - i);
    else if (IS("revindex0")) *out = mkint(len - i - 1);
    else if (IS("first")) *out = mkbool(i == 0);
    else if (IS("last")) *out = mkbool(i == len - 1);
    else if (IS("length")) *out = mkint(len);
    else if (IS("depth")) *out = mkint(1);
    else if (IS("depth0")) *out = mkint(0);
    else if (IS("previtem")) *out = i > 0 ? lp->items->v[i - 1] : jj_undef("previtem");
    else if (IS("nextitem")) *out = i + 1 < len ? lp->items->v[i + 1] : jj_undef("nextitem");
    else if (IS("cycle")) {
        jj_method *m = jj_alloc(c, n, sizeof *m);
        if (!m)
            return c->err->code;
        m->self = loop;
        m->name = "cycle";
        m->nlen = 5;
        out->t = JV_METHOD;
        out->u.ptr = m;
    } else {
        *out = jj_undef(NULL);
    }
    return 0;
}
