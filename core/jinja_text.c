/* jinja_text.c — Python str semantics for the chat-template interpreter: case mapping (utf8proc's
 * simple mappings plus the SpecialCasing entries Python applies, such as ß → SS), strip with and
 * without a character set, replace, split, startswith/endswith, and str() of any value. Used by
 * filters (jinja_filters.c), methods and tests (jinja_builtins.c). Not here: anything that is not
 * about text.
 */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "jinja_eval.h"

/* str(v) as a new string value (strings pass through). */
int jj_to_str(jj_ctx *c, const jj_node *n, jv v, jv *out)
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

int jj_arg_bool(const jj_args *a, size_t i, const char *name, int def)
{
    jv v;
    return jj_arg(a, i, name, &v) ? jv_truthy(v) : def;
}

/* ---- Unicode helpers --------------------------------------------------------------------------
 */

int32_t jj_next_cp(const char *s, size_t n, size_t *i)
{
    utf8proc_int32_t cp;
    utf8proc_ssize_t k =
        utf8proc_iterate((const utf8proc_uint8_t *)s + *i, (utf8proc_ssize_t)(n - *i), &cp);
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

/* Python's full case mappings (SpecialCasing.txt) where they differ from the simple ones
 * utf8proc gives: NULL when the simple mapping is right. title: titlecase instead of upper. */
static const char *special_case(int32_t cp, int up, int title)
{
    if (up) {
        switch (cp) {
        case 0xDF:
            return title ? "Ss" : "SS";
        case 0x149:
            return "\xca\xbcN";
        case 0xFB00:
            return title ? "Ff" : "FF";
        case 0xFB01:
            return title ? "Fi" : "FI";
        case 0xFB02:
            return title ? "Fl" : "FL";
        case 0xFB03:
            return title ? "Ffi" : "FFI";
        case 0xFB04:
            return title ? "Ffl" : "FFL";
        case 0xFB05:
        case 0xFB06:
            return title ? "St" : "ST";
        }
        return NULL;
    }
    return cp == 0x130 ? "i\xcc\x87" : NULL;
}

int jj_map_case(jj_ctx *c, const jj_node *n, jv s, int mode, jv *out)
{
    char *o = jj_alloc(c, n, s.u.s.n * 2 + 8);
    if (!o) return c->err->code;
    size_t on = 0, cap = s.u.s.n * 2 + 8;
    int32_t prev = -1;
    for (size_t i = 0; i < s.u.s.n;) {
        size_t start = i;
        int32_t cp = jj_next_cp(s.u.s.p, s.u.s.n, &i);
        int up;
        switch (mode) {
        case JJ_CASE_UPPER:
            up = 1;
            break;
        case JJ_CASE_LOWER:
            up = 0;
            break;
        case JJ_CASE_CAPITALIZE:
            up = start == 0;
            break;
        case JJ_CASE_TITLE_PY:
            up = prev < 0 || !is_cased(prev);
            break;
        default:
            up = prev < 0 || prev == '-' || prev == '(' || prev == '{' || prev == '[' ||
                 prev == '<' || (prev < 0x80 && (prev == ' ' || (prev >= 9 && prev <= 13))) ||
                 (prev >= 0x80 && (utf8proc_category(prev) == UTF8PROC_CATEGORY_ZS ||
                                   prev == 0x2028 || prev == 0x2029 || prev == 0x85));
        }
        prev = cp;
        int title = up && (mode == JJ_CASE_CAPITALIZE || mode == JJ_CASE_TITLE_PY);
        int32_t m = !up     ? utf8proc_tolower(cp)
                    : title ? utf8proc_totitle(cp)
                            : utf8proc_toupper(cp);
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
    *out = jv_mkslice(o, on);
    return 0;
}

/* Is the code point at s[i] one of chars (or whitespace when chars is NULL)? */
static int strip_match(const char *s, size_t n, size_t i, const char *chars, size_t cn, size_t *cl)
{
    if (!chars) return jj_is_space_at(s, n, i, cl);
    size_t j = i;
    int32_t cp = jj_next_cp(s, n, &j);
    *cl = j - i;
    for (size_t k = 0; k < cn;) {
        if (jj_next_cp(chars, cn, &k) == cp) return 1;
    }
    return 0;
}

jv jj_strip(jv s, const char *chars, size_t cn, int left, int right)
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
            if (!strip_match(s.u.s.p, b, i, chars, cn, &cl) || i + cl != b) break;
            b = i;
        }
    return jv_mkslice(s.u.s.p + a, b - a);
}

