/* ctl.h — the daemon's life: load the model and tokenizer, start the engine and the HTTP
 * server, run the libuv control loop (signals, wake-ups, housekeeping), drain and shut down.
 */
#ifndef LR_CTL_H
#define LR_CTL_H

#include "api.h"
#include "cli.h"

/* Run the daemon until SIGTERM/SIGINT. aops: the adapter side (NULL = base model only). Returns the
 * process exit code: 0 after a clean drain, 1 when startup failed (the reason is logged). */
int ctl_run(const cli_config *cfg, const lora_api_ops *aops);

#endif
