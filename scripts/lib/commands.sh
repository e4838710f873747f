# shellcheck shell=bash
# The small subcommands of scripts/mec: down, status, psql, token, catalog, bench.

cmd_down() {
  local purge=0
  while (($#)); do
    case $1 in
      --purge) purge=1 ;;
      *) die "down: unknown argument $1 (usage: scripts/mec down [--purge])" ;;
    esac
    shift
  done
  step "stopping the gateway"
  stop_gateway
  step "stopping PostgreSQL"
  if [[ -d $MEC_DIR ]] || [[ -d "$(pg_base)" ]]; then
    stop_cluster
  fi
  if ((purge)); then
    set_pg_paths
    if [[ $PG_BASE != "$MEC_DIR" && $PG_BASE == /var/lib/postgresql/mec-* && -d $PG_BASE ]]; then
      step "removing $PG_BASE"
      rm -rf -- "$PG_BASE"
    fi
    if [[ -n $MEC_ROOT && -d $MEC_DIR ]]; then
      step "removing $MEC_DIR"
      rm -rf -- "$MEC_DIR"
    fi
  fi
}

cmd_status() {
  if [[ ! -f $MEC_ENV_FILE ]]; then
    echo "not set up (no .mec/env): run scripts/mec up"
    return 0
  fi
  set_pg_paths
  PG_PORT="$(env_get PGPORT)"
  if cluster_running; then
    echo "postgres: running on 127.0.0.1:$(running_port) ($PGDATA_DIR)"
  else
    echo "postgres: stopped ($PGDATA_DIR)"
  fi
  local pid spid url
  url="$(env_get MEC_GATEWAY_URL)"
  local supervised="not supervised"
  if use_systemd && [[ -f "$(gateway_unit_file)" ]]; then
    supervised="systemd unit $(gateway_unit)"
  elif spid="$(supervisor_pid)"; then
    supervised="supervisor pid $spid"
  fi
  if pid="$(gateway_pid)"; then
    if curl -fsS --max-time 2 "$url/health" >/dev/null 2>&1; then
      echo "gateway:  running, pid $pid, $url (healthy; $supervised)"
    else
      echo "gateway:  running, pid $pid, $url (/health does not answer; $supervised)"
    fi
  else
    echo "gateway:  stopped ($supervised)"
  fi
  echo "demo:     namespace $(env_get MEC_DEMO_NAMESPACE_ID), account $(env_get MEC_DEMO_ACCOUNT_ID)"
}

cmd_psql() {
  load_env
  export PGOPTIONS="${PGOPTIONS:+$PGOPTIONS }-c mec.namespace_id=$MEC_DEMO_NAMESPACE_ID"
  exec "$PG_BIN/psql" "$@"
}

cmd_token() {
  load_env
  local role="" ns="$MEC_DEMO_NAMESPACE_ID" account="" ttl="" extra=()
  while (($#)); do
    case $1 in
      --role) role=${2:?--role needs a value}; shift 2 ;;
      --role=*) role=${1#*=}; shift ;;
      --namespace) ns=${2:?--namespace needs a value}; shift 2 ;;
      --namespace=*) ns=${1#*=}; shift ;;
      --account) account=${2:?--account needs a value}; shift 2 ;;
      --account=*) account=${1#*=}; shift ;;
      --ttl) ttl=${2:?--ttl needs a value}; shift 2 ;;
      --ttl=*) ttl=${1#*=}; shift ;;
      *) extra+=("$1"); shift ;;
    esac
  done
  [[ -n $role ]] || die "usage: scripts/mec token --role mec_user|mec_service|mec_admin [--namespace N] [--account A] [--ttl S]"
  [[ -x $GATEWAY_BIN ]] || die "$GATEWAY_BIN not found: run 'scripts/mec up' first"
  local args=(token --role "$role" --namespace "$ns")
  [[ -n $account ]] && args+=(--account "$account")
  [[ -n $ttl ]] && args+=(--ttl "$ttl")
  MEC_JWT_SECRET="$MEC_JWT_SECRET" exec "$GATEWAY_BIN" "${args[@]}" "${extra[@]}"
}

cmd_catalog() {
  local sub="${1:-}"
  [[ $sub == load ]] || die "usage: scripts/mec catalog load FILE [--namespace N]"
  shift
  local file="" ns=""
  while (($#)); do
    case $1 in
      --namespace) ns=${2:?--namespace needs a value}; shift 2 ;;
      --namespace=*) ns=${1#*=}; shift ;;
      -*) die "catalog load: unknown option $1" ;;
      *)
        [[ -z $file ]] || die "catalog load: one FILE only"
        file=$1
        shift
        ;;
    esac
  done
  [[ -n $file ]] || die "usage: scripts/mec catalog load FILE [--namespace N]"
  [[ -r $file ]] || die "cannot read $file"
  file="$(readlink -f "$file")"
  load_env
  [[ -n $ns ]] || ns="$MEC_DEMO_NAMESPACE_ID"
  # Syntax first, with line and column; the schema is checked by mec.load_catalog.
  if ! python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$file" 2>"$MEC_DIR/catalog.err"; then
    echo "mec: $file is not valid JSON: $(tail -n 1 "$MEC_DIR/catalog.err")" >&2
    exit 1
  fi
  local out err rc=0
  err="$(mktemp)"
  out="$(env -u PGOPTIONS "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -v file="$file" -v ns="$ns" 2>"$err" <<'SQL'
\set VERBOSITY verbose
\set cat `cat :'file'`
SET mec.namespace_id = :'ns';
SELECT jsonb_pretty(mec.load_catalog(p_catalog => :'cat'::jsonb));
SQL
  )" || rc=$?
  if ((rc == 0)); then
    printf '%s\n' "$out"
    rm -f "$err"
    return 0
  fi
  # Show the error, with a JSON DETAIL pretty-printed.
  python3 - "$err" <<'PY' >&2 || cat "$err" >&2
import json, re, sys
text = open(sys.argv[1]).read()
# keep ERROR (with its SQLSTATE), DETAIL, HINT; drop CONTEXT/LOCATION lines
text = "\n".join(l for l in text.splitlines() if not l.startswith(("LOCATION:", "CONTEXT:")))
m = re.search(r"^DETAIL:\s+(.*?)(?=^\w+:\s|\Z)", text, re.S | re.M)
head = text[: m.start()] if m else text
print(head.rstrip())
if m:
    detail = m.group(1).strip()
    try:
        print("DETAIL:")
        print(json.dumps(json.loads(detail), indent=2, ensure_ascii=False))
    except ValueError:
        print(detail)
    rest = text[m.end():].strip()
    if rest:
        print(rest)
PY
  rm -f "$err"
  exit 1
}

cmd_bench() {
  [[ -f $MEC_ROOT/bench/run.sh ]] || die "bench/run.sh not found"
  "$MEC_ROOT/scripts/mec" up
  load_env
  cd "$MEC_ROOT"
  exec bash bench/run.sh "$@"
}
