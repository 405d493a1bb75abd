# shellcheck shell=bash
# shellcheck source-path=SCRIPTDIR
# Common code of the Cloud TPU scripts: flag parsing, the env file, input checks, the
# dry-run aware command runner, the gcloud command lines and the code that runs on the
# workers. Sourced by every script; never run on its own.

# Empty arrays under `set -u` need bash 4.4; macOS still ships 3.2.
if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  echo "error: bash 4.4 or newer is needed (macOS: brew install bash)" >&2
  exit 2
fi

# gcloud prints "Updates are available ..." and survey prompts on stderr after a command's
# output; off for every call made from here (state parsing reads stdout only anyway).
export CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK=1
export CLOUDSDK_SURVEY_DISABLE_PROMPTS=1

TPU_SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034  # read by the scripts that source this file
REPO_ROOT=$(cd "$TPU_SCRIPTS_DIR/.." && pwd)

DRY_RUN=0
ENV_FILE=""
# Resource flags given on the command line; applied over the env file by load_env.
FLAG_SPOT=""
FLAG_BEST_EFFORT=""
FLAG_QUEUED=""
FLAG_VALID_UNTIL=""
# The same flags again, verbatim, so that babysit.sh can hand them to the other scripts.
PASS_FLAGS=()
# Set by common_flag: how many words the caller must shift.
SHIFT_BY=1
# Filled by the *_cmd functions: one gcloud command line as an array.
CMD=()

# Files on every worker, relative to the remote home directory (the remote functions at the
# end of this file spell the same names, because they run where these variables don't exist).
# shellcheck disable=SC2034  # read by the scripts that source this file
REMOTE_TARBALL="pretrain-src.tar.gz"
# The uv release that builds the workers' Python environment (pinned: same tool everywhere).
# shellcheck disable=SC2034  # read by the scripts that source this file
UV_VERSION="0.13.9"

# ------------------------------------------------------------------------------ output

die() {
  printf 'error: %s\n' "$*" >&2
  exit 2
}

note() {
  printf '%s\n' "$*" >&2
}

# One command as a single line that bash reads back as the same words.
quote_cmd() {
  local out
  printf -v out '%q ' "$@"
  printf '%s' "${out% }"
}

# Runs a command, or with --dry-run prints it (one line, copyable) and runs nothing.
run() {
  if ((DRY_RUN)); then
    printf '%s\n' "$(quote_cmd "$@")"
    return 0
  fi
  note "+ $(quote_cmd "$@")"
  "$@"
}

# ------------------------------------------------------------------------------ flags

# Turns --flag=value into --flag value (up to a bare --) so scripts parse one form. The
# result is in ARGS.
split_eq() {
  ARGS=()
  while (($#)); do
    case "$1" in
      --) ARGS+=("$@"); return 0 ;;
      --*=*) ARGS+=("${1%%=*}" "${1#*=}") ;;
      *) ARGS+=("$1") ;;
    esac
    shift
  done
}

need_value() {
  (($# >= 2)) || die "$1 needs a value (see --help)"
}

# Flags every script takes. Each script's parser sends what it doesn't know here.
# shellcheck disable=SC2034  # read by the scripts that source this file
common_flag() {
  SHIFT_BY=1
  case "$1" in
    --env) need_value "$@"; ENV_FILE="$2"; SHIFT_BY=2 ;;
    --dry-run) DRY_RUN=1 ;;
    --spot) FLAG_SPOT=1; FLAG_BEST_EFFORT=0; PASS_FLAGS+=("$1") ;;
    --best-effort) FLAG_BEST_EFFORT=1; FLAG_SPOT=0; FLAG_QUEUED=1; PASS_FLAGS+=("$1") ;;
    --on-demand) FLAG_SPOT=0; FLAG_BEST_EFFORT=0; PASS_FLAGS+=("$1") ;;
    --queued) FLAG_QUEUED=1; PASS_FLAGS+=("$1") ;;
    --valid-until) need_value "$@"; FLAG_VALID_UNTIL=$2; SHIFT_BY=2; PASS_FLAGS+=("$1" "$2") ;;
    -h | --help) usage; exit 0 ;;
    -*) die "unknown flag: $1 (see --help)" ;;
    *) die "unexpected argument: $1 (see --help)" ;;
  esac
}

