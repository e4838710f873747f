#!/usr/bin/env bash
# bench/run.sh — pg_mec's meter_consumption / check_entitlement against baselines on the same
# cluster, in the same run, at 1, 8 and 32 clients. See bench/README.md.
#
# Usually called as `scripts/mec bench [args]` (after `scripts/mec up`, with .mec/env loaded);
# works with any PG* environment whose user is a superuser and whose cluster has pg_mec installed.
#
#   --quick              5 s per run, 1 run (a smoke test; numbers are indicative only)
#   --duration S         seconds per pgbench run (default 20)
#   --runs N             runs per workload and client count; the report shows the median (default 3)
#   --clients "1 8 32"   client counts
#   --workloads LIST     comma-separated subset (default: all of the standard set, see below)
#   --no-setup           reuse the existing database mec_bench (skip drop/recreate and loading)
#   --label TEXT         a line printed at the top of the report (e.g. "release build, 2 vCPU")
#   --keep-logs          keep pgbench's output and per-transaction logs (their folder is printed)
#   --churn N            sign-ups per second beside the `*_churn` workloads (default 100)
#   --gateway            the gateway benchmark instead: bench/gateway.sh (see its --help)
#   --scale              the scale benchmark instead: bench/scale.sh (see its --help)
#
# Environment: PGHOST, PGPORT, PGUSER (superuser), PGPASSWORD as for psql; MEC_PG_BIN (from
# .mec/env) picks the PostgreSQL binaries; MEC_BENCH_SHARED the baseline folder
# (default <repo>/../shared/bench).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO="$(cd "$BENCH_DIR/.." && pwd -P)"
SHARED="${MEC_BENCH_SHARED:-$REPO/../shared/bench}"

# --gateway: the gateway against pgbench (bench/gateway.sh); --scale: growth with the data
# (bench/scale.sh); each with the other arguments.
for a in "$@"; do
  if [[ $a == --gateway || $a == --scale ]]; then
    rest=()
    for b in "$@"; do [[ $b == "$a" ]] || rest+=("$b"); done
    exec bash "$BENCH_DIR/${a#--}.sh" "${rest[@]}"
  fi
done

DB=mec_bench
ROLE=mec_bench
NS=b3e0c0de-0000-4000-8000-00000000be01 # the bench namespace
ACCOUNTS=10000                          # the pgbench scripts draw from 1..10000
SCALE=10

DURATION=20
RUNS=3
CLIENTS="1 8 32"
STANDARD="update_1stmt,naive_meter,mec_meter,simple_update,select_only,naive_check,mec_check,naive_meter_hot,mec_meter_hot"
STANDARD+=",app_txn,mec_app_txn,insert1000,mec_batch1000"
WORKLOADS="$STANDARD"
SETUP=1
LABEL=""
KEEP=0
CHURN=100
COMMAND="scripts/mec bench"
for a in "$@"; do
  if [[ $a =~ ^[A-Za-z0-9_./,=:+-]+$ ]]; then COMMAND+=" $a"; else COMMAND+=" '${a//\'/\'\\\'\'}'"; fi
done

BENCH_NAME="bench"
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"

while (($#)); do
  case $1 in
    --quick)
      DURATION=5
      RUNS=1
      ;;
    --duration)
      DURATION="${2:?--duration needs seconds}"
      shift
      ;;
    --duration=*) DURATION="${1#*=}" ;;
    --runs)
      RUNS="${2:?--runs needs a number}"
      shift
      ;;
    --runs=*) RUNS="${1#*=}" ;;
    --clients)
      CLIENTS="${2:?--clients needs a list}"
      shift
      ;;
    --clients=*) CLIENTS="${1#*=}" ;;
    --workloads)
      WORKLOADS="${2:?--workloads needs a list}"
      shift
      ;;
    --workloads=*) WORKLOADS="${1#*=}" ;;
    --no-setup) SETUP=0 ;;
    --label)
      LABEL="${2:?--label needs text}"
      shift
      ;;
    --label=*) LABEL="${1#*=}" ;;
    --keep-logs) KEEP=1 ;;
    --churn)
      CHURN="${2:?--churn needs a rate}"
      shift
      ;;
    --churn=*) CHURN="${1#*=}" ;;
    -h | --help)
      sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done
