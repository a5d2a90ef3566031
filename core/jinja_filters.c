/* jinja_filters.c — the filters chat templates use, each like its jinja2.filters counterpart
 * (tojson replaced by transformers' json.dumps(ensure_ascii=False, indent, separators,
 * sort_keys) version), plus the collection helpers they share: iteration of any value, dotted
 * attribute paths (make_attrgetter) and a stable sort. Filter names are checked at compile time
 * (jj_filter_known). Not here: tests, globals and methods (jinja_builtins.c), str semantics
 * (jinja_text.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "jinja_eval.h"

typedef int (*filter_fn)(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out);

/* Items of an iterable for filters: lists as is, dict keys, string characters, Undefined empty. */
int jj_items_of(jj_ctx *c, const jj_node *n, jv v, jj_list **out)
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
        if (!l) return c->err->code;
        for (size_t i = 0; i < v.u.d->n; i++)
            l->v[l->n++] = jv_mkslice(v.u.d->kv[i].k, v.u.d->kv[i].kn);
        *out = l;
        return 0;
    }
    case JV_STR: {
        jj_list *l = jj_list_new(c, n, 0);
        if (!l) return c->err->code;
        for (size_t i = 0; i < v.u.s.n;) {
            size_t st = i;
            jj_next_cp(v.u.s.p, v.u.s.n, &i);
            int rc = jj_list_push(c, n, l, jv_mkslice(v.u.s.p + st, i - st));
            if (rc) return rc;
        }
        *out = l;
        return 0;
    }
    default:
        return jj_fail(c, n, LR_EINVAL, "'%s' object is not iterable", jv_type_name(v));
    }
}

/* environment.getattr along a dotted path ("a.b", "0"): Jinja2's make_attrgetter. */
int jj_attr_path(jj_ctx *c, const jj_node *n, jv item, jv path, jv *out)
{
    if (path.t == JV_INT) return jj_getitem(c, n, item, path, out);
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
        if (out->t == JV_UNDEF) return 0;
        if (isnum && out->t == JV_LIST) {
            rc = jj_getitem(c, n, *out, jv_mkint(strtoll(part, NULL, 10)), out);
        } else {
            rc = jj_getattr(c, n, *out, part, pl, out);
        }
        if (rc) return rc;
        if (!dot) break;
        i = end + 1;
    }
    return 0;
}

