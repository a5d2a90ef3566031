/* cli.h — the daemon's command-line flags: defaults, parsing and --help text.
 *
 * cli_parse() never exits: it returns CLI_OK, CLI_EXIT_OK (--help / --version printed) or
 * CLI_EXIT_USAGE with a message in err (main() prints it and exits 2).
 */
#ifndef LR_CLI_H
#define LR_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "err.h"

#define LORAD_VERSION "0.1.0"
#define CLI_MAX_ADAPTER_DIRS 16

typedef struct cli_config {
    const char *model_dir;   /* --model DIR (required) */
    const char *host;        /* --host (default 127.0.0.1) */
    int port;                /* --port (default 8080; 0 = ephemeral) */
    int threads;             /* --threads (default 0 = all cores) */
    int64_t kv_cache_mb;     /* --kv-cache-mb (default 256) */
    int kv_cache_lazy;       /* --kv-cache-lazy: do not fault the KV pool in at startup */
    int max_batch_tokens;    /* --max-batch-tokens (default 512) */
    int max_seqs;            /* --max-seqs (default 64) */
    int max_queue;           /* --max-queue (default 256) */
    const char *served_name; /* --served-model-name (default: basename of --model) */
    int64_t max_body_bytes;  /* --max-body-bytes (default 2 MiB) */
    int max_tokens_default;  /* --max-tokens-default (default 16) */
    int drain_timeout;       /* --drain-timeout SEC (default 30) */
    int idle_timeout;        /* --idle-timeout SEC (default 120): idle/stalled connections */
    int max_connections;     /* --max-connections (default 1024) */
    int header_timeout;      /* --header-timeout SEC (default 30): a whole request, 0 = none */
    int metrics_mode;        /* --metrics public|auth|off (an api_metrics_mode; default public) */
    int log_level;           /* a log_level (default info) */
    /* Adapters (LoRA) */
    const char *adapter_dirs[CLI_MAX_ADAPTER_DIRS]; /* --adapter-dir DIR, repeatable */
    int n_adapter_dirs;
    int64_t adapter_cache_mb; /* --adapter-cache-mb (default 1024; 0 = no limit) */
    int64_t adapter_reserve_mb; /* --adapter-reserve-mb (default 256; 0 = none): adapter memory
                                 * pre-faulted at startup, at most adapter_cache_mb when set */
    int max_loaded_adapters;  /* --max-loaded-adapters (default 64; 0 = no limit) */
    int allow_paths_anywhere; /* --allow-adapter-paths-anywhere */
    int max_lora_rank;        /* --max-lora-rank (default 0 = no limit) */
    int64_t max_adapter_file_mb; /* --max-adapter-file-mb (default 2048) */
    /* Auth: at most one of the two; neither = open */
    const char *api_key;  /* --api-key KEY: one key, full access */
    const char *api_keys; /* --api-keys FILE: tenants */
    char served_buf[256]; /* storage for the default served name */
} cli_config;

enum { CLI_OK = 0, CLI_EXIT_OK = 1, CLI_EXIT_USAGE = 2 };

/* Fill *cfg with the defaults. */
void cli_defaults(cli_config *cfg);
/* Parse argv into *cfg (start from cli_defaults). --help / --version print to `out`.
 * Returns CLI_OK, CLI_EXIT_OK or CLI_EXIT_USAGE (err says what was wrong). argv strings are
 * borrowed: they must outlive cfg. */
int cli_parse(int argc, char **argv, cli_config *cfg, FILE *out, lr_error *err);
/* Print the --help text. */
void cli_usage(FILE *out);

#endif
