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
TPU_NAME (of every slice with NODE_COUNT > 1), unpacks it into ~/pretrain-src and installs
it with the tpu extra into ~/pretrain-venv, a Python 3.11 virtualenv made by uv, with the
exact versions of tpu_scripts/constraints.txt. Each worker ends by importing the stack and
printing its versions (python, jax, jaxlib, libtpu, flax, optax, orbax, grain).

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
  local node
  for node in "${NODES[@]}"; do
    scp_cmd "$tarball" "$REMOTE_TARBALL" "$node"
    run "${CMD[@]}"
  done
  ssh_all_nodes all "$(remote_command remote_setup "$UV_VERSION")"
}

main "$@"