/* Stable merge sort of v[0:n] by key (keys[i] belongs to v[i]). */
static int msort(jv *v, jv *keys, jv *tv, jv *tk, size_t n, int fold, int rev)
{
    if (n < 2) return 0;
    size_t h = n / 2;
    if (msort(v, keys, tv, tk, h, fold, rev) || msort(v + h, keys + h, tv, tk, n - h, fold, rev))
        return -1;
    size_t i = 0, j = h, o = 0;
    while (i < h && j < n) {
        int r = jv_compare(keys[j], keys[i], fold);
        if (r == -2) {
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

int jj_sorted(jj_ctx *c, const jj_node *n, jj_list *in, jv attribute, int fold, int rev,
              jj_list **out)
{
    size_t k = in->n;
    jj_list *l = jj_list_new(c, n, k);
    jv *keys = jj_alloc(c, n, (k + 1) * sizeof *keys);
    jv *tv = jj_alloc(c, n, (k + 1) * sizeof *tv);
    jv *tk = jj_alloc(c, n, (k + 1) * sizeof *tk);
    if (!l || !keys || !tv || !tk) return c->err->code;
    if (k) memcpy(l->v, in->v, k * sizeof *l->v);
    l->n = k;
    for (size_t i = 0; i < k; i++) {
        int rc = attribute.t == JV_NONE ? (keys[i] = in->v[i], 0)
                                        : jj_attr_path(c, n, in->v[i], attribute, &keys[i]);
        if (rc) return rc;
    }
    /* rev with a stable sort: Python sorts with reverse=True keeping equal items in order */
    if (msort(l->v, keys, tv, tk, k, fold, rev)) /* -1: two keys could not be compared */
        return jj_fail(c, n, LR_EINVAL, "cannot sort values of different types");
    *out = l;
    return 0;
}

/* ---- filters ----------------------------------------------------------------------------------
 */

static int f_abs(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    if (in.t == JV_INT || in.t == JV_BOOL) {
        if (in.u.i == INT64_MIN) return jj_fail(c, n, LR_EINVAL, "integer overflow in abs");
        *out = jv_mkint(in.u.i < 0 ? -in.u.i : in.u.i);
    } else if (in.t == JV_FLOAT) {
        *out = jv_mkfloat(fabs(in.u.f));
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
    int rc = jj_items_of(c, n, in, &items);
    if (rc || !(res = jj_list_new(c, n, 0))) return rc ? rc : c->err->code;
    for (size_t i = 0; i < items->n; i++) {
        if (!cur || (int64_t)cur->n == cnt.u.i) {
            if (!(cur = jj_list_new(c, n, 0)) || (rc = jj_list_push(c, n, res, jv_mklist(cur))))
                return rc ? rc : c->err->code;
        }
        if ((rc = jj_list_push(c, n, cur, items->v[i]))) return rc;
    }
    while (has_fill && cur && (int64_t)cur->n < cnt.u.i)
        if ((rc = jj_list_push(c, n, cur, fill))) return rc;
    *out = jv_mklist(res);
    return 0;
}

static int f_capitalize(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv s;
    int rc = jj_to_str(c, n, in, &s);
    return rc ? rc : jj_map_case(c, n, s, JJ_CASE_CAPITALIZE, out);
}

static int f_default(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv def = jv_mkslice("", 0);
    jj_arg(a, 0, "default_value", &def);
    int boolean = jj_arg_bool(a, 1, "boolean", 0);
    *out = (in.t == JV_UNDEF || (boolean && !jv_truthy(in))) ? def : in;
    return 0;
}

static int f_dictsort(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    if (in.t != JV_DICT)
        return jj_fail(c, n, LR_EINVAL, "dictsort expects a dict, got %s", jv_type_name(in));
    int cs = jj_arg_bool(a, 0, "case_sensitive", 0);
    jv by = jv_mkslice("key", 3);
    jj_arg(a, 1, "by", &by);
    int rev = jj_arg_bool(a, 2, "reverse", 0);
    int by_value = by.t == JV_STR && by.u.s.n == 5 && memcmp(by.u.s.p, "value", 5) == 0;
    jj_list *pairs = jj_list_new(c, n, in.u.d->n);
    if (!pairs) return c->err->code;
    for (size_t i = 0; i < in.u.d->n; i++) {
        jj_list *p = jj_list_new(c, n, 2);
        if (!p) return c->err->code;
        p->v[0] = jv_mkslice(in.u.d->kv[i].k, in.u.d->kv[i].kn);
        p->v[1] = in.u.d->kv[i].v;
        p->n = 2;
        pairs->v[pairs->n] = jv_mklist(p);
        pairs->v[pairs->n++].tuple = 1;
    }
    jj_list *res;
    int rc = jj_sorted(c, n, pairs, jv_mkint(by_value ? 1 : 0), !cs, rev, &res);
    if (!rc) *out = jv_mklist(res);
    return rc;
}

static int f_escape(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv s;
    int rc = jj_to_str(c, n, in, &s);
    if (rc) return rc;
    jj_buf b = {.limit = c->opt.max_output};
    for (size_t i = 0; !rc && i < s.u.s.n; i++) {
        const char *e = NULL;
        switch (s.u.s.p[i]) {
        case '&':
            e = "&amp;";
            break;
        case '<':
            e = "&lt;";
            break;
        case '>':
            e = "&gt;";
            break;
        case '"':
            e = "&#34;";
            break;
        case '\'':
            e = "&#39;";
            break;
        }
        rc = e ? jj_buf_put(&b, e, strlen(e)) : jj_buf_putc(&b, s.u.s.p[i]);
    }
    rc = rc ? jj_fail(c, n, LR_EINTERNAL, "escaped text too long")
            : jj_mkstr(c, n, b.p ? b.p : "", b.n, out);
    free(b.p);
    return rc;
}

static int f_first_last(jj_ctx *c, const jj_node *n, jv in, int last, jv *out)
{
    jj_list *items;
    int rc = jj_items_of(c, n, in, &items);
    if (rc) return rc;
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
    jv t = jj_strip(s, NULL, 0, 1, 1);
    if (t.u.s.n == 0 || t.u.s.n >= sizeof tmp) return 0;
    memcpy(tmp, t.u.s.p, t.u.s.n);
    tmp[t.u.s.n] = '\0';
    char *end;
    if (want_int) {
        long long v = strtoll(tmp, &end, 10);
        if (*end == '\0') {
            *out = jv_mkint(v);
            return 1;
        }
    }
    double d = strtod(tmp, &end);
    if (*end != '\0' || end == tmp) return 0;
    if (want_int) {
        if (!(d > -9.2e18 && d < 9.2e18)) return 0;
        *out = jv_mkint((int64_t)d);
    } else {
        *out = jv_mkfloat(d);
    }
    return 1;
}

static int f_float(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv def = jv_mkfloat(0.0);
    jj_arg(a, 0, "default", &def);
    if (in.t == JV_UNDEF) /* float(Undefined) raises UndefinedError in Jinja2 */
        return jj_undef_error(c, n, in);
    if (in.t == JV_FLOAT)
        *out = in;
    else if (in.t == JV_INT || in.t == JV_BOOL)
        *out = jv_mkfloat((double)in.u.i);
    else if (!(in.t == JV_STR && parse_number(in, 0, out)))
        *out = def;
    return 0;
}

static int f_int(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv def = jv_mkint(0);
    jj_arg(a, 0, "default", &def);
    if (in.t == JV_UNDEF) return jj_undef_error(c, n, in);
    if (in.t == JV_INT)
        *out = in;
    else if (in.t == JV_BOOL)
        *out = jv_mkint(in.u.i);
    else if (in.t == JV_FLOAT && in.u.f > -9.2e18 && in.u.f < 9.2e18)
        *out = jv_mkint((int64_t)in.u.f);
    else if (!(in.t == JV_STR && parse_number(in, 1, out)))
        *out = def;
    return 0;
}

/* Jinja2's format filter: value % args (keyword arguments become a mapping) */
static int f_format(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    if (in.t != JV_STR)
        return jj_fail(c, n, LR_EINVAL, "format expects a format string, got %s", jv_type_name(in));
    if (a->nkw && a->npos)
        return jj_fail(c, n, LR_EINVAL, "format: positional or keyword arguments, not both");
    jv args;
    if (a->nkw) {
        jj_dict *d = jj_alloc(c, n, sizeof *d);
        if (!d) return c->err->code;
        for (size_t j = 0; j < a->nkw; j++) {
            int rc = jj_dict_set(c, n, d, a->kw[j]->s, a->kw[j]->slen, a->kwv[j]);
            if (rc) return rc;
        }
        args.t = JV_DICT;
        args.tuple = 0;
        args.u.d = d;
    } else {
        jj_list *l = jj_list_new(c, n, a->npos);
        if (!l) return c->err->code;
        for (size_t i = 0; i < a->npos; i++)
            l->v[l->n++] = a->pos[i];
        args = jv_mklist(l);
        args.tuple = 1;
    }
    return jj_percent_format(c, n, in, args, out);
}

static int f_indent(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv w = jv_mkint(4), s;
    jj_arg(a, 0, "width", &w);
    int first = jj_arg_bool(a, 1, "first", 0), blank = jj_arg_bool(a, 2, "blank", 0);
    if (in.t != JV_STR) /* Jinja2 appends "\n" to the value itself */
        return jj_fail(c, n, LR_EINVAL, "indent expects a string, got %s", jv_type_name(in));
    s = in;
    int rc = 0;
    jv ind;
    if (w.t == JV_STR) {
        ind = w;
    } else if (w.t == JV_INT && w.u.i >= 0 && w.u.i <= 1000) {
        char *sp = jj_alloc(c, n, (size_t)w.u.i + 1);
        if (!sp) return c->err->code;
        memset(sp, ' ', (size_t)w.u.i);
        ind = jv_mkslice(sp, (size_t)w.u.i);
    } else {
        return jj_fail(c, n, LR_EINVAL, "indent width must be an integer in [0, 1000] or a string");
    }
    /* Jinja2: s += "\n"; lines = s.splitlines() — the pieces between line breaks, an empty one
     * after a final break included (splitting at \n, \r\n and \r here) */
    jj_buf b = {.limit = c->opt.max_output};
    size_t i = 0, line = 0;
    if (first) rc = jj_buf_put(&b, ind.u.s.p, ind.u.s.n);
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
            if (!rc && (blank || len > 0)) rc = jj_buf_put(&b, ind.u.s.p, ind.u.s.n);
        }
        if (!rc) rc = jj_buf_put(&b, s.u.s.p + st, len);
        line++;
    }
    rc = rc ? jj_fail(c, n, LR_EINTERNAL, "indented text too long")
            : jj_mkstr(c, n, b.p ? b.p : "", b.n, out);
    free(b.p);
    return rc;
}

static int f_items(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    if (in.t == JV_UNDEF) {
        jj_list *l = jj_list_new(c, n, 0);
        *out = jv_mklist(l);
        return l ? 0 : c->err->code;
    }
    if (in.t != JV_DICT)
        return jj_fail(c, n, LR_EINVAL, "items expects a mapping, got %s", jv_type_name(in));
    jj_list *l = jj_list_new(c, n, in.u.d->n);
    if (!l) return c->err->code;
    for (size_t i = 0; i < in.u.d->n; i++) {
        jj_list *p = jj_list_new(c, n, 2);
        if (!p) return c->err->code;
        p->v[0] = jv_mkslice(in.u.d->kv[i].k, in.u.d->kv[i].kn);
        p->v[1] = in.u.d->kv[i].v;
        p->n = 2;
        l->v[l->n] = jv_mklist(p);
        l->v[l->n++].tuple = 1;
    }
    *out = jv_mklist(l);
    return 0;
}

static int f_join(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv sep = jv_mkslice("", 0), attr = {.t = JV_NONE};
    jj_arg(a, 0, "d", &sep);
    jj_arg(a, 1, "attribute", &attr);
    if (sep.t != JV_STR) return jj_fail(c, n, LR_EINVAL, "join separator must be a string");
    jj_list *items;
    int rc = jj_items_of(c, n, in, &items);
    if (rc) return rc;
    jj_buf b = {.limit = c->opt.max_output};
    for (size_t i = 0; !rc && i < items->n; i++) {
        jv v = items->v[i];
        if (attr.t != JV_NONE && (rc = jj_attr_path(c, n, v, attr, &v))) break;
        if (i) rc = jj_buf_put(&b, sep.u.s.p, sep.u.s.n);
        if (!rc) rc = jv_str(&b, v);
        if (rc) rc = jj_fail(c, n, LR_EINTERNAL, "joined text too long");
    }
    if (!rc) rc = jj_mkstr(c, n, b.p ? b.p : "", b.n, out);
    free(b.p);
    return rc;
}

static int f_length(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    switch (in.t) {
    case JV_STR:
        *out = jv_mkint((int64_t)jj_utf8_len(in.u.s.p, in.u.s.n));
        return 0;
    case JV_LIST:
        *out = jv_mkint((int64_t)in.u.l->n);
        return 0;
    case JV_DICT:
        *out = jv_mkint((int64_t)in.u.d->n);
        return 0;
    case JV_UNDEF:
        *out = jv_mkint(0);
        return 0;
    default:
        return jj_fail(c, n, LR_EINVAL, "object of type '%s' has no len()", jv_type_name(in));
    }
}

static int f_list(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jj_list *items, *l;
    int rc = jj_items_of(c, n, in, &items);
    if (rc) return rc;
    if (!(l = jj_list_new(c, n, items->n))) return c->err->code;
    if (items->n) memcpy(l->v, items->v, items->n * sizeof *l->v);
    l->n = items->n;
    *out = jv_mklist(l);
    return 0;
}

static int f_lower(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv s;
    int rc = jj_to_str(c, n, in, &s);
    return rc ? rc : jj_map_case(c, n, s, JJ_CASE_LOWER, out);
}

static int f_map(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv attr, def = jj_undef(NULL), fname;
    jj_list *items, *l;
    /* Jinja2's do_map starts with `if value:` — a false value maps to nothing */
    int rc = jj_items_of(c, n, jv_truthy(in) ? in : jj_undef(NULL), &items);
    if (rc || !(l = jj_list_new(c, n, items->n))) return rc ? rc : c->err->code;
    int by_attr = jj_arg(a, SIZE_MAX, "attribute", &attr);
    jj_arg(a, SIZE_MAX, "default", &def);
    jj_args rest = *a;
    if (!by_attr) {
        if (!jj_arg(a, 0, NULL, &fname) || fname.t != JV_STR)
            return jj_fail(c, n, LR_EINVAL, "map() needs a filter name or attribute=");
        if (!jj_filter_known(fname.u.s.p, fname.u.s.n))
            return jj_fail(c, n, LR_EINVAL, "map(): unknown filter '%.*s'", (int)fname.u.s.n,
                           fname.u.s.p);
        rest.pos++;
        rest.npos--;
    }
    for (size_t i = 0; i < items->n && !rc; i++) {
        jv v;
        if (by_attr) {
            rc = jj_attr_path(c, n, items->v[i], attr, &v);
            if (!rc && v.t == JV_UNDEF) v = def;
        } else {
            rc = jj_call_filter(c, n, fname.u.s.p, fname.u.s.n, items->v[i], &rest, &v);
        }
        if (!rc) l->v[l->n++] = v;
    }
    *out = jv_mklist(l);
    return rc;
}

static int f_minmax(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out, int want_max)
{
    jj_list *items, *s;
    jv attr = {.t = JV_NONE};
    jj_arg(a, 1, "attribute", &attr);
    int rc = jj_items_of(c, n, in, &items);
    if (!rc) rc = jj_sorted(c, n, items, attr, !jj_arg_bool(a, 0, "case_sensitive", 0), 0, &s);
    if (rc) return rc;
    *out = s->n ? s->v[want_max ? s->n - 1 : 0] : jj_undef(NULL);
    /* max() returns the first of equal maxima in Python; a stable sort puts it first of its run */
    if (want_max && s->n > 1) {
        size_t k = s->n - 1;
        jv key_last, key_prev;
        while (k > 0) {
            if (attr.t == JV_NONE) {
                key_last = s->v[s->n - 1];
                key_prev = s->v[k - 1];
            } else if (jj_attr_path(c, n, s->v[s->n - 1], attr, &key_last) ||
                       jj_attr_path(c, n, s->v[k - 1], attr, &key_prev)) {
                return c->err->code;
            }
            if (jv_compare(key_prev, key_last, !jj_arg_bool(a, 0, "case_sensitive", 0)) != 0) break;
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
    int rc = jj_to_str(c, n, in, &s);
    return rc ? rc : jj_replace_args(c, n, s, a, out);
}

static int f_reverse(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jj_list *items, *l;
    int rc = jj_items_of(c, n, in, &items);
    if (rc || !(l = jj_list_new(c, n, items->n))) return rc ? rc : c->err->code;
    for (size_t i = 0; i < items->n; i++)
        l->v[i] = items->v[items->n - 1 - i];
    l->n = items->n;
    if (in.t != JV_STR) {
        *out = jv_mklist(l);
        return 0;
    }
    char *p = jj_alloc(c, n, in.u.s.n + 1);
    if (!p) return c->err->code;
    size_t o = 0;
    for (size_t i = 0; i < l->n; i++) {
        memcpy(p + o, l->v[i].u.s.p, l->v[i].u.s.n);
        o += l->v[i].u.s.n;
    }
    *out = jv_mkslice(p, o);
    return 0;
}

static int f_round(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv prec = jv_mkint(0), method = jv_mkslice("common", 6);
    jj_arg(a, 0, "precision", &prec);
    jj_arg(a, 1, "method", &method);
    if (in.t != JV_INT && in.t != JV_FLOAT && in.t != JV_BOOL)
        return jj_fail(c, n, LR_EINVAL, "round expects a number, got %s", jv_type_name(in));
    if (in.t != JV_FLOAT && method.t == JV_STR && method.u.s.n == 6 &&
        memcmp(method.u.s.p, "common", 6) == 0 && prec.t == JV_INT && prec.u.i >= 0) {
        *out = jv_mkint(in.u.i); /* Python round(int, n ≥ 0) is the int itself */
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
    *out = jv_mkfloat(r);
    return 0;
}

/* Markup(value): the text of the value (autoescaping is off, so nothing else changes) */
static int f_safe(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    return jj_to_str(c, n, in, out);
}

/* select / reject / selectattr / rejectattr */
static int select_impl(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, int by_attr, int keep,
                       jv *out)
{
    jj_list *items, *l;
    /* Jinja2's _select_or_reject starts with `if seq:` — a false value selects nothing */
    int rc =
        jv_truthy(in) ? jj_items_of(c, n, in, &items) : jj_items_of(c, n, jj_undef(NULL), &items);
    if (rc || !(l = jj_list_new(c, n, 0))) return rc ? rc : c->err->code;
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
        if (by_attr && (rc = jj_attr_path(c, n, v, attr, &v))) break;
        if (has_test)
            rc = jj_apply_test(c, n, test.u.s.p, test.u.s.n, v, a->pos + first + 1, targs, &r);
        else
            r = jv_truthy(v);
        if (!rc && (r != 0) == keep) rc = jj_list_push(c, n, l, items->v[i]);
    }
    *out = jv_mklist(l);
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
    int rc = jj_items_of(c, n, in, &items);
    if (!rc)
        rc = jj_sorted(c, n, items, attr, !jj_arg_bool(a, 1, "case_sensitive", 0),
                       jj_arg_bool(a, 0, "reverse", 0), &s);
    if (!rc) *out = jv_mklist(s);
    return rc;
}

static int f_string(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    return jj_to_str(c, n, in, out);
}

static int f_sum(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jj_list *items;
    jv attr = {.t = JV_NONE}, acc = jv_mkint(0);
    jj_arg(a, 0, "attribute", &attr);
    jj_arg(a, 1, "start", &acc);
    int rc = jj_items_of(c, n, in, &items);
    for (size_t i = 0; !rc && i < items->n; i++) {
        jv v = items->v[i];
        if (attr.t != JV_NONE && (rc = jj_attr_path(c, n, v, attr, &v))) break;
        if ((acc.t != JV_INT && acc.t != JV_FLOAT && acc.t != JV_BOOL) ||
            (v.t != JV_INT && v.t != JV_FLOAT && v.t != JV_BOOL))
            return jj_fail(c, n, LR_EINVAL, "sum() can only add numbers, got %s", jv_type_name(v));
        if (acc.t == JV_FLOAT || v.t == JV_FLOAT)
            acc = jv_mkfloat((acc.t == JV_FLOAT ? acc.u.f : (double)acc.u.i) +
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
    int rc = jj_to_str(c, n, in, &s);
    return rc ? rc : jj_map_case(c, n, s, JJ_CASE_TITLE_JINJA, out);
}

/* transformers: tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) */
static int f_tojson(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv v;
    jj_json_opts o = {.indent = -1};
    static const char *const names[] = {"ensure_ascii", "indent", "separators", "sort_keys", NULL};
    int rc = jj_check_args(c, n, a, "tojson", 4, names);
    if (rc) return rc;
    o.ensure_ascii = jj_arg_bool(a, 0, "ensure_ascii", 0);
    if (jj_arg(a, 1, "indent", &v) && v.t != JV_NONE) {
        jv ind;
        if (v.t == JV_STR) { /* json.dumps takes a string indent as is */
            if ((rc = jj_mkstr(c, n, v.u.s.p, v.u.s.n, &ind))) return rc;
        } else if ((v.t == JV_INT || v.t == JV_BOOL) && v.u.i <= 64) {
            char *sp = jj_alloc(c, n, 65);
            if (!sp) return c->err->code;
            memset(sp, ' ', v.u.i > 0 ? (size_t)v.u.i : 0);
            ind = jv_mkslice(sp, v.u.i > 0 ? (size_t)v.u.i : 0);
        } else {
            return jj_fail(c, n, LR_EINVAL,
                           "tojson indent must be an integer up to 64 or a string");
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
    o.sort_keys = jj_arg_bool(a, 3, "sort_keys", 0);
    jj_buf b = {.limit = c->opt.max_output};
    char *why = NULL;
    rc = jv_tojson(&b, in, &o, 0, &why);
    if (rc == LR_EINVAL)
        rc = in.t == JV_UNDEF
                 ? jj_undef_error(c, n, in)
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
    int rc = jj_to_str(c, n, in, &s);
    if (!rc) rc = jj_strip_args(c, n, a, &chars, &cn);
    if (!rc) *out = jj_strip(s, chars, cn, 1, 1);
    return rc;
}

static int f_unique(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jj_list *items, *l, *keys;
    jv attr = {.t = JV_NONE};
    jj_arg(a, 1, "attribute", &attr);
    int fold = !jj_arg_bool(a, 0, "case_sensitive", 0);
    int rc = jj_items_of(c, n, in, &items);
    if (rc || !(l = jj_list_new(c, n, 0)) || !(keys = jj_list_new(c, n, 0)))
        return rc ? rc : c->err->code;
    for (size_t i = 0; i < items->n && !rc; i++) {
        jv k = items->v[i];
        if (attr.t != JV_NONE && (rc = jj_attr_path(c, n, k, attr, &k))) break;
        if (fold && k.t == JV_STR && (rc = jj_map_case(c, n, k, JJ_CASE_LOWER, &k))) break;
        int seen = 0;
        for (size_t j = 0; j < keys->n && !seen; j++)
            seen = jv_equal(keys->v[j], k);
        if (!seen && !(rc = jj_list_push(c, n, keys, k))) rc = jj_list_push(c, n, l, items->v[i]);
        if (!rc) rc = jj_step(c, n);
    }
    *out = jv_mklist(l);
    return rc;
}

static int f_upper(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv s;
    int rc = jj_to_str(c, n, in, &s);
    return rc ? rc : jj_map_case(c, n, s, JJ_CASE_UPPER, out);
}

static int f_wordcount(jj_ctx *c, const jj_node *n, jv in, const jj_args *a, jv *out)
{
    jv s;
    int rc = jj_to_str(c, n, in, &s);
    if (rc) return rc;
    int64_t k = 0;
    int inw = 0;
    for (size_t i = 0; i < s.u.s.n;) {
        int32_t cp = jj_next_cp(s.u.s.p, s.u.s.n, &i);
        utf8proc_category_t cat = utf8proc_category(cp);
        int w = cp == '_' || (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
                (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
        k += w && !inw;
        inw = w;
    }
    *out = jv_mkint(k);
    return 0;
}

static const struct {
    const char *name;
    filter_fn fn;
} FILTERS[] = {
    {"abs", f_abs},
    {"attr", f_attr},
    {"batch", f_batch},
    {"capitalize", f_capitalize},
    {"count", f_length},
    {"d", f_default},
    {"default", f_default},
    {"dictsort", f_dictsort},
    {"e", f_escape},
    {"escape", f_escape},
    {"first", f_first},
    {"float", f_float},
    {"format", f_format},
    {"indent", f_indent},
    {"int", f_int},
    {"items", f_items},
    {"join", f_join},
    {"last", f_last},
    {"length", f_length},
    {"list", f_list},
    {"lower", f_lower},
    {"map", f_map},
    {"max", f_max},
    {"min", f_min},
    {"reject", f_reject},
    {"rejectattr", f_rejectattr},
    {"replace", f_replace},
    {"reverse", f_reverse},
    {"round", f_round},
    {"safe", f_safe},
    {"select", f_select},
    {"selectattr", f_selectattr},
    {"sort", f_sort},
    {"string", f_string},
    {"sum", f_sum},
    {"title", f_title},
    {"tojson", f_tojson},
    {"trim", f_trim},
    {"unique", f_unique},
    {"upper", f_upper},
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

int jj_call_filter(jj_ctx *c, const jj_node *n, const char *name, size_t nlen, jv in,
                   const jj_args *a, jv *out)
{
    filter_fn fn = find_filter(name, nlen);
    if (!fn) return jj_fail(c, n, LR_EINVAL, "unknown filter '%.*s'", (int)nlen, name);
    int rc = jj_step(c, n);
    return rc ? rc : fn(c, n, in, a, out);
}

int jj_apply_filter(jj_ctx *c, const jj_node *f, jv in, jv *out)
{
    jj_args a;
    int rc = jj_eval_args(c, f, &a);
    return rc ? rc : jj_call_filter(c, f, f->s, f->slen, in, &a, out);
}
