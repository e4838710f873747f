# shellcheck shell=bash
# `scripts/mec test`: `up`, then every suite against the real cluster.
# All suites run even when one fails; the exit code is non-zero on any failure.
#
# Switches: MEC_TEST_ONLY="cargo pgtap isolation pytest crash" runs a subset. Which test goes in
# which suite: CONTRIBUTING.md.

SUITE_PASSED=()
SUITE_FAILED=()
SUITE_SKIPPED=()
SUITE_LINES=()

# run_suite NAME FUNCTION: the function runs in a subshell with `set -e`;
# exit 0 = passed, 77 = skipped, anything else = failed.
run_suite() {
  local name=$1 fn=$2 rc start
  if [[ -n ${MEC_TEST_ONLY:-} && " $MEC_TEST_ONLY " != *" $name "* ]]; then
    return 0
  fi
  start=$SECONDS
  step "test: $name"
  local log="$MEC_DIR/test-$name.log"
  set +e
  (
    set -e
    "$fn"
  ) 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  local counts
  counts="$(suite_counts "$name" "$log")"
  case $rc in
    0)
      SUITE_PASSED+=("$name")
      SUITE_LINES+=("$name: passed${counts:+ ($counts)}, $((SECONDS - start)) s")
      ;;
    77)
      SUITE_SKIPPED+=("$name")
      SUITE_LINES+=("$name: skipped (no tests found or switched off)")
      ;;
    *)
      SUITE_FAILED+=("$name")
      SUITE_LINES+=("$name: FAILED, exit $rc${counts:+ ($counts)}, $((SECONDS - start)) s; output in ${log#"$MEC_ROOT/"}")
      ;;
  esac
  info "${SUITE_LINES[-1]}"
}

# One line of test counts from a suite's output, best effort.
suite_counts() {
  local name=$1 log=$2
  case $name in
    cargo)
      awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
           END { if (p + f > 0) printf "%d tests passed, %d failed", p, f }' "$log"
      ;;
    pgtap)
      awk '/^Files=[0-9]+, Tests=[0-9]+/ { split($1, a, "="); split($2, b, "="); files = a[2] + 0; tests = b[2] + 0 }
           /^Failed [0-9]+\/[0-9]+ subtests/ { split($2, c, "/"); failed += c[1] }
           END { if (files) printf "%d files, %d tests, %d failed", files, tests, failed }' "$log"
      ;;
    isolation)
      grep -Eo '(All [0-9]+ tests passed|[0-9]+ of [0-9]+ tests failed)' "$log" | tail -n 1 || true
      ;;
    pytest | crash)
      grep -E '^=*[ ]*[0-9]+ (passed|failed|error)' "$log" | tail -n 1 | sed -E 's/^=+ //; s/ =+$//' || true
      ;;
  esac
}

existing_packages() {
  # Keep the packages of `cargo test -p ...` that are workspace members.
  local meta p
  meta="$(cd "$MEC_ROOT" && cargo metadata --no-deps --format-version 1 2>/dev/null)" || meta=""
  for p in "$@"; do
    if [[ $meta == *"\"name\":\"$p\""* ]]; then echo "$p"; else warn "no package $p in the workspace, skipped"; fi
  done
}

