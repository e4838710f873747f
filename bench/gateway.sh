#!/usr/bin/env bash
# bench/gateway.sh — the gateway (POST /api/rpc/<fn>, wrk) against pgbench calling the same
# function directly, on the same cluster and data, in the same run, at 1, 8 and 32 connections.
# See bench/README.md, "Gateway".
#
# Usually called as `scripts/mec bench --gateway [args]` (bench/run.sh hands over to it), with
# .mec/env loaded: PG* (superuser), MEC_GATEWAY_URL, MEC_JWT_SECRET.
#
#   --quick              5 s per run (a smoke test; numbers are indicative only)
#   --duration S         seconds per wrk / pgbench run (default 20)
#   --clients "1 8 32"   connection counts (wrk connections = pgbench clients)
#   --functions LIST     comma-separated subset of check_entitlement,meter_consumption
#   --label TEXT         a line printed at the top of the report (e.g. "2 vCPU, noisy")
#   --keep-logs          keep wrk's and pgbench's output (the folder is printed)
#   --keep-data          keep the events the runs metered (by default they are deleted afterwards)
#
# Both sides work in database mec (the gateway's), in namespace b3e0c0de-…-be02 ("bench-gateway",
# created here once: catalog bench/catalog.json, 10 000 accounts md5(n::text)::uuid, each metered
# once). The gateway is called with a JWT of role mec_service for that namespace; pgbench logs in
# as the role mec_bench_gw (member of mec_service, mec.namespace_id set for it in database mec).
# Afterwards the ledger rows the runs metered are deleted (that namespace's only, except the
# 'warm-…' events of the setup) and its counters rebuilt from the ledger, so that database mec,
# which the tests share, does not grow and counters and ledger still agree.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO="$(cd "$BENCH_DIR/.." && pwd -P)"
DB=mec                                   # the database the gateway serves
ROLE=mec_bench_gw                        # pgbench's login role
NS=b3e0c0de-0000-4000-8000-00000000be02  # the gateway bench namespace (only this one is touched)
NS_NAME=bench-gateway
ACCOUNTS=10000

DURATION=20
CLIENTS="1 8 32"
FUNCTIONS="check_entitlement,meter_consumption"
LABEL=""
KEEP=0
KEEP_DATA=0
COMMAND="scripts/mec bench --gateway"
for a in "$@"; do
  if [[ $a =~ ^[A-Za-z0-9_./,=:+-]+$ ]]; then COMMAND+=" $a"; else COMMAND+=" '${a//\'/\'\\\'\'}'"; fi
done

BENCH_NAME="bench --gateway"
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"

while (($#)); do
  case $1 in
    --gateway) ;;
    --quick) DURATION=5 ;;
    --duration)
      DURATION="${2:?--duration needs seconds}"
      shift
      ;;
    --duration=*) DURATION="${1#*=}" ;;
    --clients)
      CLIENTS="${2:?--clients needs a list}"
      shift
      ;;
    --clients=*) CLIENTS="${1#*=}" ;;
    --functions)
      FUNCTIONS="${2:?--functions needs a list}"
      shift
      ;;
    --functions=*) FUNCTIONS="${1#*=}" ;;
    --label)
      LABEL="${2:?--label needs text}"
      shift
      ;;
    --label=*) LABEL="${1#*=}" ;;
    --keep-logs) KEEP=1 ;;
    --keep-data) KEEP_DATA=1 ;;
    -h | --help)
      sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done
[[ $DURATION =~ ^[0-9]+$ && $DURATION -gt 0 ]] || die "--duration must be a positive number of seconds"
CLIENTS="${CLIENTS//,/ }"
for c in $CLIENTS; do [[ $c =~ ^[0-9]+$ && $c -gt 0 ]] || die "bad connection count: $c"; done
IFS=', ' read -r -a FNS <<<"$FUNCTIONS"
for f in "${FNS[@]}"; do
  [[ $f == check_entitlement || $f == meter_consumption ]] || die "unknown function: $f"
done

# ------------------------------------------------------------------ tools
find_tools
WRK="$(command -v wrk || true)"
[[ -n $WRK ]] || die "wrk not found (apt-get install wrk)"
CURL="$(command -v curl || true)"
[[ -n $CURL ]] || die "curl not found"
GW="${MEC_GATEWAY_URL:-}"
[[ -n $GW ]] || die "MEC_GATEWAY_URL is not set (source .mec/env, or run through scripts/mec bench --gateway)"
GW="${GW%/}"
[[ -n ${MEC_JWT_SECRET:-} ]] || die "MEC_JWT_SECRET is not set (source .mec/env)"

