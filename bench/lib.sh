# shellcheck shell=bash
# Shared by bench/run.sh, bench/gateway.sh and bench/scale.sh: messages, the client tools they need,
# psql helpers and the bound login role the pg_mec workloads run as.
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

# Superuser psql into database $1 (rest: psql arguments); sql_value runs one query in $DB.
sql() {
  local db=$1
  shift
  "$PSQL" -X -q -v ON_ERROR_STOP=1 -d "$db" "$@"
}
sql_value() { sql "$DB" -At -c "$1"; }

# create_bench_namespace DB NAMESPACE NAME: pg_mec in DB, the namespace, the catalog bench/catalog.json.
create_bench_namespace() {
  sql "$1" -v ns="$2" -v name="$3" -v catalog="$(cat "$BENCH_DIR/catalog.json")" >/dev/null <<'SQL'
CREATE EXTENSION pg_mec;
SELECT mec.create_namespace(p_name => :'name', p_namespace_id => :'ns'::uuid);
SELECT set_config('mec.namespace_id', :'ns', false);
SELECT mec.load_catalog(p_catalog => :'catalog'::jsonb);
SQL
}

# bind_bench_role DB ROLE PASSWORD NAMESPACE: the login role the pg_mec workloads run as, created
# or reset, bound to NAMESPACE as a mec_service (docs/security.md), like a vendor's backend: row-level
# security applies to it as to a real caller.
bind_bench_role() {
  "$PSQL" -X -q -v ON_ERROR_STOP=1 -d "$1" -v db="$1" -v role="$2" -v pw="$3" -v ns="$4" >/dev/null <<'SQL'
SET client_min_messages = warning;
SELECT format('CREATE ROLE %I LOGIN', :'role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER INHERIT PASSWORD %L', :'role', :'pw') \gexec
SELECT format('ALTER ROLE %I IN DATABASE %I RESET mec.namespace_id', :'role', :'db') \gexec
SELECT mec.bind_role(p_role => :'role', p_namespace_id => :'ns', p_api_role => 'mec_service');
SQL
}
