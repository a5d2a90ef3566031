/* check_jinja.c — the chat-template interpreter (core/jinja*.c).
 *
 * golden:     every rendering of tests/data/jinja/golden.json (real templates × message lists,
 *             made by @huggingface/jinja through tests/jinja/gen.mjs) byte for byte, and the
 *             oracle's refusals (raise_exception with the same text, other errors as errors).
 * constructs: small inline templates, one feature each; the expected strings were worked out
 *             by hand from Jinja2's documented behaviour (the ones marked [oracle] also agree
 *             with @huggingface/jinja 0.5.11).
 * errors:     compile errors name the construct, line and column; render errors; HTTP classes.
 * limits:     output size, steps, recursion, nesting, memory — errors, not crashes.
 * threads:    one compiled template rendered from several threads at once.
 */
#include <check.h>
#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja.h"

#ifndef GOLDEN_PATH
#define GOLDEN_PATH "tests/data/jinja/golden.json"
#endif
#define JINJA2_GOLDEN_PATH "tests/data/jinja/jinja2_golden.json"

/* Render src with the JSON context text ctx; returns a malloc'd string or NULL (error in *e). */
static char *render(const char *src, const char *ctx, lr_error *e)
{
    jj_template *t = NULL;
    json_error_t je;
    json_t *c = json_loads(ctx ? ctx : "{}", 0, &je);
    ck_assert_msg(c != NULL, "bad test context %s: %s", ctx, je.text);
    char *out = NULL;
    jj_options o = {.now = 1700000000}; /* 2023-11-14 22:13:20 UTC */
    if (jj_compile(src, strlen(src), e, &t) == 0) {
        if (jj_render(t, c, &o, &out, NULL, e) != 0) out = NULL;
    }
    jj_destroy(t);
    json_decref(c);
    return out;
}

/* Assert that src renders to want. */
#define R(src, ctx, want)                                                                          \
    do {                                                                                           \
        lr_error e_;                                                                               \
        char *got_ = render((src), (ctx), &e_);                                                    \
        ck_assert_msg(got_ != NULL, "template %s failed: %s", (src), e_.msg);                      \
        ck_assert_msg(strcmp(got_, (want)) == 0, "template %s\n  got  [%s]\n  want [%s]", (src),   \
                      got_, (want));                                                               \
        free(got_);                                                                                \
    } while (0)

/* Assert that src fails with code and a message containing frag. */
#define E(src, ctx, ecode, frag)                                                                   \
    do {                                                                                           \
        lr_error e_;                                                                               \
        char *got_ = render((src), (ctx), &e_);                                                    \
        ck_assert_msg(got_ == NULL, "template %s should fail, gave [%s]", (src), got_);            \
        ck_assert_msg(e_.code == (ecode), "template %s: code %d, want %d (%s)", (src), e_.code,    \
                      (ecode), e_.msg);                                                            \
        ck_assert_msg(strstr(e_.msg, (frag)) != NULL, "template %s: message [%s] lacks [%s]",      \
                      (src), e_.msg, (frag));                                                      \
    } while (0)

/* ---- golden ------------------------------------------------------------------------------------
 */

START_TEST(test_golden)
{
    json_error_t je;
    json_t *doc = json_load_file(GOLDEN_PATH, 0, &je);
    ck_assert_msg(doc != NULL, "%s: %s (line %d)", GOLDEN_PATH, je.text, je.line);
    json_t *templates = json_object_get(doc, "templates"),
           *goldens = json_object_get(doc, "goldens");
    ck_assert(json_is_object(templates) && json_is_array(goldens));
    ck_assert_int_ge(json_object_size(templates), 10);
    ck_assert_int_ge(json_array_size(goldens), 200);
    size_t i, ok = 0, bad = 0;
    json_t *g;
    json_array_foreach(goldens, i, g)
    {
        const char *name = json_string_value(json_object_get(g, "template"));
        const char *cs = json_string_value(json_object_get(g, "case"));
        int agp = json_is_true(json_object_get(g, "add_generation_prompt"));
        json_t *src = json_object_get(templates, name);
        ck_assert(src);
        lr_error e;
        jj_template *t;
        ck_assert_msg(jj_compile(json_string_value(src), json_string_length(src), &e, &t) == 0,
                      "%s: %s", name, e.msg);
        char *out = NULL;
        size_t len = 0;
        jj_options o = {0};
        int rc = jj_render(t, json_object_get(g, "context"), &o, &out, &len, &e);
        json_t *want = json_object_get(g, "output");
        if (want) {
            if (rc != 0) {
                fprintf(stderr, "golden %s/%s/agp=%d: error %s\n", name, cs, agp, e.msg);
                bad++;
            } else if (len != json_string_length(want) ||
                       memcmp(out, json_string_value(want), len)) {
                fprintf(stderr, "golden %s/%s/agp=%d differs:\n  got  [%s]\n  want [%s]\n", name,
                        cs, agp, out, json_string_value(want));
                bad++;
            } else {
                ok++;
            }
        } else {
            const char *msg = json_string_value(json_object_get(g, "error"));
            int raised = json_is_true(json_object_get(g, "raised"));
            char expect[600];
            snprintf(expect, sizeof expect, "raise_exception: %s", msg);
            if (rc == 0) {
                fprintf(stderr, "golden %s/%s/agp=%d: rendered, oracle said %s\n", name, cs, agp,
                        msg);
                bad++;
            } else if (e.http != 400 || (raised && strcmp(e.msg, expect) != 0)) {
                fprintf(stderr, "golden %s/%s/agp=%d: error [%s] (%d), oracle [%s]\n", name, cs,
                        agp, e.msg, e.http, msg);
                bad++;
            } else {
                ok++;
            }
        }
        free(out);
        jj_destroy(t);
    }
    fprintf(stderr, "check_jinja golden: %zu identical, %zu different\n", ok, bad);
    ck_assert_int_eq(bad, 0);
    json_decref(doc);
}
END_TEST