sql() {
  "$PSQL" -X -q -v ON_ERROR_STOP=1 -d "$DB" "$@"
}
sql_value() { sql -At -c "$1"; }

sql -At -c 'SELECT 1' >/dev/null 2>&1 ||
  die "cannot connect as ${PGUSER:-$USER} to database $DB at ${PGHOST:-the local socket}:${PGPORT:-5432} (run scripts/mec up)"
[[ $(sql_value 'SELECT rolsuper FROM pg_roles WHERE rolname = current_user') == t ]] ||
  die "PGUSER must be a superuser (it creates namespace $NS and role $ROLE)"
[[ -n $(sql_value "SELECT 1 FROM pg_extension WHERE extname = 'pg_mec'") ]] ||
  die "pg_mec is not installed in database $DB (run scripts/mec up)"

# The gateway may be restarted by someone else (scripts/mec up / test): wait for it, never
# restart it from here.
wait_gateway() {
  local i
  for ((i = 0; i < 60; i++)); do
    if [[ $("$CURL" -s -o /dev/null -w '%{http_code}' -m 3 "$GW/ready" 2>/dev/null) == 200 ]]; then
      return 0
    fi
    ((i % 10 == 0)) && say "gateway at $GW not ready; waiting (up to 2 min)"
    sleep 2
  done
  die "gateway at $GW not ready after 2 min (is it running? scripts/mec status)"
}
wait_gateway

WORK="$(mktemp -d "${TMPDIR:-/tmp}/mec-bench-gw.XXXXXX")"
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() { ((KEEP)) || rm -rf -- "$WORK"; }
trap cleanup EXIT

# ------------------------------------------------------------------ setup (idempotent)
setup_namespace() {
  local t0=$SECONDS have step=1000 lo hi
  say "namespace $NS_NAME ($NS) in database $DB, catalog bench/catalog.json"
  sql -v ns="$NS" -v name="$NS_NAME" -v catalog="$(cat "$BENCH_DIR/catalog.json")" >/dev/null <<'SQL'
SELECT mec.create_namespace(p_name => :'name', p_namespace_id => :'ns'::uuid);
SELECT set_config('mec.namespace_id', :'ns', false);
SELECT mec.load_catalog(p_catalog => :'catalog'::jsonb);
SQL
  # Provision (1 000 per statement, progress shown) only the chunks that are not complete yet.
  have="$(sql_value "SELECT count(*) FROM mec_data.accounts WHERE namespace_id = '$NS'")"
  if ((have < ACCOUNTS)); then
    say "provisioning accounts ($have of $ACCOUNTS present)"
    for ((lo = 1; lo <= ACCOUNTS; lo += step)); do
      hi=$((lo + step - 1 < ACCOUNTS ? lo + step - 1 : ACCOUNTS))
      sql -At -c "SELECT set_config('mec.namespace_id', '$NS', false)" \
        -c "SELECT count(mec.provision_plan(p_account_id => md5(g::text)::uuid, p_plan_id => 'bench'))
            FROM generate_series($lo, $hi) AS g
            WHERE NOT EXISTS (SELECT FROM mec_data.accounts a
                              WHERE a.namespace_id = '$NS' AND a.account_id = md5(g::text)::uuid)" >/dev/null
      say "  provisioned $hi / $ACCOUNTS accounts"
    done
  fi
  # Steady state as in run.sh: every account metered once this period, so its counter exists.
  have="$(sql_value "SELECT count(DISTINCT account_id) FROM mec_data.usage_counters
                     WHERE namespace_id = '$NS' AND resource_type = 'bench_units'
                       AND period_start <= now() AND (period_end IS NULL OR period_end > now())")"
  if ((have < ACCOUNTS)); then
    say "metering a first event per account ($have of $ACCOUNTS counters present)"
    local month
    month="$(date -u +%Y%m)"
    for ((lo = 1; lo <= ACCOUNTS; lo += step)); do
      hi=$((lo + step - 1 < ACCOUNTS ? lo + step - 1 : ACCOUNTS))
      sql -At -c "SELECT set_config('mec.namespace_id', '$NS', false)" \
        -c "SELECT count(mec.meter_consumption(p_idempotency_key => 'warm-$month-' || g,
                   p_account_id => md5(g::text)::uuid, p_resource_type => 'bench_units', p_quantity => 1))
            FROM generate_series($lo, $hi) AS g" >/dev/null
      say "  first event metered for $hi / $ACCOUNTS accounts"
    done
    say "ANALYZE of mec_data's tables"
    sql -c "ANALYZE mec_data.accounts, mec_data.entitlements, mec_data.usage_counters,
                    mec_data.consumption, mec_data.idempotency_keys"
  fi
  say "namespace ready ($((SECONDS - t0)) s)"
}

