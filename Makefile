# lorad — a hand-written Makefile.
#   make            build build/lorad (and the test tools)
#   make run        install what is missing, build, serve the embedded default model on 127.0.0.1:8080
#   make test       install what is missing, build (normal + ASan/UBSan), run every test
#   make bench      benchmarks (not pass/fail; prints figures and ratios)
#   make asan       the ASan+UBSan build in build/asan
#   make tsan       ThreadSanitizer build (build/tsan) + the concurrency e2e tests
#   make valgrind   start-serve-SIGTERM under valgrind --leak-check=full
#   make soak       SOAK_SECONDS (600) of SOAK_CLIENTS (64) mixed clients, then the verdict
# Variables: BUILD (output dir), SAN=1 (sanitizers), PORT, HOST, PY.

CC      ?= cc
BUILD   ?= build
PY      ?= /usr/bin/python3
PORT    ?= 8080
HOST    ?= 127.0.0.1
PKGS    := libmicrohttpd jansson libuv libpcre2-8 libutf8proc openblas

PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CHECK_LIBS = $(shell pkg-config --libs check 2>/dev/null)

OPT     ?= -O2
CFLAGS  ?= $(OPT) -g
WFLAGS  := -Wall -Wextra -Wstrict-prototypes -Wno-unused-parameter -Wno-format-truncation -Werror
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE -pthread -fno-strict-aliasing $(WFLAGS) $(CFLAGS) \
             -Icore -Iadapters -Iserver $(PKG_CFLAGS) -MMD -MP
LDLIBS  = $(PKG_LIBS) -lm -pthread
ifeq ($(SAN),1)
ALL_CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS    += -fsanitize=address,undefined
endif
ifeq ($(SAN),thread)
ALL_CFLAGS += -fsanitize=thread -fno-omit-frame-pointer
LDFLAGS    += -fsanitize=thread
endif

# Objects, one group per module. A test links only the groups it needs, so a module under
# construction cannot break the build of another module's tests.
obj = $(patsubst %.c,$(BUILD)/%.o,$(1))
COMMON  := $(call obj,core/err.c $(wildcard core/util*.c))
ST      := $(call obj,core/safetensors.c)
MODEL   := $(call obj,core/model.c)
TOK     := $(call obj,$(sort $(wildcard core/tok*.c)))
ENGINE  := $(call obj,$(sort $(wildcard core/kern*.c core/forward*.c core/kv.c core/sampler.c \
                                         core/engine.c core/t5*.c)))
