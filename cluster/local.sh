#!/usr/bin/env bash
# A multi-node Ray cluster on this one machine: a head node plus N worker nodes, token auth on.
#
#   cluster/local.sh start [N_WORKERS]   # default 1 worker; prints the dashboard URL and job command
#   cluster/local.sh status              # `ray status` for this cluster
#   cluster/local.sh stop                # ends this cluster's processes only (`ray stop` ends all)
#
# Settings (environment variables; defaults in brackets):
#   CPUS_PER_NODE     CPUs each node advertises [nproc / (N_WORKERS + 1), at least 1]
#   HEAD_CPUS         CPUs the head advertises [CPUS_PER_NODE]; 0 keeps trials off the head, as on
#                     the cloud clusters
#   GPUS_PER_WORKER   GPUs each worker advertises [0]; every node on one machine sees the same GPUs,
#                     so with several workers split them by hand (e.g. 1 worker, GPUS_PER_WORKER=1)
#   OBJECT_STORE_GB   object store per node, in GB (integer) [1]
#   RAY_PORT          GCS port of the head [6379]
#   DASHBOARD_HOST    dashboard bind address [127.0.0.1]; 0.0.0.0 exposes it (token auth still applies)
#   DASHBOARD_PORT    [8265]
#   AGENT_PORT_BASE   dashboard-agent HTTP port of the head; worker i uses AGENT_PORT_BASE + i
#                     [52465: clear of the 52365 that every other Ray instance on the machine takes]
#   RAY_TEMP_DIR      sessions, logs and sockets of this cluster [/tmp/ray-local-cluster]. Kept out of
#                     Ray's default /tmp/ray so that a plain `ray.init()` elsewhere on the machine
#                     (the test suite) starts its own Ray instead of joining this cluster.
#   RAY_AUTH_MODE     token | disabled [token]. Ray 2.60's `ray start --head` turns token auth on by
#                     itself only when a token already exists, and worker nodes and clients need
#                     RAY_AUTH_MODE=token exported explicitly, so the script always exports it.
#   RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH   use this token instead of ~/.ray/auth_token (Ray's order:
#                     RAY_AUTH_TOKEN, then RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token)
set -euo pipefail

usage() {
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

die() {
    echo "local.sh: $*" >&2
    exit 1
}

case "${1:-}" in
    start | status | stop) ;;
    *) usage ;;
esac
command -v ray >/dev/null || die "no 'ray' on PATH: activate the environment that has ray[default,tune]==2.60.0 (e.g. source .venv/bin/activate)"

# The Python that runs `ray` (its console script's shebang), so the node count uses the same install.
RAY_PY="$(head -n 1 "$(command -v ray)" | sed 's/^#!//')"
[[ -x "$RAY_PY" ]] || RAY_PY=python3

RAY_PORT="${RAY_PORT:-6379}"
DASHBOARD_HOST="${DASHBOARD_HOST:-127.0.0.1}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"
AGENT_PORT_BASE="${AGENT_PORT_BASE:-52465}"
OBJECT_STORE_GB="${OBJECT_STORE_GB:-1}"
GPUS_PER_WORKER="${GPUS_PER_WORKER:-0}"
RAY_TEMP_DIR="${RAY_TEMP_DIR:-/tmp/ray-local-cluster}"
# Ray advertises the machine's address even when told 127.0.0.1, and the GCS listens on every
# interface; connecting through 127.0.0.1 works either way.
GCS_ADDRESS="127.0.0.1:${RAY_PORT}"
case "$DASHBOARD_HOST" in
    0.0.0.0 | "::") DASHBOARD_URL="http://127.0.0.1:${DASHBOARD_PORT}" ;;
    *) DASHBOARD_URL="http://${DASHBOARD_HOST}:${DASHBOARD_PORT}" ;;
esac
LOGS="$RAY_TEMP_DIR/session_latest/logs"

export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
case "$RAY_AUTH_MODE" in
    token | disabled) ;;
    *) die "RAY_AUTH_MODE=$RAY_AUTH_MODE: Ray knows 'token' and 'disabled'" ;;
esac

is_int() { [[ "$1" =~ ^[0-9]+$ ]]; }