int jj_strip_args(jj_ctx *c, const jj_node *n, const jj_args *a, const char **chars, size_t *cn)
{
    jv v;
    *chars = NULL;
    *cn = 0;
    if (jj_arg(a, 0, "chars", &v) && v.t != JV_NONE) {
        if (v.t != JV_STR)
            return jj_fail(c, n, LR_EINVAL, "strip arg must be None or str, not %s",
                           jv_type_name(v));
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
            if (i >= s.u.s.n) break;
            size_t j = i;
            jj_next_cp(s.u.s.p, s.u.s.n, &j);
            if (!rc) rc = jj_buf_put(&b, s.u.s.p + i, j - i);
            i = j;
        }
    } else {
        while (!rc && (count < 0 || done < count)) {
            const char *hit = memmem(s.u.s.p + i, s.u.s.n - i, old.u.s.p, old.u.s.n);
            if (!hit) break;
            size_t at = (size_t)(hit - s.u.s.p);
            rc = jj_buf_put(&b, s.u.s.p + i, at - i);
            if (!rc) rc = jj_buf_put(&b, new.u.s.p, new.u.s.n);
            i = at + old.u.s.n;
            done++;
        }
    }
    if (!rc && i < s.u.s.n) rc = jj_buf_put(&b, s.u.s.p + i, s.u.s.n - i);
    if (!rc)
        rc = jj_mkstr(c, n, b.p ? b.p : "", b.n, out);
    else
        rc = jj_fail(c, n, LR_EINTERNAL, "replace() result larger than the output limit");
    free(b.p);
    return rc;
}

int jj_replace_args(jj_ctx *c, const jj_node *n, jv s, const jj_args *a, jv *out)
{
    jv old, new, cnt;
    if (!jj_arg(a, 0, "old", &old) || !jj_arg(a, 1, "new", &new))
        return jj_fail(c, n, LR_EINVAL, "replace() needs two arguments");
    int64_t count = -1;
    if (jj_arg(a, 2, "count", &cnt) && cnt.t != JV_NONE) {
        if (cnt.t != JV_INT) return jj_fail(c, n, LR_EINVAL, "replace() count must be an integer");
        count = cnt.u.i;
    }
    return do_replace(c, n, s, old, new, count, out);
}

/* Python str.split(sep=None, maxsplit=-1). */
int jj_split(jj_ctx *c, const jj_node *n, jv s, const jj_args *a, jv *out)
{
    jv sep = {.t = JV_NONE}, mx;
    int64_t maxsplit = -1;
    jj_arg(a, 0, "sep", &sep);
    if (jj_arg(a, 1, "maxsplit", &mx)) {
        if (mx.t != JV_INT) return jj_fail(c, n, LR_EINVAL, "split() maxsplit must be an integer");
        maxsplit = mx.u.i;
    }
    jj_list *l = jj_list_new(c, n, 0);
    if (!l) return c->err->code;
    int rc = 0;
    const char *p = s.u.s.p;
    size_t len = s.u.s.n, i = 0, cl;
    if (sep.t == JV_NONE || sep.t == JV_UNDEF) {
        for (;;) {
            while (i < len && jj_is_space_at(p, len, i, &cl))
                i += cl;
            if (i >= len) break;
            if (maxsplit >= 0 && (int64_t)l->n >= maxsplit) {
                rc = jj_list_push(c, n, l, jv_mkslice(p + i, len - i)); /* trailing blanks stay */
                break;
            }
            size_t st = i;
            while (i < len && !jj_is_space_at(p, len, i, &cl))
                i += cl;
            if ((rc = jj_list_push(c, n, l, jv_mkslice(p + st, i - st)))) break;
        }
    } else {
        if (sep.t != JV_STR)
            return jj_fail(c, n, LR_EINVAL, "split() separator must be a string or None");
        if (sep.u.s.n == 0) return jj_fail(c, n, LR_EINVAL, "split(): empty separator");
        for (;;) {
            const char *hit = (maxsplit >= 0 && (int64_t)l->n >= maxsplit)
                                  ? NULL
                                  : memmem(p + i, len - i, sep.u.s.p, sep.u.s.n);
            size_t end = hit ? (size_t)(hit - p) : len;
            if ((rc = jj_list_push(c, n, l, jv_mkslice(p + i, end - i))) || !hit) break;
            i = end + sep.u.s.n;
            if ((rc = jj_step(c, n))) break;
        }
    }
    *out = jv_mklist(l);
    return rc;
}