/* ---- Jinja2 (transformers' setup) on one-construct snippets: tests/jinja/gen_jinja2.py ------- */

START_TEST(test_jinja2_snippets)
{
    json_error_t je;
    json_t *doc = json_load_file(JINJA2_GOLDEN_PATH, JSON_ALLOW_NUL, &je);
    ck_assert_msg(doc != NULL, "%s: %s (line %d)", JINJA2_GOLDEN_PATH, je.text, je.line);
    json_t *snips = json_object_get(doc, "snippets");
    ck_assert_int_ge(json_array_size(snips), 100);
    size_t i, ok = 0, bad = 0;
    json_t *g;
    jj_options o = {.now = 1700000000};
    json_array_foreach(snips, i, g)
    {
        json_t *src = json_object_get(g, "template");
        json_t *want = json_object_get(g, "output");
        lr_error e;
        jj_template *t = NULL;
        char *out = NULL;
        size_t len = 0;
        int rc = jj_compile(json_string_value(src), json_string_length(src), &e, &t);
        if (rc == 0) rc = jj_render(t, json_object_get(g, "context"), &o, &out, &len, &e);
        if (want && rc != 0) {
            fprintf(stderr, "snippet %zu %s: error %s\n", i, json_string_value(src), e.msg);
            bad++;
        } else if (want &&
                   (len != json_string_length(want) || memcmp(out, json_string_value(want), len))) {
            fprintf(stderr, "snippet %zu %s:\n  got  [%s]\n  want [%s]\n", i,
                    json_string_value(src), out, json_string_value(want));
            bad++;
        } else if (!want && rc == 0) {
            fprintf(stderr, "snippet %zu %s: rendered [%s], Jinja2 said %s\n", i,
                    json_string_value(src), out, json_string_value(json_object_get(g, "error")));
            bad++;
        } else {
            ok++;
        }
        free(out);
        jj_destroy(t);
    }
    fprintf(stderr, "check_jinja jinja2 snippets: %zu agree, %zu differ\n", ok, bad);
    ck_assert_int_eq(bad, 0);
    json_decref(doc);
}
END_TEST

/* ---- constructs --------------------------------------------------------------------------------
 */

START_TEST(test_output_and_literals)
{
    R("plain text", NULL, "plain text");
    R("{{ 'a' }}{{ \"b\" }}{{ 'c' 'd' }}", NULL, "abcd"); /* adjacent literals concatenate */
    R("{{ 'tab\\there' }}|{{ \"q\\\"q\" }}|{{ 'x\\ny' }}", NULL, "tab\there|q\"q|x\ny");
    R("{{ '\\u00e9\\x41' }}", NULL,
      "\xc3\xa9"
      "A");
    R("{{ 42 }} {{ -7 }} {{ 1.5 }} {{ 2.0 }} {{ 1e3 }}", NULL, "42 -7 1.5 2.0 1000.0");
    R("{{ true }} {{ False }} {{ none }} {{ None }}", NULL, "True False None None");
    R("{{ [1, 'a', none] }} {{ {'k': 'v', 'n': 1} }} {{ (1, 2) }}", NULL,
      "[1, 'a', None] {'k': 'v', 'n': 1} (1, 2)");
    R("{{ missing }}|{{ missing is defined }}|{{ missing | length }}", NULL, "|False|0");
    R("{# a comment #}x{# another\nmultiline #}y", NULL, "xy");
    R("{{ 0.1 + 0.2 }} {{ 1 / 3 }} {{ 1e20 * 10 }} {{ 0.0001 }}", NULL,
      "0.30000000000000004 0.3333333333333333 1e+21 0.0001");
}
END_TEST