# Help text shared by every script's usage().
# shellcheck disable=SC2034  # read by the scripts that source this file
COMMON_HELP="Common options:
  --env FILE      env file to source (default: tpu_scripts/env.sh, else the environment)
  --dry-run       print the gcloud commands, one per line, instead of running them
  --spot          spot VM (overrides SPOT in the env file)
  --best-effort   best-effort queued resource (implies --queued)
  --on-demand     neither spot nor best-effort
  --queued        go through a queued resource (QUEUED=1)
  --valid-until D a queued request expires when it has waited D (6h, 2d; VALID_UNTIL,
                  default 24h; none = never)
  -h, --help      this help"

check_uint() {
  [[ "$2" =~ ^[0-9]+$ ]] || die "$1 must be a whole number of seconds/items (got '$2')"
}

# ------------------------------------------------------------------------------ env file

REQUIRED_VARS=(PROJECT ZONE ACCELERATOR_TYPE TPU_NAME BUCKET)

load_env() {
  if [[ -z "$ENV_FILE" && -f "$TPU_SCRIPTS_DIR/env.sh" ]]; then
    ENV_FILE="$TPU_SCRIPTS_DIR/env.sh"
  fi
  if [[ -n "$ENV_FILE" ]]; then
    [[ -f "$ENV_FILE" ]] || die "env file not found: $ENV_FILE"
    # shellcheck source=env.example
    source "$ENV_FILE"
  fi
  SPOT=${FLAG_SPOT:-${SPOT:-0}}
  BEST_EFFORT=${FLAG_BEST_EFFORT:-${BEST_EFFORT:-0}}
  QUEUED=${FLAG_QUEUED:-${QUEUED:-0}}
  validate_env
  QUEUED_RESOURCE_NAME=${QUEUED_RESOURCE_NAME:-${TPU_NAME}-qr}
  LOC=(--project="$PROJECT" --zone="$ZONE")
  resolve_runtime
  resolve_nodes
}

# The software version Cloud TPU documents for each generation
# (https://cloud.google.com/tpu/docs/runtimes): JAX needs no other image.
default_runtime() {
  case "${1%%-*}" in
    v2 | v3 | v4) echo tpu-ubuntu2204-base ;;
    v5litepod) echo v2-alpha-tpuv5-lite ;;
    v5p) echo v2-alpha-tpuv5 ;;
    v6e) echo v2-alpha-tpuv6e ;;
  esac
}

# RUNTIME_VERSION defaults by accelerator type; another value is kept, with a warning.
resolve_runtime() {
  local want
  want=$(default_runtime "$ACCELERATOR_TYPE")
  if [[ -z "${RUNTIME_VERSION:-}" ]]; then
    RUNTIME_VERSION=$want
  elif [[ "$RUNTIME_VERSION" != "$want" ]]; then
    note "warning: RUNTIME_VERSION=$RUNTIME_VERSION, but $ACCELERATOR_TYPE is documented with $want (https://cloud.google.com/tpu/docs/runtimes)"
  fi
}

# NODES: the TPU VM names. One, TPU_NAME, unless NODE_COUNT > 1 (multislice, through a
# queued resource): NODE_PREFIX-0 .. NODE_PREFIX-(NODE_COUNT-1), as Cloud TPU names them.
resolve_nodes() {
  local i
  NODE_COUNT=${NODE_COUNT:-1}
  NODE_PREFIX=${NODE_PREFIX:-$TPU_NAME}
  [[ "$NODE_COUNT" =~ ^[1-9][0-9]{0,2}$ ]] || die "NODE_COUNT must be a whole number >= 1 (got '$NODE_COUNT')"
  NODES=("$TPU_NAME")
  if ((NODE_COUNT > 1)); then
    is_on QUEUED || die "NODE_COUNT > 1 (multislice) needs QUEUED=1 (a queued resource creates the slices)"
    [[ "$NODE_PREFIX" =~ ^[a-z]([-a-z0-9]{0,55}[a-z0-9])?$ ]] ||
      die "NODE_PREFIX '$NODE_PREFIX' is not a valid name prefix"
    NODES=()
    for ((i = 0; i < NODE_COUNT; i++)); do NODES+=("$NODE_PREFIX-$i"); done
  fi
}

