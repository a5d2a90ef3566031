/* auth.c — loading the API keys / tenants and answering "who is this, and may they?". It does
 * not produce HTTP replies: api.c turns a missing tenant into 401 and a refusal into 403/429. */
#include "auth.h"

#include <fnmatch.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct auth_db {
    auth_tenant *t;
    int n;
};

static void tenant_clear(auth_tenant *t)
{
    free(t->name);
    for (int i = 0; i < t->n_keys; i++)
        free(t->keys[i]);
    free(t->keys);
    for (int i = 0; i < t->n_globs; i++)
        free(t->globs[i]);
    free(t->globs);
}

void auth_destroy(auth_db *db)
{
    if (!db) return;
    for (int i = 0; i < db->n; i++)
        tenant_clear(&db->t[i]);
    free(db->t);
    free(db);
}

int auth_n_tenants(const auth_db *db)
{
    return db ? db->n : 0;
}

/* A JSON array of non-empty strings into a malloc'd vector. */
static int strings(const json_t *a, const char *what, int i, char ***out, int *n, lr_error *err)
{
    if (!json_is_array(a))
        return lr_error_set(err, LR_EFORMAT, "tenants[%d].%s must be an array of strings", i, what);
    *n = 0;
    *out = calloc(json_array_size(a) + 1, sizeof **out);
    if (!*out) return lr_error_set(err, LR_ENOMEM, "out of memory");
    size_t k;
    json_t *s;
    json_array_foreach(a, k, s)
    {
        if (!json_is_string(s) || json_string_length(s) == 0 ||
            strlen(json_string_value(s)) != json_string_length(s))
            return lr_error_set(err, LR_EFORMAT, "tenants[%d].%s[%zu] must be a non-empty string",
                                i, what, k);
        if (!((*out)[(*n)++] = strdup(json_string_value(s))))
            return lr_error_set(err, LR_ENOMEM, "out of memory");
    }
    return 0;
}