[[ $DURATION =~ ^[0-9]+$ && $DURATION -gt 0 ]] || die "--duration must be a positive number of seconds"
[[ $RUNS =~ ^[0-9]+$ && $RUNS -gt 0 ]] || die "--runs must be a positive number"
CLIENTS="${CLIENTS//,/ }"
for c in $CLIENTS; do [[ $c =~ ^[0-9]+$ && $c -gt 0 ]] || die "bad client count: $c"; done
[[ $CHURN =~ ^[0-9]+$ && $CHURN -gt 0 ]] || die "--churn must be a positive number of sign-ups per second"

# ------------------------------------------------------------------ tools
find_tools


sql postgres -At -c 'SELECT 1' >/dev/null 2>&1 ||
  die "cannot connect as ${PGUSER:-$USER} to ${PGHOST:-the local socket}:${PGPORT:-5432} (run scripts/mec up, or set PG*)"
[[ $(sql postgres -At -c 'SELECT rolsuper FROM pg_roles WHERE rolname = current_user') == t ]] ||
  die "PGUSER must be a superuser (it creates database $DB and role $ROLE)"
[[ -n $(sql postgres -At -c "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_mec'") ]] ||
  die "extension pg_mec is not installed in this cluster (run scripts/mec up)"
for f in update_1stmt.pgbench meter.pgbench meter_hot.pgbench check.pgbench check_hot.pgbench naive_meter.sql naive_load.sql; do
  [[ -f $SHARED/$f ]] || die "baseline $SHARED/$f not found (set MEC_BENCH_SHARED)"
done

# Workloads: name -> who runs it and pgbench's script arguments.
#   base: the superuser (PGUSER) — pgbench's own tables and the hand-written PL/pgSQL baseline
#   mec:  the login role mec_bench (member of mec_service) — RLS applies as for a real caller
workload_args() {
  case $1 in
    update_1stmt) echo "base -s $SCALE -f $SHARED/update_1stmt.pgbench" ;;
    naive_meter) echo "base -s $SCALE -f $SHARED/meter.pgbench" ;;
    naive_meter_hot) echo "base -s $SCALE -f $SHARED/meter_hot.pgbench" ;;
    naive_check) echo "base -s $SCALE -f $SHARED/check.pgbench" ;;
    naive_check_hot) echo "base -s $SCALE -f $SHARED/check_hot.pgbench" ;;
    select_only) echo "base -S" ;;
    simple_update) echo "base -N" ;;
    mec_meter) echo "mec -s $SCALE -f $BENCH_DIR/meter.pgbench" ;;
    mec_meter_hot) echo "mec -s $SCALE -f $BENCH_DIR/meter_hot.pgbench" ;;
    mec_check) echo "mec -s $SCALE -f $BENCH_DIR/check.pgbench" ;;
    mec_check_hot) echo "mec -s $SCALE -f $BENCH_DIR/check_hot.pgbench" ;;
    # the controls issue's figures: a rate window's check, three items in one decision or three calls
    mec_check_rate) echo "mec -s $SCALE -f $BENCH_DIR/check_rate.pgbench" ;;
    mec_meter_rate) echo "mec -s $SCALE -f $BENCH_DIR/meter_rate.pgbench" ;;
    # issue 12's targets: the caller's own write transaction with and without a meter call; a batch
    # of 1 000 events against the same rows as one multi-row INSERT
    app_txn) echo "mec -s $SCALE -f $BENCH_DIR/app_txn.pgbench" ;;
    mec_app_txn) echo "mec -s $SCALE -f $BENCH_DIR/mec_app_txn.pgbench" ;;
    insert1000) echo "mec -s $SCALE -f $BENCH_DIR/insert1000.pgbench" ;;
    mec_batch1000) echo "mec -s $SCALE -f $BENCH_DIR/batch1000.pgbench" ;;
    mec_meter_usage3) echo "mec -s $SCALE -f $BENCH_DIR/meter_usage3.pgbench" ;;
    mec_meter_single3) echo "mec -s $SCALE -f $BENCH_DIR/meter_single3.pgbench" ;;
    # a member at depth 3 (organisation → team → member), metered against its team's and organisation's pools
    mec_meter_member3) echo "mec -s $SCALE -f $BENCH_DIR/meter_member3.pgbench" ;;
    # the same, all through the members of one organisation: a busy organisation (its pool is hot)
    mec_meter_org_hot) echo "mec -s $SCALE -f $BENCH_DIR/meter_org_hot.pgbench" ;;
    # mec_check / naive_check while a second pgbench provisions new accounts at --churn per second
    mec_check_churn) echo "mec -s $SCALE -f $BENCH_DIR/check.pgbench" ;;
    naive_check_churn) echo "base -s $SCALE -f $SHARED/check.pgbench" ;;
    *) return 1 ;;
  esac
}
IFS=', ' read -r -a WL <<<"$WORKLOADS"
for w in "${WL[@]}"; do workload_args "$w" >/dev/null || die "unknown workload: $w"; done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/mec-bench.XXXXXX")"
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() { ((KEEP)) || rm -rf -- "$WORK"; }
trap cleanup EXIT