is_on() {
  [[ "${!1:-0}" == 1 ]]
}

validate_env() {
  local missing=() v
  for v in "${REQUIRED_VARS[@]}"; do
    [[ -n "${!v:-}" ]] || missing+=("$v")
  done
  if ((${#missing[@]})); then
    die "missing env variable(s): ${missing[*]} (set them in tpu_scripts/env.sh or a file given with --env; see tpu_scripts/env.example)"
  fi
  for v in SPOT BEST_EFFORT QUEUED; do
    [[ "${!v}" == 0 || "${!v}" == 1 ]] || die "$v must be 0 or 1 (got '${!v}')"
  done
  # How long a queued request may wait for capacity before it expires (gcloud
  # --valid-until-duration); "none" = no limit.
  VALID_UNTIL=${FLAG_VALID_UNTIL:-${VALID_UNTIL:-24h}}
  [[ "$VALID_UNTIL" == none || "$VALID_UNTIL" =~ ^[1-9][0-9]*[smhd]$ ]] ||
    die "VALID_UNTIL must be a duration like 6h, 90m or 2d, or none (got '$VALID_UNTIL')"
  validate_accelerator "$ACCELERATOR_TYPE"
  # GCP resource names: lowercase letters, digits and hyphens, starting with a letter.
  [[ "$TPU_NAME" =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
    die "TPU_NAME '$TPU_NAME' is not a valid name (lowercase letters, digits and hyphens, starting with a letter)"
  [[ "$BUCKET" =~ ^gs://[a-z0-9][-a-z0-9._]*[a-z0-9]/?$ ]] ||
    die "BUCKET must be a bucket URL like gs://my-bucket (got '$BUCKET')"
  if is_on SPOT && is_on BEST_EFFORT; then
    die "SPOT=1 and BEST_EFFORT=1 exclude each other"
  fi
  if is_on BEST_EFFORT && ! is_on QUEUED; then
    die "BEST_EFFORT=1 needs QUEUED=1 (best-effort is a queued-resource tier)"
  fi
}

is_pow2() {
  (($1 > 0 && ($1 & ($1 - 1)) == 0))
}

# Known Cloud TPU types: the number after the dash counts TensorCores for v2/v3/v4/v5p
# (two per chip, so it is even: v4-32 is 16 chips) and chips for v5litepod/v6e, whose slices
# are 1x1, 2x2, 2x4, 4x4, 4x8, 8x8, 8x16 and 16x16 chips (no v5litepod-2).
validate_accelerator() {
  local t="$1" gen n ok=0
  if [[ "$t" =~ ^(v2|v3|v4|v5p|v5litepod|v6e)-([1-9][0-9]{0,4})$ ]]; then
    gen=${BASH_REMATCH[1]}
    n=$((10#${BASH_REMATCH[2]}))
    case "$gen" in
      v2) if is_pow2 "$n" && ((n >= 8 && n <= 512)); then ok=1; fi ;;
      v3) if is_pow2 "$n" && ((n >= 8 && n <= 2048)); then ok=1; fi ;;
      v4) if ((n >= 8 && n <= 4096 && n % 8 == 0)); then ok=1; fi ;;
      v5p) if ((n >= 8 && n <= 12288 && n % 8 == 0)); then ok=1; fi ;;
      v5litepod | v6e) if is_pow2 "$n" && ((n != 2 && n <= 256)); then ok=1; fi ;;
    esac
  fi
  ((ok)) || die "unknown accelerator type '$t' (known: v2-8..v2-512, v3-8..v3-2048, v4-8..v4-4096, v5p-8..v5p-12288, v5litepod-1/4/8/../256, v6e-1/4/8/../256; e.g. v4-32)"
}

# ------------------------------------------------------------------------------ train args

# Reads the `pretrain train` arguments (everything after --) into TRAIN_ARGS and WORKDIR.
# A leading "pretrain train" is accepted and dropped.
parse_train_args() {
  TRAIN_ARGS=("$@")
  if ((${#TRAIN_ARGS[@]} >= 2)) && [[ "${TRAIN_ARGS[0]}" == pretrain && "${TRAIN_ARGS[1]}" == train ]]; then
    TRAIN_ARGS=("${TRAIN_ARGS[@]:2}")
  fi
  ((${#TRAIN_ARGS[@]})) || die "no pretrain train arguments: put them after --, e.g. -- --config bert_base --workdir gs://BUCKET/runs/NAME"
  WORKDIR=""
  local i a
  for ((i = 0; i < ${#TRAIN_ARGS[@]}; i++)); do
    a=${TRAIN_ARGS[i]}
    if [[ "$a" == --workdir ]] && ((i + 1 < ${#TRAIN_ARGS[@]})); then
      WORKDIR=${TRAIN_ARGS[i + 1]}
    elif [[ "$a" == --workdir=* ]]; then
      WORKDIR=${a#--workdir=}
    fi
  done
  [[ -n "$WORKDIR" ]] || die "the pretrain train arguments have no --workdir"
  # A preempted VM comes back with empty disks: only a gs:// workdir keeps the checkpoints
  # that the relaunch resumes from.
  [[ "$WORKDIR" == gs://* ]] || die "--workdir must be a gs:// path on a TPU pod (got '$WORKDIR')"
  if [[ "$WORKDIR" != "${BUCKET%/}/"* ]]; then
    note "note: workdir $WORKDIR is not in BUCKET $BUCKET"
  fi
}

# The run name (log and pid file names on the workers): --run, else the workdir's last part.
resolve_run() {
  local run="$1"
  if [[ -z "$run" ]]; then
    run=${WORKDIR%/}
    run=${run##*/}
    run=${run//[^A-Za-z0-9._-]/-}
  fi
  check_run_name "$run"
  # shellcheck disable=SC2034  # read by the scripts that source this file
  RUN=$run
}

check_run_name() {
  [[ "$1" =~ ^[A-Za-z0-9._][A-Za-z0-9._-]*$ ]] ||
    die "run name '$1' may only hold letters, digits, '.', '_' and '-'"
}

# ------------------------------------------------------------------------------ gcloud lines

# The gcloud word(s) for queued resources: --best-effort exists only in the alpha track, and
# the same track then reads the request back.
qr_gcloud() {
  if is_on BEST_EFFORT; then
    QR_GCLOUD=(gcloud alpha)
  else
    QR_GCLOUD=(gcloud)
  fi
}

# Every command line ends in --quiet (no prompt can block an unattended run) except an
# interactive delete.
create_cmd() {
  if is_on QUEUED; then
    qr_gcloud
    CMD=("${QR_GCLOUD[@]}" compute tpus queued-resources create "$QUEUED_RESOURCE_NAME")
    if ((NODE_COUNT > 1)); then
      CMD+=(--node-count="$NODE_COUNT" --node-prefix="$NODE_PREFIX")
    else
      CMD+=(--node-id="$TPU_NAME")
    fi
    CMD+=("${LOC[@]}" --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION")
    if [[ "$VALID_UNTIL" != none ]]; then CMD+=(--valid-until-duration="$VALID_UNTIL"); fi
    if is_on BEST_EFFORT; then CMD+=(--best-effort); fi
  else
    CMD=(gcloud compute tpus tpu-vm create "$TPU_NAME" "${LOC[@]}"
      --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION")
  fi
  if is_on SPOT; then CMD+=(--spot); fi
  CMD+=(--quiet)
}

describe_cmd() {
  if is_on QUEUED; then
    qr_gcloud
    CMD=("${QR_GCLOUD[@]}" compute tpus queued-resources describe "$QUEUED_RESOURCE_NAME"
      "${LOC[@]}" --format='value(state.state)' --quiet)
  else
    CMD=(gcloud compute tpus tpu-vm describe "$TPU_NAME" "${LOC[@]}" --format='value(state)'
      --quiet)
  fi
}

# $1 = 1 to skip gcloud's confirmation prompt.
delete_cmd() {
  if is_on QUEUED; then
    qr_gcloud
    # --force also deletes the node inside the request.
    CMD=("${QR_GCLOUD[@]}" compute tpus queued-resources delete "$QUEUED_RESOURCE_NAME"
      "${LOC[@]}" --force)
  else
    CMD=(gcloud compute tpus tpu-vm delete "$TPU_NAME" "${LOC[@]}")
  fi
  if (($1)); then CMD+=(--quiet); fi
}

# $1 = worker (all or a number), $2 = remote command, $3 = node (default TPU_NAME).
ssh_cmd() {
  CMD=(gcloud compute tpus tpu-vm ssh "${3:-$TPU_NAME}" --worker="$1" "${LOC[@]}"
    --command="$2" --quiet)
}

# $1 = local file, $2 = remote path relative to the home directory, $3 = node (default
# TPU_NAME); to every worker of the node.
scp_cmd() {
  CMD=(gcloud compute tpus tpu-vm scp "$1" "${3:-$TPU_NAME}:$2" --worker=all "${LOC[@]}"
    --quiet)
}

# Runs the remote command $2 on worker(s) $1 of every node (every slice of a multislice
# request), one node after the other; stops at the first node where it fails.
ssh_all_nodes() {
  local node
  for node in "${NODES[@]}"; do
    ssh_cmd "$1" "$2" "$node"
    run "${CMD[@]}" || return 1
  done
}

# Like ssh_all_nodes, but goes on to the other nodes after a failure (stop, status: one
# unreachable slice must not keep the others running or unseen); fails if any failed.
ssh_each_node() {
  local node failed=0
  for node in "${NODES[@]}"; do
    ssh_cmd "$1" "$2" "$node"
    run "${CMD[@]}" || failed=1
  done
  return "$failed"
}

# The gcloud command that checks whether WORKDIR holds the DONE marker `pretrain train`
# writes when it reaches train.steps.
done_marker_cmd() {
  CMD=(gcloud storage ls "${WORKDIR%/}/DONE" --project="$PROJECT" --quiet)
}

# ------------------------------------------------------------------------------ state

# Prints the TPU VM's state (READY, PREEMPTED, ...) or, with QUEUED=1, the queued
# resource's (ACTIVE, SUSPENDED, ...); NOT_FOUND when it doesn't exist, UNKNOWN when gcloud
# failed otherwise (network, auth), so callers can keep polling.
#
# Only stdout holds the value: gcloud writes warnings, update and survey notices to stderr,
# some of them after the value, so stderr is read only to tell NOT_FOUND from other errors.
resource_state() {
  local out err errfile rc=0
  describe_cmd
  errfile=$(mktemp)
  out=$("${CMD[@]}" 2>"$errfile") || rc=$?
  err=$(<"$errfile")
  rm -f "$errfile"
  if ((rc == 0)); then
    out=$(printf '%s\n' "$out" | sed '/^[[:space:]]*$/d' | tail -n 1)
    if [[ "$out" =~ ^[A-Z_]+$ ]]; then
      printf '%s\n' "$out"
    else
      printf 'UNKNOWN\n'
    fi
  elif [[ "$err" == *NOT_FOUND* || "$err" == *"not found"* ]]; then
    printf 'NOT_FOUND\n'
  else
    printf 'UNKNOWN\n'
  fi
}

# ok: usable. lost: preempted or failed, must be deleted and recreated. missing: doesn't
# exist. stuck: a state that may never end by itself (a stopped VM still holds its quota,
# a repair or gcloud errors can last): waited for at most a bounded time. wait: anything on
# the way (CREATING, WAITING_FOR_RESOURCES, PROVISIONING, ...), which the request's
# VALID_UNTIL bounds.
classify_state() {
  case "$1" in
    READY | ACTIVE) echo ok ;;
    PREEMPTED | TERMINATED | SUSPENDED | FAILED) echo lost ;;
    NOT_FOUND) echo missing ;;
    STOPPED | STOPPING | REPAIRING | UNKNOWN | SUSPENDING) echo stuck ;;
    *) echo wait ;;
  esac
}

# Polls until the TPU is usable; $1 = seconds between polls, $2 = seconds a stuck state
# (STOPPED, REPAIRING, UNKNOWN, ...) may last. Fails when the request failed or vanished.
wait_until_ready() {
  local interval="$1" stuck_limit="$2" state stuck_since=""
  describe_cmd
  if ((DRY_RUN)); then
    run "${CMD[@]}"
    return 0
  fi
  while :; do
    state=$(resource_state)
    case "$(classify_state "$state")" in
      ok) note "$TPU_NAME: $state"; return 0 ;;
      lost | missing) note "error: $TPU_NAME is $state"; return 1 ;;
      stuck)
        stuck_since=${stuck_since:-$SECONDS}
        if ((SECONDS - stuck_since >= stuck_limit)); then
          note "error: $TPU_NAME has been $state for $((SECONDS - stuck_since))s (limit ${stuck_limit}s)"
          return 1
        fi
        note "$TPU_NAME: $state; next check in ${interval}s"
        sleep "$interval"
        ;;
      *) stuck_since=""; note "$TPU_NAME: $state; next check in ${interval}s"; sleep "$interval" ;;
    esac
  done
}

# ------------------------------------------------------------------------------ remote code

# A --command string that defines the function $1 on the worker and calls it with the
# other arguments. Each argument goes through printf %q, so a workdir like
# "gs://bucket/my runs/x" arrives as one word. Workers run it with their login shell, bash.
remote_command() {
  printf '%s\n%s' "$(declare -f "$1")" "$(quote_cmd "$@")"
}

# The functions below run on the TPU workers, not here.

# $1 = uv version. Unpacks the shipped tarball into ~/pretrain-src and installs it with the
# tpu extra (jax[tpu]) into a fresh Python 3.11 virtualenv, ~/pretrain-venv, with the exact
# versions of tpu_scripts/constraints.txt. The TPU images ship Python 3.10 (jax >= 0.7 needs
# 3.11): uv fetches a standalone CPython 3.11 when the VM has none. Ends by importing the
# stack and printing its versions.
remote_setup() {
  set -e
  local uv_version="$1" venv="$HOME/pretrain-venv"
  rm -rf ~/pretrain-src
  mkdir -p ~/pretrain-src
  tar -xzf ~/pretrain-src.tar.gz -C ~/pretrain-src
  cd ~/pretrain-src
  python3 -m pip install --user --quiet "uv==$uv_version"
  export PATH="$HOME/.local/bin:$PATH"
  uv venv --quiet --clear --python 3.11 "$venv"
  uv pip install --quiet --python "$venv/bin/python" -c tpu_scripts/constraints.txt -e '.[tpu]'
  "$venv/bin/python" -c '
import importlib.metadata as md, socket, sys
import flax, grain, jax, optax, orbax.checkpoint, pretrain.cli, t5x_like
names = ("jax", "jaxlib", "libtpu", "flax", "optax", "orbax-checkpoint", "grain",
         "t5x-like-pretrain")
print(socket.gethostname() + ": python " + sys.version.split()[0] + " " + " ".join(
    n + "=" + md.version(n) for n in names))
'
}

# $1 = run name. Fails (one line on stderr) unless this worker can start the run: set up
# (~/pretrain-venv/bin/pretrain) and not already running it. launch.sh runs it on every
# worker before it starts anything.
remote_check() {
  local run="$1" pidfile="$HOME/pretrain-logs/$1.pid"
  if [[ ! -x "$HOME/pretrain-venv/bin/pretrain" ]]; then
    echo "error: $(hostname) is not set up (no ~/pretrain-venv/bin/pretrain): run setup.sh" >&2
    return 1
  fi
  if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "error: run $run is already running on $(hostname)" >&2
    return 1
  fi
  echo "$(hostname): ready for $run"
}

# $1 = run name, the rest = pretrain train arguments. Starts training in its own session
# (setsid) so that it outlives the ssh connection and stop can kill its process group.
remote_launch() {
  local run="$1" logs="$HOME/pretrain-logs"
  shift
  mkdir -p "$logs"
  cd "$HOME/pretrain-src" || return 1
  # The environment setup.sh built (Python 3.11, the pinned stack).
  export PATH="$HOME/pretrain-venv/bin:$PATH"
  if [[ -f "$logs/$run.pid" ]] && kill -0 "$(cat "$logs/$run.pid")" 2>/dev/null; then
    echo "error: run $run is already running on $(hostname)" >&2
    return 1
  fi
  echo "== $(date -u '+%F %T') $(hostname): pretrain train $*" >>"$logs/$run.log"
  # Every worker is one process of the job: `pretrain` calls jax.distributed.initialize()
  # (TPU cluster auto-detection) when PRETRAIN_DISTRIBUTED=auto.
  PRETRAIN_DISTRIBUTED=auto setsid nohup pretrain train "$@" >>"$logs/$run.log" 2>&1 </dev/null &
  echo "$!" >"$logs/$run.pid"
  echo "$(hostname): started $run (pid $!), log ~/pretrain-logs/$run.log"
}

# $1 = run name ("" = every run), $2 = seconds to wait after SIGTERM before SIGKILL.
remote_stop() {
  local run="$1" grace="$2" f pid i stopped=0
  shopt -s nullglob
  for f in "$HOME"/pretrain-logs/*.pid; do
    [[ -z "$run" || "$f" == "$HOME/pretrain-logs/$run.pid" ]] || continue
    pid=$(cat "$f")
    # A zombie still answers kill -0; count it as gone.
    if kill -0 "$pid" 2>/dev/null && [[ "$(ps -o stat= -p "$pid")" != Z* ]]; then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      for ((i = 0; i < grace * 5; i++)); do
        if ! kill -0 "$pid" 2>/dev/null || [[ "$(ps -o stat= -p "$pid")" == Z* ]]; then break; fi
        sleep 0.2
      done
      kill -KILL -- "-$pid" 2>/dev/null || true
      echo "$(hostname): stopped $(basename "$f" .pid) (pid $pid)"
      stopped=1
    fi
    rm -f "$f"
  done
  ((stopped)) || echo "$(hostname): nothing running"
}

# $1 = run name ("" = the newest log), $2 = lines, $3 = 1 to follow.
remote_logs() {
  local run="$1" lines="$2" follow="$3" file="" f
  if [[ -n "$run" ]]; then
    file="$HOME/pretrain-logs/$run.log"
  else
    for f in "$HOME"/pretrain-logs/*.log; do
      if [[ -e "$f" && (-z "$file" || "$f" -nt "$file") ]]; then file=$f; fi
    done
  fi
  if [[ -z "$file" || ! -e "$file" ]]; then
    echo "error: no log ${run:+for run $run }on $(hostname)" >&2
    return 1
  fi
  if ((follow)); then
    exec tail -n "$lines" -F "$file"
  fi
  tail -n "$lines" "$file"
}

remote_status() {
  local f pid state found=0
  shopt -s nullglob
  for f in "$HOME"/pretrain-logs/*.pid; do
    found=1
    pid=$(cat "$f")
    state=stopped
    if kill -0 "$pid" 2>/dev/null; then state=running; fi
    echo "$(hostname) $(basename "$f" .pid): $state (pid $pid); last log line: $(tail -n 1 "${f%.pid}.log" 2>/dev/null)"
  done
  ((found)) || echo "$(hostname): no run launched"
}
