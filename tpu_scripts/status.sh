#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Prints the TPU's (or queued resource's) state and, when it is up, each worker's runs.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<EOF_USAGE
usage: tpu_scripts/status.sh [options]

Prints the state of TPU_NAME (READY, PREEMPTED, ...) or, with QUEUED=1, of its queued
resource (WAITING_FOR_RESOURCES, ACTIVE, SUSPENDED, ...); when it is up, asks every worker
which runs it launched and whether they are still running.

$COMMON_HELP
EOF_USAGE
}

main() {
  local state
  split_eq "$@"
  set -- "${ARGS[@]}"
  while (($#)); do
    common_flag "$@"
    shift "$SHIFT_BY"
  done
  load_env
  if ((DRY_RUN)); then
    describe_cmd
    run "${CMD[@]}"
    ssh_each_node all "$(remote_command remote_status)"
    return 0
  fi
  state=$(resource_state)
  if is_on QUEUED; then
    echo "queued resource $QUEUED_RESOURCE_NAME (node $TPU_NAME): $state"
  else
    echo "TPU $TPU_NAME: $state"
  fi
  [[ "$(classify_state "$state")" == ok ]] || return 0
  ssh_each_node all "$(remote_command remote_status)"
}

main "$@"
