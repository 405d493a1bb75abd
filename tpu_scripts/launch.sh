#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Starts the same `pretrain train` command on every worker, detached, logging to
# ~/pretrain-logs/RUN.log on each worker.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<EOF_USAGE
usage: tpu_scripts/launch.sh [options] -- PRETRAIN_TRAIN_ARGS...

Example:
  tpu_scripts/launch.sh -- --config bert_base --workdir gs://BUCKET/runs/bert_base

Runs "pretrain train PRETRAIN_TRAIN_ARGS" on all workers of TPU_NAME with nohup, in the
background; the log of each worker is ~/pretrain-logs/RUN.log. The workdir must be on
gs:// so that a relaunch (babysit.sh) resumes from its checkpoints.

Options:
  --run NAME      name of the log/pid files (default: the workdir's last part)

$COMMON_HELP
EOF_USAGE
}

main() {
  local run=""
  split_eq "$@"
  set -- "${ARGS[@]}"
  while (($#)); do
    case "$1" in
      --run) need_value "$@"; run=$2; shift 2 ;;
      --) shift; break ;;
      --config | --workdir) die "unknown flag: $1 (pretrain train arguments go after --; see --help)" ;;
      *) common_flag "$@"; shift "$SHIFT_BY" ;;
    esac
  done
  load_env
  parse_train_args "$@"
  resolve_run "$run"
  ssh_cmd all "$(remote_command remote_launch "$RUN" "${TRAIN_ARGS[@]}")"
  run "${CMD[@]}"
}

main "$@"
