#!/usr/bin/env bash
# bench/scale.sh — how pg_mec's speed grows with its data: meter_consumption and check_entitlement
# at 1 k, 100 k and 1 M accounts, then with 10 M ledger rows of history, each as a ratio of the
# smallest stage; usage_history over one account's year; then a soak at steady load showing table
# and index growth, the HOT-update ratio and autovacuum. See bench/README.md, "Scale".
#
# Usually called as `scripts/mec bench --scale [args]` (after `scripts/mec up`).
#
#   --quick               stages "1000 100000", 1 M ledger rows, 5 s runs, a 60 s soak
#   --stages "A B C"      account counts, smallest first (default "1000 100000 1000000")
#   --ledger N            history rows loaded after the last stage (default 10000000; 0 skips)
#   --ledger-accounts N   the accounts that carry them, over the 12 months before this one
#                         (default 100000: 100 events each, like a busy API customer)
#   --duration S          seconds per pgbench run (default 15)
#   --clients "8 32"      client counts
#   --soak S              seconds of steady metering at 8 clients at the end (default 600; 0 skips)
#   --label TEXT          a line at the top of the report
#
# Writes bench/results/scale-latest.md (and .tsv). Uses its own database mec_scale (dropped and
# made anew each run) and login role mec_scale; any PG* superuser environment works, as for run.sh.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
BENCH_NAME="bench --scale"
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"

DB=mec_scale
ROLE=mec_scale
NS=b3e0c0de-0000-4000-8000-00000000be02
STAGES="1000 100000 1000000"
LEDGER=10000000
LEDGER_ACCOUNTS=100000
DURATION=15
CLIENTS="8 32"
SOAK=600
LABEL=""
COMMAND="scripts/mec bench --scale"
for a in "$@"; do
  if [[ $a =~ ^[A-Za-z0-9_./,=:+-]+$ ]]; then COMMAND+=" $a"; else COMMAND+=" '${a//\'/\'\\\'\'}'"; fi
done

while (($#)); do
  case $1 in
    --quick)
      STAGES="1000 100000"
      LEDGER=1000000
      LEDGER_ACCOUNTS=10000
      DURATION=5
      SOAK=60
      ;;
    --stages) STAGES="${2:?--stages needs a list}" && shift ;;
    --ledger) LEDGER="${2:?--ledger needs a number}" && shift ;;
    --ledger-accounts) LEDGER_ACCOUNTS="${2:?--ledger-accounts needs a number}" && shift ;;
    --duration) DURATION="${2:?--duration needs seconds}" && shift ;;
    --clients) CLIENTS="${2:?--clients needs a list}" && shift ;;
    --soak) SOAK="${2:?--soak needs seconds}" && shift ;;
    --label) LABEL="${2:?--label needs text}" && shift ;;
    -h | --help)
      sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done
STAGES="${STAGES//,/ }"
CLIENTS="${CLIENTS//,/ }"
for n in $STAGES $CLIENTS $LEDGER $LEDGER_ACCOUNTS $DURATION $SOAK; do
  [[ $n =~ ^[0-9]+$ ]] || die "not a number: $n"
done
LAST_STAGE="${STAGES##* }"
((LEDGER_ACCOUNTS >= 1 && LEDGER_ACCOUNTS <= LAST_STAGE)) ||
  die "--ledger-accounts must be between 1 and the last stage ($LAST_STAGE)"

find_tools
[[ $(sql postgres -At -c 'SELECT rolsuper FROM pg_roles WHERE rolname = current_user' 2>/dev/null) == t ]] ||
  die "cannot connect as a superuser (run scripts/mec up, or set PG*)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/mec-scale.XXXXXX")"
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() { rm -rf -- "$WORK"; }
trap cleanup EXIT
ROLE_PW="$("$PYTHON" -c 'import secrets; print(secrets.token_hex(24))')"
as_role() { env PGUSER="$ROLE" PGPASSWORD="$ROLE_PW" "$@"; }

# ------------------------------------------------------------------ data
say "recreating database $DB"
sql postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
sql postgres -c "CREATE DATABASE $DB"
create_bench_namespace "$DB" "$NS" scale
bind_bench_role "$DB" "$ROLE" "$ROLE_PW" "$NS"