ADAPT   := $(call obj,$(sort $(wildcard adapters/*.c)))
SERVER  := $(call obj,$(sort $(filter-out server/main.c,$(wildcard server/*.c))))
JINJA   := $(call obj,$(sort $(wildcard core/jinja*.c)))
CORE_ALL := $(COMMON) $(ST) $(MODEL) $(TOK) $(ENGINE) $(JINJA)
CLIENT  := $(call obj,clients/lc_sse.c)
CLIENT_LIBS = $(shell pkg-config --libs jansson libcurl 2>/dev/null)

UNIT_TESTS := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(sort $(wildcard tests/unit/check_*.c)))
TOOLS      := $(BUILD)/lr-generate

.SECONDARY:
.PHONY: all run test unit asan bench fuzz soak tsan valgrind deps models clean deploy-test docker-check
all: $(BUILD)/lorad $(BUILD)/loractl $(TOOLS) $(UNIT_TESTS)

deps:
	@./scripts/deps.sh

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/lorad: $(BUILD)/server/main.o $(SERVER) $(ADAPT) $(CORE_ALL)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# loractl, the command-line client: libcurl and jansson only (no OpenBLAS start-up cost).
$(BUILD)/loractl: $(BUILD)/clients/loractl.o $(CLIENT) $(COMMON)
	$(CC) $(LDFLAGS) -o $@ $^ $(CLIENT_LIBS) -lm

$(BUILD)/lr-generate: $(BUILD)/tests/tools/generate.o $(ADAPT) $(CORE_ALL)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# Unit test programs: check_<module>.c links the groups its module needs.
$(BUILD)/tests/check_err:         $(COMMON)
$(BUILD)/tests/check_util:        $(COMMON)
$(BUILD)/tests/check_jinja:       $(COMMON) $(JINJA)
$(BUILD)/tests/check_tokenizer:   $(COMMON) $(TOK)
$(BUILD)/tests/check_tok_unigram: $(COMMON) $(TOK)
$(BUILD)/tests/check_safetensors: $(COMMON) $(ST)
$(BUILD)/tests/check_model:       $(COMMON) $(ST) $(MODEL) $(ENGINE)
$(BUILD)/tests/check_kernels:     $(COMMON) $(ST) $(MODEL) $(ENGINE)
$(BUILD)/tests/check_attn:        $(COMMON) $(ST) $(MODEL) $(ENGINE)
$(BUILD)/tests/check_kv:          $(COMMON) $(ST) $(MODEL) $(ENGINE)
$(BUILD)/tests/check_sampler:     $(COMMON) $(ST) $(MODEL) $(ENGINE)
$(BUILD)/tests/check_engine:      $(COMMON) $(ST) $(MODEL) $(ENGINE)
$(BUILD)/tests/check_t5:          $(COMMON) $(ST) $(MODEL) $(ENGINE)
$(BUILD)/tests/check_peft:        $(COMMON) $(ST) $(MODEL) $(ENGINE) $(ADAPT)
$(BUILD)/tests/check_peft_store:  $(COMMON) $(ST) $(MODEL) $(ENGINE) $(ADAPT)
$(BUILD)/tests/check_lora:        $(COMMON) $(ST) $(MODEL) $(ENGINE) $(ADAPT)
$(BUILD)/tests/check_lora_kern:   $(COMMON) $(ST) $(MODEL) $(ENGINE) $(ADAPT)
$(BUILD)/tests/check_registry:    $(COMMON) $(ST) $(MODEL) $(ENGINE) $(ADAPT)
$(BUILD)/tests/check_api:         $(COMMON) $(TOK) $(ST) $(MODEL) $(ENGINE) $(JINJA) $(SERVER)
$(BUILD)/tests/check_lc_sse:      $(COMMON) $(CLIENT)
$(BUILD)/tests/check_regress:     $(COMMON) $(TOK) $(ST) $(MODEL) $(ENGINE) $(JINJA) $(ADAPT) $(SERVER) $(call obj,$(wildcard tests/fuzz/fuzz_*.c))
# Every check_<x>.c needs a line above naming its groups.
$(BUILD)/tests/check_%: $(BUILD)/tests/unit/check_%.o
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(LDLIBS) $(CHECK_LIBS)

# Tokenizer benchmark (MB/s per tokenizer, 1 MB single-char worst cases).
$(BUILD)/lr-tok-bench: $(BUILD)/tests/bench/tok_bench.o $(COMMON) $(TOK)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# Engine benchmark (tests/bench/bench.c): decode, batching, prefill, adapters, server overhead.
$(BUILD)/lr-bench: $(BUILD)/tests/bench/bench.o $(ADAPT) $(CORE_ALL)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# The embedded default model: small, generated deterministically by our own generator.
DEFAULT_MODEL := $(BUILD)/models/default
$(DEFAULT_MODEL)/config.json: tests/gen/gen_model.py
	$(PY) tests/gen/gen_model.py --preset default --out $(DEFAULT_MODEL)

run: deps
	@$(MAKE) --no-print-directory $(BUILD)/lorad $(DEFAULT_MODEL)/config.json
	$(BUILD)/lorad --model $(DEFAULT_MODEL) --host $(HOST) --port $(PORT)

asan:
	@$(MAKE) --no-print-directory BUILD=build/asan SAN=1 OPT=-O1 all

test: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory asan
	@$(MAKE) --no-print-directory BUILD=build/tsan SAN=thread OPT=-O1 build/tsan/lorad
	@BUILD=$(BUILD) PY=$(PY) ./tests/run_all.sh

bench: deps
	@$(MAKE) --no-print-directory all $(BUILD)/lr-bench
	@BUILD=$(BUILD) PY=$(PY) ./tests/bench/run.sh

# Fuzzing (tests/fuzz, README "Fuzzing"): clang + libFuzzer, not part of make test. Builds every
# target into build/fuzz/ and runs each for FUZZ_SECONDS, one at a time, printing its executions.
FUZZ_SECONDS ?= 60
fuzz:
	@./scripts/fuzz-deps.sh
	@FUZZ_SECONDS=$(FUZZ_SECONDS) ./tests/fuzz/run.sh

# Reliability (README "Reliability"). tsan: a ThreadSanitizer build of lorad in build/tsan running
# the concurrency end-to-end tests (tests/soak/tsan.py). valgrind: a start-serve-SIGTERM cycle under
# valgrind --leak-check=full. soak: SOAK_SECONDS of SOAK_CLIENTS concurrent mixed clients.
SOAK_SECONDS ?= 600
SOAK_CLIENTS ?= 64
tsan:
	@$(MAKE) --no-print-directory BUILD=build/tsan SAN=thread OPT=-O1 build/tsan/lorad
	@$(MAKE) --no-print-directory $(BUILD)/lorad
	LORAD_BUILD=$(BUILD) LORAD_TSAN_BUILD=build/tsan $(PY) tests/soak/tsan.py

valgrind:
	@$(MAKE) --no-print-directory $(BUILD)/lorad
	LORAD_BUILD=$(BUILD) $(PY) tests/soak/test_valgrind.py

soak:
	@$(MAKE) --no-print-directory $(BUILD)/lorad
	LORAD_BUILD=$(BUILD) SOAK_SECONDS=$(SOAK_SECONDS) SOAK_CLIENTS=$(SOAK_CLIENTS) \
	    $(PY) tests/soak/soak.py

# Deploy checks (tests/deploy; see README "Deploy"). deploy-test runs those suites alone — they
# are part of `make test` too (about a minute). docker-check replays deploy/Dockerfile in clean
# debootstrap roots: needs root and Debian's mirror, takes 7-14 minutes, so not in `make test`.
deploy-test: deps
	@$(MAKE) --no-print-directory $(BUILD)/lorad $(BUILD)/loractl
	@$(MAKE) --no-print-directory BUILD=build/asan SAN=1 OPT=-O1 build/asan/loractl
	@rc=0; for t in tests/deploy/test_*.py; do echo "== $$t"; \
	    LORAD_BUILD=$(BUILD) LORAD_ASAN_BUILD=build/asan $(PY) $$t || rc=1; done; exit $$rc

docker-check: deps
	$(PY) tests/deploy/docker_check.py

clean:
	rm -rf build

-include $(shell find $(BUILD) -type f -name '*.d' 2>/dev/null)