# ------------------------------------------------------------------ setup
ROLE_PW="$("$PYTHON" -c 'import secrets; print(secrets.token_hex(24))')"

setup_db() {
  local t0=$SECONDS
  say "recreating database $DB"
  sql postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
  sql postgres -c "CREATE DATABASE $DB"

  say "pgbench -i -s $SCALE"
  "$PGBENCH" -i -q -s "$SCALE" "$DB" >"$WORK/pgbench-init.log" 2>&1 || {
    cat "$WORK/pgbench-init.log" >&2
    die "pgbench -i failed"
  }

  say "baseline: ../shared/bench/naive_meter.sql + ../shared/bench/naive_load.sql ($ACCOUNTS accounts)"
  sql "$DB" -f "$SHARED/naive_meter.sql" >/dev/null
  sql "$DB" -f "$SHARED/naive_load.sql" >/dev/null

  say "pg_mec: extension, namespace $NS, catalog bench/catalog.json"
  create_bench_namespace "$DB" "$NS" bench

  # One statement over generate_series per 1000 accounts, so that progress can be shown.
  local step=1000 lo hi
  for ((lo = 1; lo <= ACCOUNTS; lo += step)); do
    hi=$((lo + step - 1 < ACCOUNTS ? lo + step - 1 : ACCOUNTS))
    sql "$DB" -At -c "SELECT set_config('mec.namespace_id', '$NS', false)" \
      -c "SELECT count(mec.provision_plan(p_account_id => md5(g::text)::uuid, p_plan_id => 'bench'))
          FROM generate_series($lo, $hi) AS g" >/dev/null
    say "  provisioned $hi / $ACCOUNTS accounts"
  done
  # Steady state, as ../shared/bench/naive_load.sql pre-creates its counters: every account has been metered
  # once this period, so its counter row exists; and each account's rate window is built (from the
  # ledger) before the runs.
  for ((lo = 1; lo <= ACCOUNTS; lo += step)); do
    hi=$((lo + step - 1 < ACCOUNTS ? lo + step - 1 : ACCOUNTS))
    sql "$DB" -At -c "SELECT set_config('mec.namespace_id', '$NS', false)" \
      -c "SELECT count(mec.meter_consumption(p_idempotency_key => 'warm-' || g,
                 p_account_id => md5(g::text)::uuid, p_resource_type => 'bench_units', p_quantity => 1))
          FROM generate_series($lo, $hi) AS g" \
      -c "SELECT count(mec.meter_consumption(p_idempotency_key => 'warm-rate-' || g,
                 p_account_id => md5(g::text)::uuid, p_resource_type => 'bench_rate', p_quantity => 1))
          FROM generate_series($lo, $hi) AS g" >/dev/null
    say "  first event metered and rate window built for $hi / $ACCOUNTS accounts"
  done

  if [[ " ${WL[*]} " == *" mec_meter_member3 "* || " ${WL[*]} " == *" mec_meter_org_hot "* ]]; then
    setup_hierarchy
  fi

  say "VACUUM ANALYZE"
  sql "$DB" -c "VACUUM ANALYZE"
  say "setup done in $((SECONDS - t0)) s"
}

