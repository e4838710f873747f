#!/usr/bin/env bash
# scripts/lib/supervise.sh CHILD_PID_FILE COMMAND [ARGS...]
#
# Keeps COMMAND running: starts it, and when it exits without being asked to (a crash, a
# kill -9, an abort), logs that and starts it again, waiting 1 s, then 2, 4, 8, up to 30 s between
# quick successive deaths (back to 1 s once it ran for a minute). SIGTERM or SIGINT stops the
# child and then the supervisor. The child's pid is written to CHILD_PID_FILE each time.
#
# scripts/mec up runs the gateway under it where the machine has no systemd (docs/operations.md).
set -u

child_pid_file=${1:?usage: supervise.sh CHILD_PID_FILE COMMAND [ARGS...]}
shift
(($#)) || {
  echo "usage: supervise.sh CHILD_PID_FILE COMMAND [ARGS...]" >&2
  exit 2
}

child=0
stopping=0
log() { printf '%s supervise: %s\n' "$(date -u +%FT%TZ)" "$*"; }

on_stop() {
  stopping=1
  if ((child > 0)); then kill -TERM "$child" 2>/dev/null || true; fi
}
trap on_stop TERM INT

backoff=1
while :; do
  started=$SECONDS
  "$@" &
  child=$!
  printf '%s\n' "$child" >"$child_pid_file"
  # `wait` returns early when a trapped signal arrives: wait until the child is really gone.
  rc=0
  while kill -0 "$child" 2>/dev/null; do
    wait "$child"
    rc=$?
  done
  if ((stopping)); then
    log "stopped (child $child exited with $rc)"
    exit 0
  fi
  ran=$((SECONDS - started))
  ((ran >= 60)) && backoff=1
  log "child $child exited with status $rc after ${ran} s; starting it again in ${backoff} s"
  sleep "$backoff" &
  wait $! 2>/dev/null || true
  if ((stopping)); then
    log "stopped"
    exit 0
  fi
  backoff=$((backoff * 2))
  ((backoff > 30)) && backoff=30
done
