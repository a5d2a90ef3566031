#!/bin/bash
# lorad-entrypoint — turn LORAD_* environment variables into lorad flags, then exec lorad.
#
# Every value flag of `lorad --help` has a variable: --kv-cache-mb N is LORAD_KV_CACHE_MB, and so
# on (upper case, '-' becomes '_'). Switches (flags without a value) take 1/true/yes/on or
# 0/false/no/off. LORAD_ADAPTER_DIR may list several roots separated by ':'. LORAD_EXTRA_ARGS is
# split on blanks and appended, then the container's arguments (docker run IMAGE --flag ...).
# An empty variable counts as unset. A LORAD_* variable that matches no flag of this lorad build
# stops the container (exit 2) rather than being ignored: a typo in LORAD_API_KEYS must not start
# an open server. LORAD_URL and LORAD_API_KEY are also read by loractl (the health check).
set -euo pipefail

bin=${LORAD_BIN:-/usr/local/bin/lorad}
help=$("$bin" --help)
args=()
known=" LORAD_BIN LORAD_EXTRA_ARGS LORAD_URL "

while read -r flag value; do
    case $flag in --help | --version) continue ;; esac
    name=${flag#--}
    name=${name//-/_}
    var=LORAD_${name^^}
    known+="$var "
    val=${!var-}
    [ -n "$val" ] || continue
    if [ -z "$value" ]; then
        case ${val,,} in
        1 | true | yes | on) args+=("$flag") ;;
        0 | false | no | off) ;;
        *)
            echo "lorad-entrypoint: $var must be 1/true/yes/on or 0/false/no/off, got '$val'" >&2
            exit 2
            ;;
        esac
    elif [ "$flag" = --adapter-dir ]; then
        IFS=: read -ra dirs <<<"$val"
        for d in "${dirs[@]}"; do
            [ -n "$d" ] && args+=("$flag" "$d")
        done
    else
        args+=("$flag" "$val")
    fi
done < <(sed -nE 's/^  (--[a-z][a-z0-9-]*)( [A-Z]+)?([ ].*)?$/\1 \2/p' <<<"$help")

while IFS='=' read -r var _; do
    case $known in *" $var "*) ;; *)
        echo "lorad-entrypoint: $var is set but this lorad has no matching flag (see lorad --help)" >&2
        exit 2
        ;;
    esac
done < <(env | grep -E '^LORAD_[A-Za-z0-9_]*=' || true)

if [ -n "${LORAD_EXTRA_ARGS-}" ]; then
    read -ra extra <<<"$LORAD_EXTRA_ARGS"
    args+=("${extra[@]}")
fi
exec "$bin" "${args[@]}" "$@"