START_TEST(test_whitespace)
{
    /* trim_blocks: newline after a block tag goes; lstrip_blocks: indentation before it goes */
    R("{% if true %}\nA\n{% endif %}\nB", NULL, "A\nB");
    R("  {% if true %}\n  A\n  {% endif %}\n", NULL, "  A\n"); /* one trailing newline dropped */
    R("x  {%- if true -%}  y  {%- endif -%}  z", NULL, "xyz");
    R("a\n  {{- 'b' -}}\n  c", NULL, "abc");
    R("a {{ 'b' }}\nc", NULL, "a b\nc"); /* expressions keep their newline */
    R("a  {#- c -#}  b", NULL, "ab");
    R("{% for i in [1,2] %}\n  {{ i }}\n{% endfor %}", NULL, "  1\n  2\n");
    R("{% generation %}gen{% endgeneration %}", NULL, "gen");
    R("  {%+ if true %}\nA{% endif +%}\nB", NULL, "  A\nB"); /* + opts out of lstrip/trim */
    R("{% raw %}{{ not evaluated }} {% if %}{% endraw %}!", NULL, "{{ not evaluated }} {% if %}!");
    R("a {%- raw -%}  x  {%- endraw -%} b", NULL, "axb");
    R("x\n\n", NULL, "x\n");
}
END_TEST

START_TEST(test_if)
{
    R("{% if 0 %}a{% elif '' %}b{% elif [1] %}c{% else %}d{% endif %}", NULL, "c");
    R("{% if x %}a{% else %}b{% endif %}", "{\"x\": {}}", "b");
    R("{% if x is defined and x > 2 %}big{% endif %}", "{\"x\": 3}", "big");
    R("{% if not x %}none{% endif %}", NULL, "none");
    R("{{ 'y' if 1 < 2 < 3 else 'n' }}{{ 'y' if 3 > 2 > 2 else 'n' }}", NULL, "yn");
    R("{{ 'a' if false }}|{{ 'b' if false else 'c' if true else 'd' }}", NULL, "|c");
}
END_TEST

START_TEST(test_for)
{
    R("{% for x in xs %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}"
      "{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}",
      "{\"xs\": [\"a\", \"b\"]}", "1021TrueFalse2;2110FalseTrue2;");
    R("{% for x in [] %}a{% else %}empty{% endfor %}", NULL, "empty");
    R("{% for k, v in d.items() %}{{ k }}={{ v }},{% endfor %}", "{\"d\": {\"b\": 1, \"a\": 2}}",
      "b=1,a=2,");
    R("{% for k in d %}{{ k }}{% endfor %}", "{\"d\": {\"x\": 1, \"y\": 2}}", "xy");
    R("{% for c in 'h\xc3\xa9!' %}[{{ c }}]{% endfor %}", NULL, "[h][\xc3\xa9][!]");
    R("{% for x in range(10) if x is odd %}{{ x }}{{ ',' if not loop.last }}{% endfor %}", NULL,
      "1,3,5,7,9");
    R("{% for x in range(5) %}{% if x == 1 %}{% continue %}{% endif %}{% if x == 3 %}{% break %}"
      "{% endif %}{{ x }}{% endfor %}",
      NULL, "02");
    R("{% for x in [1,2,3] %}{{ loop.previtem }}-{{ loop.nextitem }}|{% endfor %}", NULL,
      "-2|1-3|2-|");
    R("{% for x in [1,2,3] %}{{ loop.cycle('a', 'b') }}{% endfor %}", NULL, "aba");
    R("{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %}", NULL, "37");
    R("{% for x in undefined_thing %}x{% else %}none{% endfor %}", NULL, "none");
    /* loop scope: set inside a loop does not leak, namespace() does */
    R("{% set n = 0 %}{% set ns = namespace(n=0) %}{% for x in [1,2,3] %}{% set n = n + x %}"
      "{% set ns.n = ns.n + x %}{% endfor %}{{ n }} {{ ns.n }}",
      NULL, "0 6");
    R("{% for m in messages[::-1] %}{{ m }}{% endfor %}", "{\"messages\": [1, 2, 3]}", "321");
}
END_TEST

START_TEST(test_set_macro_call)
{
    R("{% set a, b = 1, 2 %}{{ a }}{{ b }}", NULL, "12");
    R("{% set x %}inner {{ 1 + 1 }}{% endset %}[{{ x }}]", NULL, "[inner 2]");
    R("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}"
      "{{ greet('Ann') }} {{ greet('Bob', punct='?') }} {{ greet(name='Cy', punct='.') }}",
      NULL, "Hi Ann! Hi Bob? Hi Cy.");
    R("{% macro m(x) %}{{ x is defined }}{% endmacro %}{{ m() }}", NULL, "False");
    R("{% macro wrap() %}<{{ caller() }}>{% endmacro %}{% call wrap() %}body{% endcall %}", NULL,
      "<body>");
    R("{% macro rec(n) %}{{ n }}{% if n > 0 %}{{ rec(n - 1) }}{% endif %}{% endmacro %}{{ rec(3) "
      "}}",
      NULL, "3210");
    R("{% filter upper %}abc {{ 'd' }}{% endfilter %}", NULL, "ABC D");
    R("{% set d = dict(a=1, b='x') %}{{ d.a }}{{ d['b'] }}{{ d | length }}", NULL, "1x2");
    R("{% set ns = namespace(items=[]) %}{% set ns.items = ns.items + [1] %}{{ ns.items }}", NULL,
      "[1]");
}
END_TEST

