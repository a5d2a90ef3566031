/* check_registry.c — adapter registry: ids, lookup under roots, lifecycle, caps and LRU.
 *
 * A tiny in-memory base (2 layers, H=8) and adapter folders written by the test under a temp
 * root. Expectations are counted by the test itself (how many loads and evictions a cycle must
 * cause, which adapter must stay resident), never read back from the registry's own logic.
 */
#include <check.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lora_api.h"
#include "registry.h"

enum { L = 2, H = 8 };

static float wq[L][H * H];
static lr_layer layers[L];
static lr_model model;
static char root[256], outside[256];

static void build_model(void)
{
    memset(&model, 0, sizeof model);
    memset(layers, 0, sizeof layers);
    model.cfg.arch = LR_ARCH_LLAMA;
    model.cfg.vocab = 16;
    model.cfg.hidden = H;
    model.cfg.inter = H;
    model.cfg.n_layers = L;
    model.cfg.n_heads = 2;
    model.cfg.n_kv_heads = 2;
    model.cfg.head_dim = 4;
    for (int l = 0; l < L; l++) {
        for (int i = 0; i < H * H; i++)
            wq[l][i] = (float)((i * 7 + l) % 13) / 13.0f - 0.5f;
        layers[l].q = (lr_mat){LR_DT_F32, wq[l], H, H, 0};
    }
    model.layers = layers;
}

static void write_file(const char *path, const void *buf, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(buf, 1, n, f), n);
    fclose(f);
}

/* A q_proj adapter of rank r on both layers; in_dim lets a test make it incompatible. */
static void write_adapter(const char *dir, int r, int in_dim, int with_weights)
{
    char p[512];
    mkdir(dir, 0755);
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    char cfg[256];
    snprintf(cfg, sizeof cfg,
             "{\"peft_type\":\"LORA\",\"r\":%d,\"lora_alpha\":%d,\"target_modules\":[\"q_proj\"]}",
             r, 2 * r);
    write_file(p, cfg, strlen(cfg));
    if (!with_weights) return;
    char hdr[2048];
    size_t pos = 0, off = 0;
    pos += (size_t)snprintf(hdr + pos, sizeof hdr - pos, "{");
    for (int l = 0; l < L; l++) {
        size_t na = (size_t)r * in_dim * 4, nb = (size_t)H * r * 4;
        pos += (size_t)snprintf(hdr + pos, sizeof hdr - pos,
                                "%s\"base_model.model.model.layers.%d.self_attn.q_proj.lora_A."
                                "weight\":{\"dtype\":\"F32\",\"shape\":[%d,%d],\"data_offsets\":"
                                "[%zu,%zu]},\"base_model.model.model.layers.%d.self_attn.q_proj."
                                "lora_B.weight\":{\"dtype\":\"F32\",\"shape\":[%d,%d],"
                                "\"data_offsets\":[%zu,%zu]}",
                                l ? "," : "", l, r, in_dim, off, off + na, l, H, r, off + na,
                                off + na + nb);
        off += na + nb;
    }
    pos += (size_t)snprintf(hdr + pos, sizeof hdr - pos, "}");
    while (pos % 8)
        hdr[pos++] = ' ';
    size_t total = 8 + pos + off;
    unsigned char *buf = calloc(1, total);
    uint64_t hl = pos;
    memcpy(buf, &hl, 8);
    memcpy(buf + 8, hdr, pos);
    float *d = (float *)(buf + 8 + pos);
    for (size_t i = 0; i < off / 4; i++)
        d[i] = (float)(i % 5) * 0.01f;
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", dir);
    write_file(p, buf, total);
    free(buf);
}

static void rmtree(const char *d)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
    ck_assert_int_eq(system(cmd), 0);
}

