/* jinja_builtins.c — the tests, globals and methods chat templates call, and loop.* .
 *
 * Each behaves like its Jinja2 / Python counterpart as transformers sets them up: tests from
 * jinja2.tests, globals raise_exception / strftime_now / range / namespace / dict, the str and
 * dict methods templates use (startswith, strip, split, get, items, …) and loop attributes.
 * Mutating methods of lists and dicts are refused, as ImmutableSandboxedEnvironment does.
 * Not here: filters (jinja_filters.c), str semantics (jinja_text.c), the evaluator (jinja_eval.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <utf8proc.h>

#include "jinja_eval.h"

#define MAX_RANGE 100000 /* Jinja2's sandbox MAX_RANGE */

/* ---- tests ------------------------------------------------------------------------------------
 */

static const char *const TESTS[] = {
    "boolean", "callable", "defined",  "divisibleby", "eq",        "equalto", "even",     "false",
    "float",   "ge",       "gt",       "greaterthan", "in",        "integer", "iterable", "le",
    "lower",   "lt",       "lessthan", "mapping",     "ne",        "none",    "number",   "odd",
    "sameas",  "sequence", "string",   "true",        "undefined", "upper",   NULL};

int jj_test_known(const char *name, size_t n)
{
    for (int i = 0; TESTS[i]; i++)
        if (strlen(TESTS[i]) == n && memcmp(TESTS[i], name, n) == 0) return 1;
    return 0;
}

#define IS(s) (nlen == strlen(s) && memcmp(name, s, nlen) == 0)