int jj_starts_ends(jj_ctx *c, const jj_node *n, jv s, const jj_args *a, int ends, jv *out)
{
    jv pre;
    if (!jj_arg(a, 0, NULL, &pre))
        return jj_fail(c, n, LR_EINVAL, "%s() takes one argument",
                       ends ? "endswith" : "startswith");
    size_t k = pre.t == JV_LIST ? pre.u.l->n : 1;
    for (size_t i = 0; i < k; i++) {
        jv p = pre.t == JV_LIST ? pre.u.l->v[i] : pre;
        if (p.t != JV_STR)
            return jj_fail(c, n, LR_EINVAL, "%s() needs a string or a tuple of strings",
                           ends ? "endswith" : "startswith");
        if (p.u.s.n <= s.u.s.n &&
            memcmp(s.u.s.p + (ends ? s.u.s.n - p.u.s.n : 0), p.u.s.p, p.u.s.n) == 0) {
            *out = jv_mkbool(1);
            return 0;
        }
    }
    *out = jv_mkbool(0);
    return 0;
}

/* ---- printf-style formatting: Python's `str % args` (and Jinja2's format filter) ------------ */

/* One conversion %[(key)][flags][width][.precision]type applied to v, appended to b. */
static int fmt_one(jj_ctx *c, const jj_node *n, jj_buf *b, jv v, const char *flags, int width,
                   int prec, char type)
{
    char tmp[128], spec[32];
    jj_buf t = {.limit = c->opt.max_output};
    int rc = 0;
    int left = strchr(flags, '-') != NULL, zero = strchr(flags, '0') != NULL && !left;
    if (type == 's' || type == 'r') {
        rc = type == 's' ? jv_str(&t, v) : jv_repr(&t, v);
        if (!rc && prec >= 0 && t.p) /* precision truncates, in code points */
            t.n = jj_utf8_offset(t.p, t.n, (size_t)prec);
        zero = 0;
    } else {
        int isnum = v.t == JV_INT || v.t == JV_BOOL || v.t == JV_FLOAT;
        if (!isnum) {
            free(t.p);
            return jj_fail(c, n, LR_EINVAL, "%%%c format: a real number is required, not %s", type,
                           jv_type_name(v));
        }
        double d = v.t == JV_FLOAT ? v.u.f : (double)v.u.i;
        size_t k = 0;
        spec[k++] = '%';
        for (const char *f = flags; *f && k < 8; f++)
            if (*f == '+' || *f == ' ' || *f == '#') spec[k++] = *f;
        if (type == 'd' || type == 'i' || type == 'x' || type == 'X' || type == 'o') {
            if (v.t == JV_FLOAT && !(d > -9.2e18 && d < 9.2e18)) {
                free(t.p);
                return jj_fail(c, n, LR_EINVAL, "%%%c format: number out of range", type);
            }
            long long iv = v.t == JV_FLOAT ? (long long)d : (long long)v.u.i;
            snprintf(spec + k, sizeof spec - k, "ll%c", type == 'i' ? 'd' : type);
            snprintf(tmp, sizeof tmp, spec, iv);
        } else {
            snprintf(spec + k, sizeof spec - k, ".%d%c", prec >= 0 ? (prec > 50 ? 50 : prec) : 6,
                     type);
            snprintf(tmp, sizeof tmp, spec, d);
        }
        rc = jj_buf_put(&t, tmp, strlen(tmp));
    }
    size_t len = t.p ? jj_utf8_len(t.p, t.n) : 0;
    size_t pad = width > 0 && (size_t)width > len ? (size_t)width - len : 0;
    if (!rc && !left && pad) {
        /* zero padding goes after a sign */
        size_t sign = zero && t.n && (t.p[0] == '-' || t.p[0] == '+' || t.p[0] == ' ') ? 1 : 0;
        if (sign) rc = jj_buf_putc(b, t.p[0]);
        for (size_t i = 0; !rc && i < pad; i++)
            rc = jj_buf_putc(b, zero ? '0' : ' ');
        if (!rc) rc = jj_buf_put(b, t.p + sign, t.n - sign);
    } else if (!rc) {
        rc = jj_buf_put(b, t.p ? t.p : "", t.n);
        for (size_t i = 0; !rc && i < pad; i++)
            rc = jj_buf_putc(b, ' ');
    }
    free(t.p);
    return rc;
}

