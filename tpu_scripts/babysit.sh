#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Watches a spot / queued TPU and brings a preempted run back: delete, create, setup,
# launch the same command. The run resumes from the checkpoints in its gs:// workdir.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<EOF_USAGE
usage: tpu_scripts/babysit.sh [options] -- PRETRAIN_TRAIN_ARGS...

Polls the state of TPU_NAME (or, with QUEUED=1, of its queued resource) every --interval
seconds. When it was preempted (PREEMPTED/TERMINATED, or a queued resource SUSPENDED/FAILED)
it runs delete.sh, create.sh, setup.sh and launch.sh with the same env, flags and
PRETRAIN_TRAIN_ARGS (give the ones you gave launch.sh). A step that fails is retried at the
next poll. It exits when the TPU no longer exists (deleted on purpose, it assumes).
Run it on a machine that stays up, e.g. nohup tpu_scripts/babysit.sh ... > babysit.log &

The code shipped to recreated workers is the committed HEAD when babysit starts (or
--tarball FILE).

Options:
  --interval S    seconds between polls (default 120)
  --max-polls N   stop after N polls (default 0 = never)
  --once          one poll (same as --max-polls 1)
  --run NAME      run name given to launch.sh (default: the workdir's last part)
  --tarball FILE  tarball for setup.sh

$COMMON_HELP
EOF_USAGE
}

log() {
  printf '[%s] %s\n' "$(date -u '+%F %T')" "$*" >&2
}

# Recovery steps still to run; a failed step stays first and is retried at the next poll.
PENDING=()

# Runs one step as its own script (so that set -e holds inside it) with babysit's settings,
# under the bash running this one (which passed the version check).
run_step() {
  local common=() dir="$TPU_SCRIPTS_DIR"
  if [[ -n "$ENV_FILE" ]]; then common+=(--env "$ENV_FILE"); fi
  if ((DRY_RUN)); then common+=(--dry-run); fi
  common+=("${PASS_FLAGS[@]}")
  case "$1" in
    delete) "$BASH" "$dir/delete.sh" "${common[@]}" --yes ;;
    create) "$BASH" "$dir/create.sh" "${common[@]}" --interval "$INTERVAL" ;;
    setup) "$BASH" "$dir/setup.sh" "${common[@]}" --tarball "$TARBALL" ;;
    launch) "$BASH" "$dir/launch.sh" "${common[@]}" --run "$RUN" -- "${TRAIN_ARGS[@]}" ;;
  esac
}

# $1 = the state just read. Runs the pending steps in order; stops at a failed one.
recover() {
  if [[ "${PENDING[0]}" == delete && "$1" == NOT_FOUND ]]; then
    PENDING=("${PENDING[@]:1}")
  fi
  while ((${#PENDING[@]})); do
    log "recovery: ${PENDING[0]}"
    if ! run_step "${PENDING[0]}"; then
      log "recovery step ${PENDING[0]} failed; retrying at the next poll"
      # A failed create can leave a half-made VM or a FAILED request behind: delete first.
      if [[ "${PENDING[0]}" == create ]]; then PENDING=(delete "${PENDING[@]}"); fi
      return 0
    fi
    PENDING=("${PENDING[@]:1}")
  done
  log "recovered: run $RUN relaunched"
}

poll() {
  local state kind
  state=$(resource_state)
  kind=$(classify_state "$state")
  case "$kind" in
    lost)
      log "$TPU_NAME: $state: recreating it and relaunching run $RUN"
      PENDING=(delete create setup launch)
      ;;
    missing)
      # Gone on our watch (a recovery had started): recreate. Otherwise someone deleted it.
      if ((${#PENDING[@]} == 0)); then
        die "$TPU_NAME does not exist (deleted?); not recreating it. To start over: create.sh, setup.sh, launch.sh"
      fi
      if [[ "${PENDING[0]}" != delete ]]; then PENDING=(create setup launch); fi
      ;;
  esac
  if ((${#PENDING[@]})); then
    log "$TPU_NAME: $state; recovery steps left: ${PENDING[*]}"
    recover "$state"
  elif [[ "$kind" == ok ]]; then
    log "$TPU_NAME: $state"
  else
    log "$TPU_NAME: $state; waiting"
  fi
}

# Packs HEAD once, so every recovery ships the same code even if HEAD moves meanwhile.
prepare_tarball() {
  if [[ -n "$TARBALL" ]]; then
    ((DRY_RUN)) || [[ -f "$TARBALL" ]] || die "tarball not found: $TARBALL"
    return 0
  fi
  TARBALL="${TMPDIR:-/tmp}/$TPU_NAME-babysit-src.tar.gz"
  run git -C "$REPO_ROOT" archive --format=tar.gz --output="$TARBALL" HEAD
}

# With --dry-run: the poll's command, then what a recovery would run.
dry_run() {
  describe_cmd
  run "${CMD[@]}"
  prepare_tarball
  local step
  for step in delete create setup launch; do run_step "$step"; done
}

main() {
  local run="" max_polls=0 polls=0
  INTERVAL=120
  TARBALL=""
  split_eq "$@"
  set -- "${ARGS[@]}"
  while (($#)); do
    case "$1" in
      --interval) need_value "$@"; check_uint "$1" "$2"; INTERVAL=$2; shift 2 ;;
      --max-polls) need_value "$@"; check_uint "$1" "$2"; max_polls=$2; shift 2 ;;
      --once) max_polls=1; shift ;;
      --run) need_value "$@"; run=$2; shift 2 ;;
      --tarball) need_value "$@"; TARBALL=$2; shift 2 ;;
      --) shift; break ;;
      --config | --workdir) die "unknown flag: $1 (pretrain train arguments go after --; see --help)" ;;
      *) common_flag "$@"; shift "$SHIFT_BY" ;;
    esac
  done
  load_env
  parse_train_args "$@"
  resolve_run "$run"
  if ((DRY_RUN)); then
    dry_run
    return 0
  fi
  prepare_tarball
  while :; do
    poll
    polls=$((polls + 1))
    if ((max_polls && polls >= max_polls)); then break; fi
    sleep "$INTERVAL"
  done
}

main "$@"
