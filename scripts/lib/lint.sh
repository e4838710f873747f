# shellcheck shell=bash
# `scripts/mec lint`: the checks CI runs before the tests (CONTRIBUTING.md). Every check runs even
# when one fails; the exit code is non-zero on any failure. Installs what it needs (shellcheck from
# apt, cargo-pgrx for pgrx's bindings, ruff into .mec/lint-venv).

LINT_RUFF_VERSION=0.14.8
# Commit subjects are checked from here on (earlier history predates the rule).
LINT_SUBJECTS_SINCE=6c27ca8

LINT_PASSED=()
LINT_FAILED=()

lint_step() {
  local name=$1
  shift
  step "lint: $name"
  if "$@"; then
    LINT_PASSED+=("$name")
  else
    LINT_FAILED+=("$name")
    warn "lint: $name failed"
  fi
}

lint_tools() {
  if ! command -v shellcheck >/dev/null 2>&1; then
    step "apt: installing shellcheck"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends shellcheck ||
      {
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends shellcheck
      }
  fi
  local venv="$MEC_DIR/lint-venv"
  if [[ ! -x $venv/bin/ruff ]] || [[ "$("$venv/bin/ruff" --version 2>/dev/null)" != "ruff $LINT_RUFF_VERSION" ]]; then
    step "lint: installing ruff $LINT_RUFF_VERSION into ${venv#"$MEC_ROOT/"}"
    [[ -x $venv/bin/python ]] || "$(venv_python)" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "ruff==$LINT_RUFF_VERSION"
  fi
  RUFF="$venv/bin/ruff"
}

lint_shell() {
  local files=("$MEC_ROOT/scripts/mec" "$MEC_ROOT/.ci/run" "$MEC_ROOT"/scripts/lib/supervise.sh
    "$MEC_ROOT"/bench/run.sh "$MEC_ROOT"/bench/gateway.sh "$MEC_ROOT"/docker/initdb/*.sh)
  # Sourced libraries are checked through the scripts that source them (-x).
  (cd "$MEC_ROOT" && shellcheck -x -P SCRIPTDIR "${files[@]#"$MEC_ROOT/"}")
}

lint_subjects() {
  if ! git -C "$MEC_ROOT" cat-file -e "$LINT_SUBJECTS_SINCE^{commit}" 2>/dev/null; then
    info "commit $LINT_SUBJECTS_SINCE is not in this clone (shallow?): subjects not checked"
    return 0
  fi
  local long
  long="$(git -C "$MEC_ROOT" log --format='%h %s' "$LINT_SUBJECTS_SINCE..HEAD" | awk 'length($0) - 8 > 72')"
  if [[ -n $long ]]; then
    echo "commit subjects longer than 72 characters (put the detail in the body):" >&2
    printf '%s\n' "$long" >&2
    return 1
  fi
}

cmd_lint() {
  mkdir -p "$MEC_DIR"
  if ! flag MEC_SKIP_APT; then up_apt; fi
  up_pgrx
  lint_tools
  cd "$MEC_ROOT"
  lint_step "cargo fmt" cargo fmt --all -- --check
  lint_step "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
  lint_step "module layers" python3 scripts/dev/check-layers.py
  lint_step "shellcheck" lint_shell
  lint_step "ruff" "$RUFF" check tests bench scripts
  lint_step "commit subjects" lint_subjects
  echo
  step "lint summary: ${#LINT_PASSED[@]} passed, ${#LINT_FAILED[@]} failed${LINT_FAILED[*]:+ (${LINT_FAILED[*]})}"
  ((${#LINT_FAILED[@]} == 0))
}