int jj_percent_format(jj_ctx *c, const jj_node *n, jv fmt, jv args, jv *out)
{
    const char *p = fmt.u.s.p;
    size_t len = fmt.u.s.n, ai = 0;
    /* a tuple supplies the arguments in turn; a dict is used by %(key)s; anything else is one */
    int is_tuple = args.t == JV_LIST && args.tuple;
    size_t nargs = is_tuple ? args.u.l->n : 1;
    int used_dict = 0;
    jj_buf b = {.limit = c->opt.max_output};
    int rc = 0;
    for (size_t i = 0; !rc && i < len;) {
        const char *pc = memchr(p + i, '%', len - i);
        size_t lit = pc ? (size_t)(pc - (p + i)) : len - i;
        rc = jj_buf_put(&b, p + i, lit);
        i += lit;
        if (rc || i >= len) break;
        i++; /* '%' */
        jv v;
        int have_key = 0;
        if (i < len && p[i] == '(') {
            const char *close = memchr(p + i, ')', len - i);
            if (!close || args.t != JV_DICT) {
                rc = jj_fail(c, n, LR_EINVAL, "%%(key) format needs a mapping argument");
                break;
            }
            jv *hit = jj_dict_get(args.u.d, p + i + 1, (size_t)(close - (p + i + 1)));
            if (!hit) {
                rc = jj_fail(c, n, LR_EINVAL, "format key '%.*s' is missing",
                             (int)(close - (p + i + 1)), p + i + 1);
                break;
            }
            v = *hit;
            have_key = used_dict = 1;
            i = (size_t)(close - p) + 1;
        }
        char flags[8] = {0};
        size_t nf = 0;
        while (i < len && strchr("-+ #0", p[i]) && nf < sizeof flags - 1)
            flags[nf++] = p[i++];
        int width = 0, prec = -1;
        while (i < len && p[i] >= '0' && p[i] <= '9' && width < 10000)
            width = width * 10 + (p[i++] - '0');
        if (i < len && p[i] == '.') {
            prec = 0;
            i++;
            while (i < len && p[i] >= '0' && p[i] <= '9' && prec < 10000)
                prec = prec * 10 + (p[i++] - '0');
        }
        if (i >= len) {
            rc = jj_fail(c, n, LR_EINVAL, "incomplete format");
            break;
        }
        char type = p[i++];
        if (type == '%') {
            rc = jj_buf_putc(&b, '%');
            continue;
        }
        if (!strchr("srdifFeEgGxXo", type)) {
            rc = jj_fail(c, n, LR_EINVAL, "unsupported format character '%c'", type);
            break;
        }
        if (!have_key) {
            if (ai >= nargs) {
                rc = jj_fail(c, n, LR_EINVAL, "not enough arguments for format string");
                break;
            }
            v = is_tuple ? args.u.l->v[ai] : args;
            ai++;
        }
        rc = fmt_one(c, n, &b, v, flags, width, prec, type);
    }
    /* Python counts a non-tuple argument with __getitem__ (list, dict) as a mapping: left
     * unused, it is no error */
    if (!rc && !used_dict && (is_tuple || (args.t != JV_DICT && args.t != JV_LIST)) && ai < nargs)
        rc = jj_fail(c, n, LR_EINVAL, "not all arguments converted during string formatting");
    if (rc && !c->err->code)
        rc = jj_fail(c, n, LR_EINTERNAL, "formatted text larger than the output limit");
    if (!rc) rc = jj_mkstr(c, n, b.p ? b.p : "", b.n, out);
    free(b.p);
    return rc;
}