PROVISIONED=0
# provision_to N: accounts md5(1..N)::uuid on the bench plan, through mec.provision_plan.
provision_to() {
  local target=$1 step=20000 lo hi t0=$SECONDS
  for ((lo = PROVISIONED + 1; lo <= target; lo += step)); do
    hi=$((lo + step - 1 < target ? lo + step - 1 : target))
    sql "$DB" -At -c "SELECT set_config('mec.namespace_id', '$NS', false)" \
      -c "SELECT count(mec.provision_plan(p_account_id => md5(g::text)::uuid, p_plan_id => 'bench'))
          FROM generate_series($lo, $hi) AS g" >/dev/null
    say "  provisioned $hi / $target accounts ($((SECONDS - t0)) s)"
  done
  PROVISIONED=$target
  sql "$DB" -c "VACUUM ANALYZE"
}

LEDGER_ROWS=0
# load_history: LEDGER usage rows on accounts 1..LEDGER_ACCOUNTS, spread over the 12 months before
# this one, with their periods' counters, as if metered then (the current period is untouched).
load_history() {
  local step=1000000 lo hi t0=$SECONDS
  for ((lo = 1; lo <= LEDGER; lo += step)); do
    hi=$((lo + step - 1 < LEDGER ? lo + step - 1 : LEDGER))
    sql "$DB" -v ns="$NS" -v lo="$lo" -v hi="$hi" -v la="$LEDGER_ACCOUNTS" >/dev/null <<'SQL'
SET TIME ZONE 'UTC';
INSERT INTO mec_data.consumption (namespace_id, idempotency_key, consumption_id, account_id, resource_type,
                                  quantity, occurred_at, recorded_at, period_start, period_end, billable)
SELECT :'ns'::uuid, 'hist-' || g, gen_random_uuid(), md5((1 + g % :la)::text)::uuid, 'bench_units', 1, t, t,
       date_trunc('month', t), date_trunc('month', t) + interval '1 month', true
FROM generate_series(:lo::bigint, :hi::bigint) AS g,
     LATERAL (SELECT date_trunc('month', now()) - interval '1 second'
                     - ((g * 7919) % (365 * 86400 - 2)) * interval '1 second' AS t) AS at;
SQL
    say "  ledger: $hi / $LEDGER history rows ($((SECONDS - t0)) s)"
  done
  say "  ledger: counters of the past periods"
  sql "$DB" -v ns="$NS" >/dev/null <<'SQL'
INSERT INTO mec_data.usage_counters (namespace_id, account_id, resource_type, period_start, slot, period_end, used)
SELECT namespace_id, account_id, resource_type, period_start, 0, period_end, sum(quantity)
FROM mec_data.consumption
WHERE namespace_id = :'ns'::uuid AND idempotency_key LIKE 'hist-%'
GROUP BY namespace_id, account_id, resource_type, period_start, period_end;
SQL
  sql "$DB" -c "VACUUM ANALYZE"
  LEDGER_ROWS=$LEDGER
  say "  ledger loaded in $((SECONDS - t0)) s"
}

# ------------------------------------------------------------------ runs
RESULTS="$WORK/scale.tsv"
printf 'stage\taccounts\tledger_rows\tworkload\tclients\ttps\tp50_ms\tp99_ms\ttransactions\tfailed\tcache_hit_pct\n' >"$RESULTS"

cache_hits() { sql_value "SELECT coalesce((s->>'hits')::bigint, 0) || ' ' || coalesce((s->>'misses')::bigint, 0)
                          FROM mec_data.shared_cache_stats() AS s"; }

# run_one STAGE WORKLOAD CLIENTS SCRIPT [pgbench -D defines...]
run_one() {
  local stage=$1 w=$2 c=$3 script=$4
  shift 4
  local j=$((c < NPROC ? c : NPROC)) prefix="$WORK/log/$w.$c" rc=0 tps lat h0 m0 h1 m1 pct
  mkdir -p "$WORK/log"
  sql "$DB" -c CHECKPOINT
  read -r h0 m0 <<<"$(cache_hits)"
  (cd "$WORK" && as_role "$PGBENCH" -n -M prepared -T "$DURATION" -c "$c" -j "$j" -l --log-prefix="$prefix" \
    -D accounts="$PROVISIONED" -D ledger_accounts="$LEDGER_ACCOUNTS" "$@" -f "$script" "$DB") \
    >"$WORK/out" 2>"$WORK/err" || rc=$?
  read -r h1 m1 <<<"$(cache_hits)"
  pct="$(awk -v h=$((h1 - h0)) -v m=$((m1 - m0)) 'BEGIN { printf (h + m) ? "%.0f" : "-", 100 * h / (h + m) }')"
  tps="$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$WORK/out" | head -1)"
  lat="$("$PYTHON" "$BENCH_DIR/report.py" latency "$prefix")"
  rm -f -- "$prefix".*
  read -r p50 p99 n failed <<<"$lat"
  ((rc == 0)) || say "  pgbench exit $rc: $(grep -m1 -iE 'error|abort' "$WORK/err" || true)"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$stage" "$PROVISIONED" "$LEDGER_ROWS" "$w" "$c" \
    "${tps:-nan}" "$p50" "$p99" "$n" "$failed" "$pct" >>"$RESULTS"
  say "$(printf '%-28s %-8s %3s clients %8.0f tps  p50 %6s ms  p99 %6s ms  cache hits %s%%' \
    "$stage" "$w" "$c" "${tps:-0}" "$p50" "$p99" "$pct")"
}

