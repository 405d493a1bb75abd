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

Nothing is left billing unseen: when the run has finished (WORKDIR/DONE, written by
pretrain train at train.steps) it deletes the TPU (--when-done keep: leaves it) and exits 0
instead of recreating it; a state that may last forever (STOPPED, REPAIRING, UNKNOWN) is
treated as a preemption after --stuck-limit seconds; after --max-recoveries recoveries it
deletes the TPU and exits 1.

The code shipped to recreated workers is the committed HEAD when babysit starts (or
--tarball FILE).

Options:
  --interval S    seconds between polls (default 120)
  --max-polls N   stop after N polls (default 0 = never)
  --once          one poll (same as --max-polls 1)
  --run NAME      run name given to launch.sh (default: the workdir's last part)
  --tarball FILE  tarball for setup.sh
  --when-done W   delete (default) or keep the TPU once WORKDIR/DONE exists
  --max-recoveries N  give up (delete the TPU, exit 1) instead of starting recovery N+1
                  (default 10; 0 = never give up)
  --stuck-limit S seconds a STOPPED/REPAIRING/UNKNOWN state may last (default 1800)

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
    create) "$BASH" "$dir/create.sh" "${common[@]}" --interval "$INTERVAL" --stuck-limit "$STUCK_LIMIT" ;;
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

# True when WORKDIR holds the DONE marker (a failed check counts as not done).
run_done() {
  done_marker_cmd
  "${CMD[@]}" >/dev/null 2>&1
}

# The run finished: stop paying for the TPU. Exits.
finish() {
  if [[ "$WHEN_DONE" == keep || "$1" == NOT_FOUND ]]; then
    log "run $RUN is done ($WORKDIR/DONE); $TPU_NAME is $1; leaving it (delete.sh deletes it)"
    exit 0
  fi
  log "run $RUN is done ($WORKDIR/DONE): deleting $TPU_NAME"
  run_step delete || die "deleting $TPU_NAME failed: run tpu_scripts/delete.sh yourself"
  exit 0
}

# Starts a recovery, unless --max-recoveries were already started.
start_recovery() {
  if ((MAX_RECOVERIES && RECOVERIES >= MAX_RECOVERIES)); then
    log "error: $TPU_NAME is $1 after $RECOVERIES recoveries (--max-recoveries $MAX_RECOVERIES): deleting it and giving up"
    run_step delete || log "error: deleting $TPU_NAME failed: run tpu_scripts/delete.sh yourself"
    exit 1
  fi
  RECOVERIES=$((RECOVERIES + 1))
  log "$TPU_NAME: $1: recreating it and relaunching run $RUN (recovery $RECOVERIES)"
  PENDING=(delete create setup launch)
}

poll() {
  local state kind
  state=$(resource_state)
  kind=$(classify_state "$state")
  if run_done; then finish "$state"; fi
  if [[ "$kind" == stuck ]]; then
    STUCK_SINCE=${STUCK_SINCE:-$SECONDS}
    if ((SECONDS - STUCK_SINCE >= STUCK_LIMIT)); then
      log "$TPU_NAME has been $state for $((SECONDS - STUCK_SINCE))s (--stuck-limit $STUCK_LIMIT)"
      kind=lost
    fi
  else
    STUCK_SINCE=""
  fi
  case "$kind" in
    lost)
      STUCK_SINCE=""
      if ((${#PENDING[@]} == 0)); then
        start_recovery "$state"
      else  # lost again during a recovery: that recovery starts over
        PENDING=(delete create setup launch)
      fi
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

# With --dry-run: the poll's commands, then what a recovery would run.
dry_run() {
  describe_cmd
  run "${CMD[@]}"
  done_marker_cmd
  run "${CMD[@]}"
  prepare_tarball
  local step
  for step in delete create setup launch; do run_step "$step"; done
}

main() {
  local run="" max_polls=0 polls=0
  INTERVAL=120
  TARBALL=""
  WHEN_DONE=delete
  MAX_RECOVERIES=10
  RECOVERIES=0
  STUCK_LIMIT=1800
  STUCK_SINCE=""
  split_eq "$@"
  set -- "${ARGS[@]}"
  while (($#)); do
    case "$1" in
      --interval) need_value "$@"; check_uint "$1" "$2"; INTERVAL=$2; shift 2 ;;
      --max-polls) need_value "$@"; check_uint "$1" "$2"; max_polls=$2; shift 2 ;;
      --once) max_polls=1; shift ;;
      --run) need_value "$@"; run=$2; shift 2 ;;
      --tarball) need_value "$@"; TARBALL=$2; shift 2 ;;
      --when-done) need_value "$@"; WHEN_DONE=$2; shift 2 ;;
      --max-recoveries) need_value "$@"; check_uint "$1" "$2"; MAX_RECOVERIES=$2; shift 2 ;;
      --stuck-limit) need_value "$@"; check_uint "$1" "$2"; STUCK_LIMIT=$2; shift 2 ;;
      --) shift; break ;;
      --config | --workdir) die "unknown flag: $1 (pretrain train arguments go after --; see --help)" ;;
      *) common_flag "$@"; shift "$SHIFT_BY" ;;
    esac
  done
  [[ "$WHEN_DONE" == delete || "$WHEN_DONE" == keep ]] ||
    die "--when-done must be delete or keep (got '$WHEN_DONE')"
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