START_TEST(test_expressions)
{
    R("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 2 * 3 + 1 "
      "}}",
      NULL, "3 -4 1 2 3.5 1024 7");
    R("{{ 'a' ~ 1 ~ none ~ true }} {{ 'ab' * 3 }} {{ [1] + [2, 3] }}", NULL,
      "a1NoneTrue ababab [1, 2, 3]");
    R("{{ 'b' in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 3 not in [1] }}", NULL,
      "True True True True");
    R("{{ 1 == 1.0 }} {{ 'a' != 'a' }} {{ [1, 2] == [1, 2] }} {{ none == none }} {{ 1 == '1' }}",
      NULL, "True False True True False");
    R("{{ 0 or 'x' }} {{ 'y' and 'z' }} {{ [] and 1 }} {{ not 1 }}", NULL, "x z [] False");
    R("{{ s[0] }}{{ s[-1] }}{{ s[1:3] }}{{ s[::-1] }}{{ s[::2] }}{{ s[-2:] }}",
      "{\"s\": \"h\xc3\xa9llo\"}", "ho\xc3\xa9loll\xc3\xa9hhlolo");
    R("{{ xs[1:] }} {{ xs[:-1] }} {{ xs[10:] }} {{ xs[-10:1] }}", "{\"xs\": [1, 2, 3]}",
      "[2, 3] [1, 2] [] [1]");
    R("{{ m.role }} {{ m['content'] }} {{ m.missing is undefined }} {{ m.get('x', 'dflt') }}",
      "{\"m\": {\"role\": \"user\", \"content\": \"hi\"}}", "user hi True dflt");
    R("{{ xs.0 }}{{ xs[1] }}{{ xs[-1] }}", "{\"xs\": [\"a\", \"b\", \"c\"]}", "abc");
    /* dot access finds dict methods before keys, subscripts find keys first (Jinja2 getattr) */
    R("{{ d['items'] }} {{ d.items is callable }} {{ d.other }}",
      "{\"d\": {\"items\": \"key\", \"other\": 1}}", "key True 1");
    R("{{ -x }} {{ +x }} {{ -(1.5) }}", "{\"x\": 3}", "-3 3 -1.5");
}
END_TEST

START_TEST(test_tests)
{
    R("{{ x is defined }}{{ y is undefined }}{{ n is none }}{{ s is string }}{{ 1 is number }}"
      "{{ 1.5 is integer }}{{ d is mapping }}{{ l is iterable }}{{ s is sequence }}{{ b is boolean "
      "}}",
      "{\"x\": 1, \"n\": null, \"s\": \"t\", \"d\": {}, \"l\": [], \"b\": true}",
      "TrueTrueTrueTrueTrueFalseTrueTrueTrueTrue");
    R("{{ 3 is odd }}{{ 4 is even }}{{ 9 is divisibleby 3 }}{{ 9 is divisibleby(4) }}"
      "{{ true is true }}{{ 1 is true }}{{ false is false }}{{ 2 is eq 2 }}{{ 'ab' is lower }}",
      NULL, "TrueTrueTrueFalseTrueFalseTrueTrueTrue");
    R("{{ x is not none }}{{ not x is none }}", "{\"x\": null}", "FalseFalse");
    R("{{ 2 is in [1, 2] }}{{ 1 is lt 2 }}{{ 3 is ge 4 }}", NULL, "TrueTrueFalse");
}
END_TEST

