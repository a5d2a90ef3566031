/* peft.c — the PEFT LoRA folder loader (SPEC-HF.md section D).
 *
 * Three passes, so nothing is converted before everything has been checked: (1) parse and vet
 * adapter_config.json, (2) sort every tensor of adapter_model.safetensors into a slot per base
 * module (layer × lr_module, plus the embedding) by kind (lora_A, lora_B, B bias, magnitude,
 * embedding A/B), refusing keys we cannot honour, (3) walk the base's modules in order, decide
 * from the config which are targets, check shapes, then place the tensors and compute DoRA
 * factors. Placing uses the file's own bytes (read into huge-page memory by adapters/peft_store)
 * wherever the tensor is already in the held form — F32 A and biases as they lie, B transposed
 * over its own bytes, BF16 A/B kept as BF16 — and converts the rest into one extra region.
 *
 * This module is not the math (adapters/lora) nor the id → folder mapping (adapters/registry).
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "peft.h"

#include <cblas.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "kernels.h"
#include "peft_store.h"
#include "safetensors.h"
#include "util.h"

#define PEFT_MAX_CONFIG (4 << 20) /* adapter_config.json larger than this is refused */
#define PEFT_MAX_PATTERNS 256

static const char *const mod_names[LR_MOD_COUNT] = {
    "q_proj",    "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
    "down_proj", NULL,     NULL,     NULL,     NULL,
};

/* T5 (SPEC D.2): LoRA layer numbers are encoder blocks 0..Le-1, then decoder blocks
 * Le..Le+Ld-1; the modules keep their HF names (q, k, v, o, EncDecAttention, wi / wi_0 / wi_1, wo).
 */
static int lora_layers(const lr_model *m)
{
    return m->cfg.n_layers + (m->cfg.arch == LR_ARCH_T5 ? m->cfg.n_dec_layers : 0);
}

static char *t5_module_name(const lr_model *m, int layer, lr_module mod, char *buf, size_t size)
{
    static const char *const qkvo[] = {"q", "k", "v", "o"};
    int Le = m->cfg.n_layers, dec = layer >= Le, b = dec ? layer - Le : layer;
    const char *stack = dec ? "decoder" : "encoder";
    const char *ff = mod == LR_MOD_GATE ? "wi_0"
                     : mod == LR_MOD_UP ? (m->cfg.gated_ff ? "wi_1" : "wi")
                                        : "wo";
    if (mod >= LR_MOD_Q && mod <= LR_MOD_O)
        snprintf(buf, size, "%s.block.%d.layer.0.SelfAttention.%s", stack, b, qkvo[mod]);
    else if (mod >= LR_MOD_GATE && mod <= LR_MOD_DOWN)
        snprintf(buf, size, "%s.block.%d.layer.%d.DenseReluDense.%s", stack, b, dec ? 2 : 1, ff);
    else if (dec && mod >= LR_MOD_XQ && mod <= LR_MOD_XO)
        snprintf(buf, size, "decoder.block.%d.layer.1.EncDecAttention.%s", b,
                 qkvo[mod - LR_MOD_XQ]);
    else
        snprintf(buf, size, "%s.block.%d.<module %d>", stack, b, (int)mod);
    return buf;
}

char *peft_module_name(const lr_model *m, int layer, lr_module mod, char *buf, size_t size)
{
    if (m && m->cfg.arch == LR_ARCH_T5) return t5_module_name(m, layer, mod, buf, size);
    if (mod < 0 || mod >= LR_MOD_COUNT || !mod_names[mod])
        snprintf(buf, size, "model.layers.%d.<module %d>", layer, (int)mod);
    else
        snprintf(buf, size, "model.layers.%d.%s.%s", layer, mod <= LR_MOD_O ? "self_attn" : "mlp",
                 mod_names[mod]);
    return buf;
}

/* The base weight of (layer, mod), or NULL when the model has none. */
static const lr_mat *base_mat(const lr_model *m, int layer, lr_module mod)
{
    if (layer < 0 || layer >= lora_layers(m)) return NULL;
    const lr_layer *L =
        layer < m->cfg.n_layers ? &m->layers[layer] : &m->dec_layers[layer - m->cfg.n_layers];
    const lr_mat *w = NULL;
    switch (mod) {
    case LR_MOD_XQ:
        w = &L->xq;
        break;
    case LR_MOD_XK:
        w = &L->xk;
        break;
    case LR_MOD_XV:
        w = &L->xv;
        break;
    case LR_MOD_XO:
        w = &L->xo;
        break;
    case LR_MOD_Q:
        w = &L->q;
        break;
    case LR_MOD_K:
        w = &L->k;
        break;
    case LR_MOD_V:
        w = &L->v;
        break;
    case LR_MOD_O:
        w = &L->o;
        break;
    case LR_MOD_GATE:
        w = &L->gate;
        break;
    case LR_MOD_UP:
        w = &L->up;
        break;
    case LR_MOD_DOWN:
        w = &L->down;
        break;
    default:
        return NULL;
    }
    return w->data ? w : NULL;
}

/* ------------------------------------------------------------------------------ regex helpers */

typedef struct peft_re {
    pcre2_code *code;
    pcre2_match_data *md;
} peft_re;

static void re_free(peft_re *r)
{
    if (r->md) pcre2_match_data_free(r->md);
    if (r->code) pcre2_code_free(r->code);
    r->md = NULL;
    r->code = NULL;
}

/* Compile pre + pat + post, anchored at the start (Python re.match). `what` names the config
 * field for the error message. */
static int re_compile(peft_re *r, const char *pre, const char *pat, const char *post,
                      const char *what, lr_error *err)
{
    size_t n = strlen(pre) + strlen(pat) + strlen(post) + 1;
    char *s = malloc(n);
    if (!s) return lr_error_set(err, LR_ENOMEM, "adapter_config.json: out of memory");
    snprintf(s, n, "%s%s%s", pre, pat, post);
    int ec;
    PCRE2_SIZE off;
    r->code = pcre2_compile((PCRE2_SPTR)s, PCRE2_ZERO_TERMINATED, PCRE2_ANCHORED, &ec, &off, NULL);
    free(s);
    if (!r->code) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return lr_error_set(err, LR_EFORMAT,
                            "adapter_config.json: %s: the regex '%.200s' does not compile (%s)",
                            what, pat, (const char *)msg);
    }
    r->md = pcre2_match_data_create_from_pattern(r->code, NULL);
    if (!r->md) {
        re_free(r);
        return lr_error_set(err, LR_ENOMEM, "adapter_config.json: out of memory");
    }
    return 0;
}

