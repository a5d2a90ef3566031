/* cli.c — flag parsing for lorad. Every flag has a default, a range, and a message naming the
 * flag and the bad value. It does not load anything or touch the environment. */
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

void cli_defaults(cli_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->host = "127.0.0.1";
    cfg->port = 8080;
    cfg->threads = 0;
    cfg->kv_cache_mb = 256;
    cfg->max_batch_tokens = 512;
    cfg->max_seqs = 64;
    cfg->max_queue = 256;
    cfg->max_body_bytes = 2 * 1024 * 1024;
    cfg->max_tokens_default = 16;
    cfg->drain_timeout = 30;
    cfg->idle_timeout = 120;
    cfg->max_connections = 1024;
    cfg->header_timeout = 30;
    cfg->metrics_mode = 0;
    cfg->log_level = LOG_INFO;
    cfg->adapter_cache_mb = 1024;
    cfg->adapter_reserve_mb = 256;
    cfg->max_adapter_file_mb = 2048;
    cfg->max_loaded_adapters = 64;
}

void cli_usage(FILE *out)
{
    fprintf(
        out,
        "usage: lorad --model DIR [options]\n"
        "Serve a HuggingFace model folder and PEFT LoRA adapters (applied unmerged, many\n"
        "adapters per batch) over an OpenAI-compatible HTTP API and TGI/LoRAX /generate.\n\n"
        "  --model DIR               model folder (config.json, *.safetensors, tokenizer.json)\n"
        "  --host H                  address to bind (default 127.0.0.1)\n"
        "  --port P                  TCP port, 0 = pick a free one (default 8080)\n"
        "  --threads N               compute threads, 0 = all cores (default 0)\n"
        "  --kv-cache-mb N           KV cache pool in MiB (default 256), made resident at startup\n"
        "  --kv-cache-lazy           map the KV pool without faulting it in: memory becomes\n"
        "                            resident as sequences first use it (page faults during\n"
        "                            decode; for a budget far above what is used)\n"
        "  --max-batch-tokens N      tokens per forward pass (default 512)\n"
        "  --max-seqs N              running sequences at most (default 64)\n"
        "  --max-queue N             waiting requests at most; 429 past it (default 256)\n"
        "  --served-model-name S     id of the base model in the API (default: basename of "
        "--model)\n"
        "  --max-body-bytes N        largest request body; 413 past it (default 2097152)\n"
        "  --max-tokens-default N    max_tokens when a request gives none (default 16)\n"
        "  --drain-timeout SEC       on SIGTERM/SIGINT, wait at most this long for in-flight\n"
        "                            requests before exiting (default 30)\n"
        "  --idle-timeout SEC        close connections idle/stalled this long (default 120)\n"
        "  --max-connections N       concurrent connections at most (default 1024)\n"
        "  --adapter-dir DIR         a root of PEFT adapter folders (id org/name = DIR/org/name);\n"
        "                            repeatable, up to 16\n"
        "  --adapter-cache-mb N      converted adapter weights kept in memory, 0 = no limit\n"
        "                            (default 1024)\n"
        "  --adapter-reserve-mb N    adapter memory mapped and pre-faulted at startup, in the\n"
        "                            background, so that adapter loads skip page faults; at most\n"
        "                            --adapter-cache-mb when that is set; 0 = none (default 256)\n"
        "  --max-loaded-adapters N   adapters resident at most, 0 = no limit (default 64)\n"
        "  --max-lora-rank N         refuse adapters of a larger rank, 0 = no limit (default 0)\n"
        "  --max-adapter-file-mb N   refuse a larger adapter_model.safetensors (default 2048)\n"
        "  --allow-adapter-paths-anywhere  let /v1/load_lora_adapter register folders outside\n"
        "                            the --adapter-dir roots\n"
        "  --api-key KEY             require 'Authorization: Bearer KEY' (full access)\n"
        "  --api-keys FILE           tenants: {\"tenants\": [{name, keys, adapters (globs), base,\n"
        "                            admin, max_concurrent}]}; /health stays public\n"
        "  --header-timeout SEC      close a connection that has not sent a whole request\n"
        "                            (headers and body) this long after connecting or after its\n"
        "                            previous reply; 0 = off (default 30)\n"
        "  --metrics MODE            /metrics is public, auth (needs a valid key when keys are\n"
        "                            configured) or off (404) (default public)\n"
        "  --log-level L             debug | info | warn | error (default info)\n"
        "  --help                    this text\n"
        "  --version                 print the version\n"
        "Signals: SIGTERM/SIGINT drain and exit 0; SIGHUP rescans the adapter roots.\n"
        "Request limits: stop holds at most 16 strings of 1..256 bytes; n <= 16; at most 64\n"
        "prompts per request and 64 sequences (prompts x n); max_tokens <= the model's context.\n");
}

