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

RUNTIME_VERSION defaults to the version Cloud TPU documents for the accelerator type
(v2/v3/v4: tpu-ubuntu2204-base, v5litepod: v2-alpha-tpuv5-lite, v5p: v2-alpha-tpuv5, v6e:
v2-alpha-tpuv6e). NODE_COUNT > 1 requests that many slices (multislice, QUEUED=1), named
NODE_PREFIX-0, NODE_PREFIX-1, ... (NODE_PREFIX defaults to TPU_NAME).

Ctrl-C (or SIGTERM) while a queued request waits deletes the request, so nothing is left
waiting (and later billing) unseen; with --keep-on-interrupt it prints the delete command.

Options:
  --interval S    seconds between state checks while a queued resource waits (default 60)
  --no-wait       return once the queued resource is requested
  --stuck-limit S give up when the request stays STOPPED/REPAIRING/UNKNOWN this long
                  (default 1800)
  --keep-on-interrupt  on Ctrl-C, print the delete command instead of running it

$COMMON_HELP
EOF_USAGE
}

# On Ctrl-C / SIGTERM while the request waits: delete it (or print how to).
on_interrupt() {
  trap - INT TERM
  delete_cmd 1
  if ((KEEP_ON_INTERRUPT)); then
    note "interrupted: the queued resource $QUEUED_RESOURCE_NAME is still requested; delete it with:"
    note "  $(quote_cmd "${CMD[@]}")"
  else
    note "interrupted: deleting the queued resource $QUEUED_RESOURCE_NAME"
    run "${CMD[@]}" || note "error: the delete failed; run it yourself: $(quote_cmd "${CMD[@]}")"
  fi
  exit 130
}

main() {
  local interval=60 wait=1 stuck_limit=1800
  KEEP_ON_INTERRUPT=0
  split_eq "$@"
  set -- "${ARGS[@]}"
  while (($#)); do
    case "$1" in
      --interval) need_value "$@"; check_uint "$1" "$2"; interval=$2; shift 2 ;;
      --no-wait) wait=0; shift ;;
      --stuck-limit) need_value "$@"; check_uint "$1" "$2"; stuck_limit=$2; shift 2 ;;
      --keep-on-interrupt) KEEP_ON_INTERRUPT=1; shift ;;
      *) common_flag "$@"; shift "$SHIFT_BY" ;;
    esac
  done
  load_env
  create_cmd
  if is_on QUEUED && ((wait && !DRY_RUN)); then trap on_interrupt INT TERM; fi
  run "${CMD[@]}"
  # tpu-vm create returns when the VM is up; a queued resource is only a request.
  if is_on QUEUED && ((wait)); then
    wait_until_ready "$interval" "$stuck_limit"
  fi
  trap - INT TERM
}

main "$@"
