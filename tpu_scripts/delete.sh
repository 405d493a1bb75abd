#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Deletes the TPU VM, or the queued resource together with its node. The bucket (and the
# checkpoints in it) stays.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<EOF_USAGE
usage: tpu_scripts/delete.sh [options]

Deletes TPU_NAME, or with QUEUED=1 the queued resource QUEUED_RESOURCE_NAME and its node.
gcloud asks for confirmation unless --yes is given.

Options:
  --yes           don't ask (passes --quiet to gcloud)

$COMMON_HELP
EOF_USAGE
}

main() {
  local yes=0
  split_eq "$@"
  set -- "${ARGS[@]}"
  while (($#)); do
    case "$1" in
      --yes) yes=1; shift ;;
      *) common_flag "$@"; shift "$SHIFT_BY" ;;
    esac
  done
  load_env
  delete_cmd "$yes"
  run "${CMD[@]}"
}

main "$@"