# 100 organisations of 10 teams of 10 members (meter_member3.pgbench): organisations and teams on the
# bench plan (so both pool), members without a plan of their own (they inherit their team's).
setup_hierarchy() {
  local set="SELECT set_config('mec.namespace_id', '$NS', false)"
  sql "$DB" -At -c "$set" \
    -c "SELECT count(mec.provision_plan(p_account_id => md5('org' || o)::uuid, p_plan_id => 'bench'))
        FROM generate_series(1, 100) AS o" \
    -c "SELECT count(mec.provision_plan(p_account_id => md5('team' || t)::uuid, p_plan_id => 'bench'))
        FROM generate_series(1, 1000) AS t" \
    -c "SELECT count(mec.set_parent_account(md5('team' || t)::uuid, md5('org' || ((t - 1) / 10 + 1))::uuid))
        FROM generate_series(1, 1000) AS t" >/dev/null
  say "  hierarchy: 100 organisations, 1000 teams"
  local lo
  for ((lo = 1; lo <= 10000; lo += 2500)); do
    sql "$DB" -At -c "$set" \
      -c "SELECT count(mec.set_parent_account(md5('member' || m)::uuid, md5('team' || ((m - 1) / 10 + 1))::uuid))
          FROM generate_series($lo, $((lo + 2499))) AS m" \
      -c "SELECT count(mec.meter_consumption(p_idempotency_key => 'warm-member-' || m,
                 p_account_id => md5('member' || m)::uuid, p_resource_type => 'bench_units', p_quantity => 1))
          FROM generate_series($lo, $((lo + 2499))) AS m" >/dev/null
    say "  hierarchy: members placed and metered once: $((lo + 2499)) / 10000"
  done
}

setup_role() { bind_bench_role "$DB" "$ROLE" "$ROLE_PW" "$NS"; }

# The caller's own tables, written by the bench role: bench_app.orders (app_txn, mec_app_txn) and
# bench_app.events, the ledger's columns and its two B-tree indexes (insert1000). Idempotent, so
# that --no-setup finds them too.
setup_app_tables() {
  sql "$DB" -q -c "CREATE SCHEMA IF NOT EXISTS bench_app" \
    -c "CREATE TABLE IF NOT EXISTS bench_app.orders (id bigserial PRIMARY KEY, account_id uuid NOT NULL,
          note text, created_at timestamptz NOT NULL DEFAULT now())" \
    -c "CREATE TABLE IF NOT EXISTS bench_app.events (namespace_id uuid NOT NULL, idempotency_key text NOT NULL,
          account_id uuid NOT NULL, resource_type text NOT NULL, quantity numeric NOT NULL,
          occurred_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (namespace_id, idempotency_key))" \
    -c "CREATE INDEX IF NOT EXISTS events_by_account ON bench_app.events (namespace_id, account_id, occurred_at)" \
    -c "GRANT USAGE ON SCHEMA bench_app TO $ROLE" \
    -c "GRANT INSERT ON bench_app.orders, bench_app.events TO $ROLE" \
    -c "GRANT USAGE ON SEQUENCE bench_app.orders_id_seq TO $ROLE"
}

as_role() { env PGUSER="$ROLE" PGPASSWORD="$ROLE_PW" "$@"; }

if ((SETUP)); then
  setup_db
else
  [[ -n $(sql postgres -At -c "SELECT 1 FROM pg_database WHERE datname = '$DB'") ]] ||
    die "database $DB does not exist: run without --no-setup"
  say "reusing database $DB"
fi
setup_role
setup_app_tables

# Check that the role sees the bench namespace through RLS, as a real caller would.
probe="$(as_role "$PSQL" -X -At -v ON_ERROR_STOP=1 -d "$DB" \
  -c "SELECT (SELECT count(*) FROM mec.accounts
              WHERE account_id IN (SELECT md5(g::text)::uuid FROM generate_series(1, $ACCOUNTS) g)) || ' ' ||
             (mec.check_entitlement(md5('1')::uuid, 'bench_units')->>'decision')" 2>&1)" ||
  die "role $ROLE cannot use pg_mec in $DB: $probe"
[[ $probe == "$ACCOUNTS allow" ]] || die "role $ROLE sees '$probe', expected '$ACCOUNTS allow'"
say "role $ROLE sees the $ACCOUNTS bench accounts through RLS"