START_TEST(test_filters)
{
    R("[{{ '  a b \n' | trim }}] {{ 'xxhixx' | trim('x') }}", NULL, "[a b] hi");
    R("{{ 'abc' | length }} {{ [1, 2] | count }} {{ {'a': 1} | length }} {{ 'h\xc3\xa9' | length "
      "}}",
      NULL, "3 2 1 2");
    R("{{ 'hello world' | upper }} {{ 'HeLLo' | lower }} {{ 'hello wORLD-x' | title }} "
      "{{ 'hELLO' | capitalize }}",
      NULL, "HELLO WORLD hello Hello World-X Hello");
    R("{{ 'a-b-c' | replace('-', '+') }} {{ 'aaa' | replace('a', 'b', 2) }}", NULL, "a+b+c bba");
    R("{{ x | default('d') }} {{ '' | default('e') }} {{ '' | default('f', true) }} {{ 0 | d(7, "
      "true) }}",
      NULL, "d  f 7");
    R("{{ [1, 2, 3] | join(', ') }} {{ ['a', 'b'] | join }} {{ us | join('/', attribute='n') }}",
      "{\"us\": [{\"n\": \"x\"}, {\"n\": \"y\"}]}", "1, 2, 3 ab x/y");
    R("{{ d | items | list }}", "{\"d\": {\"a\": 1}}", "[('a', 1)]");
    R("{{ [3, 1, 2] | first }}{{ [3, 1, 2] | last }}{{ [3, 1, 2] | sort }}{{ [3, 1, 2] | "
      "sort(reverse=true) }}"
      "{{ [1, 2] | reverse | list }}{{ 'abc' | reverse }}",
      NULL, "32[1, 2, 3][3, 2, 1][2, 1]cba");
    R("{{ 42 | string }}{{ '12' | int + 1 }}{{ 'x' | int }}{{ '2.5' | float }}{{ -3 | abs }}{{ "
      "2.567 | round(2) }}"
      "{{ 2.5 | round }}{{ 3.5 | round }}",
      NULL, "421302.532.572.04.0");
    R("{{ ['B', 'a', 'b', 'A'] | unique | list }} {{ 'x' | safe }} {{ 'a b  c' | wordcount }}",
      NULL, "['B', 'a'] x 3");
    R("{{ us | selectattr('on') | map(attribute='n') | join }}"
      "{{ us | rejectattr('on') | map(attribute='n') | join }}"
      "{{ us | selectattr('n', 'equalto', 'y') | map(attribute='n') | list }}"
      "{{ [1, 2, 3, 4] | select('odd') | list }}{{ [1, 2, 3, 4] | reject('odd') | list }}",
      "{\"us\": [{\"n\": \"x\", \"on\": true}, {\"n\": \"y\", \"on\": false}, {\"n\": \"z\"}]}",
      "xyz['y'][1, 3][2, 4]");
    R("{{ ['a', ' b'] | map('trim') | list }} {{ [1, 2, 3] | sum }} {{ [3, 9, 2] | max }} {{ [3, "
      "9, 2] | min }}",
      NULL, "['a', 'b'] 6 9 2");
    R("{{ 'a\nb\n\nc' | indent(2) }}|{{ 'a\nb' | indent(2, true) }}", NULL,
      "a\n  b\n\n  c|  a\n  b");
    R("{{ [1, 2, 3, 4, 5] | batch(2) | list }}", NULL, "[[1, 2], [3, 4], [5]]");
    R("{{ '<a href=\"x\">&</a>' | e }}", NULL, "&lt;a href=&#34;x&#34;&gt;&amp;&lt;/a&gt;");
    R("{{ {'b': 1, 'a': 2} | dictsort }}", NULL, "[('a', 2), ('b', 1)]");
}
END_TEST

START_TEST(test_tojson)
{
    /* Python json.dumps(ensure_ascii=False): ", " and ": ", key order kept [oracle] */
    R("{{ x | tojson }}", "{\"x\": {\"b\": [1, 2.5, true, null], \"a\": \"\xc3\xa9\\\"\\n\"}}",
      "{\"b\": [1, 2.5, true, null], \"a\": \"\xc3\xa9\\\"\\n\"}");
    R("{{ x | tojson(indent=2) }}", "{\"x\": {\"a\": [1, {}], \"b\": []}}",
      "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": []\n}");
    R("{{ x | tojson(sort_keys=true, separators=(',', ':')) }}",
      "{\"x\": {\"b\": 1, \"a\": [1, 2]}}", "{\"a\":[1,2],\"b\":1}");
    R("{{ x | tojson(ensure_ascii=true) }}", "{\"x\": \"\xc3\xa9\xf0\x9f\x91\x8b\"}",
      "\"\\u00e9\\ud83d\\udc4b\"");
    R("{{ 'a<b>&\\'' | tojson }}{{ 1.0 | tojson }}", NULL, "\"a<b>&'\"1.0");
}
END_TEST

START_TEST(test_methods_and_globals)
{
    R("{{ s.startswith('ab') }}{{ s.endswith(('x', 'cd')) }}{{ s.upper() }}{{ '  x '.strip() }}|"
      "{{ '\\n\\nx\\n'.lstrip('\\n') }}|{{ 'x\\n\\n'.rstrip('\\n') }}|{{ ' \\ny\\n '.strip('\\n') "
      "}}|",
      "{\"s\": \"abcd\"}", "TrueTrueABCDx|x\n|x| \ny\n |");
    R("{{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }} {{ 'a b c'.split(' ', 1) }}", NULL,
      "['a', 'b', '', 'c'] ['a', 'b'] ['a', 'b c']");
    R("{{ 'x</think>y'.split('</think>')[-1] }} {{ 'Hello World'.title() }} {{ ', '.join(['a', "
      "'b']) }}",
      NULL, "y Hello World a, b");
    R("{{ d.keys() | list }} {{ d.values() | list }} {{ d.items() | list }}", "{\"d\": {\"k\": 1}}",
      "['k'] [1] [('k', 1)]");
    R("{{ range(3) | list }} {{ range(1, 7, 2) | list }} {{ range(3, 0, -1) | list }}", NULL,
      "[0, 1, 2] [1, 3, 5] [3, 2, 1]");
    R("{{ 'abcabc'.find('c') }} {{ 'abcabc'.count('bc') }} {{ 'abc'.replace('b', 'x') }}", NULL,
      "2 2 axc");
    /* strftime_now uses local time; the test pins TZ=UTC in main() */
    R("{{ strftime_now('%Y-%m-%d %H:%M') }} {{ strftime_now('%d %b %Y') }}", NULL,
      "2023-11-14 22:13 14 Nov 2023");
    R("{% set ns = namespace(a=1) %}{% set ns.b = 2 %}{{ ns.a }}{{ ns.b }}{{ ns.c is defined }}",
      NULL, "12False");
}
END_TEST