int jj_apply_test(jj_ctx *c, const jj_node *at, const char *name, size_t nlen, jv v, const jv *args,
                  size_t nargs, int *res)
{
    int rc = 0;
    jv arg = nargs ? args[0] : jj_undef(NULL);
    int isint = v.t == JV_INT;
    if (IS("defined"))
        *res = v.t != JV_UNDEF;
    else if (IS("undefined"))
        *res = v.t == JV_UNDEF;
    else if (IS("none"))
        *res = v.t == JV_NONE;
    else if (IS("boolean"))
        *res = v.t == JV_BOOL;
    else if (IS("true"))
        *res = v.t == JV_BOOL && v.u.i;
    else if (IS("false"))
        *res = v.t == JV_BOOL && !v.u.i;
    else if (IS("string"))
        *res = v.t == JV_STR;
    else if (IS("number"))
        *res = v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL;
    else if (IS("integer"))
        *res = isint;
    else if (IS("float"))
        *res = v.t == JV_FLOAT;
    else if (IS("mapping"))
        *res = v.t == JV_DICT;
    else if (IS("iterable"))
        *res = v.t == JV_LIST || v.t == JV_DICT || v.t == JV_STR || v.t == JV_UNDEF;
    else if (IS("sequence")) /* len() and __getitem__: Undefined has both */
        *res = v.t == JV_LIST || v.t == JV_DICT || v.t == JV_STR || v.t == JV_UNDEF;
    else if (IS("callable")) /* Jinja2's Undefined has __call__ (that raises): callable */
        *res = v.t == JV_MACRO || v.t == JV_FUNC || v.t == JV_METHOD || v.t == JV_CALLER ||
               v.t == JV_UNDEF;
    else if (IS("lower") || IS("upper")) {
        /* str(v).islower() / .isupper(): some cased character, none of the other case */
        jv s;
        if ((rc = jj_to_str(c, at, v, &s))) return rc;
        int want_upper = IS("upper"), cased = 0, ok = 1;
        for (size_t i = 0; i < s.u.s.n && ok;) {
            int32_t cp = jj_next_cp(s.u.s.p, s.u.s.n, &i);
            utf8proc_category_t k = utf8proc_category(cp);
            if (k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LT) {
                cased = 1;
                ok = want_upper && k == UTF8PROC_CATEGORY_LU;
            } else if (k == UTF8PROC_CATEGORY_LL) {
                cased = 1;
                ok = !want_upper;
            }
        }
        *res = cased && ok;
    } else if (IS("odd") || IS("even") || IS("divisibleby")) {
        /* value % 2 (or % num) in Python: floats work too */
        jv d = jv_mkint(2);
        if (IS("divisibleby")) d = arg;
        int dnum = d.t == JV_INT || d.t == JV_BOOL || d.t == JV_FLOAT;
        if ((!isint && v.t != JV_BOOL && v.t != JV_FLOAT) || !dnum)
            return jj_fail(c, at, LR_EINVAL, "test '%.*s' needs numbers, got %s", (int)nlen, name,
                           jv_type_name(dnum ? v : d));
        if (v.t == JV_FLOAT || d.t == JV_FLOAT) {
            double x = v.t == JV_FLOAT ? v.u.f : (double)v.u.i,
                   y = d.t == JV_FLOAT ? d.u.f : (double)d.u.i;
            if (y == 0)
                return jj_fail(c, at, LR_EINVAL, "float modulo by zero in test '%.*s'", (int)nlen,
                               name);
            double r = fmod(x, y);
            if (r != 0 && ((r < 0) != (y < 0))) r += y; /* Python's % takes the divisor's sign */
            *res = IS("odd") ? r == 1 : r == 0;         /* jinja2.tests: value % 2 == 1 */
        } else {
            if (d.u.i == 0)
                return jj_fail(c, at, LR_EINVAL, "integer modulo by zero in test '%.*s'", (int)nlen,
                               name);
            int64_t r = d.u.i == -1 ? 0 : v.u.i % d.u.i;
            *res = IS("odd") ? r != 0 : r == 0;
        }
    } else if (IS("eq") || IS("equalto"))
        *res = jv_equal(v, arg);
    else if (IS("ne"))
        *res = !jv_equal(v, arg);
    else if (IS("sameas"))
        *res = jv_equal(v, arg) && v.t == arg.t;
    else if (IS("in"))
        rc = jj_contains(c, at, arg, v, res);
    else {
        int r = jv_compare(v, arg, 0);
        if (r == -2)
            return jj_fail(c, at, LR_EINVAL, "test '%.*s' cannot compare %s and %s", (int)nlen,
                           name, jv_type_name(v), jv_type_name(arg));
        if (IS("lt") || IS("lessthan"))
            *res = r < 0;
        else if (IS("le"))
            *res = r <= 0;
        else if (IS("gt") || IS("greaterthan"))
            *res = r > 0;
        else if (IS("ge"))
            *res = r >= 0;
        else
            return jj_fail(c, at, LR_EINVAL, "unknown test '%.*s'", (int)nlen, name);
    }
    return rc;
}

/* ---- globals ----------------------------------------------------------------------------------
 */

