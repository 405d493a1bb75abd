#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Ships this repository to every worker and installs it there with the tpu extra.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<EOF_USAGE
usage: tpu_scripts/setup.sh [options]

Packs the repository's committed HEAD with git archive (no git credentials are needed on
the workers; uncommitted changes are NOT shipped), copies the tarball to every worker of
TPU_NAME, unpacks it into ~/pretrain-src and runs pip install -e ".[tpu]" there.

Options:
  --tarball FILE  ship this tarball instead of packing HEAD

$COMMON_HELP
EOF_USAGE
}

# Packs HEAD into $1. git archive only sees commits, so say when the work tree differs.
pack_head() {
  if [[ -n "$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    note "note: uncommitted changes are not shipped (git archive packs HEAD)"
  fi
  run git -C "$REPO_ROOT" archive --format=tar.gz --output="$1" HEAD
}

main() {
  local tarball=""
  split_eq "$@"
  set -- "${ARGS[@]}"
  while (($#)); do
    case "$1" in
      --tarball) need_value "$@"; tarball=$2; shift 2 ;;
      *) common_flag "$@"; shift "$SHIFT_BY" ;;
    esac
  done
  load_env
  if [[ -n "$tarball" ]]; then
    ((DRY_RUN)) || [[ -f "$tarball" ]] || die "tarball not found: $tarball"
  else
    tarball="${TMPDIR:-/tmp}/$TPU_NAME-pretrain-src.tar.gz"
    pack_head "$tarball"
  fi
  scp_cmd "$tarball" "$REMOTE_TARBALL"
  run "${CMD[@]}"
  ssh_cmd all "$(remote_command remote_setup)"
  run "${CMD[@]}"
}

main "$@"