/* ---- errors ------------------------------------------------------------------------------------
 */

START_TEST(test_errors)
{
    E("line one\n{{ x | foo }}", NULL, LR_EFORMAT, "line 2, column 8: unknown filter 'foo'");
    E("{% if x is frobbed %}{% endif %}", NULL, LR_EFORMAT, "unknown test 'frobbed'");
    E("{% if true %}never closed", NULL, LR_EFORMAT,
      "line 1, column 1: '{% if %}' is never closed");
    E("{% for x in y %}", NULL, LR_EFORMAT, "never closed (expected '{% endfor %}')");
    E("{{ 1 + }}", NULL, LR_EFORMAT, "unexpected '}}' in expression");
    E("{{ 'abc }}", NULL, LR_EFORMAT, "unterminated string literal");
    E("{% include 'x' %}", NULL, LR_EFORMAT, "unsupported statement 'include'");
    E("{% break %}", NULL, LR_EFORMAT, "'break' outside of a for loop");
    E("{{ x }", NULL, LR_EFORMAT, "unclosed {{ tag");
    E("{# open", NULL, LR_EFORMAT, "unclosed comment");
    E("{% endif %}", NULL, LR_EFORMAT, "unknown or unsupported statement 'endif'");
    E("{{ raise_exception('Conversation roles must alternate') }}", NULL, LR_EINVAL,
      "raise_exception: Conversation roles must alternate");
    E("{{ 'a' + 1 }}", NULL, LR_EINVAL, "unsupported operand types for +: 'string' and 'int'");
    E("\n  {{ messages[0]['role'] }}", "{\"messages\": []}", LR_EINVAL,
      "line 2, column 17: 'messages[0]' is undefined");
    E("{{ x.y.z }}", "{\"x\": {}}", LR_EINVAL, "'y' is undefined");
    E("{{ 1 // 0 }}", NULL, LR_EINVAL, "division or modulo by zero");
    E("{{ xs.append(1) }}", "{\"xs\": []}", LR_EINVAL, "immutable");
    E("{% set x.y = 1 %}", "{\"x\": {}}", LR_EINVAL, "only namespace() objects");
    E("{{ 1 < 'a' }}", NULL, LR_EINVAL, "'<' not supported between 'int' and 'string'");
    E("{{ nothing() }}", NULL, LR_EINVAL, "'nothing' is undefined");
    lr_error e;
    char *out = render("{{ raise_exception('x') }}", NULL, &e);
    ck_assert_ptr_null(out);
    ck_assert_int_eq(e.http, 400);
    ck_assert_str_eq(e.msg, "raise_exception: x");
}
END_TEST

/* ---- limits ------------------------------------------------------------------------------------
 */

static int render_opts(const char *src, const jj_options *o, lr_error *e)
{
    jj_template *t;
    int rc = jj_compile(src, strlen(src), e, &t);
    if (rc) return rc;
    char *out = NULL;
    rc = jj_render(t, NULL, o, &out, NULL, e);
    free(out);
    jj_destroy(t);
    return rc;
}

START_TEST(test_limits)
{
    lr_error e;
    jj_options o = {.max_output = 1000};
    ck_assert_int_eq(render_opts("{% for i in range(2000) %}x{% endfor %}", &o, &e), LR_EINTERNAL);
    ck_assert_int_eq(e.http, 500);
    ck_assert_ptr_nonnull(strstr(e.msg, "larger than 1000 bytes"));
    jj_options s = {.max_steps = 10000};
    ck_assert_int_eq(
        render_opts("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                    "{% endfor %}",
                    &s, &e),
        LR_EINTERNAL);
    ck_assert_ptr_nonnull(strstr(e.msg, "steps"));
    ck_assert_int_eq(render_opts("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", NULL, &e),
                     LR_EINTERNAL);
    ck_assert_ptr_nonnull(strstr(e.msg, "nested deeper"));
    ck_assert_int_eq(render_opts("{{ range(1000000) }}", NULL, &e), LR_EINTERNAL);
    /* doubling a string: memory and output caps end it */
    jj_options m = {.max_memory = 8 << 20};
    ck_assert_int_eq(
        render_opts("{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}"
                    "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s | length }}",
                    &m, &e),
        LR_EINTERNAL);
    /* deep nesting in the source is a compile error, not a stack overflow */
    size_t n = 20000;
    char *deep = malloc(n * 2 + 16);
    strcpy(deep, "{{ ");
    memset(deep + 3, '(', n);
    deep[3 + n] = '1';
    memset(deep + 4 + n, ')', n);
    strcpy(deep + 4 + 2 * n, " }}");
    ck_assert_int_eq(render_opts(deep, NULL, &e), LR_EFORMAT);
    ck_assert_msg(strstr(e.msg, "nesting deeper") != NULL, "%s", e.msg);
    free(deep);
    char *ifs = malloc(n * 16 + 16);
    ifs[0] = '\0';
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        len += (size_t)sprintf(ifs + len, "{%% if 1 %%}");
    ck_assert_int_eq(render_opts(ifs, NULL, &e), LR_EFORMAT);
    free(ifs);
}
END_TEST