/* 1 if r matches s (anchored at the start), 0 if not; group 1 into *g1 if g1 != NULL. */
static int re_match(peft_re *r, const char *s, long *g1)
{
    int rc = pcre2_match(r->code, (PCRE2_SPTR)s, strlen(s), 0, 0, r->md, NULL);
    if (rc < 0) return 0;
    if (g1) {
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(r->md);
        *g1 = -1;
        if (rc >= 2 && ov[2] != PCRE2_UNSET) {
            char buf[24];
            size_t len = ov[3] - ov[2];
            if (len > 0 && len < sizeof buf) {
                memcpy(buf, s + ov[2], len);
                buf[len] = 0;
                *g1 = strtol(buf, NULL, 10);
            }
        }
    }
    return 1;
}

/* ------------------------------------------------------------------------------------- config */

/* A list-or-regex module selector (target_modules, exclude_modules). */
typedef struct peft_sel {
    int kind;     /* 0 none, 1 list, 2 regex, 3 all-linear */
    char **names; /* kind 1 */
    int n;
    int *hits;  /* per list entry: base modules it named (before layer filtering) */
    peft_re re; /* kind 2: (?:P)\z anchored = re.fullmatch */
} peft_sel;

typedef struct peft_pat {
    peft_re re;
    double val;
} peft_pat;

typedef struct peft_cfg {
    int r;
    double alpha;
    int rslora, dora, lora_bias;
    peft_sel target, exclude;
    peft_pat rank[PEFT_MAX_PATTERNS], alph[PEFT_MAX_PATTERNS];
    int n_rank, n_alph;
    int has_ltt;
    int *ltt; /* layers_to_transform */
    int n_ltt;
    peft_re lpat[16]; /* layers_pattern regexes (or the default one) */
    int n_lpat;
    char targets[256];
} peft_cfg;

static void sel_free(peft_sel *s)
{
    for (int i = 0; i < s->n; i++)
        free(s->names[i]);
    free(s->names);
    free(s->hits);
    re_free(&s->re);
    memset(s, 0, sizeof *s);
}

static void cfg_free(peft_cfg *c)
{
    sel_free(&c->target);
    sel_free(&c->exclude);
    for (int i = 0; i < c->n_rank; i++)
        re_free(&c->rank[i].re);
    for (int i = 0; i < c->n_alph; i++)
        re_free(&c->alph[i].re);
    for (int i = 0; i < c->n_lpat; i++)
        re_free(&c->lpat[i]);
    free(c->ltt);
}

static int sel_parse(json_t *v, const char *field, peft_sel *s, lr_error *err)
{
    memset(s, 0, sizeof *s);
    if (!v || json_is_null(v)) return 0;
    if (json_is_string(v)) {
        const char *p = json_string_value(v);
        if (!strcmp(p, "all-linear")) {
            s->kind = 3;
            return 0;
        }
        s->kind = 2;
        return re_compile(&s->re, "(?:", p, ")\\z", field, err);
    }
    if (!json_is_array(v))
        return lr_error_set(err, LR_EFORMAT,
                            "adapter_config.json: %s must be a list of module names, a regex "
                            "string or null",
                            field);
    s->kind = 1;
    s->n = (int)json_array_size(v);
    s->names = calloc((size_t)s->n + 1, sizeof *s->names);
    s->hits = calloc((size_t)s->n + 1, sizeof *s->hits);
    if (!s->names || !s->hits)
        return lr_error_set(err, LR_ENOMEM, "adapter_config.json: out of memory");
    for (int i = 0; i < s->n; i++) {
        json_t *e = json_array_get(v, (size_t)i);
        if (!json_is_string(e))
            return lr_error_set(err, LR_EFORMAT, "adapter_config.json: %s[%d] must be a string",
                                field, i);
        if (!(s->names[i] = strdup(json_string_value(e))))
            return lr_error_set(err, LR_ENOMEM, "adapter_config.json: out of memory");
    }
    return 0;
}

/* PEFT's module match: list → key equals an entry or ends with "." + entry; regex → fullmatch;
 * all-linear → any linear module but the output layer. Counts list hits. */
static int sel_match(peft_sel *s, const char *key, int is_linear)
{
    switch (s->kind) {
    case 1: {
        int hit = 0;
        size_t kl = strlen(key);
        for (int i = 0; i < s->n; i++) {
            size_t nl = strlen(s->names[i]);
            if (!strcmp(key, s->names[i]) ||
                (kl > nl && key[kl - nl - 1] == '.' && !strcmp(key + kl - nl, s->names[i]))) {
                s->hits[i]++;
                hit = 1;
            }
        }
        return hit;
    }
    case 2:
        return re_match(&s->re, key, NULL);
    case 3:
        return is_linear;
    default:
        return 0;
    }
}

static int pats_parse(json_t *v, const char *field, peft_pat *out, int *n, int is_int,
                      lr_error *err)
{
    *n = 0;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_object(v))
        return lr_error_set(err, LR_EFORMAT,
                            "adapter_config.json: %s must be an object of pattern → value", field);
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x)
    {
        if (*n >= PEFT_MAX_PATTERNS)
            return lr_error_set(err, LR_EFORMAT, "adapter_config.json: %s has more than %d entries",
                                field, PEFT_MAX_PATTERNS);
        double d;
        if (json_is_integer(x))
            d = (double)json_integer_value(x);
        else if (!is_int && json_is_real(x))
            d = json_real_value(x);
        else
            return lr_error_set(err, LR_EFORMAT, "adapter_config.json: %s['%.100s'] must be %s",
                                field, k, is_int ? "an integer" : "a number");
        if (is_int && (d < 1 || d > 1 << 20))
            return lr_error_set(err, LR_EFORMAT,
                                "adapter_config.json: %s['%.100s'] = %g is not a valid rank", field,
                                k, d);
        peft_pat *p = &out[(*n)++];
        p->val = d;
        int rc = re_compile(&p->re, "(.*\\.)?(", k, ")$", field, err);
        if (rc) return rc;
    }
    return 0;
}

static double pats_lookup(peft_pat *p, int n, const char *key, double dflt)
{
    for (int i = 0; i < n; i++)
        if (re_match(&p[i].re, key, NULL)) return p[i].val;
    return dflt;
}

static int get_bool(json_t *root, const char *field, int *out, lr_error *err)
{
    json_t *v = json_object_get(root, field);
    *out = 0;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v))
        return lr_error_set(err, LR_EFORMAT, "adapter_config.json: %s must be true or false",
                            field);
    *out = json_is_true(v);
    return 0;
}

static int nonempty(json_t *v)
{
    if (!v || json_is_null(v) || json_is_false(v)) return 0;
    if (json_is_array(v)) return json_array_size(v) > 0;
    if (json_is_object(v)) return json_object_size(v) > 0;
    return 1;
}

