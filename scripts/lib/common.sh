# shellcheck shell=bash
# Shared helpers for scripts/mec. Sourced, never executed.
# Expects MEC_ROOT (the repository root) to be set by scripts/mec.

MEC_DIR="$MEC_ROOT/.mec"
MEC_ENV_FILE="$MEC_DIR/env"
PG_MAJOR=15
PG_BIN="/usr/lib/postgresql/$PG_MAJOR/bin"
PG_CONFIG="$PG_BIN/pg_config"
PGRX_VERSION=0.18.1
CARGO_TARGET="${CARGO_TARGET_DIR:-target}"
[[ $CARGO_TARGET == /* ]] || CARGO_TARGET="$MEC_ROOT/$CARGO_TARGET"
GATEWAY_BIN="$CARGO_TARGET/release/mec-gateway"
GATEWAY_PID_FILE="$MEC_DIR/gateway.pid"
GATEWAY_LOG="$MEC_DIR/gateway.log"
DEMO_CATALOG="$MEC_ROOT/sql/demo/catalog.json"

# ---------------------------------------------------------------- output
step() { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
warn() { printf 'mec: warning: %s\n' "$*" >&2; }
die() {
  printf 'mec: error: %s\n' "$*" >&2
  exit 1
}

# A switch from the environment (MEC_RESET=1, MEC_SKIP_APT=true, …) is on.
flag() { [[ ${!1:-0} == 1 || ${!1:-0} == true ]]; }

# ---------------------------------------------------------------- users
is_root() { [[ $EUID -eq 0 ]]; }

# Run a command with root rights (apt, system-wide installs).
as_root() {
  if is_root; then "$@"; else sudo "$@"; fi
}

# The OS user that owns and runs the cluster: `postgres` when we are root
# (PostgreSQL refuses to run as root), else ourselves.
pg_os_user() {
  if is_root; then echo postgres; else id -un; fi
}

# Run a command as the cluster's OS user, from a directory it can read.
as_pg() {
  if is_root; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

# ---------------------------------------------------------------- misc
rand_hex() { od -An -N"${1:-24}" -tx1 /dev/urandom | tr -d ' \n'; }
new_uuid() { cat /proc/sys/kernel/random/uuid; }
sha256_of_stdin() { sha256sum | cut -d' ' -f1; }

# True when something listens on 127.0.0.1:$1 (or on any address, per ss).
port_in_use() {
  local port=$1
  if command -v ss >/dev/null 2>&1; then
    if [[ -n "$(ss -Hltn "sport = :$port" 2>/dev/null)" ]]; then
      return 0
    fi
  fi
  if timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
    return 0
  fi
  return 1
}

# First free port at or after $1.
next_free_port() {
  local port=$1 last=$(($1 + 200))
  while ((port <= last)); do
    if ! port_in_use "$port"; then
      echo "$port"
      return 0
    fi
    port=$((port + 1))
  done
  die "no free TCP port between $1 and $last"
}

# Read one variable from .mec/env without touching our own environment.
env_get() {
  [[ -f $MEC_ENV_FILE ]] || return 0
  env -i bash -c 'set +u; source "$1" >/dev/null 2>&1; printf "%s" "${!2-}"' _ "$MEC_ENV_FILE" "$1"
}

# Export everything in .mec/env into the current shell.
load_env() {
  [[ -f $MEC_ENV_FILE ]] || die "$MEC_ENV_FILE not found: run 'scripts/mec up' first"
  # shellcheck disable=SC1090
  source "$MEC_ENV_FILE"
}

# Where the cluster's files live. Normally .mec/ itself; when we are root and
# the postgres user cannot reach .mec/ (e.g. the clone sits under /root, mode
# 700) or the socket path would be too long, a postgres-owned folder outside
# the clone is used instead and .mec/pgdata, .mec/run link to it.
pg_base() {
  local fallback
  fallback="/var/lib/postgresql/mec-$(printf '%s' "$MEC_ROOT" | sha256_of_stdin | cut -c1-12)"
  if ((${#MEC_DIR} > 80)); then
    echo "$fallback"
    return
  fi
  if is_root && id postgres >/dev/null 2>&1 && [[ -d $MEC_DIR ]] &&
    ! runuser -u postgres -- test -x "$MEC_DIR" 2>/dev/null; then
    echo "$fallback"
    return
  fi
  echo "$MEC_DIR"
}

set_pg_paths() {
  PG_BASE="$(pg_base)"
  PGDATA_DIR="$PG_BASE/pgdata"
  PG_SOCKET_DIR="$PG_BASE/run"
  PG_LOG="$PG_BASE/postgres.log"
}

# psql as the superuser over the Unix socket (trust): used for admin work.
# Extra arguments go to psql. Needs PG_PORT and set_pg_paths.
admin_psql() {
  env -u PGOPTIONS -u PGSERVICE -u PGPASSWORD \
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCKET_DIR" -p "$PG_PORT" -U postgres "$@"
}

# Single value from a query (database mec unless -d given first).
admin_value() {
  local db=mec
  if [[ ${1-} == -d ]]; then
    db=$2
    shift 2
  fi
  admin_psql -d "$db" -At -c "$1"
}

# A live process (not a zombie) that runs postgres.
live_postgres_process() {
  local pid=$1 stat state
  stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
  state="${stat##*) }"
  state="${state%% *}"
  [[ $state != Z && $state != X ]] || return 1
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == postgres ]]
}

# The postmaster's pid from postmaster.pid, when that process is alive. After a kill -9 the file
# stays, and the killed postmaster can linger as a zombie until its parent reaps it: `pg_ctl
# status` counts it as running then, and the new postmaster would refuse to start over its pid.
live_postmaster_pid() {
  local pid
  pid="$(sed -n 1p "$PGDATA_DIR/postmaster.pid" 2>/dev/null)"
  [[ $pid =~ ^[0-9]+$ ]] && live_postgres_process "$pid" && echo "$pid"
}

# Pids of live processes working in the data directory: every server process chdirs there, so
# these are what is left of a killed server (backends, checkpointer, …) until they notice.
pgdata_processes() {
  local dir p
  dir="$(readlink -f "$PGDATA_DIR")"
  for p in /proc/[0-9]*; do
    [[ "$(readlink "$p/cwd" 2>/dev/null)" == "$dir" ]] || continue
    live_postgres_process "${p#/proc/}" && echo "${p#/proc/}"
  done
  return 0
}

# ready: the server accepts connections; starting: a live postmaster that does not yet (start-up,
# crash recovery); down: no live postmaster (possibly a stale postmaster.pid).
cluster_state() {
  [[ -f $PGDATA_DIR/PG_VERSION ]] || {
    echo down
    return
  }
  live_postmaster_pid >/dev/null || {
    echo down
    return
  }
  if "$PG_BIN/pg_isready" -q -h "$PG_SOCKET_DIR" -p "$(running_port)" -t 5 >/dev/null 2>&1; then
    echo ready
  else
    echo starting
  fi
}

cluster_running() { [[ $(cluster_state) == ready ]]; }

# Port of the running cluster, from postmaster.pid (line 4).
running_port() {
  sed -n 4p "$PGDATA_DIR/postmaster.pid" 2>/dev/null
}

# Put ~/.cargo/bin on PATH when cargo is not found (a login shell's PATH is not always there).
cargo_on_path() {
  if ! command -v cargo >/dev/null 2>&1 && [[ -n ${HOME:-} && -f $HOME/.cargo/env ]]; then
    # shellcheck disable=SC1091
    source "$HOME/.cargo/env"
  fi
  return 0
}

ensure_cargo() {
  cargo_on_path
  command -v cargo >/dev/null 2>&1 ||
    die "cargo not found: install a Rust toolchain (rustup, Rust >= 1.85) and put ~/.cargo/bin on PATH"
}

# ---------------------------------------------------------------- gateway supervision
# The gateway runs under supervision, so that a process abort (a bug, a kill -9) costs seconds,
# not every tenant's service: a systemd unit where systemd runs and we are root, otherwise
# scripts/lib/supervise.sh (docs/operations.md). MEC_GATEWAY_SUPERVISOR=process forces the latter.
GATEWAY_SUPERVISOR_PID_FILE="$MEC_DIR/gateway-supervisor.pid"
GATEWAY_ENV_FILE="$MEC_DIR/gateway.env"

gateway_unit() {
  echo "mec-gateway-$(printf '%s' "$MEC_ROOT" | sha256_of_stdin | cut -c1-12).service"
}
gateway_unit_file() { echo "/etc/systemd/system/$(gateway_unit)"; }

use_systemd() {
  [[ ${MEC_GATEWAY_SUPERVISOR:-} != process ]] && is_root &&
    [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1
}

# Pid of a live process whose command line names `what`, read from `file`.
pid_from_file() {
  local file=$1 what=$2 pid
  [[ -f $file ]] || return 1
  pid="$(cat "$file" 2>/dev/null || true)"
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$what" || return 1
  echo "$pid"
}

gateway_pid() {
  if use_systemd && [[ -f "$(gateway_unit_file)" ]]; then
    local pid
    pid="$(systemctl show -p MainPID --value "$(gateway_unit)" 2>/dev/null || true)"
    [[ $pid =~ ^[0-9]+$ && $pid != 0 ]] && echo "$pid" && return 0
    return 1
  fi
  pid_from_file "$GATEWAY_PID_FILE" mec-gateway
}

supervisor_pid() { pid_from_file "$GATEWAY_SUPERVISOR_PID_FILE" supervise.sh; }

# Waits up to 10 s for a process to end, then kills it.
wait_or_kill() {
  local pid=$1 what=$2 i
  for ((i = 0; i < 100; i++)); do
    [[ -d /proc/$pid ]] || return 0
    sleep 0.1
  done
  warn "$what did not stop in 10 s, killing it"
  kill -KILL "$pid" 2>/dev/null || true
  sleep 0.2
}

stop_gateway() {
  local pid
  if use_systemd && [[ -f "$(gateway_unit_file)" ]]; then
    if systemctl is-active --quiet "$(gateway_unit)"; then
      info "stopping gateway ($(gateway_unit))"
      systemctl stop "$(gateway_unit)" || true
    fi
  fi
  # The supervisor first, so that it does not start the gateway again.
  if pid="$(supervisor_pid)"; then
    info "stopping gateway supervisor (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    wait_or_kill "$pid" "the gateway supervisor"
  fi
  rm -f "$GATEWAY_SUPERVISOR_PID_FILE"
  if pid="$(pid_from_file "$GATEWAY_PID_FILE" mec-gateway)"; then
    info "stopping gateway (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    wait_or_kill "$pid" "the gateway"
  fi
  rm -f "$GATEWAY_PID_FILE"
}

stop_cluster() {
  set_pg_paths
  if [[ $(cluster_state) != down ]]; then
    info "stopping PostgreSQL ($PGDATA_DIR)"
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 60 stop >/dev/null
  fi
}

# First resource of a given kind in the demo catalog (for printed examples).
catalog_resource() {
  local kind=$1 fallback=$2
  if [[ -f $DEMO_CATALOG ]] && command -v python3 >/dev/null 2>&1; then
    python3 - "$DEMO_CATALOG" "$kind" "$fallback" <<'PY' 2>/dev/null || echo "$fallback"
import json, sys
path, kind, fallback = sys.argv[1:4]
doc = json.load(open(path))
for r in doc.get("resources", []):
    if r.get("kind") == kind and r.get("resource_type"):
        print(r["resource_type"]); break
else:
    print(fallback)
PY
  else
    echo "$fallback"
  fi
}
