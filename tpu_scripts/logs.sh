#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Shows (and by default follows) a run's log on one worker.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<EOF_USAGE
usage: tpu_scripts/logs.sh [options]

Tails ~/pretrain-logs/RUN.log on a worker of TPU_NAME (worker 0 prints the metrics).

Options:
  --run NAME      which run (default: the newest log on the worker)
  --worker W      worker number, or all (default 0)
  --lines N       lines of history to print (default 100)
  --no-follow     print and exit instead of following the log

$COMMON_HELP
EOF_USAGE
}

main() {
  local run="" worker=0 lines=100 follow=1
  split_eq "$@"
  set -- "${ARGS[@]}"
  while (($#)); do
    case "$1" in
      --run) need_value "$@"; check_run_name "$2"; run=$2; shift 2 ;;
      --worker) need_value "$@"; worker=$2; shift 2 ;;
      --lines) need_value "$@"; check_uint "$1" "$2"; lines=$2; shift 2 ;;
      --no-follow) follow=0; shift ;;
      *) common_flag "$@"; shift "$SHIFT_BY" ;;
    esac
  done
  [[ "$worker" =~ ^(all|[0-9]+)$ ]] || die "--worker must be a number or all (got '$worker')"
  load_env
  # Multislice: the first slice (its worker 0 is process 0, which prints the metrics).
  ssh_cmd "$worker" "$(remote_command remote_logs "$run" "$lines" "$follow")" "${NODES[0]}"
  run "${CMD[@]}"
}

main "$@"