static void setup(void)
{
    build_model();
    snprintf(root, sizeof root, "/tmp/check_reg_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(root));
    snprintf(outside, sizeof outside, "/tmp/check_reg_out_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(outside));
    char p[512];
    for (int i = 0; i < 6; i++) {
        snprintf(p, sizeof p, "%s/a%d", root, i);
        write_adapter(p, 2, H, 1);
    }
    snprintf(p, sizeof p, "%s/org", root);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/org/b", root);
    write_adapter(p, 4, H, 1);
}

static void teardown(void)
{
    rmtree(root);
    rmtree(outside);
}

static reg_registry *make(int max_loaded, int64_t cache_bytes, int anywhere)
{
    const char *roots[1] = {root};
    reg_params p = {&model, roots, 1, max_loaded, cache_bytes, anywhere, 0, 2.0, 0};
    reg_registry *r;
    lr_error e;
    ck_assert_msg(reg_create(&p, &e, &r) == 0, "%s", e.msg);
    return r;
}

static reg_handle *get(reg_registry *r, const char *id)
{
    reg_handle *h;
    lr_error e;
    ck_assert_msg(reg_resolve(r, id, strlen(id), &e, &h) == 0, "%s: %s", id, e.msg);
    ck_assert_ptr_nonnull(reg_handle_set(h));
    ck_assert_str_eq(reg_handle_id(h), id);
    return h;
}

static reg_state state_of(reg_registry *r, const char *id)
{
    reg_info *v;
    int n = reg_list(r, &v);
    reg_state s = (reg_state)-1;
    for (int i = 0; i < n; i++)
        if (!strcmp(v[i].id, id)) s = v[i].state;
    free(v);
    return s;
}

START_TEST(test_ids)
{
    static const struct {
        const char *id;
        size_t len;
        int ok;
    } cases[] = {
        {"org/name", 8, 1}, {"a", 1, 1},     {"a-b_c.d", 7, 1}, {"..", 2, 0},
        {"a/../b", 6, 0},   {"a..b", 4, 0},  {"/abs", 4, 0},    {"a\\b", 3, 0},
        {"a\x01z", 3, 0},   {"a\x7f", 2, 0}, {"a\0b", 3, 0},    {"", 0, 0},
        {"./a", 3, 0},      {"a//b", 4, 0},  {"a/", 2, 0},      {"a\nb", 3, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lr_error e;
        int rc = reg_check_id(cases[i].id, cases[i].len, &e);
        ck_assert_msg((rc == 0) == cases[i].ok, "id #%zu: rc %d", i, rc);
        if (!cases[i].ok) ck_assert_int_eq(e.http, 400);
    }
    char longid[300];
    memset(longid, 'x', sizeof longid);
    ck_assert_int_eq(reg_check_id(longid, 257, NULL), LR_EINVAL);
    /* resolve refuses them too, before touching the file system */
    reg_registry *r = make(0, 0, 0);
    reg_handle *h;
    lr_error e;
    ck_assert_int_eq(reg_resolve(r, "../a0", 5, &e, &h), LR_EINVAL);
    ck_assert_ptr_null(h);
    reg_destroy(r);
}
END_TEST

static reg_registry *g_r;
static reg_handle *g_h[8];

static void *resolver(void *arg)
{
    intptr_t i = (intptr_t)arg;
    g_h[i] = get(g_r, "org/b");
    return NULL;
}

START_TEST(test_resolve)
{
    reg_registry *r = make(0, 0, 0);
    reg_handle *h = get(r, "a0");
    const peft_adapter *a = reg_handle_adapter(h);
    ck_assert_int_eq(a->n_modules, 2);
    ck_assert_int_eq(a->r, 2);
    ck_assert_int_eq(state_of(r, "a0"), REG_LOADED);
    ck_assert_int_eq(state_of(r, "a3"), REG_AVAILABLE); /* listed from the root, not loaded */
    reg_handle *h2 = get(r, "a0");
    ck_assert_ptr_eq(h, h2); /* same object: requests batch together */
    reg_release(r, h2);
    reg_release(r, h);
    /* unknown id → 404 */
    lr_error e;
    ck_assert_int_eq(reg_resolve(r, "nope", 4, &e, &h), LR_ENOTFOUND);
    ck_assert_int_eq(e.http, 404);
    ck_assert_ptr_nonnull(strstr(e.msg, "nope"));
    /* eight threads at once on an unloaded org/name adapter: one load */
    g_r = r;
    pthread_t th[8];
    for (intptr_t i = 0; i < 8; i++)
        pthread_create(&th[i], NULL, resolver, (void *)i);
    for (int i = 0; i < 8; i++)
        pthread_join(th[i], NULL);
    for (int i = 1; i < 8; i++)
        ck_assert_ptr_eq(g_h[i], g_h[0]);
    ck_assert_int_eq(reg_handle_adapter(g_h[0])->r, 4);
    char run[256], wait[256];
    reg_lora_info(r, run, sizeof run, wait, sizeof wait);
    ck_assert_str_eq(run, "org/b");
    ck_assert_str_eq(wait, "");
    for (int i = 0; i < 8; i++)
        reg_release(r, g_h[i]);
    reg_stats st;
    reg_get_stats(r, &st);
    ck_assert_uint_eq(st.loads, 2);
    ck_assert_int_eq(st.loaded, 2);
    uint64_t hist = 0;
    for (int i = 0; i < REG_HIST_BUCKETS; i++)
        hist += st.load_hist[i];
    ck_assert_uint_eq(hist, 2);
    /* a folder created after start is picked up */
    char p[512];
    snprintf(p, sizeof p, "%s/late", root);
    write_adapter(p, 2, H, 1);
    ck_assert_int_eq(state_of(r, "late"), REG_AVAILABLE);
    reg_release(r, get(r, "late"));
    reg_destroy(r);
}
END_TEST

START_TEST(test_lru)
{
    reg_registry *r = make(2, 0, 0);
    char id[16];
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < 6; i++) {
            snprintf(id, sizeof id, "a%d", i);
            reg_handle *h = get(r, id);
            reg_stats st;
            reg_get_stats(r, &st);
            ck_assert_int_le(st.loaded, 2);
            reg_release(r, h);
        }
    reg_stats st;
    reg_get_stats(r, &st);
    /* 12 resolves of 6 adapters cycling through 2 slots: every one loads, all but 2 evicted */
    ck_assert_uint_eq(st.loads, 12);
    ck_assert_uint_eq(st.evictions, 10);
    ck_assert_int_eq(st.loaded, 2);
    ck_assert_int_eq(state_of(r, "a4"), REG_LOADED);
    ck_assert_int_eq(state_of(r, "a5"), REG_LOADED);
    ck_assert_int_eq(state_of(r, "a0"), REG_AVAILABLE);
    /* a held adapter is never evicted */
    reg_handle *held = get(r, "a0");
    for (int i = 1; i < 6; i++) {
        snprintf(id, sizeof id, "a%d", i);
        reg_release(r, get(r, id));
        ck_assert_int_eq(state_of(r, "a0"), REG_LOADED);
    }
    ck_assert_int_eq(reg_handle_set(held) != NULL, 1);
    reg_release(r, held);
    /* a pinned runtime registration is never evicted */
    char p[512];
    snprintf(p, sizeof p, "%s/a1", root);
    lr_error e;
    ck_assert_msg(reg_register(r, "pinned", 6, p, 1, &e) == 0, "%s", e.msg);
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < 6; i++) {
            snprintf(id, sizeof id, "a%d", i);
            reg_release(r, get(r, id));
            ck_assert_int_eq(state_of(r, "pinned"), REG_LOADED);
        }
    reg_destroy(r);
}
END_TEST

static void *late_release(void *arg)
{
    usleep(200000);
    reg_release(g_r, arg);
    return NULL;
}

START_TEST(test_wait_for_room)
{
    reg_registry *r = make(1, 0, 0);
    g_r = r;
    reg_handle *h0 = get(r, "a0");
    /* no room while a0 is in use: the load waits, then times out */
    reg_handle *h;
    lr_error e;
    ck_assert_int_eq(reg_resolve(r, "a1", 2, &e, &h), LR_EBUSY);
    /* a release while a request waits gives it the slot */
    pthread_t th;
    pthread_create(&th, NULL, late_release, h0);
    h = get(r, "a1");
    pthread_join(th, NULL);
    ck_assert_int_eq(state_of(r, "a0"), REG_AVAILABLE);
    reg_release(r, h);
    reg_destroy(r);
    /* byte cap: room for one adapter's weights only */
    r = make(0, 300, 0);
    reg_release(r, get(r, "a0"));
    reg_release(r, get(r, "a1"));
    reg_stats st;
    reg_get_stats(r, &st);
    ck_assert_int_eq(st.loaded, 1);
    ck_assert_uint_eq(st.evictions, 1);
    ck_assert_int_le(st.bytes, 300);
    reg_destroy(r);
}
END_TEST

START_TEST(test_failures)
{
    char p[512];
    snprintf(p, sizeof p, "%s/bad", root);
    write_adapter(p, 2, H, 0); /* config only */
    snprintf(p, sizeof p, "%s/incompat", root);
    write_adapter(p, 2, H + 4, 1);
    reg_registry *r = make(0, 0, 0);
    reg_handle *h;
    lr_error e;
    ck_assert_int_eq(reg_resolve(r, "bad", 3, &e, &h), LR_ENOTFOUND);
    ck_assert_ptr_nonnull(strstr(e.msg, "adapter_model.safetensors"));
    ck_assert_int_eq(state_of(r, "bad"), REG_FAILED);
    /* unchanged files: the kept error, no second load */
    ck_assert_int_eq(reg_resolve(r, "bad", 3, &e, &h), LR_ENOTFOUND);
    reg_stats st;
    reg_get_stats(r, &st);
    ck_assert_uint_eq(st.load_failures, 1);
    /* the files change: retried and loaded */
    snprintf(p, sizeof p, "%s/bad", root);
    write_adapter(p, 2, H, 1);
    reg_release(r, get(r, "bad"));
    reg_get_stats(r, &st);
    ck_assert_uint_eq(st.loads, 1);
    /* incompatible: 422 naming the module and shapes */
    ck_assert_int_eq(reg_resolve(r, "incompat", 8, &e, &h), LR_EINCOMPAT);
    ck_assert_int_eq(e.http, 422);
    ck_assert_ptr_nonnull(strstr(e.msg, "model.layers.0.self_attn.q_proj"));
    ck_assert_ptr_nonnull(strstr(e.msg, "[2, 12]"));
    reg_info *v;
    int n = reg_list(r, &v);
    int seen = 0;
    for (int i = 0; i < n; i++)
        if (!strcmp(v[i].id, "incompat")) {
            seen = 1;
            ck_assert_int_eq(v[i].state, REG_FAILED);
            ck_assert_ptr_nonnull(strstr(v[i].error, "q_proj"));
        }
    free(v);
    ck_assert(seen);
    reg_destroy(r);
}
END_TEST

START_TEST(test_register)
{
    reg_registry *r = make(0, 0, 0);
    char p[512];
    lr_error e;
    /* outside the roots: refused unless allowed */
    snprintf(p, sizeof p, "%s/x", outside);
    write_adapter(p, 2, H, 1);
    ck_assert_int_eq(reg_register(r, "x", 1, p, 0, &e), LR_EFORBIDDEN);
    ck_assert_ptr_nonnull(strstr(e.msg, "outside"));
    /* a symlink inside a root that leads outside is refused at resolve */
    char link[512];
    snprintf(link, sizeof link, "%s/sneaky", root);
    ck_assert_int_eq(symlink(p, link), 0);
    reg_handle *h;
    ck_assert_int_eq(reg_resolve(r, "sneaky", 6, &e, &h), LR_EFORBIDDEN);
    /* a path inside a root, under a new id */
    snprintf(p, sizeof p, "%s/a2", root);
    ck_assert_msg(reg_register(r, "tenant/custom", 13, p, 0, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(reg_register(r, "tenant/custom", 13, p, 0, &e), LR_EINVAL);
    ck_assert_int_eq(state_of(r, "tenant/custom"), REG_LOADED);
    /* a registration that cannot load is reported and dropped */
    snprintf(p, sizeof p, "%s/half", root);
    write_adapter(p, 2, H, 0);
    ck_assert_int_eq(reg_register(r, "half", 4, p, 0, &e), LR_ENOTFOUND);
    /* unload while in flight: the holder keeps a valid adapter; the id is gone at once */
    h = get(r, "tenant/custom");
    ck_assert_int_eq(reg_unregister(r, "tenant/custom", 13, &e), 0);
    reg_handle *h2;
    ck_assert_int_eq(reg_resolve(r, "tenant/custom", 13, &e, &h2), LR_ENOTFOUND);
    ck_assert(lora_has_module(reg_handle_set(h), 0, LR_MOD_Q));
    reg_release(r, h); /* freed here (ASan checks) */
    ck_assert_int_eq(reg_unregister(r, "tenant/custom", 13, &e), LR_ENOTFOUND);
    reg_destroy(r);
    /* allow_anywhere */
    r = make(0, 0, 1);
    snprintf(p, sizeof p, "%s/x", outside);
    ck_assert_msg(reg_register(r, "x", 1, p, 0, &e) == 0, "%s", e.msg);
    reg_release(r, get(r, "x"));
    reg_destroy(r);
}
END_TEST

START_TEST(test_lora_api)
{
    const lora_api_ops *ops = &lora_api_table;
    const char *roots[1] = {root};
    lora_api_params p = {&model, roots, 1, 2, 0, 0, 16, 0};
    void *l;
    lr_error e;
    ck_assert_msg(ops->create(&p, &e, &l) == 0, "%s", e.msg);
    ck_assert_int_eq(ops->delta(l)->scratch_per_token, 16 + 2 * H);
    const void *a0;
    ck_assert_msg(ops->resolve(l, "a0", &a0, &e) == 0, "%s", e.msg);
    ck_assert(lora_has_module(a0, 1, LR_MOD_Q));
    const void *none = &none;
    ck_assert_int_eq(ops->resolve(l, "zz", &none, &e), LR_ENOTFOUND);
    ck_assert_ptr_null(none);
    ck_assert_int_eq(e.http, 404);
    /* a weighted mix is its own adapter object holding references to its members */
    json_error_t je;
    json_t *mix = json_loads("[{\"id\": \"a0\", \"scale\": 0.5}, {\"id\": \"org/b\"}]", 0, &je);
    const void *m;
    ck_assert_msg(ops->resolve_mix(l, mix, &m, &e) == 0, "%s", e.msg);
    ck_assert_ptr_ne(m, a0);
    ck_assert(lora_has_module(m, 0, LR_MOD_Q));
    json_decref(mix);
    static const char *bad[][2] = {{"[]", "400"},
                                   {"[{\"id\": \"nope\"}]", "404"},
                                   {"[{\"id\": \"a1\", \"scale\": \"x\"}]", "400"},
                                   {"[{\"scale\": 1}]", "400"},
                                   {"{}", "400"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *b = json_loads(bad[i][0], JSON_DECODE_ANY, &je);
        const void *x = NULL;
        ck_assert_int_ne(ops->resolve_mix(l, b, &x, &e), 0);
        ck_assert_int_eq(e.http, atoi(bad[i][1]));
        ck_assert_ptr_null(x);
        json_decref(b);
    }
    /* routes */
    lora_api_reply out;
    memset(&out, 0, sizeof out);
    ck_assert_int_eq(ops->route(l, "GET", "/v1/adapters", "", 0, &out, &e), 1);
    ck_assert_int_eq(out.status, 200);
    json_t *v = json_loads(out.body, 0, &je);
    ck_assert_ptr_nonnull(v);
    int found = 0;
    for (size_t i = 0; i < json_array_size(json_object_get(v, "data")); i++) {
        json_t *o = json_array_get(json_object_get(v, "data"), i);
        if (!strcmp(json_string_value(json_object_get(o, "id")), "a0")) {
            found = 1;
            ck_assert_str_eq(json_string_value(json_object_get(o, "state")), "loaded");
            ck_assert_int_eq(json_integer_value(json_object_get(o, "rank")), 2);
            ck_assert_int_eq(json_integer_value(json_object_get(o, "in_use")), 2);
            ck_assert_str_eq(
                json_string_value(json_array_get(json_object_get(o, "target_modules"), 0)),
                "q_proj");
        }
    }
    ck_assert(found);
    json_decref(v);
    free(out.body);
    memset(&out, 0, sizeof out);
    ck_assert_int_eq(ops->route(l, "GET", "/v1/load_lora_adapter", "", 0, &out, &e), -1);
    ck_assert_int_eq(e.http, 405);
    ck_assert_str_eq(out.allow, "POST");
    ck_assert_int_eq(ops->route(l, "POST", "/v1/load_lora_adapter", "{", 1, &out, &e), -1);
    ck_assert_int_eq(e.http, 400);
    const char *body = "{\"lora_name\": \"x\"}";
    ck_assert_int_eq(ops->route(l, "POST", "/v1/load_lora_adapter", body, strlen(body), &out, &e),
                     -1);
    ck_assert_int_eq(e.http, 400);
    ck_assert_ptr_nonnull(strstr(e.msg, "lora_path"));
    ck_assert_int_eq(ops->route(l, "POST", "/v1/unload_lora_adapter", body, strlen(body), &out, &e),
                     -1);
    ck_assert_int_eq(e.http, 404);
    ck_assert_int_eq(ops->route(l, "GET", "/v1/other", "", 0, &out, &e), 0);
    json_t *models = json_array();
    ops->models(l, "base", 5, models);
    ck_assert_int_ge(json_array_size(models), 7);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(models, 0), "parent")),
                     "base");
    json_decref(models);
    char *txt = ops->metrics(l);
    ck_assert_ptr_nonnull(
        strstr(txt, "vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\""));
    ck_assert_ptr_nonnull(strstr(txt, "lorad_adapter_loads_total 2\n"));
    free(txt);
    ops->release(l, m);
    ops->release(l, a0);
    ops->rescan(l);
    ops->destroy(l);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("registry");
    struct {
        const char *name;
        const TTest *t;
    } cases[] = {{"ids", test_ids},           {"resolve", test_resolve},
                 {"lru", test_lru},           {"room", test_wait_for_room},
                 {"failures", test_failures}, {"register", test_register},
                 {"lora_api", test_lora_api}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, cases[i].t);
        suite_add_tcase(s, tc);
    }
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