/* ---- threads -----------------------------------------------------------------------------------
 */

static jj_template *shared_tpl;

static void *worker(void *arg)
{
    long id = (long)arg;
    char ctx[200];
    snprintf(ctx, sizeof ctx, "{\"messages\": [{\"role\": \"user\", \"content\": \"m%ld\"}]}", id);
    json_t *c = json_loads(ctx, 0, NULL);
    char want[64];
    snprintf(want, sizeof want, "<user>m%ld</user>[\"a\", \"b\", \"c\"]", id);
    long bad = 0;
    for (int i = 0; i < 300; i++) {
        char *out = NULL;
        lr_error e;
        if (jj_render(shared_tpl, c, NULL, &out, NULL, &e) || strcmp(out, want) != 0) bad++;
        free(out);
    }
    json_decref(c);
    return (void *)bad;
}

START_TEST(test_threads)
{
    const char *src =
        "{% set ns = namespace(t='') %}{% for m in messages %}{% set ns.t = '<' + m.role "
        "+ '>' + m.content + '</' + m.role + '>' %}{% endfor %}{{ ns.t }}"
        "{{ ['c', 'A', 'b'] | map('lower') | sort | tojson }}";
    lr_error e;
    ck_assert_int_eq(jj_compile(src, strlen(src), &e, &shared_tpl), 0);
    pthread_t th[8];
    for (long i = 0; i < 8; i++)
        pthread_create(&th[i], NULL, worker, (void *)i);
    long bad = 0;
    for (int i = 0; i < 8; i++) {
        void *r;
        pthread_join(th[i], &r);
        bad += (long)r;
    }
    ck_assert_int_eq(bad, 0);
    jj_destroy(shared_tpl);
}
END_TEST

/* ---- hostile templates: mutations of the real ones must end in output or an error ------------ */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static const char *const PIECES[] = {
    "{%",
    "%}",
    "{{",
    "}}",
    "{#",
    "#}",
    "{%-",
    "-%}",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    "|",
    ".",
    ",",
    "'",
    "\"",
    "\\",
    "-",
    "+",
    "*",
    "**",
    "//",
    "~",
    " if ",
    " else ",
    " for x in ",
    "endfor",
    "endif",
    " in ",
    " not ",
    " is ",
    "loop.",
    "messages",
    "[::-1]",
    "[1:",
    "| tojson",
    "| trim",
    "namespace(",
    "raise_exception(",
    "range(99999)",
    "macro m(a) %}{{ m(a) }}{% endmacro %}",
    "{% set ns.x = ",
    "{% set x %}",
    "{% call m() %}",
    "caller()",
    "\xc3",
    "\xe2\x80\xa8",
    "\n",
    "{% raw %}",
    "{% break %}",
    "1e999",
    "9223372036854775807",
    "-9223372036854775808",
    "% 0",
};