# ------------------------------------------------------------------ runs
META="$WORK/meta.tsv"
RESULTS="$WORK/results.tsv"
so="$("$(bin pg_config)" --pkglibdir 2>/dev/null)/pg_mec.so"
{
  printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
  printf 'command\t%s\n' "$COMMAND"
  printf 'label\t%s\n' "$LABEL"
  printf 'server_version\t%s\n' "$(sql_value 'SHOW server_version' | cut -d' ' -f1)"
  printf 'synchronous_commit\t%s\n' "$(sql_value 'SHOW synchronous_commit')"
  printf 'shared_buffers\t%s\n' "$(sql_value 'SHOW shared_buffers')"
  printf 'extversion\t%s\n' "$(sql_value "SELECT extversion FROM pg_extension WHERE extname = 'pg_mec'")"
  printf 'build\t%s\n' "$("$PYTHON" "$BENCH_DIR/report.py" build "$so")"
  printf 'so\t%s\n' "pg_mec.so $(stat -c %s "$so" 2>/dev/null | awk '{printf "%.1f", $1 / 1048576}') MB"
  printf 'cpus\t%s\n' "$NPROC"
  printf 'cpu\t%s\n' "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -1 | tr -s ' ')"
  printf 'duration\t%s\n' "$DURATION"
  printf 'runs\t%s\n' "$RUNS"
} >"$META"
printf 'workload\tclients\trun\ttps\tp50_ms\tp99_ms\ttransactions\tfailed\trc\twal_bytes\n' >"$RESULTS"

run_one() {
  local w=$1 c=$2 r=$3 who args j out prefix rc tps lat lsn0 wal
  read -r who args <<<"$(workload_args "$w")"
  j=$((c < NPROC ? c : NPROC))
  out="$WORK/$w.c$c.r$r"
  prefix="$WORK/log/$w.c$c.r$r"
  mkdir -p "$WORK/log"
  sql "$DB" -c CHECKPOINT
  # WAL written during the run (per transaction in the report): what durability costs each workload.
  lsn0="$(sql_value 'SELECT pg_current_wal_insert_lsn()')"
  rc=0
  local churn=""
  if [[ $w == *_churn ]]; then
    PGOPTIONS="-c mec.namespace_id=$NS" "$PGBENCH" -n -T "$DURATION" -c 1 -R "$CHURN" \
      -f "$BENCH_DIR/provision.pgbench" "$DB" >"$out.churn" 2>&1 &
    churn=$!
  fi
  # shellcheck disable=SC2086 # $args is a list of pgbench arguments
  if [[ $who == mec ]]; then
    (cd "$WORK" && as_role "$PGBENCH" -n -M prepared -T "$DURATION" -c "$c" -j "$j" \
      -l --log-prefix="$prefix" $args "$DB") >"$out.out" 2>"$out.err" || rc=$?
  else
    (cd "$WORK" && "$PGBENCH" -n -M prepared -T "$DURATION" -c "$c" -j "$j" \
      -l --log-prefix="$prefix" $args "$DB") >"$out.out" 2>"$out.err" || rc=$?
  fi
  if [[ -n $churn ]]; then
    wait "$churn" || rc=$?
    say "  beside it: $(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out.churn") sign-ups"
  fi
  wal="$(sql_value "SELECT pg_current_wal_insert_lsn() - '$lsn0'::pg_lsn")"
  tps="$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$out.out" | head -1)"
  lat="$("$PYTHON" "$BENCH_DIR/report.py" latency "$prefix")"
  ((KEEP)) || rm -f -- "$prefix".*
  read -r p50 p99 n failed <<<"$lat"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$w" "$c" "$r" "${tps:-nan}" "$p50" "$p99" "$n" "$failed" "$rc" \
    "${wal%%.*}" >>"$RESULTS"
  local problem=""
  if ((rc != 0 || failed != 0)); then
    problem="  (pgbench exit $rc, $failed failed: $(grep -m1 -iE 'error|abort' "$out.err" || true))"
  fi
  say "$(printf '%-16s %3s clients  run %s/%s  %8.0f tps  p50 %7s ms  p99 %7s ms' \
    "$w" "$c" "$r" "$RUNS" "${tps:-0}" "$p50" "$p99")$problem"
}

total=$((RUNS * $(wc -w <<<"$CLIENTS") * ${#WL[@]}))
say "$total pgbench runs of $DURATION s (about $((total * (DURATION + 2) / 60 + 1)) min); workloads interleaved"
for ((r = 1; r <= RUNS; r++)); do
  for c in $CLIENTS; do
    for w in "${WL[@]}"; do
      run_one "$w" "$c" "$r"
    done
  done
done

mkdir -p "$BENCH_DIR/results"
"$PYTHON" "$BENCH_DIR/report.py" markdown "$RESULTS" "$META" >"$BENCH_DIR/results/latest.md"
cp "$RESULTS" "$BENCH_DIR/results/latest.tsv"
echo
cat "$BENCH_DIR/results/latest.md"
say "written: bench/results/latest.md (raw runs: bench/results/latest.tsv)"
((KEEP)) && say "pgbench output and logs kept in $WORK"
exit 0