ROLE_PW="$("$PYTHON" -c 'import secrets; print(secrets.token_hex(24))')"
setup_role() {
  sql -v role="$ROLE" -v pw="$ROLE_PW" -v ns="$NS" -v db="$DB" >/dev/null <<'SQL'
SET client_min_messages = warning;
SELECT format('CREATE ROLE %I LOGIN', :'role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER INHERIT PASSWORD %L', :'role', :'pw') \gexec
SELECT format('ALTER ROLE %I IN DATABASE %I RESET mec.namespace_id', :'role', :'db') \gexec
-- A login role of its own acts in the namespace it is bound to (docs/security.md), like a vendor's backend.
SELECT mec.bind_role(p_role => :'role', p_namespace_id => :'ns', p_api_role => 'mec_service');
SQL
}
as_role() { env PGUSER="$ROLE" PGPASSWORD="$ROLE_PW" "$@"; }

setup_namespace
setup_role

probe="$(as_role "$PSQL" -X -At -v ON_ERROR_STOP=1 -d "$DB" \
  -c "SELECT (SELECT count(*) FROM mec.accounts) || ' ' ||
             (mec.check_entitlement(md5('1')::uuid, 'bench_units')->>'decision')" 2>&1)" ||
  die "role $ROLE cannot use pg_mec in $DB: $probe"
[[ $probe == "$ACCOUNTS allow" ]] || die "role $ROLE sees '$probe', expected '$ACCOUNTS allow'"
say "pgbench role $ROLE sees $ACCOUNTS accounts through RLS"

# Account ids for wrk (the same md5(n::text)::uuid as pgbench's scripts), as a Lua table.
{
  echo "return {"
  sql_value "SELECT format('\"%s\",', md5(g::text)::uuid) FROM generate_series(1, $ACCOUNTS) AS g"
  echo "}"
} >"$WORK/accounts.lua"