suite_cargo() {
  local pkgs=() args=() p
  mapfile -t pkgs < <(existing_packages pg_mec_core mec_gateway)
  ((${#pkgs[@]})) || exit 77
  for p in "${pkgs[@]}"; do args+=(-p "$p"); done
  cd "$MEC_ROOT"
  MEC_TEST_DATABASE_URL="$MEC_DATABASE_URL" cargo test "${args[@]}"
}

suite_pgtap() {
  shopt -s nullglob
  local files=("$MEC_ROOT"/pg_mec/tests/pgtap/*.sql)
  shopt -u nullglob
  ((${#files[@]})) || exit 77
  "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -c 'CREATE EXTENSION IF NOT EXISTS pgtap' >/dev/null
  cd "$MEC_ROOT"
  pg_prove -b "$PG_BIN/psql" -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d "$PGDATABASE" \
    --failures --comments "${files[@]#"$MEC_ROOT/"}"
}

# Races as PostgreSQL isolation specs (pg_mec/tests/isolation/specs/*.spec, expected output beside
# them), run by pg_isolation_regress against the running cluster in a scratch database.
suite_isolation() {
  local dir="$MEC_ROOT/pg_mec/tests/isolation" out="$MEC_DIR/isolation" runner specs=() f
  local PG_PORT="$PGPORT"
  runner="$("$PG_CONFIG" --pkglibdir)/pgxs/src/test/isolation/pg_isolation_regress"
  [[ -x $runner ]] || die "$runner not found (package postgresql-client-15)"
  shopt -s nullglob
  for f in "$dir"/specs/*.spec; do specs+=("$(basename "$f" .spec)"); done
  shopt -u nullglob
  ((${#specs[@]})) || exit 77
  rm -rf "$out"
  mkdir -p "$out"
  admin_psql -d postgres -c 'DROP DATABASE IF EXISTS mec_isolation WITH (FORCE)' -c 'CREATE DATABASE mec_isolation'
  local rc=0
  "$runner" --use-existing --host="$PG_SOCKET_DIR" --port="$PG_PORT" --user=postgres \
    --dbname=mec_isolation --inputdir="$dir" --outputdir="$out" "${specs[@]}" || rc=$?
  if ((rc != 0)) && [[ -f $out/regression.diffs ]]; then cat "$out/regression.diffs"; fi
  admin_psql -d postgres -c 'DROP DATABASE IF EXISTS mec_isolation WITH (FORCE)' >/dev/null
  exit "$rc"
}

venv_python() {
  if [[ -x /usr/bin/python3 ]]; then echo /usr/bin/python3; else command -v python3; fi
}

suite_pytest() {
  local venv="$MEC_DIR/venv" req="$MEC_ROOT/tests/requirements.txt" stamp want
  shopt -s nullglob globstar
  local files=("$MEC_ROOT"/tests/**/test_*.py "$MEC_ROOT"/tests/**/*_test.py)
  shopt -u nullglob globstar
  ((${#files[@]})) || exit 77
  if [[ ! -x $venv/bin/python ]]; then
    info "creating $venv"
    "$(venv_python)" -m venv "$venv"
  fi
  # tests/requirements.txt plus any tests/<dir>/requirements.txt
  shopt -s nullglob
  local reqs=("$req" "$MEC_ROOT"/tests/*/requirements.txt) pip_args=() r
  shopt -u nullglob
  for r in "${reqs[@]}"; do pip_args+=(-r "$r"); done
  stamp="$venv/.requirements.sha256"
  want="$(cat "${reqs[@]}" | sha256_of_stdin)"
  if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    info "pip install ${pip_args[*]#"$MEC_ROOT/"}"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "${pip_args[@]}"
    echo "$want" >"$stamp"
  fi
  cd "$MEC_ROOT"
  local rc=0
  "$venv/bin/python" -m pytest -q -p no:cacheprovider --timeout="${MEC_PYTEST_TIMEOUT:-600}" \
    --ignore=tests/crash tests/ || rc=$?
  # 5 = no tests collected
  if ((rc == 5)); then exit 77; fi
  exit "$rc"
}

# The crash tests kill the cluster and the gateway (then bring them back with `up`), so they run
# last, on their own, in the pytest suite's virtualenv.
suite_crash() {
  local venv="$MEC_DIR/venv"
  [[ -d $MEC_ROOT/tests/crash && -x $venv/bin/python ]] || exit 77
  cd "$MEC_ROOT"
  local rc=0
  "$venv/bin/python" -m pytest -q -s -p no:cacheprovider --timeout="${MEC_PYTEST_TIMEOUT:-600}" \
    tests/crash || rc=$?
  if ((rc == 5)); then exit 77; fi
  exit "$rc"
}

cmd_test() {
  local self="$MEC_ROOT/scripts/mec"
  if ! "$self" up; then
    echo "mec test: 'scripts/mec up' failed, no suite ran" >&2
    echo "suites: 0 passed, 1 failed"
    exit 1
  fi
  load_env
  set_pg_paths

  run_suite cargo suite_cargo
  run_suite pgtap suite_pgtap
  run_suite isolation suite_isolation
  run_suite pytest suite_pytest
  run_suite crash suite_crash

  echo
  step "summary"
  local l
  for l in "${SUITE_LINES[@]}"; do info "$l"; done
  local line="${#SUITE_PASSED[@]} passed, ${#SUITE_FAILED[@]} failed"
  if ((${#SUITE_SKIPPED[@]})); then line+=", ${#SUITE_SKIPPED[@]} skipped"; fi
  echo "suites: $line"
  ((${#SUITE_FAILED[@]} == 0))
}
