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

Every worker (of every slice) is checked first (set up, run not already running); if one
is not ready nothing is started, so no half-started job waits in jax.distributed.initialize.
With NODE_COUNT > 1 (multislice) the run gets mesh.dcn_data=NODE_COUNT unless the arguments
set mesh.dcn_* themselves, whose product must then be NODE_COUNT.

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
  wire_dcn
  if ! ssh_all_nodes all "$(remote_command remote_check "$RUN")"; then
    die "not every worker is ready (see above); nothing was started"
  fi
  ssh_all_nodes all "$(remote_command remote_launch "$RUN" "${TRAIN_ARGS[@]}")"
}

# Multislice: the slices talk over the data-center network, the mesh's dcn_* axes.
wire_dcn() {
  local a product=1 given=0
  ((NODE_COUNT > 1)) || return 0
  for a in "${TRAIN_ARGS[@]}"; do
    if [[ "$a" =~ ^mesh\.dcn_(data|fsdp|tensor)=([0-9]+)$ ]]; then
      given=1
      product=$((product * BASH_REMATCH[2]))
    fi
  done
  if ((!given)); then
    TRAIN_ARGS+=("mesh.dcn_data=$NODE_COUNT")
  elif ((product != NODE_COUNT)); then
    die "mesh.dcn_* multiply to $product, but NODE_COUNT=$NODE_COUNT slices were requested"
  fi
}

main "$@"