# The JWT: long enough for the whole run.
TTL=$((3600 + ${#FNS[@]} * $(wc -w <<<"$CLIENTS") * (2 * DURATION + 30)))
(umask 077 && "$REPO/scripts/mec" token --role mec_service --namespace "$NS" --ttl "$TTL" >"$WORK/token") ||
  die "scripts/mec token failed"
[[ -s $WORK/token ]] || die "scripts/mec token printed nothing"

probe="$("$CURL" -s -m 10 -w ' %{http_code}' -H "Authorization: Bearer $(cat "$WORK/token")" \
  -H 'Content-Type: application/json' \
  -d "{\"p_account_id\":\"$(sql_value "SELECT md5('1')::uuid")\",\"p_resource_type\":\"bench_units\",\"p_requested_qty\":1}" \
  "$GW/api/rpc/check_entitlement" 2>&1)" || true
[[ $probe == *'"allow"'*' 200' ]] || die "the gateway does not answer check_entitlement for the bench namespace: $probe"
say "gateway $GW answers check_entitlement for the bench namespace"

POOL="$("$CURL" -s -m 5 "$GW/metrics" 2>/dev/null | sed -n 's/^mec_gateway_db_pool_max_connections \([0-9]*\).*/\1/p' | head -1)"
# /metrics sums the three role pools (one per mec role); MEC_POOL_SIZE is per role.
[[ -n $POOL ]] && POOL=$((POOL / 3))

# ------------------------------------------------------------------ runs
RUN_ID="gw$(date -u +%Y%m%d%H%M%S)-$$"
META="$WORK/meta.tsv"
RESULTS="$WORK/results.tsv"
{
  printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
  printf 'command\t%s\n' "$COMMAND"
  printf 'label\t%s\n' "$LABEL"
  printf 'server_version\t%s\n' "$(sql_value 'SHOW server_version' | cut -d' ' -f1)"
  printf 'synchronous_commit\t%s\n' "$(sql_value 'SHOW synchronous_commit')"
  printf 'extversion\t%s\n' "$(sql_value "SELECT extversion FROM pg_extension WHERE extname = 'pg_mec'")"
  printf 'gateway_version\t%s\n' "$("$CURL" -s -m 5 "$GW/health" | sed -n 's/.*"version":"\([^"]*\)".*/\1/p')"
  printf 'pool\t%s\n' "${POOL:-?}"
  printf 'cpus\t%s\n' "$NPROC"
  printf 'cpu\t%s\n' "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -1 | tr -s ' ')"
  printf 'load\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
  printf 'duration\t%s\n' "$DURATION"
  printf 'wrk\t%s\n' "$("$WRK" -v 2>&1 | head -1 | cut -d' ' -f1-2)"
} >"$META"
printf 'side\tfunction\tclients\trps\tp50_ms\tp99_ms\trequests\tbad\tdetail\tcpu_client\tcpu_gateway\tcpu_machine\n' >"$RESULTS"

# CPU use during a run, in cores: the load generator (wrk or pgbench, from bash's `time`), the
# gateway process (from /proc, found by its listening port) and the whole machine (/proc/stat: the
# other sessions on a shared machine show up here). Printed as "client<TAB>gateway<TAB>machine".
CLK="$(getconf CLK_TCK 2>/dev/null || echo 100)"
GW_PORT="${GW##*:}"
GW_PORT="${GW_PORT%%/*}"
GW_PID=""
gateway_pid() {
  GW_PID="$(ss -ltnpH "sport = :$GW_PORT" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1)"
}
proc_ticks() { [[ -n $1 && -r /proc/$1/stat ]] && sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8}' /proc/stat 2>/dev/null; }
cpu_begin() {
  gateway_pid
  CPU_T0=$EPOCHREALTIME
  CPU_GW0="$(proc_ticks "$GW_PID" || true)"
  CPU_ALL0="$(busy_ticks || true)"
}
cpu_end() {
  local t1=$EPOCHREALTIME gw1 all1
  gw1="$(proc_ticks "$GW_PID" || true)"
  all1="$(busy_ticks || true)"
  awk -v t0="$CPU_T0" -v t1="$t1" -v clk="$CLK" -v g0="${CPU_GW0:-x}" -v g1="${gw1:-x}" \
    -v a0="${CPU_ALL0:-x}" -v a1="${all1:-x}" '
    /^MECTIME / { client = $2 + $3 }
    END {
      el = t1 - t0; if (el <= 0) el = 1
      c = (client == "") ? "nan" : sprintf("%.2f", client / el)
      g = (g0 == "x" || g1 == "x") ? "nan" : sprintf("%.2f", (g1 - g0) / clk / el)
      a = (a0 == "x" || a1 == "x") ? "nan" : sprintf("%.2f", (a1 - a0) / clk / el)
      printf "%s\t%s\t%s", c, g, a
    }' "$1"
}
TIMEFORMAT='MECTIME %U %S'

pgbench_script() {
  case $1 in
    check_entitlement) echo "$BENCH_DIR/check.pgbench" ;;
    meter_consumption) echo "$BENCH_DIR/meter.pgbench" ;;
  esac
}

run_wrk() {
  local f=$1 c=$2 t out line rps p50 p99 n bad detail cpu
  t=$((c < NPROC ? c : NPROC))
  out="$WORK/wrk.$f.c$c"
  wait_gateway
  sql -c CHECKPOINT
  cpu_begin
  {
    time "$WRK" -t "$t" -c "$c" -d "${DURATION}s" --timeout 10s --latency -s "$BENCH_DIR/gateway.lua" \
      "$GW/api/rpc/$f" -- "$f" "$WORK/accounts.lua" "$WORK/token" "$RUN_ID-c$c" >"$out.out" 2>"$out.err" || true
  } 2>"$out.time"
  cpu="$(cpu_end "$out.time")"
  line="$(grep -m1 '^MECGW ' "$out.out" || true)"
  if [[ -z $line ]]; then
    printf 'gateway\t%s\t%s\tnan\tnan\tnan\t0\t1\twrk failed: %s\t%s\n' "$f" "$c" \
      "$(tr '\n\t' '  ' <"$out.err" | cut -c1-200)" "$cpu" >>"$RESULTS"
    say "$(printf '%-18s gateway %3s conns  wrk failed: %s' "$f" "$c" "$(head -c 200 "$out.err")")"
    return
  fi
  read -r rps p50 p99 n bad detail <<<"$("$PYTHON" "$BENCH_DIR/report.py" wrk "$line")"
  printf 'gateway\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$f" "$c" "$rps" "$p50" "$p99" "$n" "$bad" "$detail" "$cpu" >>"$RESULTS"
  say "$(printf '%-18s gateway %3s conns  %8.0f req/s  p50 %7s ms  p99 %7s ms' "$f" "$c" "$rps" "$p50" "$p99")$(
    ((bad > 0)) && echo "  ($bad bad: $detail)")"
}

run_pgbench() {
  local f=$1 c=$2 j out prefix rc tps lat p50 p99 n failed detail cpu
  j=$((c < NPROC ? c : NPROC))
  out="$WORK/pgbench.$f.c$c"
  prefix="$WORK/log/$f.c$c"
  mkdir -p "$WORK/log"
  sql -c CHECKPOINT
  rc=0
  cpu_begin
  {
    time as_role "$PGBENCH" -n -M prepared -T "$DURATION" -c "$c" -j "$j" -s 10 \
      -l --log-prefix="$prefix" -f "$(pgbench_script "$f")" "$DB" >"$out.out" 2>"$out.err"
  } 2>"$out.time" || rc=$?
  cpu="$(cpu_end "$out.time")"
  tps="$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$out.out" | head -1)"
  lat="$("$PYTHON" "$BENCH_DIR/report.py" latency "$prefix")"
  ((KEEP)) || rm -f -- "$prefix".*
  read -r p50 p99 n failed <<<"$lat"
  detail="-"
  if ((rc != 0 || failed != 0)); then
    detail="pgbench exit $rc, $failed failed: $(grep -m1 -iE 'error|abort' "$out.err" | tr '\t' ' ' | cut -c1-200 || true)"
    ((failed > 0)) || failed=1
  fi
  printf 'pgbench\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$f" "$c" "${tps:-nan}" "$p50" "$p99" "$n" "$failed" "$detail" "$cpu" >>"$RESULTS"
  say "$(printf '%-18s pgbench %3s conns  %8.0f tps    p50 %7s ms  p99 %7s ms' "$f" "$c" "${tps:-0}" "$p50" "$p99")$(
    [[ $detail != - ]] && echo "  ($detail)")"
}

