/* auth.h — API keys and tenants (--api-key KEY, --api-keys FILE).
 *
 * A tenant has keys, adapter id globs (fnmatch without flags: a lone star matches every id,
 * "org/" + star every id under org/), whether it may use the base model, whether it may call the
 * admin routes (load/unload adapters), and a cap on its requests in flight. The file:
 *   {"tenants": [{"name": "a", "keys": ["k1"], "adapters": ["org/x", "*"], "base": true,
 *                 "admin": false, "max_concurrent": 4}]}
 * An auth_db is immutable after loading except for the per-tenant in-flight counters
 * (atomics), so lookups need no lock.
 */
#ifndef LR_AUTH_H
#define LR_AUTH_H

#include <stdatomic.h>

#include "err.h"

typedef struct auth_tenant {
    char *name;
    char **keys;
    int n_keys;
    char **globs;
    int n_globs;
    int base;           /* may use the base model */
    int admin;          /* may load / unload adapters */
    int max_concurrent; /* 0 = no limit */
    atomic_int active;  /* requests in flight */
} auth_tenant;

typedef struct auth_db auth_db;

/* Parse a tenants file (path). Errors name the file and the field ("tenants[1].keys[0] must be
 * a non-empty string"); a key used twice is an error. */
int auth_load_file(const char *path, lr_error *err, auth_db **out);
/* One tenant "default" holding `key`, with every adapter, the base and admin rights. */
int auth_single_key(const char *key, lr_error *err, auth_db **out);
void auth_destroy(auth_db *db);
int auth_n_tenants(const auth_db *db);

/* The tenant whose key is in an "Authorization: Bearer KEY" header value, or NULL (no header,
 * another scheme, unknown key). Keys are compared in constant time. */
auth_tenant *auth_lookup(const auth_db *db, const char *authorization);
/* May tenant t use adapter id? (a glob matches) */
int auth_adapter_allowed(const auth_tenant *t, const char *id);
/* Take one of t's concurrency slots: 0, or -1 when max_concurrent are in flight already. */
int auth_acquire(auth_tenant *t);
void auth_release(auth_tenant *t);

#endif