/* Parse a whole decimal integer in [lo, hi] or fail with a message naming the flag. */
static int parse_int(const char *flag, const char *s, long long lo, long long hi, long long *out,
                     lr_error *err)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || errno || *end || v < lo || v > hi)
        return lr_error_set(err, LR_EINVAL, "%s must be an integer in [%lld, %lld], got '%s'", flag,
                            lo, hi, s);
    *out = v;
    return 0;
}

int cli_parse(int argc, char **argv, cli_config *cfg, FILE *out, lr_error *err)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            cli_usage(out);
            return CLI_EXIT_OK;
        }
        if (strcmp(a, "--allow-adapter-paths-anywhere") == 0) {
            cfg->allow_paths_anywhere = 1;
            continue;
        }
        if (strcmp(a, "--kv-cache-lazy") == 0) {
            cfg->kv_cache_lazy = 1;
            continue;
        }
        if (strcmp(a, "--version") == 0) {
            fprintf(out, "lorad %s\n", LORAD_VERSION);
            return CLI_EXIT_OK;
        }
        /* Every other flag takes a value: "--flag VALUE" or "--flag=VALUE". */
        char name[64];
        const char *val = NULL;
        const char *eq = strchr(a, '=');
        if (strncmp(a, "--", 2) != 0) {
            lr_error_set(err, LR_EINVAL, "unexpected argument '%s' (see --help)", a);
            return CLI_EXIT_USAGE;
        }
        if (eq) {
            size_t n = (size_t)(eq - a);
            if (n >= sizeof name) n = sizeof name - 1;
            memcpy(name, a, n);
            name[n] = '\0';
            val = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", a);
            if (i + 1 >= argc) {
                lr_error_set(err, LR_EINVAL, "%s needs a value (see --help)", name);
                return CLI_EXIT_USAGE;
            }
            val = argv[++i];
        }
        long long v = 0;
        int rc = 0;
        if (strcmp(name, "--model") == 0) {
            cfg->model_dir = val;
        } else if (strcmp(name, "--host") == 0) {
            if (!*val) rc = lr_error_set(err, LR_EINVAL, "--host must not be empty");
            cfg->host = val;
        } else if (strcmp(name, "--port") == 0) {
            if (!(rc = parse_int(name, val, 0, 65535, &v, err))) cfg->port = (int)v;
        } else if (strcmp(name, "--threads") == 0) {
            if (!(rc = parse_int(name, val, 0, 1024, &v, err))) cfg->threads = (int)v;
        } else if (strcmp(name, "--kv-cache-mb") == 0) {
            if (!(rc = parse_int(name, val, 1, 1 << 20, &v, err))) cfg->kv_cache_mb = v;
        } else if (strcmp(name, "--max-batch-tokens") == 0) {
            if (!(rc = parse_int(name, val, 1, 1 << 20, &v, err))) cfg->max_batch_tokens = (int)v;
        } else if (strcmp(name, "--max-seqs") == 0) {
            if (!(rc = parse_int(name, val, 1, 4096, &v, err))) cfg->max_seqs = (int)v;
        } else if (strcmp(name, "--max-queue") == 0) {
            if (!(rc = parse_int(name, val, 1, 1 << 20, &v, err))) cfg->max_queue = (int)v;
        } else if (strcmp(name, "--served-model-name") == 0) {
            if (!*val || strlen(val) >= 200)
                rc = lr_error_set(err, LR_EINVAL,
                                  "--served-model-name must be 1..199 bytes, got '%.64s'", val);
            cfg->served_name = val;
        } else if (strcmp(name, "--max-body-bytes") == 0) {
            if (!(rc = parse_int(name, val, 1024, (long long)1 << 30, &v, err)))
                cfg->max_body_bytes = v;
        } else if (strcmp(name, "--max-tokens-default") == 0) {
            if (!(rc = parse_int(name, val, 1, 1 << 20, &v, err))) cfg->max_tokens_default = (int)v;
        } else if (strcmp(name, "--drain-timeout") == 0) {
            if (!(rc = parse_int(name, val, 0, 86400, &v, err))) cfg->drain_timeout = (int)v;
        } else if (strcmp(name, "--idle-timeout") == 0) {
            if (!(rc = parse_int(name, val, 1, 86400, &v, err))) cfg->idle_timeout = (int)v;
        } else if (strcmp(name, "--max-connections") == 0) {
            if (!(rc = parse_int(name, val, 1, 65536, &v, err))) cfg->max_connections = (int)v;
        } else if (strcmp(name, "--header-timeout") == 0) {
            if (!(rc = parse_int(name, val, 0, 86400, &v, err))) cfg->header_timeout = (int)v;
        } else if (strcmp(name, "--metrics") == 0) {
            if (strcmp(val, "public") == 0)
                cfg->metrics_mode = 0;
            else if (strcmp(val, "auth") == 0)
                cfg->metrics_mode = 1;
            else if (strcmp(val, "off") == 0)
                cfg->metrics_mode = 2;
            else
                rc = lr_error_set(err, LR_EINVAL,
                                  "--metrics must be public, auth or off, got '%.64s'", val);
        } else if (strcmp(name, "--api-key") == 0) {
            if (!*val) rc = lr_error_set(err, LR_EINVAL, "--api-key must not be empty");
            cfg->api_key = val;
        } else if (strcmp(name, "--api-keys") == 0) {
            if (!*val) rc = lr_error_set(err, LR_EINVAL, "--api-keys must name a file");
            cfg->api_keys = val;
        } else if (strcmp(name, "--adapter-dir") == 0) {
            if (!*val)
                rc = lr_error_set(err, LR_EINVAL, "--adapter-dir must not be empty");
            else if (cfg->n_adapter_dirs >= CLI_MAX_ADAPTER_DIRS)
                rc = lr_error_set(err, LR_EINVAL, "--adapter-dir may be given at most %d times",
                                  CLI_MAX_ADAPTER_DIRS);
            else
                cfg->adapter_dirs[cfg->n_adapter_dirs++] = val;
        } else if (strcmp(name, "--adapter-cache-mb") == 0) {
            if (!(rc = parse_int(name, val, 0, 1 << 24, &v, err))) cfg->adapter_cache_mb = v;
        } else if (strcmp(name, "--adapter-reserve-mb") == 0) {
            if (!(rc = parse_int(name, val, 0, 1 << 24, &v, err))) cfg->adapter_reserve_mb = v;
        } else if (strcmp(name, "--max-loaded-adapters") == 0) {
            if (!(rc = parse_int(name, val, 0, 1 << 20, &v, err)))
                cfg->max_loaded_adapters = (int)v;
        } else if (strcmp(name, "--max-lora-rank") == 0) {
            if (!(rc = parse_int(name, val, 0, 1 << 16, &v, err))) cfg->max_lora_rank = (int)v;
        } else if (strcmp(name, "--max-adapter-file-mb") == 0) {
            if (!(rc = parse_int(name, val, 1, 1 << 22, &v, err))) cfg->max_adapter_file_mb = v;
        } else if (strcmp(name, "--log-level") == 0) {
            log_level l;
            if (log_parse_level(val, &l) != 0)
                rc = lr_error_set(err, LR_EINVAL,
                                  "--log-level must be debug, info, warn or error, got '%.64s'",
                                  val);
            else
                cfg->log_level = (int)l;
        } else {
            rc = lr_error_set(err, LR_EINVAL, "unknown flag '%.64s' (see --help)", name);
        }
        if (rc) return CLI_EXIT_USAGE;
    }
    if (cfg->api_key && cfg->api_keys) {
        lr_error_set(err, LR_EINVAL, "give --api-key or --api-keys, not both");
        return CLI_EXIT_USAGE;
    }
    if (!cfg->model_dir || !*cfg->model_dir) {
        lr_error_set(err, LR_EINVAL, "--model DIR is required (see --help)");
        return CLI_EXIT_USAGE;
    }
    if (!cfg->served_name) {
        /* The basename of --model, ignoring trailing slashes. */
        const char *d = cfg->model_dir;
        size_t n = strlen(d);
        while (n > 1 && d[n - 1] == '/')
            n--;
        size_t s = n;
        while (s > 0 && d[s - 1] != '/')
            s--;
        size_t len = n - s;
        if (len == 0 || len >= sizeof cfg->served_buf) {
            lr_error_set(
                err, LR_EINVAL,
                "cannot derive a model name from --model '%.64s'; give --served-model-name", d);
            return CLI_EXIT_USAGE;
        }
        memcpy(cfg->served_buf, d + s, len);
        cfg->served_buf[len] = '\0';
        cfg->served_name = cfg->served_buf;
    }
    return CLI_OK;
}
