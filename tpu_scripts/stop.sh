#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Stops training on every worker (SIGTERM to the run's process group, SIGKILL after a
# grace period). The TPU keeps running (and billing): delete.sh removes it.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<EOF_USAGE
usage: tpu_scripts/stop.sh [options]

Kills the training processes that launch.sh started on all workers of TPU_NAME. Stop
babysit.sh first, or it relaunches nothing but keeps recreating a preempted TPU.

Options:
  --run NAME      stop only this run (default: every run)
  --grace S       seconds between SIGTERM and SIGKILL (default 30)

$COMMON_HELP
EOF_USAGE
}

main() {
  local run="" grace=30
  split_eq "$@"
  set -- "${ARGS[@]}"
  while (($#)); do
    case "$1" in
      --run) need_value "$@"; check_run_name "$2"; run=$2; shift 2 ;;
      --grace) need_value "$@"; check_uint "$1" "$2"; grace=$2; shift 2 ;;
      *) common_flag "$@"; shift "$SHIFT_BY" ;;
    esac
  done
  load_env
  ssh_each_node all "$(remote_command remote_stop "$run" "$grace")"
}

main "$@"