total=$((${#FNS[@]} * $(wc -w <<<"$CLIENTS") * 2))
say "$total runs of $DURATION s (about $((total * (DURATION + 3) / 60 + 1)) min); gateway pool size ${POOL:-?} per role (MEC_POOL_SIZE)"
for c in $CLIENTS; do
  for f in "${FNS[@]}"; do
    run_wrk "$f" "$c"
    run_pgbench "$f" "$c"
  done
done

# The metered events of the bench namespace (not the setup's 'warm-…' ones), then its counters
# rebuilt from what is left of its ledger, so that counters and ledger keep agreeing.
purge_events() {
  local n
  n="$(sql -At -v ON_ERROR_STOP=1 <<SQL
BEGIN;
WITH d AS (DELETE FROM mec_data.consumption
           WHERE namespace_id = '$NS' AND idempotency_key NOT LIKE 'warm-%'
           RETURNING 1)
SELECT count(*) FROM d;
DELETE FROM mec_data.usage_counters WHERE namespace_id = '$NS';
INSERT INTO mec_data.usage_counters (namespace_id, account_id, resource_type, period_start, slot, period_end, used)
SELECT namespace_id, account_id, resource_type, period_start, 0, max(period_end), sum(quantity)
FROM mec_data.consumption WHERE namespace_id = '$NS' AND billable
GROUP BY namespace_id, account_id, resource_type, period_start;
COMMIT;
SQL
)"
  say "deleted the ${n//[^0-9]/} events metered in namespace $NS_NAME and rebuilt its counters from the ledger (--keep-data keeps them)"
  # Vacuumed now, not by autovacuum during the next benchmark's first runs (it made them 2-4x
  # slower, at random).
  sql -c "VACUUM (ANALYZE) mec_data.consumption, mec_data.usage_counters" >/dev/null
  say "vacuumed mec_data.consumption and mec_data.usage_counters"
}
((KEEP_DATA)) || purge_events

mkdir -p "$BENCH_DIR/results"
"$PYTHON" "$BENCH_DIR/report.py" gateway "$RESULTS" "$META" >"$WORK/report.md"
cp "$RESULTS" "$BENCH_DIR/results/gateway-latest.tsv"
{
  [[ -s $BENCH_DIR/results/gateway-latest.md ]] && printf '\n---\n\n'
  cat "$WORK/report.md"
} >>"$BENCH_DIR/results/gateway-latest.md"
echo
cat "$WORK/report.md"
say "appended to bench/results/gateway-latest.md (raw runs of this run: bench/results/gateway-latest.tsv)"
((KEEP)) && say "wrk and pgbench output kept in $WORK"
exit 0