token_source() {
    if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
        echo "the RAY_AUTH_TOKEN environment variable"
    elif [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
        echo "$RAY_AUTH_TOKEN_PATH (RAY_AUTH_TOKEN_PATH)"
    else
        echo "$HOME/.ray/auth_token"
    fi
}

# The shell expression that reads the token, for the curl example.
token_expr() {
    if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
        echo '$RAY_AUTH_TOKEN'
    else
        echo "\$(cat ${RAY_AUTH_TOKEN_PATH:-~/.ray/auth_token})"
    fi
}

ensure_token() {
    [[ "$RAY_AUTH_MODE" == token ]] || return 0
    if [[ -n "${RAY_AUTH_TOKEN_PATH:-}" && ! -s "$RAY_AUTH_TOKEN_PATH" ]]; then
        die "RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH is missing or empty: write a token there or unset it"
    fi
    if [[ -z "${RAY_AUTH_TOKEN:-}" && -z "${RAY_AUTH_TOKEN_PATH:-}" && ! -s "$HOME/.ray/auth_token" ]]; then
        # `ray start --head` never generates a token (only ray.init() does): make one first.
        ray get-auth-token --generate >/dev/null 2>&1 || die "'ray get-auth-token --generate' failed"
        chmod 600 "$HOME/.ray/auth_token"
        echo "Generated a new token in $HOME/.ray/auth_token"
    fi
}

# Counted through the dashboard's state API, which (unlike a ray.init() probe) leaves no driver
# behind in `ray job list`.
alive_nodes() {
    ray list nodes --address "$DASHBOARD_URL" --filter state=ALIVE --format json 2>/dev/null |
        "$RAY_PY" -c 'import json, sys; print(len(json.load(sys.stdin)))'
}

# This cluster's processes: every Ray program whose command line names RAY_TEMP_DIR (GCS, raylets,
# dashboard, monitors), the Ray Client server (it names only the GCS address), and everything they
# started (agents, workers, trials).
cluster_pids() {
    local roots pid
    roots="$(
        pgrep -u "$(id -u)" -f -- "/ray/.*$RAY_TEMP_DIR/" || true
        pgrep -u "$(id -u)" -f -- "ray\.util\.client\.server .*--address=[^ ]*:$RAY_PORT( |$)" || true
    )"
    descendants() {
        local child
        for child in $(pgrep -P "$1" || true); do
            echo "$child"
            descendants "$child"
        done
    }
    for pid in $roots; do
        echo "$pid"
        descendants "$pid"
    done | sort -un
}

cmd_start() {
    local n_workers="${1:-1}"
    is_int "$n_workers" || die "N_WORKERS=$n_workers: expected a whole number such as 1 or 2"
    is_int "$OBJECT_STORE_GB" && ((OBJECT_STORE_GB > 0)) ||
        die "OBJECT_STORE_GB=$OBJECT_STORE_GB: expected a whole number of GB such as 1"
    local n_nodes=$((n_workers + 1))
    local cpus="${CPUS_PER_NODE:-}"
    if [[ -z "$cpus" ]]; then
        cpus=$(($(nproc) / n_nodes))
        ((cpus >= 1)) || cpus=1
    fi
    is_int "$cpus" && ((cpus >= 1)) || die "CPUS_PER_NODE=$cpus: expected a whole number >= 1"
    local head_cpus="${HEAD_CPUS:-$cpus}"
    is_int "$head_cpus" || die "HEAD_CPUS=$head_cpus: expected a whole number (0 keeps trials off the head)"
    local store_bytes=$((OBJECT_STORE_GB * 1024 * 1024 * 1024))

    if [[ -n "$(cluster_pids)" ]]; then
        die "a cluster from $RAY_TEMP_DIR is still running: run 'cluster/local.sh stop' first"
    fi
    ensure_token

    echo "Starting head at $GCS_ADDRESS ($head_cpus CPUs, ${OBJECT_STORE_GB} GB object store, auth: $RAY_AUTH_MODE)"
    ray start --head --temp-dir="$RAY_TEMP_DIR" --port="$RAY_PORT" \
        --num-cpus="$head_cpus" --num-gpus=0 \
        --object-store-memory="$store_bytes" \
        --include-dashboard=true --dashboard-host="$DASHBOARD_HOST" --dashboard-port="$DASHBOARD_PORT" \
        --dashboard-agent-listen-port="$AGENT_PORT_BASE" \
        --disable-usage-stats >/dev/null ||
        die "'ray start --head' failed; its logs are in $LOGS"

    local i
    for ((i = 1; i <= n_workers; i++)); do
        echo "Starting worker $i ($cpus CPUs, $GPUS_PER_WORKER GPUs, ${OBJECT_STORE_GB} GB object store)"
        # Each worker node gets a temp dir of its own under the head's: nodes sharing one would
        # share its runtime_resources/, and a worker node's runtime-env agent would delete a job's
        # working-dir package (the job driver's cwd on the head) once its own trials are done with
        # it. Each also needs its own dashboard-agent HTTP port; the other ports are picked free.
        ray start --address="$GCS_ADDRESS" --temp-dir="$RAY_TEMP_DIR/worker-$i" \
            --num-cpus="$cpus" --num-gpus="$GPUS_PER_WORKER" \
            --object-store-memory="$store_bytes" \
            --dashboard-agent-listen-port="$((AGENT_PORT_BASE + i))" \
            --disable-usage-stats >/dev/null ||
            die "worker $i did not start; see $LOGS (clean up with 'cluster/local.sh stop')"
    done

    local alive=0 _
    for _ in $(seq 60); do
        alive="$(alive_nodes || echo 0)"
        [[ "$alive" == "$n_nodes" ]] && break
        sleep 1
    done
    [[ "$alive" == "$n_nodes" ]] ||
        die "$alive of $n_nodes nodes are alive after a minute; see 'cluster/local.sh status' and $LOGS"

    cat <<EOF

Ray cluster up: $n_nodes nodes (head + $n_workers workers) at $GCS_ADDRESS; logs in $LOGS
Dashboard:  $DASHBOARD_URL
EOF
    if [[ "$RAY_AUTH_MODE" == token ]]; then
        cat <<EOF
Auth:       token, read from $(token_source)
  Every shell that talks to this cluster (ray CLI, ray job, liquid-search) needs:
    export RAY_AUTH_MODE=token
  REST API:  curl -H "Authorization: Bearer $(token_expr)" $DASHBOARD_URL/api/jobs/
  Browser:   the dashboard asks for the token once (print it with: ray get-auth-token)
EOF
    else
        echo "Auth:       disabled: anyone who reaches these ports can run code here"
    fi
    cat <<EOF
Submit a job:
  ray job submit --address $DASHBOARD_URL --working-dir . --runtime-env cluster/runtime_env.yaml -- liquid-search run --config configs/smoke.yaml
Or drive it from this machine:  liquid-search run --address $GCS_ADDRESS
Stop:       cluster/local.sh stop
EOF
}

