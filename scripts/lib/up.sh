# shellcheck shell=bash
# `scripts/mec up`: from a fresh Debian 12 machine to a running pg_mec.
# Every step checks before it acts, so running it again is cheap and safe.
#
# Switches (environment):
#   MEC_SKIP_EXTENSION=1  don't build/install/create the extension, load no demo
#                         data, don't start the gateway (cluster + database only)
#   MEC_SKIP_GATEWAY=1    don't build or start the gateway
#   MEC_SKIP_APT=1        don't check Debian packages
#   MEC_RESET=1           drop and recreate the extension (loses its data), reload demo data
#   MEC_FORCE_INSTALL=1   rebuild and reinstall the extension even if nothing changed

APT_PACKAGES=(
  postgresql-15 postgresql-server-dev-15 postgresql-15-pgtap
  libtap-parser-sourcehandler-pgtap-perl sudo wrk python3-venv pkg-config
  libclang-dev curl ca-certificates
)

# ------------------------------------------------------------ 1. packages
up_apt() {
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$p")
    fi
  done
  if ((${#missing[@]} == 0)); then
    step "apt: all packages present"
    return
  fi
  step "apt: installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# ------------------------------------------------------------ 2. cargo-pgrx
up_pgrx() {
  ensure_cargo
  local have
  have="$(cargo pgrx --version 2>/dev/null || true)"
  if [[ " $have " == *" $PGRX_VERSION "* ]]; then
    step "cargo-pgrx $PGRX_VERSION present"
  else
    step "installing cargo-pgrx $PGRX_VERSION (a few minutes on 2 cores)"
    cargo install cargo-pgrx --version "=$PGRX_VERSION" --locked
  fi
  local cfg="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
  if [[ -f $cfg ]] && grep -q '^pg15[[:space:]]*=' "$cfg"; then
    step "cargo pgrx: pg15 registered"
  else
    step "cargo pgrx init --pg15 $PG_CONFIG"
    cargo pgrx init --pg15 "$PG_CONFIG"
  fi
}

# ------------------------------------------------------------ 3. extension build
ext_source_hash() {
  (
    cd "$MEC_ROOT"
    {
      rustc -V
      cargo pgrx --version
      local f
      for f in Cargo.toml Cargo.lock; do
        if [[ -f $f ]]; then sha256sum "$f"; fi
      done
      find pg_mec sql -type f \
        -not -path '*/target/*' -not -path 'pg_mec/tests/*' -not -path 'sql/demo/*' \
        -print0 | sort -z | xargs -0 -r sha256sum
    } | sha256_of_stdin
  )
}

installed_so() { echo "$("$PG_CONFIG" --pkglibdir)/pg_mec.so"; }

# cargo pgrx writes pg_mec.so in place (truncate + write); a backend that has
# the old file mapped would crash. Renaming it first makes the install create a
# new file while running backends keep the old one.
set_aside_installed_so() {
  local so
  so="$(installed_so)"
  if [[ -f $so ]]; then as_root mv -f "$so" "$so.prev"; fi
}
restore_installed_so() {
  local so
  so="$(installed_so)"
  if [[ ! -f $so && -f $so.prev ]]; then as_root mv -f "$so.prev" "$so"; fi
}
drop_set_aside_so() {
  local so
  so="$(installed_so)"
  if [[ -f $so.prev ]]; then as_root rm -f "$so.prev"; fi
}

installed_so_hash() {
  local so
  so="$(installed_so)"
  if [[ -f $so ]]; then sha256sum "$so" | cut -d' ' -f1; else echo none; fi
}

up_extension_build() {
  local stamp="$MEC_DIR/extension.build" want have
  want="$(ext_source_hash)"
  if [[ -f $stamp ]] && ! flag MEC_FORCE_INSTALL &&
    [[ $(sed -n 1p "$stamp") == "$want" && $(sed -n 2p "$stamp") == "$(installed_so_hash)" ]] &&
    [[ -f "$("$PG_CONFIG" --sharedir)/extension/pg_mec.control" ]]; then
    step "extension: unchanged since last install, skipping build"
    return
  fi
  stop_gateway
  step "extension: cargo pgrx install --release (a clean build takes minutes)"
  local sudo_flag=()
  is_root || sudo_flag=(--sudo)
  set_aside_installed_so
  if ! (cd "$MEC_ROOT/pg_mec" && cargo pgrx install --release --pg-config "$PG_CONFIG" "${sudo_flag[@]}"); then
    restore_installed_so
    die "cargo pgrx install failed"
  fi
  drop_set_aside_so
  have="$(installed_so_hash)"
  [[ $have != none ]] || die "cargo pgrx install finished but $(installed_so) is missing"
  printf '%s\n%s\n' "$want" "$have" >"$stamp"
}

# ------------------------------------------------------------ 4. gateway build
up_gateway_build() {
  step "gateway: cargo build --release -p mec_gateway"
  (cd "$MEC_ROOT" && cargo build --release -p mec_gateway)
  [[ -x $GATEWAY_BIN ]] || die "build finished but $GATEWAY_BIN is missing"
}

# ------------------------------------------------------------ secrets & env
# Values that must survive re-runs are read back from .mec/env; missing ones
# are generated once and written at once (before initdb uses them).
up_load_state() {
  PG_PASSWORD="$(env_get PGPASSWORD)"
  AUTH_PASSWORD="$(env_get MEC_AUTHENTICATOR_PASSWORD)"
  JWT_SECRET="$(env_get MEC_JWT_SECRET)"
  DEMO_NS="$(env_get MEC_DEMO_NAMESPACE_ID)"
  DEMO_ACCOUNT="$(env_get MEC_DEMO_ACCOUNT_ID)"
  PG_PORT="$(env_get PGPORT)"
  GW_ADDR="$(env_get MEC_GATEWAY_ADDR)"
  [[ -n $PG_PASSWORD ]] || PG_PASSWORD="$(rand_hex 24)"
  [[ -n $AUTH_PASSWORD ]] || AUTH_PASSWORD="$(rand_hex 24)"
  ((${#JWT_SECRET} >= 32)) || JWT_SECRET="$(rand_hex 32)"
  [[ -n $DEMO_NS ]] || DEMO_NS="$(new_uuid)"
  [[ -n $DEMO_ACCOUNT ]] || DEMO_ACCOUNT="$(new_uuid)"
  [[ -n $GW_ADDR ]] || GW_ADDR="127.0.0.1:8000"
}

kv() { printf 'export %s=%q\n' "$1" "$2"; }

write_env() {
  local tmp port="${PG_PORT:-5432}"
  local su_url="postgres://postgres:$PG_PASSWORD@127.0.0.1:$port/mec"
  local auth_url="postgres://mec_authenticator:$AUTH_PASSWORD@127.0.0.1:$port/mec"
  tmp="$(mktemp "$MEC_DIR/env.XXXXXX")"
  chmod 600 "$tmp"
  {
    echo "# pg_mec local setup, written by scripts/mec up. Load with: source .mec/env"
    echo "# MEC_DATABASE_URL is the superuser URL; the gateway itself connects with MEC_AUTHENTICATOR_URL."
    kv MEC_ROOT "$MEC_ROOT"
    kv MEC_DATABASE_URL "$su_url"
    kv MEC_TEST_DATABASE_URL "$su_url"
    kv MEC_AUTHENTICATOR_URL "$auth_url"
    kv MEC_AUTHENTICATOR_PASSWORD "$AUTH_PASSWORD"
    kv MEC_GATEWAY_ADDR "$GW_ADDR"
    kv MEC_GATEWAY_URL "http://$GW_ADDR"
    kv MEC_JWT_SECRET "$JWT_SECRET"
    kv MEC_DEMO_NAMESPACE_ID "$DEMO_NS"
    kv MEC_DEMO_ACCOUNT_ID "$DEMO_ACCOUNT"
    kv MEC_PGDATA "$PGDATA_DIR"
    kv MEC_PG_SOCKET_DIR "$PG_SOCKET_DIR"
    kv MEC_PG_BIN "$PG_BIN"
    kv PGHOST 127.0.0.1
    kv PGPORT "$port"
    kv PGUSER postgres
    kv PGPASSWORD "$PG_PASSWORD"
    kv PGDATABASE mec
  } >"$tmp"
  mv -f "$tmp" "$MEC_ENV_FILE"
}

# ------------------------------------------------------------ 5. cluster
pick_locale() {
  if locale -a 2>/dev/null | grep -Eiq '^c\.utf-?8$'; then echo C.UTF-8; else echo C; fi
}

# Brings a cluster found in any state to ready or down (in CLUSTER_STATE): waits for a postmaster
# that does not accept connections yet (start-up, crash recovery), and clears what a killed
# server left behind, so that `up` right after a kill -9 brings the cluster back.
settle_cluster() {
  local i
  CLUSTER_STATE="$(cluster_state)"
  if [[ $CLUSTER_STATE == starting ]]; then
    info "cluster: postmaster $(live_postmaster_pid) does not accept connections yet; waiting up to 120 s"
    for ((i = 0; i < 240; i++)); do
      CLUSTER_STATE="$(cluster_state)"
      [[ $CLUSTER_STATE == starting ]] || break
      sleep 0.5
    done
    [[ $CLUSTER_STATE != starting ]] ||
      die "the cluster's postmaster does not accept connections after 120 s (log: $PG_LOG)"
  fi
  if [[ $CLUSTER_STATE == down && -f $PGDATA_DIR/postmaster.pid ]]; then
    clear_dead_server
  fi
}

# A killed server leaves its postmaster.pid (whose pid can linger as a zombie, which a new
# postmaster takes for a live one) and server processes that have not yet noticed the
# postmaster is gone (they exit within seconds; a new postmaster refuses to start while they
# hold the old shared memory).
clear_dead_server() {
  local i left=""
  info "cluster: no server runs, but it left $PGDATA_DIR/postmaster.pid (crashed or killed); recovering"
  for ((i = 0; i < 60; i++)); do
    left="$(pgdata_processes)"
    [[ -z $left ]] && break
    sleep 0.5
  done
  if [[ -n $left ]]; then
    warn "processes of the dead server still run after 30 s ($(echo "$left" | tr '\n' ' ')); ending them"
    # shellcheck disable=SC2086
    kill -QUIT $left 2>/dev/null || true
    sleep 2
  fi
  rm -f "$PGDATA_DIR/postmaster.pid"
  # Its socket lock files name the dead pid too, and would stop the new postmaster the same way.
  local lock pid
  for lock in "$PG_SOCKET_DIR"/.s.PGSQL.*.lock; do
    [[ -f $lock ]] || continue
    pid="$(sed -n 1p "$lock" 2>/dev/null)"
    if ! [[ $pid =~ ^[0-9]+$ ]] || ! live_postgres_process "$pid"; then rm -f "$lock"; fi
  done
}

# The cluster, step by step; the steps share PG_OS_USER, PG_PORT, CLUSTER_RUNNING and
# CLUSTER_SETTINGS_CHANGED.
up_cluster() {
  PG_OS_USER="$(pg_os_user)"
  id "$PG_OS_USER" >/dev/null 2>&1 || die "OS user '$PG_OS_USER' does not exist (is postgresql-15 installed?)"
  [[ -x $PG_BIN/initdb ]] || die "$PG_BIN/initdb not found (is postgresql-15 installed?)"
  set_pg_paths
  cluster_dirs
  cluster_initdb
  cluster_port
  cluster_settings
  write_env
  cluster_start
  cluster_password
}

# The data, socket and log locations, owned by the cluster's OS user (outside .mec/ when that user
# cannot reach it: see docs/operations.md#root).
cluster_dirs() {
  local user=$PG_OS_USER
  if [[ $PG_BASE != "$MEC_DIR" ]]; then
    info "postgres cannot reach $MEC_DIR; cluster files live in $PG_BASE"
    mkdir -p "$PG_BASE"
    chown "$user:" "$PG_BASE"
    chmod 700 "$PG_BASE"
    ln -sfn "$PGDATA_DIR" "$MEC_DIR/pgdata"
    ln -sfn "$PG_SOCKET_DIR" "$MEC_DIR/run"
    ln -sfn "$PG_LOG" "$MEC_DIR/postgres.log"
  fi
  mkdir -p "$PG_SOCKET_DIR"
  chmod 755 "$PG_SOCKET_DIR"
  [[ -e $PG_LOG ]] || : >"$PG_LOG"
  if is_root; then
    chown "$user:" "$PG_SOCKET_DIR" "$PG_LOG"
    if [[ -d $PGDATA_DIR ]] && [[ $(stat -c %U "$PGDATA_DIR") != "$user" ]]; then
      info "giving $PGDATA_DIR to $user"
      chown -R "$user:" "$PGDATA_DIR"
    fi
  fi
}

# initdb, once.
cluster_initdb() {
  local user=$PG_OS_USER
  if [[ -f $PGDATA_DIR/PG_VERSION ]]; then
    step "cluster: reusing $PGDATA_DIR"
    return
  fi
  if [[ -d $PGDATA_DIR ]] && [[ -n "$(ls -A "$PGDATA_DIR")" ]]; then
    die "$PGDATA_DIR exists, is not empty and holds no cluster; remove it or run 'scripts/mec down --purge'"
  fi
  local locale pwfile
  locale="$(pick_locale)"
  step "cluster: initdb $PGDATA_DIR (owner $user, locale $locale)"
  mkdir -p "$PGDATA_DIR"
  chmod 700 "$PGDATA_DIR"
  pwfile="$PG_BASE/.initdb-pw"
  (umask 077 && printf '%s\n' "$PG_PASSWORD" >"$pwfile")
  if is_root; then chown "$user:" "$PGDATA_DIR" "$pwfile"; fi
  if ! as_pg "$PG_BIN/initdb" -D "$PGDATA_DIR" -U postgres \
    --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale="$locale" --pwfile="$pwfile" >"$MEC_DIR/initdb.log" 2>&1; then
    rm -f "$pwfile"
    cat "$MEC_DIR/initdb.log" >&2
    die "initdb failed"
  fi
  rm -f "$pwfile"
}

# The port: a running cluster's own, else the recorded one, else the next free one. Also decides
# whether the cluster runs (CLUSTER_RUNNING), after settling a starting or dead one.
cluster_port() {
  CLUSTER_RUNNING=0
  settle_cluster
  if [[ $CLUSTER_STATE == ready ]]; then
    CLUSTER_RUNNING=1
    PG_PORT="$(running_port)"
    [[ -n $PG_PORT ]] || die "cannot read the port of the running cluster from $PGDATA_DIR/postmaster.pid"
    return
  fi
  local want="${PG_PORT:-5432}"
  if port_in_use "$want"; then
    PG_PORT="$(next_free_port $((want + 1)))"
    info "port $want is taken, using $PG_PORT"
  else
    PG_PORT="$want"
  fi
}

# Our settings live in pg_mec.conf, included once from postgresql.conf and rewritten on every run
# (so a new port is picked up). pg_mec is preloaded (its shared entitlement cache lives in shared
# memory set up at server start) once the library is installed: a server cannot start preloading
# a missing one.
cluster_settings() {
  local conf="$PGDATA_DIR/postgresql.conf" inc="$PGDATA_DIR/pg_mec.conf"
  if ! grep -q "^include_if_exists = 'pg_mec.conf'" "$conf"; then
    printf "\n# added by scripts/mec up\ninclude_if_exists = 'pg_mec.conf'\n" >>"$conf"
  fi
  local preload=""
  if [[ -f "$(installed_so)" ]]; then
    preload="shared_preload_libraries = 'pg_mec'
pg_mec.shared_cache_entries = 32768"
  fi
  local new old=""
  new="$(
    cat <<EOF
# written by scripts/mec up; edit postgresql.conf (after the include) to override
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCKET_DIR'
max_connections = 200
shared_buffers = 256MB
$preload
EOF
  )"
  [[ -f $inc ]] && old="$(cat "$inc")"
  CLUSTER_SETTINGS_CHANGED=0
  if [[ $new != "$old" ]]; then
    CLUSTER_SETTINGS_CHANGED=1
    printf '%s\n' "$new" >"$inc"
    if is_root; then chown "$PG_OS_USER:" "$inc"; fi
  fi
}

# Starts the cluster, or restarts a running one whose settings or preloaded library changed (a
# preloaded library is mapped by the postmaster: a new pg_mec.so takes effect only after a restart;
# .mec/cluster.so records the build the server started with).
cluster_start() {
  local loaded="$MEC_DIR/cluster.so" reason=""
  if ((CLUSTER_SETTINGS_CHANGED)); then
    reason="settings changed"
  elif [[ -f "$(installed_so)" && $(cat "$loaded" 2>/dev/null) != "$(installed_so_hash)" ]]; then
    reason="pg_mec.so changed"
  fi
  if ((CLUSTER_RUNNING)); then
    if [[ -n $reason ]]; then
      step "cluster: $reason, restarting (port $PG_PORT)"
      as_pg env -u RUST_BACKTRACE "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" -m fast -w -t 90 restart >/dev/null ||
        {
          tail -n 30 "$PG_LOG" >&2
          die "PostgreSQL restart failed (log: $PG_LOG)"
        }
    else
      step "cluster: already running on port $PG_PORT"
    fi
  else
    step "cluster: starting on port $PG_PORT (log $PG_LOG)"
    if ! as_pg env -u RUST_BACKTRACE "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" -w -t 90 start >/dev/null; then
      tail -n 30 "$PG_LOG" >&2
      die "PostgreSQL did not start (log: $PG_LOG)"
    fi
  fi
  installed_so_hash >"$loaded"
}

# The superuser password always matches .mec/env (also after .mec/env was lost).
cluster_password() {
  admin_psql -d postgres -v pw="$PG_PASSWORD" <<'SQL'
ALTER ROLE postgres PASSWORD :'pw';
SQL
}

# ------------------------------------------------------------ 6. database + extension
up_database() {
  if [[ $(admin_value -d postgres "SELECT count(*) FROM pg_database WHERE datname = 'mec'") == 0 ]]; then
    step "database: creating mec"
    admin_psql -d postgres -c 'CREATE DATABASE mec'
  else
    step "database: mec exists"
  fi
  # Check what clients will use: TCP with the password.
  PGPASSWORD="$PG_PASSWORD" env -u PGOPTIONS "$PG_BIN/psql" -X -q -At \
    -h 127.0.0.1 -p "$PG_PORT" -U postgres -d mec -c 'SELECT 1' >/dev/null ||
    die "cannot log in over TCP as postgres at 127.0.0.1:$PG_PORT"
}

# Install scripts of earlier releases (pg_mec/sql/pg_mec--X.Y.Z.sql, kept as they shipped) next to
# the current one, so that an old version can be created to test upgrades from it (cargo pgrx
# install copies only the current script and the upgrade scripts pg_mec--A--B.sql).
install_release_scripts() {
  local dir f dest
  dir="$("$PG_CONFIG" --sharedir)/extension"
  shopt -s nullglob
  for f in "$MEC_ROOT"/pg_mec/sql/pg_mec--*.sql; do
    [[ $(basename "$f") =~ ^pg_mec--[^-]+\.sql$ ]] || continue
    dest="$dir/$(basename "$f")"
    if ! cmp -s "$f" "$dest"; then as_root cp "$f" "$dest"; fi
  done
  shopt -u nullglob
}

# The checksum of what the install script of extension version $1 does: its lines without
# comments, sorted (cargo-pgrx writes source positions into comments and does not keep the order
# of objects stable, neither of which changes the schema).
ext_sql_checksum() {
  local file
  file="$("$PG_CONFIG" --sharedir)/extension/pg_mec--$1.sql"
  [[ -f $file ]] || die "$file not found: the extension is not installed"
  sed -e 's:/\*[^*]*\*/::g' -e 's/--.*$//' -e 's/[[:space:]]*$//' "$file" | grep -v '^$' | LC_ALL=C sort |
    sha256_of_stdin
}

# Never drops the extension (that deletes every namespace's data) unless MEC_RESET=1 asks to:
# a new version is reached with ALTER EXTENSION pg_mec UPDATE and the upgrade scripts in
# pg_mec/sql/; changed SQL under an unchanged version is refused with what to do instead.
up_extension_sql() {
  local stamp="$MEC_DIR/extension.sql.sha256" installed default sum recorded=""
  install_release_scripts
  installed="$(admin_value "SELECT extversion FROM pg_extension WHERE extname = 'pg_mec'")"
  default="$(admin_value "SELECT default_version FROM pg_available_extensions WHERE name = 'pg_mec'")"
  [[ -n $default ]] || die "pg_mec is not installed in $("$PG_CONFIG" --sharedir)/extension"
  sum="$(ext_sql_checksum "$default")"
  # "v2 <version> <checksum>"; a stamp of an older format says nothing.
  [[ -f $stamp && $(cat "$stamp") == "v2 "* ]] && recorded="$(cat "$stamp")"
  if [[ -z $installed ]]; then
    step "extension: CREATE EXTENSION pg_mec ($default)"
    admin_psql -d mec -c 'CREATE EXTENSION IF NOT EXISTS pg_mec CASCADE'
  elif flag MEC_RESET; then
    step "extension: MEC_RESET=1, dropping and recreating pg_mec $default (its data is lost)"
    stop_gateway
    admin_psql -d mec -c 'DROP EXTENSION pg_mec CASCADE' -c 'CREATE EXTENSION pg_mec CASCADE'
  elif [[ $installed != "$default" ]]; then
    step "extension: ALTER EXTENSION pg_mec UPDATE ($installed -> $default)"
    admin_psql -d mec -c 'ALTER EXTENSION pg_mec UPDATE' ||
      die "ALTER EXTENSION pg_mec UPDATE from $installed to $default failed (nothing was changed or dropped).
    Add the missing upgrade script pg_mec/sql/pg_mec--$installed--$default.sql (or a chain of them) and
    run scripts/mec up again; MEC_RESET=1 scripts/mec up would drop and recreate pg_mec, deleting its data."
  elif [[ -n $recorded && $recorded != "v2 $default $sum" ]]; then
    die "the SQL of pg_mec $installed changed since it was installed in this cluster, but its version did not.
    Nothing was dropped. To apply it: give pg_mec a new version (pg_mec/Cargo.toml) with an upgrade script
    pg_mec/sql/pg_mec--$installed--<new>.sql, then run scripts/mec up (ALTER EXTENSION pg_mec UPDATE).
    For a development cluster whose data you do not need: MEC_RESET=1 scripts/mec up (drops pg_mec and its data)."
  else
    step "extension: pg_mec $installed up to date"
  fi
  printf 'v2 %s %s\n' "$default" "$sum" >"$stamp"

  # The gateway's login role. The extension creates it (NOLOGIN) with its
  # grants; we add LOGIN and a password. Created here only if it is missing.
  admin_psql -d mec -v pw="$AUTH_PASSWORD" <<'SQL'
SELECT 'CREATE ROLE mec_authenticator LOGIN NOINHERIT'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mec_authenticator') \gexec
SELECT format('GRANT %I TO mec_authenticator', r)
  FROM unnest(ARRAY['mec_user', 'mec_service', 'mec_admin']) AS r
 WHERE EXISTS (SELECT FROM pg_roles WHERE rolname = r)
   AND NOT pg_has_role('mec_authenticator', r, 'MEMBER') \gexec
ALTER ROLE mec_authenticator LOGIN PASSWORD :'pw';
SQL
}

# ------------------------------------------------------------ 7. demo data
up_demo() {
  [[ -f $DEMO_CATALOG ]] || die "$DEMO_CATALOG not found: the demo catalog is needed to load demo data"
  step "demo: namespace $DEMO_NS, catalog sql/demo/catalog.json, account $DEMO_ACCOUNT on 'starter'"
  local out
  if ! out="$(admin_psql -d mec -At -v ns="$DEMO_NS" -v acct="$DEMO_ACCOUNT" -v file="$DEMO_CATALOG" 2>&1 <<'SQL'
\set cat `cat :'file'`
SELECT 'namespace: ' || mec.create_namespace(p_name => 'demo', p_namespace_id => :'ns'::uuid)::text;
SET mec.namespace_id = :'ns';
SELECT 'catalog:   ' || mec.load_catalog(p_catalog => :'cat'::jsonb)::text;
SELECT 'account:   ' || mec.provision_plan(p_account_id => :'acct'::uuid, p_plan_id => 'starter',
                                           p_external_id => 'demo-user',
                                           p_idempotency_key => 'mec-up-demo-provision')::text;
SQL
  )"; then
    printf '%s\n' "$out" >&2
    die "loading the demo data failed"
  fi
  printf '%s\n' "$out" | cut -c1-160 | sed 's/^/    /'
}

# ------------------------------------------------------------ 8. gateway
up_gateway_start() {
  stop_gateway
  local host="${GW_ADDR%:*}" port="${GW_ADDR##*:}"
  [[ $port =~ ^[0-9]+$ ]] || port=8000
  if port_in_use "$port"; then
    local free
    free="$(next_free_port $((port + 1)))"
    info "port $port is taken, the gateway uses $free"
    port=$free
  fi
  GW_ADDR="$host:$port"
  write_env
  step "gateway: starting on http://$GW_ADDR (log $GATEWAY_LOG)"
  : >>"$GATEWAY_LOG"
  printf '\n--- %s scripts/mec up: starting gateway\n' "$(date -u +%FT%TZ)" >>"$GATEWAY_LOG"
  local auth_url="postgres://mec_authenticator:$AUTH_PASSWORD@127.0.0.1:$PG_PORT/mec"
  write_gateway_env "$auth_url"
  if use_systemd; then
    start_gateway_unit
  else
    start_gateway_supervised
  fi
  local i
  for ((i = 0; i < 60; i++)); do
    if curl -fsS --max-time 2 "http://$GW_ADDR/health" >/dev/null 2>&1; then
      info "gateway answers on http://$GW_ADDR/health (pid $(gateway_pid || echo '?'), $(gateway_supervision))"
      return 0
    fi
    sleep 0.5
  done
  echo "---- last lines of $GATEWAY_LOG (without /health polls) ----" >&2
  sed -n '/scripts\/mec up: starting gateway/,$p' "$GATEWAY_LOG" | grep -v '"path":"/health"' | tail -n 40 >&2 || true
  echo "---- last /health answers ----" >&2
  curl -sS --max-time 2 "http://$GW_ADDR/health" >&2 || true
  echo >&2
  stop_gateway
  die "the gateway did not answer /health with 2xx within 30 s (stopped it; log: $GATEWAY_LOG)"
}

# The gateway's settings, for the supervisor and the systemd unit alike (mode 600: a secret).
write_gateway_env() {
  local auth_url=$1 tmp
  tmp="$(mktemp "$MEC_DIR/gateway.env.XXXXXX")"
  chmod 600 "$tmp"
  {
    echo "MEC_DATABASE_URL=$auth_url"
    echo "MEC_AUTHENTICATOR_URL=$auth_url"
    echo "MEC_JWT_SECRET=$JWT_SECRET"
    echo "MEC_GATEWAY_ADDR=$GW_ADDR"
    # POST /webhooks/stripe (no namespace in the path) is the demo namespace's
    echo "MEC_DEFAULT_NAMESPACE_ID=$DEMO_NS"
  } >"$tmp"
  mv -f "$tmp" "$GATEWAY_ENV_FILE"
}

gateway_supervision() {
  if use_systemd; then echo "systemd unit $(gateway_unit)"; else echo "supervised by scripts/lib/supervise.sh"; fi
}

# Without systemd: scripts/lib/supervise.sh starts the gateway again whenever it dies.
start_gateway_supervised() {
  (
    set -a
    # shellcheck disable=SC1090
    source "$GATEWAY_ENV_FILE"
    set +a
    exec setsid nohup "$MEC_ROOT/scripts/lib/supervise.sh" "$GATEWAY_PID_FILE" "$GATEWAY_BIN" \
      </dev/null >>"$GATEWAY_LOG" 2>&1
  ) &
  echo $! >"$GATEWAY_SUPERVISOR_PID_FILE"
}

# With systemd (as root): one unit per clone, Restart=always.
start_gateway_unit() {
  local unit file new old=""
  unit="$(gateway_unit)"
  file="$(gateway_unit_file)"
  new="$(
    cat <<UNIT
# written by scripts/mec up for $MEC_ROOT
[Unit]
Description=pg_mec gateway ($MEC_ROOT)
After=network.target

[Service]
EnvironmentFile=$GATEWAY_ENV_FILE
ExecStart=$GATEWAY_BIN
Restart=always
RestartSec=1
StandardOutput=append:$GATEWAY_LOG
StandardError=append:$GATEWAY_LOG

[Install]
WantedBy=multi-user.target
UNIT
  )"
  [[ -f $file ]] && old="$(cat "$file")"
  if [[ $new != "$old" ]]; then
    printf '%s\n' "$new" >"$file"
    systemctl daemon-reload
  fi
  systemctl restart "$unit"
}

# ------------------------------------------------------------ 10. how to call it
up_print_usage() {
  local metered concurrency feature gw="http://$GW_ADDR"
  metered="$(catalog_resource metered api_calls)"
  concurrency="$(catalog_resource concurrency concurrent_jobs)"
  feature="$(catalog_resource feature sso)"
  cat <<EOF

pg_mec is up.
  PostgreSQL  127.0.0.1:$PG_PORT, database mec (superuser postgres; password in .mec/env)
  data        $PGDATA_DIR   log $PG_LOG
  gateway     $gw   log $GATEWAY_LOG
  settings    .mec/env  (source it: PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, MEC_*)
  demo        namespace $DEMO_NS, account $DEMO_ACCOUNT (plan starter)

SQL (scripts/mec psql connects with mec.namespace_id set to the demo namespace):
  scripts/mec psql -c "SELECT mec.check_entitlement(p_account_id => '$DEMO_ACCOUNT', p_resource_type => '$metered')"
  scripts/mec psql -c "SELECT mec.meter_consumption(p_idempotency_key => 'req-1', p_account_id => '$DEMO_ACCOUNT', p_resource_type => '$metered', p_quantity => 1)"
  scripts/mec psql -c "SELECT mec.acquire_lease(p_account_id => '$DEMO_ACCOUNT', p_resource_type => '$concurrency', p_holder => 'job-1', p_ttl_seconds => 60)"
  scripts/mec psql -c "SELECT mec.release_lease(p_lease_id => '<lease_id from acquire_lease>')"
  scripts/mec psql -c "SELECT mec.usage_summary(p_account_id => '$DEMO_ACCOUNT')"
  scripts/mec psql -c "SELECT mec.provision_plan(p_account_id => '$DEMO_ACCOUNT', p_plan_id => 'growth')"
  scripts/mec psql -c "SELECT mec.check_entitlement(p_account_id => '$DEMO_ACCOUNT', p_resource_type => '$feature')"

HTTP (PostgREST-compatible, under /api):
  TOKEN=\$(scripts/mec token --role mec_service)
  curl -sS $gw/api/rpc/check_entitlement -H "Authorization: Bearer \$TOKEN" \\
       -H 'Content-Type: application/json' \\
       -d '{"p_account_id": "$DEMO_ACCOUNT", "p_resource_type": "$metered"}'
  curl -sS $gw/api/rpc/meter_consumption -H "Authorization: Bearer \$TOKEN" \\
       -H 'Content-Type: application/json' \\
       -d '{"p_idempotency_key": "req-2", "p_account_id": "$DEMO_ACCOUNT", "p_resource_type": "$metered", "p_quantity": 1}'
EOF
}

print_usage_no_extension() {
  cat <<EOF

pg_mec cluster is up (MEC_SKIP_EXTENSION=1: no extension, demo data or gateway).
  PostgreSQL  127.0.0.1:$PG_PORT, database mec (superuser postgres; password in .mec/env)
  data        $PGDATA_DIR   log $PG_LOG
  settings    .mec/env
  try         scripts/mec psql -c 'SELECT version()'
EOF
}

# ------------------------------------------------------------ main
cmd_up() {
  mkdir -p "$MEC_DIR"
  chmod 755 "$MEC_DIR"
  if ! flag MEC_SKIP_APT; then up_apt; fi
  set_pg_paths
  up_load_state
  write_env

  # MEC_SKIP_EXTENSION skips steps 3, 6 (extension part), 7 and 8;
  # MEC_SKIP_GATEWAY skips steps 4 and 8.
  local skip_ext=0 skip_gw=0
  if flag MEC_SKIP_EXTENSION; then skip_ext=1; fi
  if flag MEC_SKIP_GATEWAY; then skip_gw=1; fi

  up_pgrx
  if ((!skip_ext)); then up_extension_build; fi
  if ((!skip_gw)); then up_gateway_build; fi
  up_cluster
  up_database
  if ((!skip_ext)); then
    up_extension_sql
    up_demo
  fi
  if ((!skip_ext && !skip_gw)); then
    up_gateway_start
  else
    stop_gateway
  fi
  write_env
  step "wrote .mec/env"
  if ((skip_ext)); then print_usage_no_extension; else up_print_usage; fi
}