static int cfg_parse(const char *text, const lr_model *m, peft_cfg *c, lr_error *err)
{
    json_error_t je;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return lr_error_set(err, LR_EFORMAT, "adapter_config.json: invalid JSON at line %d: %s",
                            je.line, je.text);
    int rc = 0;
    if (!json_is_object(root)) {
        rc = lr_error_set(err, LR_EFORMAT, "adapter_config.json: the top level must be an object");
        goto out;
    }
    json_t *v = json_object_get(root, "peft_type");
    if (v && !json_is_null(v) && (!json_is_string(v) || strcmp(json_string_value(v), "LORA"))) {
        rc = lr_error_set(err, LR_EUNSUPPORTED,
                          "adapter_config.json: peft_type %s is not supported (only \"LORA\")",
                          json_is_string(v) ? json_string_value(v) : "(not a string)");
        goto out;
    }
    v = json_object_get(root, "r");
    c->r = 8;
    if (v && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 1 << 20) {
            rc = lr_error_set(err, LR_EFORMAT, "adapter_config.json: r must be an integer >= 1");
            goto out;
        }
        c->r = (int)json_integer_value(v);
    }
    v = json_object_get(root, "lora_alpha");
    c->alpha = 8;
    if (v && !json_is_null(v)) {
        if (!json_is_number(v)) {
            rc = lr_error_set(err, LR_EFORMAT, "adapter_config.json: lora_alpha must be a number");
            goto out;
        }
        c->alpha = json_number_value(v);
    }
    if ((rc = get_bool(root, "use_rslora", &c->rslora, err)) ||
        (rc = get_bool(root, "use_dora", &c->dora, err)) ||
        (rc = get_bool(root, "lora_bias", &c->lora_bias, err)))
        goto out;
    int fifo;
    if ((rc = get_bool(root, "fan_in_fan_out", &fifo, err))) goto out;
    if (fifo) {
        rc = lr_error_set(err, LR_EUNSUPPORTED,
                          "adapter_config.json: fan_in_fan_out=true is for GPT-2 style Conv1D "
                          "weights; this base model (%s family) has none",
                          m->cfg.arch == LR_ARCH_QWEN2 ? "Qwen2" : "Llama");
        goto out;
    }
    v = json_object_get(root, "bias");
    if (v && !json_is_null(v) && (!json_is_string(v) || strcmp(json_string_value(v), "none"))) {
        rc = lr_error_set(err, LR_EUNSUPPORTED,
                          "adapter_config.json: bias=%s is not supported (only \"none\": lorad "
                          "never replaces the base model's biases)",
                          json_is_string(v) ? json_string_value(v) : "(not a string)");
        goto out;
    }
    static const char *const refused[][2] = {
        {"modules_to_save", "modules_to_save (fully retrained modules replace the shared base)"},
        {"trainable_token_indices", "trainable_token_indices (replaced embedding rows)"},
        {"layer_replication", "layer_replication"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        if (nonempty(json_object_get(root, refused[i][0]))) {
            rc = lr_error_set(err, LR_EUNSUPPORTED, "adapter_config.json: %s is not supported",
                              refused[i][1]);
            goto out;
        }
    v = json_object_get(root, "target_modules");
    if (v && json_is_string(v))
        snprintf(c->targets, sizeof c->targets, "%s", json_string_value(v));
    else if (v && json_is_array(v)) {
        size_t off = 0;
        for (size_t i = 0; i < json_array_size(v) && off < sizeof c->targets; i++) {
            const char *s = json_string_value(json_array_get(v, i));
            off += (size_t)snprintf(c->targets + off, sizeof c->targets - off, "%s%s", i ? "," : "",
                                    s ? s : "?");
        }
    }
    if (!v || json_is_null(v)) {
        /* PEFT's per-architecture default for Llama, Mistral and Qwen2 (T5: q, v). */
        int t5 = m->cfg.arch == LR_ARCH_T5;
        json_t *d = json_pack("[ss]", t5 ? "q" : "q_proj", t5 ? "v" : "v_proj");
        rc = sel_parse(d, "target_modules", &c->target, err);
        json_decref(d);
        snprintf(c->targets, sizeof c->targets, t5 ? "q,v" : "q_proj,v_proj");
    } else {
        rc = sel_parse(v, "target_modules", &c->target, err);
    }
    if (rc || (rc = sel_parse(json_object_get(root, "exclude_modules"), "exclude_modules",
                              &c->exclude, err)))
        goto out;
    if ((rc = pats_parse(json_object_get(root, "rank_pattern"), "rank_pattern", c->rank, &c->n_rank,
                         1, err)) ||
        (rc = pats_parse(json_object_get(root, "alpha_pattern"), "alpha_pattern", c->alph,
                         &c->n_alph, 0, err)))
        goto out;
    v = json_object_get(root, "layers_to_transform");
    if (v && !json_is_null(v)) {
        c->has_ltt = 1;
        size_t n = json_is_array(v) ? json_array_size(v) : 1;
        c->ltt = calloc(n + 1, sizeof *c->ltt);
        if (!c->ltt) {
            rc = lr_error_set(err, LR_ENOMEM, "adapter_config.json: out of memory");
            goto out;
        }
        for (size_t i = 0; i < n; i++) {
            json_t *e = json_is_array(v) ? json_array_get(v, i) : v;
            if (!json_is_integer(e)) {
                rc = lr_error_set(err, LR_EFORMAT,
                                  "adapter_config.json: layers_to_transform must be an integer "
                                  "or a list of integers");
                goto out;
            }
            c->ltt[c->n_ltt++] = (int)json_integer_value(e);
        }
        v = json_object_get(root, "layers_pattern");
        size_t np = (v && json_is_array(v)) ? json_array_size(v) : 1;
        if (np > 16) {
            rc = lr_error_set(err, LR_EFORMAT,
                              "adapter_config.json: layers_pattern has over 16 "
                              "entries");
            goto out;
        }
        for (size_t i = 0; i < np; i++) {
            json_t *e = (v && json_is_array(v)) ? json_array_get(v, i) : v;
            if (e && !json_is_null(e) && !json_is_string(e)) {
                rc = lr_error_set(err, LR_EFORMAT,
                                  "adapter_config.json: layers_pattern must be a string, a list "
                                  "of strings or null");
                goto out;
            }
            const char *p = (e && json_is_string(e)) ? json_string_value(e) : NULL;
            rc = p ? re_compile(&c->lpat[c->n_lpat], ".*?\\.", p, "\\.(\\d+)\\.", "layers_pattern",
                                err)
                   : re_compile(&c->lpat[c->n_lpat], "", ".*?\\.[^.]*\\.(\\d+)\\.", "",
                                "layers_pattern", err);
            if (rc) goto out;
            c->n_lpat++;
        }
    }
out:
    json_decref(root);
    return rc;
}

/* Is module `key` a LoRA target under c (SPEC D.1)? */
static int cfg_targets(peft_cfg *c, const char *key, int is_linear)
{
    if (!sel_match(&c->target, key, is_linear)) return 0;
    if (c->exclude.kind && sel_match(&c->exclude, key, is_linear)) return 0;
    if (c->has_ltt && c->target.kind != 2) {
        long idx = -1;
        for (int i = 0; i < c->n_lpat && idx < 0; i++)
            if (!re_match(&c->lpat[i], key, &idx)) idx = -1;
        if (idx < 0) return 0;
        int in = 0;
        for (int i = 0; i < c->n_ltt; i++)
            in |= c->ltt[i] == idx;
        if (!in) return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------------------------ tensors */

enum { K_A, K_B, K_BBIAS, K_MAG, K_EA, K_EB, K_EBASE, K_COUNT };

/* Split a tensor name (prefix already stripped) into the module path and kind. Returns 0 and
 * fills path/kind, or -1 if the name is no LoRA tensor we know. The adapter name PEFT strips on
 * save is tolerated if a writer left it in (".lora_A.default.weight"). */
static int split_key(const char *name, char *path, size_t psize, int *kind)
{
    static const struct {
        const char *tok;
        int kind;
    } toks[] = {{".lora_embedding_A", K_EA},
                {".lora_embedding_B", K_EB},
                {".lora_magnitude_vector", K_MAG},
                {".lora_A", K_A},
                {".lora_B", K_B},
                {".base_layer", K_EBASE}};
    for (size_t i = 0; i < sizeof toks / sizeof toks[0]; i++) {
        const char *p = strstr(name, toks[i].tok);
        if (!p) continue;
        const char *rest = p + strlen(toks[i].tok);
        int k = toks[i].kind;
        /* rest: "" | ".weight" | ".bias" | ".NAME" | ".NAME.weight" | ".NAME.bias" */
        char comp[2][128];
        int nc = 0;
        while (*rest) {
            if (*rest != '.' || nc == 2) return -1;
            rest++;
            size_t len = strcspn(rest, ".");
            if (len == 0 || len >= sizeof comp[0]) return -1;
            memcpy(comp[nc], rest, len);
            comp[nc++][len] = 0;
            rest += len;
        }
        const char *last = nc ? comp[nc - 1] : "";
        int is_w = !strcmp(last, "weight"), is_b = !strcmp(last, "bias");
        switch (k) {
        case K_A:
        case K_B:
        case K_EBASE:
            if (!(is_w || is_b) ||
                (nc == 2 && (!strcmp(comp[0], "weight") || !strcmp(comp[0], "bias"))))
                return -1;
            if (is_b) k = k == K_B ? K_BBIAS : -1;
            if (k < 0 || (k == K_EBASE && nc != 1)) return -1;
            break;
        case K_MAG:
            if (nc == 2 && !is_w) return -1;
            break;
        default: /* embedding A/B: "" or ".NAME" */
            if (nc > 1 || is_w || is_b) return -1;
        }
        size_t plen = (size_t)(p - name);
        if (plen == 0 || plen >= psize) return -1;
        memcpy(path, name, plen);
        path[plen] = 0;
        *kind = k;
        return 0;
    }
    return -1;
}

/* Slot of a module path: layer * LR_MOD_COUNT + mod, the embedding slot, or -1. */
static int slot_of(const lr_model *m, const char *path)
{
    int L = lora_layers(m);
    if (m->cfg.arch == LR_ARCH_T5) { /* no embedding LoRA on T5; few modules: compare names */
        char buf[128];
        for (int layer = 0; layer < L; layer++)
            for (int mod = 0; mod < LR_MOD_COUNT; mod++)
                if (base_mat(m, layer, (lr_module)mod) &&
                    !strcmp(path, peft_module_name(m, layer, (lr_module)mod, buf, sizeof buf)))
                    return layer * LR_MOD_COUNT + mod;
        return -1;
    }
    if (!strcmp(path, "model.embed_tokens")) return L * LR_MOD_COUNT;
    int layer, n = 0;
    if (sscanf(path, "model.layers.%d.%n", &layer, &n) != 1 || n == 0 || layer < 0 || layer >= L)
        return -1;
    char buf[128];
    for (int mod = 0; mod < LR_MOD_COUNT; mod++)
        if (base_mat(m, layer, (lr_module)mod) &&
            !strcmp(path, peft_module_name(m, layer, (lr_module)mod, buf, sizeof buf)))
            return layer * LR_MOD_COUNT + mod;
    return -1;
}

/* Where the converted tensors go (SPEC: the loaded adapter holds f32 A, Bt, biases, DoRA
 * vectors). The file's own bytes (store.file) are used in place when a tensor is F32 and
 * float-aligned; anything else is written to store.extra, a bump region sized beforehand by
 * place_bytes() over exactly the same decisions. */
typedef struct peft_store {
    ps_region file, extra;
    size_t used;   /* bytes of extra handed out */
    int file_used; /* some tensor lives in file (else it is released after the load) */
} peft_store;

static int in_place(const st_tensor *t)
{
    return t->dtype == ST_F32 && ((uintptr_t)t->data % sizeof(float)) == 0;
}

/* Bytes of store.extra a tensor needs (0 when used in place), in 64-byte units. */
static size_t extra_bytes(size_t n_floats)
{
    return (sizeof(float) * (n_floats ? n_floats : 1) + 63) & ~(size_t)63;
}

static size_t place_bytes(const st_tensor *t)
{
    return t && !in_place(t) ? extra_bytes((size_t)t->numel) : 0;
}

static float *extra_take(peft_store *st, size_t n_floats)
{
    size_t need = extra_bytes(n_floats);
    LR_ASSERT(st->used + need <= st->extra.len);
    float *p = (float *)(st->extra.p + st->used);
    st->used += need;
    return p;
}

/* src (n elements of a float tensor of any dtype, maybe unaligned) as f32 into dst. */
static void convert(const st_tensor *t, float *dst)
{
    const unsigned char *src = t->data;
    if (t->dtype == ST_F32) {
        memcpy(dst, src, sizeof(float) * (size_t)t->numel);
        return;
    }
    uint16_t tmp[1024];
    for (int64_t i = 0; i < t->numel; i += 1024) {
        int64_t n = t->numel - i < 1024 ? t->numel - i : 1024;
        memcpy(tmp, src + 2 * i, 2 * (size_t)n);
        if (t->dtype == ST_F16)
            lr_f16_to_f32(tmp, dst + i, n);
        else
            lr_bf16_to_f32(tmp, dst + i, n);
    }
}

/* The tensor as an f32 array: its own bytes when F32 and aligned, else a converted copy. */
static float *place(peft_store *st, const st_tensor *t, int64_t *bytes)
{
    *bytes += (int64_t)sizeof(float) * t->numel;
    if (in_place(t)) {
        st->file_used = 1;
        return (float *)(uintptr_t)t->data;
    }
    float *d = extra_take(st, (size_t)t->numel);
    convert(t, d);
    return d;
}

/* Modules whose A and B are both BF16 (and float-pair aligned) keep them as BF16 in place, B
 * transposed: half the memory and bandwidth of widening them, with identical values. DoRA
 * modules are widened (their factor and the reference maths read f32). */
static int keep_bf16(int dora, const st_tensor *A, const st_tensor *B)
{
    return !dora && A->dtype == ST_BF16 && B->dtype == ST_BF16 && (uintptr_t)A->data % 2 == 0 &&
           (uintptr_t)B->data % 2 == 0;
}

/* The BF16 [rows, cols] tensor transposed over its own bytes, through tmp (rows·cols halves). */
static uint16_t *transpose_bf16(peft_store *st, const st_tensor *t, int64_t rows, int64_t cols,
                                uint16_t *tmp, int64_t *bytes)
{
    uint16_t *d = (uint16_t *)(uintptr_t)t->data;
    memcpy(tmp, d, 2 * (size_t)t->numel);
    for (int64_t r0 = 0; r0 < rows; r0 += 32) {
        int64_t r1 = r0 + 32 < rows ? r0 + 32 : rows;
        for (int64_t c = 0; c < cols; c++)
            for (int64_t r = r0; r < r1; r++)
                d[c * rows + r] = tmp[r * cols + c];
    }
    st->file_used = 1;
    *bytes += 2 * t->numel;
    return d;
}

/* The [rows, cols] tensor transposed to [cols, rows] f32: over its own bytes when F32 and
 * aligned (through tmp, rows·cols floats of scratch), else into store.extra. */
static float *place_transposed(peft_store *st, const st_tensor *t, int64_t rows, int64_t cols,
                               float *tmp, int64_t *bytes)
{
    *bytes += (int64_t)sizeof(float) * t->numel;
    float *d = in_place(t) ? (float *)(uintptr_t)t->data : extra_take(st, (size_t)t->numel);
    st->file_used |= in_place(t);
    convert(t, tmp);
    /* Blocks of 16 source rows: reads stay within a few lines, writes go 16 floats at a time. */
    for (int64_t r0 = 0; r0 < rows; r0 += 16) {
        int64_t r1 = r0 + 16 < rows ? r0 + 16 : rows;
        for (int64_t c = 0; c < cols; c++)
            for (int64_t r = r0; r < r1; r++)
                d[c * rows + r] = tmp[r * cols + c];
    }
    return d;
}

static int check_shape(const st_tensor *t, const char *mod, const char *what, int64_t d0,
                       int64_t d1, int ndim, const char *why, lr_error *err)
{
    char got[64], want[64];
    int64_t sh[2] = {d0, d1};
    if (!st_tensor_is_float(t))
        return lr_error_set(err, LR_EFORMAT,
                            "adapter_model.safetensors: tensor '%.200s' has dtype %s; LoRA "
                            "tensors must be F32, F16 or BF16",
                            t->name, st_dtype_name(t->dtype));
    if (t->ndim == ndim && t->shape[0] == d0 && (ndim == 1 || t->shape[1] == d1)) return 0;
    return lr_error_set(err, LR_EINCOMPAT,
                        "adapter does not fit the base model: module %s %s has shape %s, expected "
                        "%s (%s)",
                        mod, what, st_shape_str(t->shape, t->ndim, got, sizeof got),
                        st_shape_str(sh, ndim, want, sizeof want), why);
}

/* ----------------------------------------------------------------------------------- the load */

/* Rows of B·A computed per dgemm call in the DoRA norms: 64 rows of up to a few thousand
 * doubles stay within L2 while their norms are taken. */
#define PEFT_DORA_ROWS 64

void peft_dora_factor(const lr_model *m, int layer, lr_module mod, const peft_module *md, double s,
                      float *f)
{
    const lr_mat *W = base_mat(m, layer, mod);
    LR_ASSERT(W && W->rows == md->out && W->cols == md->in && md->A);
    int in = md->in, out = md->out, r = md->r;
    /* D = B·A in double, PEFT_DORA_ROWS output rows at a time (one dgemm each instead of a
     * scalar triple loop: a rank-16 all-module DoRA adapter of a 135M base went from ~1 s of
     * load to a few tens of ms), then n2[o] = Σ_i (W0[o, i] + s·D[o, i])². */
    double *Ad = malloc(sizeof(double) * (size_t)r * (size_t)in);
    double *Bd = malloc(sizeof(double) * PEFT_DORA_ROWS * (size_t)r);
    double *D = malloc(sizeof(double) * PEFT_DORA_ROWS * (size_t)in);
    float *row = malloc(sizeof(float) * (size_t)in);
    LR_ASSERT(Ad && Bd && D && row);
    for (size_t i = 0; i < (size_t)r * (size_t)in; i++)
        Ad[i] = md->A[i];
    for (int o0 = 0; o0 < out; o0 += PEFT_DORA_ROWS) {
        int n = out - o0 < PEFT_DORA_ROWS ? out - o0 : PEFT_DORA_ROWS;
        for (int k = 0; k < n; k++)
            for (int j = 0; j < r; j++)
                Bd[(size_t)k * r + j] =
                    md->Bt ? md->Bt[(size_t)j * out + o0 + k] : md->B[(size_t)(o0 + k) * r + j];
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in, r, 1.0, Bd, r, Ad, in, 0.0, D,
                    in);
        for (int k = 0; k < n; k++) {
            kern_mat_row(W, o0 + k, row);
            const double *d = D + (size_t)k * in;
            /* four partial sums: one chain of dependent adds would wait on every add */
            double n2[4] = {0, 0, 0, 0};
            int i = 0;
            for (; i + 4 <= in; i += 4)
                for (int u = 0; u < 4; u++) {
                    double v = row[i + u] + s * d[i + u];
                    n2[u] += v * v;
                }
            for (; i < in; i++) {
                double v = row[i] + s * d[i];
                n2[0] += v * v;
            }
            double sum = (n2[0] + n2[1]) + (n2[2] + n2[3]);
            f[o0 + k] = (float)(md->mag[o0 + k] / sqrt(sum));
        }
    }
    free(Ad);
    free(Bd);
    free(D);
    free(row);
}

void peft_dora_embed_factor(const lr_model *m, const peft_embed *e, double s, float *f)
{
    LR_ASSERT(m->embed.rows == e->vocab && m->embed.cols == e->hidden);
    int H = e->hidden, r = e->r;
    /* D = Aᵀ·Bᵀ (vocab × hidden) in double, PEFT_DORA_ROWS token rows at a time, then
     * n2[d] += (E[v, d] + s·D[v, d])² over the vocabulary. */
    double *n2 = calloc((size_t)H, sizeof *n2);
    double *Bd = malloc(sizeof(double) * (size_t)H * (size_t)r);
    double *Ad = malloc(sizeof(double) * PEFT_DORA_ROWS * (size_t)r);
    double *D = malloc(sizeof(double) * PEFT_DORA_ROWS * (size_t)H);
    float *row = malloc(sizeof(float) * (size_t)H);
    LR_ASSERT(n2 && Bd && Ad && D && row);
    for (size_t i = 0; i < (size_t)H * (size_t)r; i++)
        Bd[i] = e->B[i];
    for (int v0 = 0; v0 < e->vocab; v0 += PEFT_DORA_ROWS) {
        int n = e->vocab - v0 < PEFT_DORA_ROWS ? e->vocab - v0 : PEFT_DORA_ROWS;
        for (size_t i = 0; i < (size_t)n * (size_t)r; i++)
            Ad[i] = e->At[(size_t)v0 * r + i];
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, H, r, 1.0, Ad, r, Bd, r, 0.0, D, H);
        for (int k = 0; k < n; k++) {
            kern_mat_row(&m->embed, v0 + k, row);
            const double *d = D + (size_t)k * H;
            for (int h = 0; h < H; h++) {
                double x = row[h] + s * d[h];
                n2[h] += x * x;
            }
        }
    }
    for (int h = 0; h < H; h++)
        f[h] = (float)(e->mag[h] / sqrt(n2[h]));
    free(n2);
    free(Bd);
    free(Ad);
    free(D);
    free(row);
}

static void store_free(peft_store *st)
{
    if (!st) return;
    ps_release(&st->file);
    ps_release(&st->extra);
    free(st);
}

/* Free p unless it lives in the loader's store (adapters built by hand malloc each array). */
static void free_own(const peft_store *st, void *p)
{
    if (st && (ps_contains(&st->file, p) || ps_contains(&st->extra, p))) return;
    free(p);
}

static void module_free(const peft_store *st, peft_module *md)
{
    if (!md) return;
    free_own(st, md->A);
    free_own(st, md->B);
    free_own(st, md->Bt);
    free_own(st, md->A16);
    free_own(st, md->Bt16);
    free_own(st, md->bias_b);
    free_own(st, md->dora);
    free_own(st, md->mag);
    free(md);
}

void peft_free(peft_adapter *a)
{
    if (!a) return;
    const peft_store *st = a->store;
    if (a->mods)
        for (int i = 0; i < a->n_layers * LR_MOD_COUNT; i++)
            module_free(st, a->mods[i]);
    free(a->mods);
    if (a->embed) {
        free_own(st, a->embed->At);
        free_own(st, a->embed->B);
        free_own(st, a->embed->dora);
        free_own(st, a->embed->mag);
        free(a->embed);
    }
    store_free(a->store);
    free(a->dir);
    free(a);
}

const peft_module *peft_module_at(const peft_adapter *a, int layer, lr_module mod)
{
    if (layer < 0 || layer >= a->n_layers || mod < 0 || mod >= LR_MOD_COUNT) return NULL;
    return a->mods[layer * LR_MOD_COUNT + mod];
}

static double scaling(const peft_cfg *c, int r, double alpha)
{
    return c->rslora ? alpha / sqrt((double)r) : alpha / r;
}

int peft_load(const char *dir, const lr_model *m, const peft_params *p, lr_error *err,
              peft_adapter **out)
{
    *out = NULL;
    int L = lora_layers(m), nslots = L * LR_MOD_COUNT + 1, rc = 0;
    peft_cfg c;
    memset(&c, 0, sizeof c);
    st_file *f = NULL;
    peft_adapter *a = NULL;
    const st_tensor **tab = NULL;
    char path[4096], name[160];
    char *text = NULL, *blob = NULL;
    size_t blob_len = 0;
    peft_store *store = NULL;
    float *tscratch = NULL;

    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    if ((rc = lr_read_file(path, "adapter_config.json", PEFT_MAX_CONFIG, &text, NULL, err)))
        goto out;
    if ((rc = cfg_parse(text, m, &c, err))) goto out;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    struct stat sb;
    if (stat(path, &sb) != 0) {
        rc = lr_error_set(err, errno == ENOENT ? LR_ENOTFOUND : LR_EIO,
                          "adapter_model.safetensors: %s in the adapter folder",
                          errno == ENOENT ? "no such file" : strerror(errno));
        goto out;
    }
    /* Read the file into huge-page memory (adapters/peft_store): F32 tensors are then used
     * where they lie, and the copy is private, so a file truncated or rewritten on disk later
     * cannot fault (SIGBUS) under the engine. */
    int64_t max_file = p && p->max_file_bytes > 0 ? p->max_file_bytes : ((int64_t)4 << 30);
    if (!(store = calloc(1, sizeof *store))) {
        rc = lr_error_set(err, LR_ENOMEM, "adapter: out of memory");
        goto out;
    }
    if ((rc = ps_read_file(path, "adapter_model.safetensors", (size_t)max_file, &store->file, &blob,
                           &blob_len, err)))
        goto out;
    if ((rc = st_open_mem(blob, blob_len, "adapter_model.safetensors", err, &f))) goto out;

    // Pass 2: sort tensors into slots by kind.
    tab = calloc((size_t)nslots * K_COUNT, sizeof *tab);
    a = calloc(1, sizeof *a);
    if (!tab || !a || !(a->mods = calloc((size_t)L * LR_MOD_COUNT, sizeof *a->mods)) ||
        !(a->dir = strdup(dir))) {
        rc = lr_error_set(err, LR_ENOMEM, "adapter: out of memory");
        goto out;
    }
    a->n_layers = L;
    for (int i = 0; i < st_count(f); i++) {
        const st_tensor *t = st_at(f, i);
        const char *key = t->name;
        if (!strncmp(key, "base_model.model.", 17)) key += 17;
        char mpath[256];
        int kind, slot;
        if (split_key(key, mpath, sizeof mpath, &kind) != 0)
            rc = lr_error_set(err, LR_EUNSUPPORTED,
                              "adapter_model.safetensors: tensor '%.200s' is not a LoRA tensor "
                              "(modules_to_save, base biases and other PEFT methods are not "
                              "supported)",
                              t->name);
        else if ((slot = slot_of(m, mpath)) < 0)
            rc = lr_error_set(err, LR_EINCOMPAT,
                              "adapter does not fit the base model: tensor '%.200s' belongs to "
                              "module %.200s, which the base model does not have",
                              t->name, mpath);
        else if (kind != K_MAG &&
                 (kind == K_EA || kind == K_EB || kind == K_EBASE) != (slot == L * LR_MOD_COUNT))
            rc = lr_error_set(err, LR_EFORMAT,
                              "adapter_model.safetensors: tensor '%.200s' does not fit module "
                              "%.200s",
                              t->name, mpath);
        else if (tab[slot * K_COUNT + kind])
            rc = lr_error_set(err, LR_EFORMAT,
                              "adapter_model.safetensors: tensors '%.200s' and '%.200s' are the "
                              "same parameter",
                              tab[slot * K_COUNT + kind]->name, t->name);
        else
            tab[slot * K_COUNT + kind] = t;
        if (rc) goto out;
    }

    // Pass 3a: targeting and shape checks over the base's modules.
    int any = 0;
    char key[160];
    for (int l = 0; l < L; l++)
        for (int mod = 0; mod < LR_MOD_COUNT; mod++) {
            const lr_mat *W = base_mat(m, l, (lr_module)mod);
            if (!W) continue;
            peft_module_name(m, l, (lr_module)mod, key, sizeof key);
            if (!cfg_targets(&c, key, 1)) continue;
            const st_tensor **ts = &tab[(l * LR_MOD_COUNT + mod) * K_COUNT];
            any = 1;
            if (!ts[K_A] && !ts[K_B])
                continue; /* targeted but not saved: PEFT leaves B at zero, no effect */
            if (!ts[K_A] || !ts[K_B]) {
                rc = lr_error_set(err, LR_EFORMAT,
                                  "adapter_model.safetensors: module %s has lora_%s but no "
                                  "lora_%s",
                                  key, ts[K_A] ? "A" : "B", ts[K_A] ? "B" : "A");
                goto out;
            }
            int r = (int)pats_lookup(c.rank, c.n_rank, key, c.r);
            char why[96];
            snprintf(why, sizeof why, "r=%d, in_features=%lld, out_features=%lld", r,
                     (long long)W->cols, (long long)W->rows);
            if ((rc = check_shape(ts[K_A], key, "lora_A", r, W->cols, 2, why, err)) ||
                (rc = check_shape(ts[K_B], key, "lora_B", W->rows, r, 2, why, err)))
                goto out;
            if (c.lora_bias && ts[K_BBIAS] &&
                (rc = check_shape(ts[K_BBIAS], key, "lora_B.bias", W->rows, 0, 1, why, err)))
                goto out;
            if (c.dora) {
                if (!ts[K_MAG]) {
                    rc = lr_error_set(err, LR_EFORMAT,
                                      "adapter_model.safetensors: use_dora is set but module %s "
                                      "has no lora_magnitude_vector",
                                      key);
                    goto out;
                }
                if ((rc = check_shape(ts[K_MAG], key, "lora_magnitude_vector", W->rows, 0, 1, why,
                                      err)))
                    goto out;
            }
            if (p && p->max_rank > 0 && r > p->max_rank) {
                rc = lr_error_set(err, LR_ERANGE,
                                  "adapter: module %s has rank %d, above --max-lora-rank %d", key,
                                  r, p->max_rank);
                goto out;
            }
        }
    int ebase = L * LR_MOD_COUNT * K_COUNT;
    int emb_t = m->cfg.arch != LR_ARCH_T5 && cfg_targets(&c, "model.embed_tokens", 0);
    if (emb_t) any = 1;
    if (emb_t && (tab[ebase + K_EA] || tab[ebase + K_EB])) {
        const char *k = "model.embed_tokens";
        if (!tab[ebase + K_EA] || !tab[ebase + K_EB]) {
            rc = lr_error_set(err, LR_EFORMAT,
                              "adapter_model.safetensors: %s has only one of lora_embedding_A "
                              "and lora_embedding_B",
                              k);
            goto out;
        }
        int r = (int)pats_lookup(c.rank, c.n_rank, k, c.r);
        char why[96];
        if (c.dora) {
            snprintf(why, sizeof why, "hidden=%d", m->cfg.hidden);
            if (!tab[ebase + K_MAG]) {
                rc = lr_error_set(err, LR_EFORMAT,
                                  "adapter_model.safetensors: use_dora is set but %s has no "
                                  "lora_magnitude_vector",
                                  k);
                goto out;
            }
            if ((rc = check_shape(tab[ebase + K_MAG], k, "lora_magnitude_vector", m->cfg.hidden, 0,
                                  1, why, err)))
                goto out;
        }
        snprintf(why, sizeof why, "r=%d, vocab=%d, hidden=%d", r, m->cfg.vocab, m->cfg.hidden);
        if ((rc = check_shape(tab[ebase + K_EA], k, "lora_embedding_A", r, m->cfg.vocab, 2, why,
                              err)) ||
            (rc = check_shape(tab[ebase + K_EB], k, "lora_embedding_B", m->cfg.hidden, r, 2, why,
                              err)))
            goto out;
        if (p && p->max_rank > 0 && r > p->max_rank) {
            rc = lr_error_set(err, LR_ERANGE,
                              "adapter: module %s has rank %d, above --max-lora-rank %d", k, r,
                              p->max_rank);
            goto out;
        }
    }
    if (tab[ebase + K_EBASE] && (rc = check_shape(tab[ebase + K_EBASE], "model.embed_tokens",
                                                  "base_layer.weight", m->cfg.vocab, m->cfg.hidden,
                                                  2, "the saved copy of the base embedding", err)))
        goto out;
    /* Every list entry must name a module of the base (PEFT: "Target modules … not found"). */
    if (c.target.kind == 1) {
        sel_match(&c.target, "lm_head", 1);
        for (int i = 0; i < c.target.n; i++) {
            if (!strcmp(c.target.names[i], "lm_head")) {
                rc = lr_error_set(err, LR_EUNSUPPORTED,
                                  "adapter_config.json: target_modules names lm_head; LoRA on "
                                  "the output layer is not supported");
                goto out;
            }
            if (!c.target.hits[i]) {
                rc = lr_error_set(err, LR_EINCOMPAT,
                                  "adapter does not fit the base model: target_modules entry "
                                  "'%.100s' names no module of the base model",
                                  c.target.names[i]);
                goto out;
            }
        }
    } else if (c.target.kind == 2 && sel_match(&c.target, "lm_head", 1)) {
        rc = lr_error_set(err, LR_EUNSUPPORTED,
                          "adapter_config.json: target_modules matches lm_head; LoRA on the "
                          "output layer is not supported");
        goto out;
    }
    if (!any) {
        rc = lr_error_set(err, LR_EINCOMPAT,
                          "adapter does not fit the base model: target_modules '%.100s' matches "
                          "no module of the base model",
                          c.targets);
        goto out;
    }

    // Pass 3b: place (everything has been checked). Modules first, then the sizes of what
    // cannot stay in the file's bytes, then the tensors themselves.
    a->r = c.r;
    a->alpha = c.alpha;
    a->use_rslora = c.rslora;
    a->use_dora = c.dora;
    snprintf(a->targets, sizeof a->targets, "%s", c.targets);
    for (int l = 0; l < L; l++)
        for (int mod = 0; mod < LR_MOD_COUNT; mod++) {
            const st_tensor **ts = &tab[(l * LR_MOD_COUNT + mod) * K_COUNT];
            const lr_mat *W = base_mat(m, l, (lr_module)mod);
            if (!W || !ts[K_A] || !ts[K_B]) continue;
            peft_module_name(m, l, (lr_module)mod, key, sizeof key);
            if (!cfg_targets(&c, key, 1)) continue;
            peft_module *md = calloc(1, sizeof *md);
            if (!md) {
                rc = lr_error_set(err, LR_ENOMEM, "adapter: out of memory");
                goto out;
            }
            a->mods[l * LR_MOD_COUNT + mod] = md;
            md->r = (int)ts[K_A]->shape[0];
            md->in = (int)W->cols;
            md->out = (int)W->rows;
            md->alpha = pats_lookup(c.alph, c.n_alph, key, c.alpha);
            md->s = (float)scaling(&c, md->r, md->alpha);
            if (md->r > a->max_rank) a->max_rank = md->r;
            a->n_modules++;
        }
    int has_emb = emb_t && tab[ebase + K_EA] && tab[ebase + K_EB];
    size_t extra = 0;
    int64_t tmax = 1;
    for (int i = 0; i < L * LR_MOD_COUNT; i++) {
        const st_tensor **ts = &tab[i * K_COUNT];
        if (!a->mods[i]) continue;
        if (!keep_bf16(c.dora, ts[K_A], ts[K_B]))
            extra += place_bytes(ts[K_A]) + place_bytes(ts[K_B]);
        extra += c.lora_bias ? place_bytes(ts[K_BBIAS]) : 0;
        if (c.dora) extra += place_bytes(ts[K_MAG]) + extra_bytes((size_t)a->mods[i]->out);
        if (ts[K_B]->numel > tmax) tmax = ts[K_B]->numel;
    }
    if (has_emb) {
        extra += place_bytes(tab[ebase + K_EA]) + place_bytes(tab[ebase + K_EB]);
        if (c.dora) extra += place_bytes(tab[ebase + K_MAG]) + extra_bytes((size_t)m->cfg.hidden);
        if (tab[ebase + K_EA]->numel > tmax) tmax = tab[ebase + K_EA]->numel;
    }
    if ((extra && ps_alloc(extra, &store->extra) != 0) ||
        !(tscratch = malloc(sizeof(float) * (size_t)tmax))) {
        rc = lr_error_set(err, LR_ENOMEM, "adapter: out of memory");
        goto out;
    }
    for (int i = 0; i < L * LR_MOD_COUNT; i++) {
        const st_tensor **ts = &tab[i * K_COUNT];
        peft_module *md = a->mods[i];
        if (!md) continue;
        if (keep_bf16(c.dora, ts[K_A], ts[K_B])) {
            md->A16 = (uint16_t *)(uintptr_t)ts[K_A]->data;
            a->bytes += 2 * ts[K_A]->numel;
            md->Bt16 =
                transpose_bf16(store, ts[K_B], md->out, md->r, (uint16_t *)tscratch, &a->bytes);
        } else {
            md->A = place(store, ts[K_A], &a->bytes);
            md->Bt = place_transposed(store, ts[K_B], md->out, md->r, tscratch, &a->bytes);
        }
        if (c.lora_bias && ts[K_BBIAS]) md->bias_b = place(store, ts[K_BBIAS], &a->bytes);
        if (c.dora) {
            md->mag = place(store, ts[K_MAG], &a->bytes);
            md->dora = extra_take(store, (size_t)md->out);
            a->bytes += (int64_t)sizeof(float) * md->out;
            peft_dora_factor(m, i / LR_MOD_COUNT, (lr_module)(i % LR_MOD_COUNT), md,
                             scaling(&c, md->r, md->alpha), md->dora);
        }
    }
    if (has_emb) {
        const char *k = "model.embed_tokens";
        peft_embed *e = calloc(1, sizeof *e);
        if (!e) {
            rc = lr_error_set(err, LR_ENOMEM, "adapter: out of memory");
            goto out;
        }
        a->embed = e;
        e->r = (int)tab[ebase + K_EA]->shape[0];
        e->vocab = m->cfg.vocab;
        e->hidden = m->cfg.hidden;
        e->At = place_transposed(store, tab[ebase + K_EA], e->r, e->vocab, tscratch, &a->bytes);
        e->B = place(store, tab[ebase + K_EB], &a->bytes);
        e->alpha = pats_lookup(c.alph, c.n_alph, k, c.alpha);
        e->s = (float)scaling(&c, e->r, e->alpha);
        if (e->r > a->max_rank) a->max_rank = e->r;
        if (c.dora) {
            e->mag = place(store, tab[ebase + K_MAG], &a->bytes);
            e->dora = extra_take(store, (size_t)e->hidden);
            a->bytes += (int64_t)sizeof(float) * e->hidden;
            peft_dora_embed_factor(m, e, scaling(&c, e->r, e->alpha), e->dora);
        }
    }
    /* Nothing kept in the file's bytes (F16/BF16 adapters): give them back now. */
    if (!store->file_used) ps_release(&store->file);
    a->store = store;
    store = NULL;
    (void)name;
    *out = a;
    a = NULL;
out:
    if (rc && err && dir) lr_error_prefix(err, "adapter %s: ", dir);
    free(text);
    free(tab);
    peft_free(a);
    st_close(f);
    store_free(store);
    free(tscratch);
    cfg_free(&c);
    return rc;
}