run_stage() {
  local stage=$1 c
  for c in $CLIENTS; do
    run_one "$stage" meter "$c" "$BENCH_DIR/scale_meter.pgbench"
    run_one "$stage" check "$c" "$BENCH_DIR/scale_check.pgbench"
  done
}

for n in $STAGES; do
  say "stage: $n accounts"
  provision_to "$n"
  run_stage "$n accounts"
done
if ((LEDGER > 0)); then
  say "history: $LEDGER ledger rows on $LEDGER_ACCOUNTS accounts"
  load_history
  run_stage "$PROVISIONED accounts + $LEDGER ledger rows"
  run_one "$PROVISIONED accounts + $LEDGER ledger rows" history 8 "$BENCH_DIR/scale_history.pgbench"
fi

# ------------------------------------------------------------------ soak
SOAK_TSV="$WORK/soak.tsv"
printf 'second\tledger_inserts\tconsumption_mb\tcounters_mb\tkeys_mb\tindexes_mb\tcounter_updates\thot_updates\tdead_rows\tautovacuums\n' >"$SOAK_TSV"
sample() {
  sql_value "SELECT $1, (SELECT n_tup_ins FROM pg_stat_user_tables WHERE relid = 'mec_data.consumption'::regclass),
       round(pg_table_size('mec_data.consumption') / 1048576.0, 1),
       round(pg_table_size('mec_data.usage_counters') / 1048576.0, 1),
       round(pg_table_size('mec_data.idempotency_keys') / 1048576.0, 1),
       round((pg_indexes_size('mec_data.consumption') + pg_indexes_size('mec_data.usage_counters')
              + pg_indexes_size('mec_data.idempotency_keys')) / 1048576.0, 1),
       (SELECT n_tup_upd || E'\t' || n_tup_hot_upd FROM pg_stat_user_tables
         WHERE relid = 'mec_data.usage_counters'::regclass),
       (SELECT sum(n_dead_tup) FROM pg_stat_user_tables WHERE schemaname = 'mec_data'),
       (SELECT sum(autovacuum_count) FROM pg_stat_user_tables WHERE schemaname = 'mec_data')" | tr '|' '\t' >>"$SOAK_TSV"
}
if ((SOAK > 0)); then
  say "soak: metering at 8 clients for $SOAK s, sampled every $((SOAK / 10)) s"
  sample 0
  (cd "$WORK" && as_role "$PGBENCH" -n -M prepared -T "$SOAK" -c 8 -j "$NPROC" -D accounts="$PROVISIONED" \
    -f "$BENCH_DIR/scale_meter.pgbench" "$DB") >"$WORK/soak.out" 2>&1 &
  soak=$!
  for ((i = 1; i <= 10; i++)); do
    sleep $((SOAK / 10))
    sample $((i * SOAK / 10))
    say "  $(tail -1 "$SOAK_TSV" | tr '\t' ' ')"
  done
  wait "$soak" || say "soak pgbench exit $?: $(grep -m1 -iE 'error|abort' "$WORK/soak.out" || true)"
fi

# ------------------------------------------------------------------ report
META="$WORK/meta.tsv"
{
  printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
  printf 'command\t%s\n' "$COMMAND"
  printf 'label\t%s\n' "$LABEL"
  printf 'duration\t%s\n' "$DURATION"
  printf 'cpus\t%s\n' "$NPROC"
  printf 'shared_cache_entries\t%s\n' "$(sql_value "SELECT current_setting('pg_mec.shared_cache_entries', true)")"
} >"$META"
mkdir -p "$BENCH_DIR/results"
"$PYTHON" "$BENCH_DIR/report.py" scale "$RESULTS" "$SOAK_TSV" "$META" >"$BENCH_DIR/results/scale-latest.md"
cp "$RESULTS" "$BENCH_DIR/results/scale-latest.tsv"
echo
cat "$BENCH_DIR/results/scale-latest.md"
say "written: bench/results/scale-latest.md (raw runs: bench/results/scale-latest.tsv)"
