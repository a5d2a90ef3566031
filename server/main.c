/* main.c — lorad's entry point: flags, then ctl_run(). Everything else lives in ctl.c and the
 * modules it starts, so that it can be linked into tests. */
#include <stdio.h>

#include "api.h"
#include "cli.h"
#include "ctl.h"
#include "log.h"

/* The adapter side (adapters/lora_api.c). Weak, so that the daemon still links and serves the
 * base model if that module is not built in. */
extern const lora_api_ops lora_api_table __attribute__((weak));

int main(int argc, char **argv)
{
    cli_config cfg;
    lr_error err;
    lr_error_clear(&err);
    cli_defaults(&cfg);
    int rc = cli_parse(argc, argv, &cfg, stdout, &err);
    if (rc == CLI_EXIT_OK) return 0;
    if (rc != CLI_OK) {
        fprintf(stderr, "lorad: %s\n", err.msg);
        return 2;
    }
    log_set_level((log_level)cfg.log_level);
    return ctl_run(&cfg, &lora_api_table ? &lora_api_table : NULL);
}