static int parse_tenant(const json_t *o, int i, auth_tenant *t, lr_error *err)
{
    if (!json_is_object(o))
        return lr_error_set(err, LR_EFORMAT, "tenants[%d] must be an object", i);
    json_t *name = json_object_get(o, "name"), *v;
    if (!json_is_string(name) || json_string_length(name) == 0)
        return lr_error_set(err, LR_EFORMAT, "tenants[%d].name must be a non-empty string", i);
    if (!(t->name = strdup(json_string_value(name))))
        return lr_error_set(err, LR_ENOMEM, "out of memory");
    int rc = strings(json_object_get(o, "keys"), "keys", i, &t->keys, &t->n_keys, err);
    if (rc) return rc;
    if (t->n_keys == 0)
        return lr_error_set(err, LR_EFORMAT, "tenants[%d].keys must hold at least one key", i);
    v = json_object_get(o, "adapters");
    if (v && (rc = strings(v, "adapters", i, &t->globs, &t->n_globs, err))) return rc;
    t->base = 1;
    if ((v = json_object_get(o, "base"))) {
        if (!json_is_boolean(v))
            return lr_error_set(err, LR_EFORMAT, "tenants[%d].base must be true or false", i);
        t->base = json_is_true(v);
    }
    if ((v = json_object_get(o, "admin"))) {
        if (!json_is_boolean(v))
            return lr_error_set(err, LR_EFORMAT, "tenants[%d].admin must be true or false", i);
        t->admin = json_is_true(v);
    }
    if ((v = json_object_get(o, "max_concurrent"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 1000000)
            return lr_error_set(err, LR_EFORMAT,
                                "tenants[%d].max_concurrent must be an integer ≥ 0 (0 = no limit)",
                                i);
        t->max_concurrent = (int)json_integer_value(v);
    }
    return 0;
}

int auth_load_file(const char *path, lr_error *err, auth_db **out)
{
    *out = NULL;
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return lr_error_set(err, LR_EFORMAT, "%s: not valid JSON: %s (line %d)", path, je.text,
                            je.line);
    int rc = 0;
    auth_db *db = calloc(1, sizeof *db);
    json_t *ts = json_object_get(root, "tenants");
    if (!db) {
        rc = lr_error_set(err, LR_ENOMEM, "out of memory");
        goto out;
    }
    if (!json_is_array(ts) || json_array_size(ts) == 0) {
        rc = lr_error_set(err, LR_EFORMAT, "%s: \"tenants\" must be a non-empty array", path);
        goto out;
    }
    db->t = calloc(json_array_size(ts), sizeof *db->t);
    if (!db->t) {
        rc = lr_error_set(err, LR_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < json_array_size(ts); i++) {
        db->n++;
        if ((rc = parse_tenant(json_array_get(ts, i), (int)i, &db->t[i], err))) {
            lr_error_prefix(err, "%s: ", path);
            goto out;
        }
    }
    /* A key must name one tenant. */
    for (int a = 0; a < db->n; a++)
        for (int k = 0; k < db->t[a].n_keys; k++)
            for (int b = a; b < db->n; b++)
                for (int l = (b == a ? k + 1 : 0); l < db->t[b].n_keys; l++)
                    if (strcmp(db->t[a].keys[k], db->t[b].keys[l]) == 0) {
                        rc = lr_error_set(err, LR_EFORMAT,
                                          "%s: a key of tenant '%s' is also a key of tenant '%s'",
                                          path, db->t[a].name, db->t[b].name);
                        goto out;
                    }
out:
    json_decref(root);
    if (rc)
        auth_destroy(db);
    else
        *out = db;
    return rc;
}

int auth_single_key(const char *key, lr_error *err, auth_db **out)
{
    *out = NULL;
    if (!key || !*key) return lr_error_set(err, LR_EINVAL, "--api-key must not be empty");
    auth_db *db = calloc(1, sizeof *db);
    if (db) db->t = calloc(1, sizeof *db->t);
    auth_tenant *t = db && db->t ? &db->t[0] : NULL;
    if (t) {
        db->n = 1;
        t->name = strdup("default");
        t->keys = calloc(1, sizeof *t->keys);
        t->globs = calloc(1, sizeof *t->globs);
        if (t->keys && (t->keys[0] = strdup(key))) t->n_keys = 1;
        if (t->globs && (t->globs[0] = strdup("*"))) t->n_globs = 1;
        t->base = t->admin = 1;
    }
    if (!t || !t->name || t->n_keys != 1 || t->n_globs != 1) {
        auth_destroy(db);
        return lr_error_set(err, LR_ENOMEM, "out of memory");
    }
    *out = db;
    return 0;
}

/* Equal strings, in time that depends on the lengths only. */
static int same(const char *a, size_t la, const char *b, size_t lb)
{
    unsigned char d = la != lb;
    for (size_t i = 0; i < la && i < lb; i++)
        d |= (unsigned char)(a[i] ^ b[i]);
    return d == 0;
}

auth_tenant *auth_lookup(const auth_db *db, const char *h)
{
    if (!db || !h) return NULL;
    while (*h == ' ')
        h++;
    if (strncasecmp(h, "Bearer ", 7) != 0) return NULL;
    h += 7;
    while (*h == ' ')
        h++;
    size_t n = strlen(h);
    while (n && (h[n - 1] == ' ' || h[n - 1] == '\t'))
        n--;
    if (n == 0) return NULL;
    auth_tenant *found = NULL;
    /* Look at every key so that the time does not say which tenant matched. */
    for (int i = 0; i < db->n; i++)
        for (int k = 0; k < db->t[i].n_keys; k++)
            if (same(h, n, db->t[i].keys[k], strlen(db->t[i].keys[k])) && !found) found = &db->t[i];
    return found;
}

int auth_adapter_allowed(const auth_tenant *t, const char *id)
{
    for (int i = 0; i < t->n_globs; i++)
        if (fnmatch(t->globs[i], id, 0) == 0) return 1;
    return 0;
}

int auth_acquire(auth_tenant *t)
{
    int now = atomic_fetch_add(&t->active, 1) + 1;
    if (t->max_concurrent > 0 && now > t->max_concurrent) {
        atomic_fetch_sub(&t->active, 1);
        return -1;
    }
    return 0;
}

void auth_release(auth_tenant *t)
{
    if (t) atomic_fetch_sub(&t->active, 1);
}