cmd_status() {
    ray status --address "$GCS_ADDRESS"
    echo "Dashboard: $DASHBOARD_URL   (auth: $RAY_AUTH_MODE; logs in $LOGS)"
}

# The pids among "$@" still running; a zombie (exited, never reaped: PID 1 in some containers
# reaps nothing) counts as gone.
alive() {
    local pid
    for pid in "$@"; do
        [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" =~ ^[^Z] ]] && echo "$pid"
    done
    return 0
}

# SIGTERM to "$@", then wait up to 10 s for them to exit.
term_and_wait() {
    (($# > 0)) || return 0
    kill -TERM "$@" 2>/dev/null || true
    local _
    for _ in $(seq 50); do
        [[ -z "$(alive "$@")" ]] && return 0
        sleep 0.2
    done
}

cmd_stop() {
    # Not `ray stop`, which ends every Ray process of this user on the machine (test runs included),
    # but its order: raylets first, GCS last; with all at once the raylets and GCS hang on SIGTERM.
    local all raylets gcs others leftover
    all="$(cluster_pids)"
    if [[ -z "$all" ]]; then
        echo "No cluster from $RAY_TEMP_DIR is running."
        return 0
    fi
    raylets="$(pgrep -u "$(id -u)" -f -- "raylet/raylet .*$RAY_TEMP_DIR/" || true)"
    gcs="$(pgrep -u "$(id -u)" -f -- "gcs_server .*$RAY_TEMP_DIR/" || true)"
    # shellcheck disable=SC2086  # one pid per word
    term_and_wait $raylets
    others="$(cluster_pids | grep -vxF -- "${gcs:-none}" || true)"
    # shellcheck disable=SC2086
    term_and_wait $others
    # shellcheck disable=SC2086
    term_and_wait $gcs
    # shellcheck disable=SC2086
    leftover="$(alive $all)"
    if [[ -n "$leftover" ]]; then
        # shellcheck disable=SC2086
        kill -KILL $leftover 2>/dev/null || true
        sleep 1
    fi
    rm -f "$RAY_TEMP_DIR/ray_current_cluster"
    [[ -z "$(cluster_pids)" ]] || die "processes of $RAY_TEMP_DIR survived SIGKILL: $(cluster_pids | tr '\n' ' ')"
    echo "Stopped the cluster of $RAY_TEMP_DIR ($(echo "$all" | wc -w) processes$([[ -n "$leftover" ]] && echo ", $(echo "$leftover" | wc -w) killed"))."
}

case "$1" in
    start) cmd_start "${2:-1}" ;;
    status) cmd_status ;;
    stop) cmd_stop ;;
esac
