#!/usr/bin/env bash
# Run an rlhf recipe on this machine: start (or reuse) a Ray head listening on loopback only, run
# `rlhf recipe=NAME key=value ...` against it, and stop the head on exit if this script started it.
#
#   launch/local.sh recipe=quickstart                          # the embedded default, CPU or GPU
#   RAY_NUM_GPUS=4 launch/local.sh recipe=NAME placement.actor.devices_per_node=2
#   RAY_ADDRESS=127.0.0.1:6379 launch/local.sh recipe=NAME     # reuse a running head, never stop it
#
# Environment (all optional):
#   RAY_ADDRESS        reuse this running cluster (host:port of its GCS); the script never stops it
#   RAY_PORT           GCS port of the head started here (default 6379); if something already listens
#                      on 127.0.0.1:$RAY_PORT it is taken to be a Ray head and reused
#   RAY_DASHBOARD_PORT dashboard / job-submission port (default 8265), bound to 127.0.0.1
#   RAY_NUM_CPUS, RAY_NUM_GPUS  resources the head declares (default: detected)
#   RAY_AGENT_PORT, RAY_CLIENT_PORT  the dashboard agent's HTTP port (Ray's default 52365; the job
#                      server needs it) and the Ray client port (default 10001): set them when another
#                      Ray instance on this machine already holds the defaults
#   RAY_AUTH_MODE      "token" (default) or "disabled". With "token", Ray needs the same token in the
#                      head and in every client: if none is configured (RAY_AUTH_TOKEN,
#                      RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), a fresh one is generated for this run
#                      and exported as RAY_AUTH_TOKEN (kept in memory, written nowhere). "disabled"
#                      turns authentication off in the head and the clients; acceptable here only
#                      because every listener is on 127.0.0.1 — but other local users can then reach it.
#   RLHF_ENTRYPOINT    the command the arguments are passed to (default: rlhf); tests use a stub
#   RAY_START_TIMEOUT  seconds to wait for the head (default 120)
#   KEEP_RAY_LOGS      set to keep the head's temp dir (logs) after the run; the recipe sees its path
#                      as RLHF_RAY_TEMP_DIR
#
# Why RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: with Ray 2.60 it keeps every Ray listener on 127.0.0.1
# (without it Ray takes the machine's external interface address even when asked for 127.0.0.1).
# The head is stopped by signalling the `ray start --block` process this script started, which shuts
# down only its own node; `ray stop` would kill every Ray process of this user on the machine.
set -euo pipefail

if [[ $# -eq 0 || "$1" == "-h" || "$1" == "--help" ]]; then
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    [[ $# -eq 0 ]] && exit 2 || exit 0
fi

export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
RAY_PORT="${RAY_PORT:-6379}"
RAY_DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
RAY_START_TIMEOUT="${RAY_START_TIMEOUT:-120}"
read -r -a ENTRYPOINT <<< "${RLHF_ENTRYPOINT:-rlhf}"
RAY_BIN="${RAY_BIN:-ray}"

log() { echo "[launch/local] $*" >&2; }

port_open() {  # is something listening on 127.0.0.1:$1 ?
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

if [[ "$RAY_AUTH_MODE" == "token" && -z "${RAY_AUTH_TOKEN:-}" && -z "${RAY_AUTH_TOKEN_PATH:-}" \
      && ! -s "$HOME/.ray/auth_token" ]]; then
    RAY_AUTH_TOKEN="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
    export RAY_AUTH_TOKEN
    log "RAY_AUTH_MODE=token: generated a token for this run (exported as RAY_AUTH_TOKEN)"
fi

HEAD_PID=""
RUN_DIR=""
stop_head() {
    if [[ -n "$HEAD_PID" ]] && kill -0 "$HEAD_PID" 2>/dev/null; then
        log "stopping the Ray head started here (pid $HEAD_PID)"
        kill -TERM "$HEAD_PID" 2>/dev/null || true
        for _ in $(seq 1 300); do kill -0 "$HEAD_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$HEAD_PID" 2>/dev/null || true
        wait "$HEAD_PID" 2>/dev/null || true
    fi
    [[ -n "$RUN_DIR" && -z "${KEEP_RAY_LOGS:-}" ]] && rm -rf "$RUN_DIR"
    return 0
}
trap stop_head EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -n "${RAY_ADDRESS:-}" ]]; then
    log "reusing the Ray cluster at RAY_ADDRESS=$RAY_ADDRESS"
elif port_open "$RAY_PORT"; then
    export RAY_ADDRESS="127.0.0.1:$RAY_PORT"
    log "reusing the Ray head already listening on $RAY_ADDRESS"
else
    # A short private temp dir: Ray's unix sockets live under it (path length limit ~107 bytes).
    RUN_DIR="$(mktemp -d /tmp/rlhf-ray-XXXXXX)"
    args=(start --head --block --node-ip-address=127.0.0.1 --port="$RAY_PORT" --disable-usage-stats
          --dashboard-host=127.0.0.1 --dashboard-port="$RAY_DASHBOARD_PORT" --temp-dir="$RUN_DIR")
    [[ -n "${RAY_NUM_CPUS:-}" ]] && args+=(--num-cpus="$RAY_NUM_CPUS")
    [[ -n "${RAY_AGENT_PORT:-}" ]] && args+=(--dashboard-agent-listen-port="$RAY_AGENT_PORT")
    [[ -n "${RAY_CLIENT_PORT:-}" ]] && args+=(--ray-client-server-port="$RAY_CLIENT_PORT")
    [[ -n "${RAY_NUM_GPUS:-}" ]] && args+=(--num-gpus="$RAY_NUM_GPUS")
    log "starting a Ray head on 127.0.0.1:$RAY_PORT (logs: $RUN_DIR/head.log)"
    "$RAY_BIN" "${args[@]}" > "$RUN_DIR/head.log" 2>&1 &
    HEAD_PID=$!
    deadline=$((SECONDS + RAY_START_TIMEOUT))
    until grep -q "Ray runtime started" "$RUN_DIR/head.log" 2>/dev/null; do
        if ! kill -0 "$HEAD_PID" 2>/dev/null; then
            log "the Ray head exited while starting:"; tail -n 30 "$RUN_DIR/head.log" >&2; exit 1
        fi
        if (( SECONDS > deadline )); then
            log "the Ray head did not start within ${RAY_START_TIMEOUT}s:"; tail -n 30 "$RUN_DIR/head.log" >&2; exit 1
        fi
        sleep 0.25
    done
    export RAY_ADDRESS="127.0.0.1:$RAY_PORT" RLHF_RAY_TEMP_DIR="$RUN_DIR"
    log "Ray head up: RAY_ADDRESS=$RAY_ADDRESS, dashboard http://127.0.0.1:$RAY_DASHBOARD_PORT"
fi

set +e
"${ENTRYPOINT[@]}" "$@"
status=$?
set -e
log "${ENTRYPOINT[*]} exited with status $status"
exit "$status"