START_TEST(test_fuzz)
{
    json_error_t je;
    json_t *doc = json_load_file(GOLDEN_PATH, 0, &je);
    ck_assert_msg(doc != NULL, "%s: %s", GOLDEN_PATH, je.text);
    json_t *templates = json_object_get(doc, "templates");
    json_t *ctx = json_object_get(json_array_get(json_object_get(doc, "goldens"), 0), "context");
    const char *name;
    json_t *src;
    size_t rendered = 0, refused = 0;
    jj_options o = {.max_output = 1 << 20, .max_steps = 200000, .max_memory = 32 << 20, .now = 1};
    json_object_foreach(templates, name, src)
    {
        const char *base = json_string_value(src);
        size_t blen = json_string_length(src);
        for (int iter = 0; iter < 1000; iter++) {
            char *buf = malloc(blen + 4096);
            memcpy(buf, base, blen);
            size_t len = blen;
            int edits = 1 + (int)(rnd() % 4);
            for (int k = 0; k < edits; k++) {
                size_t at = len ? rnd() % len : 0;
                switch (rnd() % 4) {
                case 0: /* insert a piece */ {
                    const char *pc = PIECES[rnd() % (sizeof PIECES / sizeof PIECES[0])];
                    size_t pl = strlen(pc);
                    if (len + pl < blen + 4000) {
                        memmove(buf + at + pl, buf + at, len - at);
                        memcpy(buf + at, pc, pl);
                        len += pl;
                    }
                    break;
                }
                case 1: /* delete a run */ {
                    size_t dl = rnd() % 16;
                    if (at + dl > len) dl = len - at;
                    memmove(buf + at, buf + at + dl, len - at - dl);
                    len -= dl;
                    break;
                }
                case 2: /* replace a byte */
                    if (len) buf[at] = (char)(rnd() % 256);
                    break;
                default: /* duplicate a run */ {
                    size_t dl = rnd() % 64;
                    if (at + dl > len) dl = len - at;
                    if (len + dl < blen + 4000) {
                        memmove(buf + at + dl, buf + at, len - at);
                        len += dl;
                    }
                }
                }
            }
            lr_error e;
            jj_template *t = NULL;
            char *out = NULL;
            int rc = jj_compile(buf, len, &e, &t);
            if (rc == 0) rc = jj_render(t, ctx, &o, &out, NULL, &e);
            if (rc == 0) {
                ck_assert_ptr_nonnull(out);
                rendered++;
            } else {
                ck_assert_msg(rc < 0 && e.code == rc && e.msg[0], "%s: rc %d without a message",
                              name, rc);
                ck_assert_ptr_null(out);
                refused++;
            }
            free(out);
            jj_destroy(t);
            free(buf);
        }
    }
    fprintf(stderr, "check_jinja fuzz: %zu rendered, %zu refused\n", rendered, refused);
    ck_assert_int_gt(rendered, 0);
    ck_assert_int_gt(refused, 0);
    json_decref(doc);
}
END_TEST

START_TEST(test_render_chat)
{
    const char *src =
        "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}{{ tools | length }}"
        "{{ enable_thinking }}{{ eos_token }}";
    lr_error e;
    jj_template *t;
    ck_assert_int_eq(jj_compile(src, strlen(src), &e, &t), 0);
    json_t *msgs = json_loads("[{\"role\": \"user\", \"content\": \"hi\"}]", 0, NULL);
    json_t *tools = json_loads("[{\"type\": \"function\"}]", 0, NULL);
    json_t *extra = json_loads("{\"enable_thinking\": false, \"messages\": \"ignored\"}", 0, NULL);
    char *out;
    size_t len;
    ck_assert_int_eq(jj_render_chat(t, msgs, 1, tools, "<s>", "</s>", extra, NULL, &out, &len, &e),
                     0);
    ck_assert_str_eq(out, "<s><user>hi<assistant>1False</s>");
    ck_assert_uint_eq(len, strlen(out));
    free(out);
    ck_assert_int_eq(jj_render_chat(t, msgs, 0, NULL, NULL, NULL, NULL, NULL, &out, NULL, &e), 0);
    ck_assert_str_eq(out, "<user>hi0");
    free(out);
    json_t *notobj = json_loads("[1]", 0, NULL);
    ck_assert_int_eq(jj_render(t, notobj, NULL, &out, NULL, &e), LR_EINVAL);
    json_decref(notobj);
    json_decref(msgs);
    json_decref(tools);
    json_decref(extra);
    jj_destroy(t);
    jj_destroy(NULL);
}
END_TEST

int main(void)
{
    setenv("TZ", "UTC", 1);
    tzset();
    Suite *s = suite_create("jinja");
    TCase *tc = tcase_create("golden");
    tcase_add_test(tc, test_golden);
    tcase_add_test(tc, test_jinja2_snippets);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);
    TCase *tk = tcase_create("constructs");
    tcase_add_test(tk, test_output_and_literals);
    tcase_add_test(tk, test_whitespace);
    tcase_add_test(tk, test_if);
    tcase_add_test(tk, test_for);
    tcase_add_test(tk, test_set_macro_call);
    tcase_add_test(tk, test_expressions);
    tcase_add_test(tk, test_tests);
    tcase_add_test(tk, test_filters);
    tcase_add_test(tk, test_tojson);
    tcase_add_test(tk, test_methods_and_globals);
    suite_add_tcase(s, tk);
    TCase *te = tcase_create("errors");
    tcase_add_test(te, test_errors);
    suite_add_tcase(s, te);
    TCase *tl = tcase_create("limits");
    tcase_add_test(tl, test_limits);
    tcase_set_timeout(tl, 120);
    suite_add_tcase(s, tl);
    TCase *tf = tcase_create("fuzz");
    tcase_add_test(tf, test_fuzz);
    tcase_set_timeout(tf, 300);
    suite_add_tcase(s, tf);
    TCase *tr = tcase_create("render_chat");
    tcase_add_test(tr, test_render_chat);
    suite_add_tcase(s, tr);
    TCase *tt = tcase_create("threads");
    tcase_add_test(tt, test_threads);
    tcase_set_timeout(tt, 120);
    suite_add_tcase(s, tt);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
