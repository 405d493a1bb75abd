#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Creates the TPU VM named in the env file: on demand, spot, or through a queued resource
# (on demand, spot or best-effort) that waits for capacity.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<EOF_USAGE
usage: tpu_scripts/create.sh [options]

Creates TPU_NAME (ACCELERATOR_TYPE, RUNTIME_VERSION) in PROJECT/ZONE. With QUEUED=1 it
creates the queued resource QUEUED_RESOURCE_NAME (default TPU_NAME-qr) holding node
TPU_NAME and waits until the request is ACTIVE.

Options:
  --interval S    seconds between state checks while a queued resource waits (default 60)
  --no-wait       return once the queued resource is requested

$COMMON_HELP
EOF_USAGE
}

main() {
  local interval=60 wait=1
  split_eq "$@"
  set -- "${ARGS[@]}"
  while (($#)); do
    case "$1" in
      --interval) need_value "$@"; check_uint "$1" "$2"; interval=$2; shift 2 ;;
      --no-wait) wait=0; shift ;;
      *) common_flag "$@"; shift "$SHIFT_BY" ;;
    esac
  done
  load_env
  create_cmd
  run "${CMD[@]}"
  # tpu-vm create returns when the VM is up; a queued resource is only a request.
  if is_on QUEUED && ((wait)); then
    wait_until_ready "$interval"
  fi
}

main "$@"