static int g_namespace_or_dict(jj_ctx *c, const jj_node *n, const jj_args *a, int ns, jv *out)
{
    jj_dict *d = jj_alloc(c, n, sizeof *d);
    if (!d) return c->err->code;
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
            if (a->npos == 3) v[2] = a->pos[2].u.i;
        }
        if (v[2] == 0) return jj_fail(c, n, LR_EINVAL, "range() step must not be zero");
        double count = ceil(((double)v[1] - (double)v[0]) / (double)v[2]);
        if (count > MAX_RANGE)
            return jj_fail(c, n, LR_EINTERNAL, "range() is limited to %d items", MAX_RANGE);
        jj_list *l = jj_list_new(c, n, count > 0 ? (size_t)count : 0);
        if (!l) return c->err->code;
        for (int64_t x = v[0]; v[2] > 0 ? x < v[1] : x > v[1]; x += v[2])
            l->v[l->n++] = jv_mkint(x);
        *out = jv_mklist(l);
        return 0;
    }
    case JF_NAMESPACE:
        return g_namespace_or_dict(c, n, a, 1, out);
    case JF_DICT:
        return g_namespace_or_dict(c, n, a, 0, out);
    case JF_RAISE: {
        jv msg = jv_mkslice("", 0), s;
        jj_arg(a, 0, "message", &msg);
        int rc = jj_to_str(c, n, msg, &s);
        if (rc) return rc;
        return lr_error_set(c->err, LR_EINVAL, "raise_exception: %.*s",
                            (int)(s.u.s.n > 480 ? 480 : s.u.s.n), s.u.s.p);
    }
    case JF_STRFTIME: {
        jv fmt;
        if (!jj_arg(a, 0, "format", &fmt) || fmt.t != JV_STR || fmt.u.s.n > 200)
            return jj_fail(c, n, LR_EINVAL,
                           "strftime_now() needs a format string (at most 200 bytes)");
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

/* ---- methods ----------------------------------------------------------------------------------
 */

static const char *const STR_METHODS[] = {
    "startswith", "endswith",   "strip",   "lstrip",  "rstrip",     "split",  "upper",   "lower",
    "title",      "capitalize", "replace", "join",    "find",       "count",  "isdigit", "isalpha",
    "isalnum",    "isspace",    "islower", "isupper", "splitlines", "format", NULL};
static const char *const DICT_METHODS[] = {"get", "items", "keys", "values", NULL};
/* mutating methods: present (so `x.append` is not Undefined) but refused when called */
static const char *const LIST_MUTATORS[] = {"append", "extend", "insert",  "pop", "remove",
                                            "clear",  "sort",   "reverse", NULL};
static const char *const DICT_MUTATORS[] = {"update",     "pop",   "popitem",
                                            "setdefault", "clear", NULL};

static int in_names(const char *const *names, const char *name, size_t nlen)
{
    for (int i = 0; names[i]; i++)
        if (IS(names[i])) return 1;
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

/* str.format with {} / {0} / {name} fields (no format specs or conversions) and {{ }}. */
static int str_format(jj_ctx *c, const jj_node *n, jv s, const jj_args *a, jv *out)
{
    jj_buf b = {.limit = c->opt.max_output};
    size_t auto_i = 0;
    int rc = 0;
    const char *p = s.u.s.p;
    for (size_t i = 0; !rc && i < s.u.s.n; i++) {
        char ch = p[i];
        if ((ch == '{' || ch == '}') && i + 1 < s.u.s.n && p[i + 1] == ch) {
            rc = jj_buf_putc(&b, ch);
            i++;
            continue;
        }
        if (ch == '}') {
            rc = jj_fail(c, n, LR_EINVAL, "str.format: single '}' in format string");
            break;
        }
        if (ch != '{') {
            rc = jj_buf_putc(&b, ch);
            continue;
        }
        const char *close = memchr(p + i, '}', s.u.s.n - i);
        if (!close) {
            rc = jj_fail(c, n, LR_EINVAL, "str.format: single '{' in format string");
            break;
        }
        const char *f = p + i + 1;
        size_t fl = (size_t)(close - f);
        jv v;
        int found;
        if (memchr(f, ':', fl) || memchr(f, '!', fl) || memchr(f, '[', fl) || memchr(f, '.', fl)) {
            rc = jj_fail(c, n, LR_EINVAL,
                         "str.format: only plain {} / {0} / {name} fields are supported");
            break;
        }
        if (fl == 0) {
            found = auto_i < a->npos;
            if (found) v = a->pos[auto_i++];
        } else if (f[0] >= '0' && f[0] <= '9') {
            size_t k = (size_t)strtoul(f, NULL, 10);
            found = k < a->npos;
            if (found) v = a->pos[k];
        } else {
            found = 0;
            for (size_t j = 0; j < a->nkw && !found; j++)
                if (a->kw[j]->slen == fl && memcmp(a->kw[j]->s, f, fl) == 0) {
                    v = a->kwv[j];
                    found = 1;
                }
        }
        if (!found) {
            rc = jj_fail(c, n, LR_EINVAL, "str.format: no argument for {%.*s}",
                         (int)(fl > 60 ? 60 : fl), f);
            break;
        }
        rc = jv_str(&b, v);
        if (rc) rc = jj_fail(c, n, LR_EINTERNAL, "formatted text larger than the output limit");
        i = (size_t)(close - p);
    }
    if (!rc) rc = jj_mkstr(c, n, b.p ? b.p : "", b.n, out);
    free(b.p);
    return rc;
}

static int str_method(jj_ctx *c, const jj_node *n, jv s, const char *name, size_t nlen,
                      const jj_args *a, jv *out)
{
    if (IS("startswith") || IS("endswith")) return jj_starts_ends(c, n, s, a, name[0] == 'e', out);
    if (IS("strip") || IS("lstrip") || IS("rstrip")) {
        const char *chars;
        size_t cn;
        int rc = jj_strip_args(c, n, a, &chars, &cn);
        if (!rc) *out = jj_strip(s, chars, cn, name[0] != 'r', name[0] != 'l');
        return rc;
    }
    if (IS("split")) return jj_split(c, n, s, a, out);
    if (IS("upper")) return jj_map_case(c, n, s, JJ_CASE_UPPER, out);
    if (IS("lower")) return jj_map_case(c, n, s, JJ_CASE_LOWER, out);
    if (IS("title")) return jj_map_case(c, n, s, JJ_CASE_TITLE_PY, out);
    if (IS("capitalize")) return jj_map_case(c, n, s, JJ_CASE_CAPITALIZE, out);
    if (IS("replace")) return jj_replace_args(c, n, s, a, out);
    if (IS("join")) {
        jv it;
        jj_args ja = {0};
        if (!jj_arg(a, 0, NULL, &it)) return jj_fail(c, n, LR_EINVAL, "join() takes one argument");
        jj_list *items;
        int rc = jj_items_of(c, n, it, &items);
        for (size_t i = 0; !rc && i < items->n; i++)
            if (items->v[i].t != JV_STR)
                return jj_fail(c, n, LR_EINVAL, "join(): item %zu is a %s, not a string", i,
                               jv_type_name(items->v[i]));
        jv pos[1] = {s};
        ja.pos = pos;
        ja.npos = 1;
        return rc ? rc : jj_call_filter(c, n, "join", 4, jv_mklist(items), &ja, out);
    }
    if (IS("isdigit") || IS("isalpha") || IS("isalnum") || IS("isspace")) {
        /* true for a non-empty string whose every character is of the kind */
        int ok = s.u.s.n > 0;
        for (size_t i = 0; ok && i < s.u.s.n;) {
            size_t st = i, cl;
            int32_t cp = jj_next_cp(s.u.s.p, s.u.s.n, &i);
            utf8proc_category_t k = utf8proc_category(cp);
            int alpha = k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO;
            int digit = k == UTF8PROC_CATEGORY_ND;
            if (IS("isdigit"))
                ok = digit;
            else if (IS("isalpha"))
                ok = alpha;
            else if (IS("isalnum"))
                ok = alpha || digit || k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_NO;
            else
                ok = jj_is_space_at(s.u.s.p, s.u.s.n, st, &cl);
        }
        *out = jv_mkbool(ok);
        return 0;
    }
    if (IS("islower") || IS("isupper")) {
        int r;
        int rc = jj_apply_test(c, n, name + 2, nlen - 2, s, NULL, 0, &r);
        if (!rc) *out = jv_mkbool(r);
        return rc;
    }
    if (IS("splitlines")) {
        jj_list *l = jj_list_new(c, n, 0);
        if (!l) return c->err->code;
        int rc = 0;
        for (size_t i = 0; !rc && i < s.u.s.n;) {
            size_t st = i;
            while (i < s.u.s.n && s.u.s.p[i] != '\n' && s.u.s.p[i] != '\r')
                i++;
            rc = jj_list_push(c, n, l, jv_mkslice(s.u.s.p + st, i - st));
            if (i < s.u.s.n)
                i += (s.u.s.p[i] == '\r' && i + 1 < s.u.s.n && s.u.s.p[i + 1] == '\n') ? 2 : 1;
        }
        *out = jv_mklist(l);
        return rc;
    }
    if (IS("format")) return str_format(c, n, s, a, out);
    if (IS("find") || IS("count")) {
        jv sub;
        if (!jj_arg(a, 0, NULL, &sub) || sub.t != JV_STR)
            return jj_fail(c, n, LR_EINVAL, "%.*s() needs a string argument", (int)nlen, name);
        if (IS("find")) {
            const char *hit = memmem(s.u.s.p, s.u.s.n, sub.u.s.p, sub.u.s.n);
            *out = jv_mkint(hit ? (int64_t)jj_utf8_len(s.u.s.p, (size_t)(hit - s.u.s.p)) : -1);
            return 0;
        }
        int64_t k = 0;
        if (sub.u.s.n == 0) {
            k = (int64_t)jj_utf8_len(s.u.s.p, s.u.s.n) + 1;
        } else {
            for (size_t i = 0; i + sub.u.s.n <= s.u.s.n;) {
                const char *hit = memmem(s.u.s.p + i, s.u.s.n - i, sub.u.s.p, sub.u.s.n);
                if (!hit) break;
                k++;
                i = (size_t)(hit - s.u.s.p) + sub.u.s.n;
            }
        }
        *out = jv_mkint(k);
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
    if (rc) return rc;
    if (self.t == JV_STR) return str_method(c, n, self, name, nlen, a, out);
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
            if (!jj_arg(a, 0, NULL, &key)) return jj_fail(c, n, LR_EINVAL, "get() needs a key");
            jj_arg(a, 1, "default", &def);
            jv *v = key.t == JV_STR ? jj_dict_get(self.u.d, key.u.s.p, key.u.s.n) : NULL;
            *out = v ? *v : def;
            return 0;
        }
        if (IS("items")) {
            jj_args none = {0};
            return jj_call_filter(c, n, "items", 5, self, &none, out);
        }
        jj_list *l = jj_list_new(c, n, self.u.d->n);
        if (!l) return c->err->code;
        for (size_t i = 0; i < self.u.d->n; i++)
            l->v[l->n++] =
                IS("keys") ? jv_mkslice(self.u.d->kv[i].k, self.u.d->kv[i].kn) : self.u.d->kv[i].v;
        *out = jv_mklist(l);
        return 0;
    }
    return jj_fail(c, n, LR_EINVAL,
                   "access to '%.*s' of a %s is not allowed: the template "
                   "environment is immutable",
                   (int)nlen, name, jv_type_name(self));
}

int jj_loop_attr(jj_ctx *c, const jj_node *n, jv loop, const char *name, size_t nlen, jv *out)
{
    const jj_loop *lp = loop.u.ptr;
    int64_t i = (int64_t)lp->i, len = (int64_t)lp->items->n;
    if (IS("index"))
        *out = jv_mkint(i + 1);
    else if (IS("index0"))
        *out = jv_mkint(i);
    else if (IS("revindex"))
        *out = jv_mkint(len - i);
    else if (IS("revindex0"))
        *out = jv_mkint(len - i - 1);
    else if (IS("first"))
        *out = jv_mkbool(i == 0);
    else if (IS("last"))
        *out = jv_mkbool(i == len - 1);
    else if (IS("length"))
        *out = jv_mkint(len);
    else if (IS("depth"))
        *out = jv_mkint(1);
    else if (IS("depth0"))
        *out = jv_mkint(0);
    else if (IS("previtem"))
        *out = i > 0 ? lp->items->v[i - 1] : jj_undef("previtem");
    else if (IS("nextitem"))
        *out = i + 1 < len ? lp->items->v[i + 1] : jj_undef("nextitem");
    else if (IS("cycle")) {
        jj_method *m = jj_alloc(c, n, sizeof *m);
        if (!m) return c->err->code;
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
