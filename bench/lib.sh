# shellcheck shell=bash
# Shared by bench/run.sh and bench/gateway.sh: messages and the client tools they need.
# Source it after setting BENCH_NAME (the prefix of error messages).

die() {
  echo "${BENCH_NAME:-bench}: $*" >&2
  exit 1
}
say() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# The path of a PostgreSQL client program: MEC_PG_BIN (from .mec/env), then PATH, then Debian's.
bin() {
  if [[ -n ${MEC_PG_BIN:-} && -x $MEC_PG_BIN/$1 ]]; then
    echo "$MEC_PG_BIN/$1"
  elif command -v "$1" >/dev/null 2>&1; then
    command -v "$1"
  elif [[ -x /usr/lib/postgresql/15/bin/$1 ]]; then
    echo "/usr/lib/postgresql/15/bin/$1"
  else
    die "$1 not found (install postgresql-client-15 / postgresql-contrib)"
  fi
}

# PSQL, PGBENCH, PYTHON, NPROC; PGOPTIONS unset (scripts/mec psql may set mec.namespace_id through
# it; the benchmarks set their own).
find_tools() {
  PSQL="$(bin psql)"
  PGBENCH="$(bin pgbench)"
  PYTHON="$(command -v python3 || true)"
  [[ -n $PYTHON ]] || die "python3 not found"
  unset PGOPTIONS
  NPROC="$(nproc 2>/dev/null || echo 2)"
}
