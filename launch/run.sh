#!/usr/bin/env bash
# Start one spct stage (or inference command) on every worker of a TPU slice, in the background, each worker
# logging to its own file.
set -euo pipefail
SCRIPT_NAME="run.sh"
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

STAGES="rft grpo metarm eval plan score serve"
INFERENCE="eval score serve" # --config is optional for these: flags after -- may say everything

usage() {
  cat <<EOF
Usage: launch/run.sh STAGE --config configs/X.py [--config.key=value ...] --project P --zone Z --name N
                     [options] [-- MORE_SPCT_ARGS...]

Runs '~/<venv>/bin/spct STAGE --config configs/X.py [--config.key=value ...] [MORE_SPCT_ARGS...]' in
~/<remote-dir> on every worker (--worker=all) under nohup, so it survives the ssh session, and returns; STAGE eval
runs 'spct eval run ...'. Each worker writes ~/<log-dir>/STAGE-RUNID-wW.log (W = the worker number), points
~/<log-dir>/latest.log at it and records the pid in ~/<log-dir>/spct.pid; a worker where that pid is still alive
refuses to start a second run (stop.sh stops it).
No coordinator flags: on TPU VMs jax.distributed.initialize() finds the other hosts by itself.
The run dir (and eval's --out, score's --output) must be storage every worker sees: gs://BUCKET/... directly, or
a Cloud Storage FUSE mount at the same path on every worker (setup.sh --mount-bucket BUCKET mounts gs://BUCKET at
/mnt/spct), so every host's checkpoint shards land in the bucket.
score, eval and serve are the inference commands: --config is optional for them (the model, mesh and the rest
can all come after --), e.g. launch/run.sh score ... -- --model M --input F --output O --mesh fsdp=-1.
spct serve refuses a multi-host slice: run it on a single-host one (v5p-8, v5e-8).

  STAGE                 one of: $STAGES
  --config PATH         ml_collections config file, relative to the code checkout (required but for
                        $INFERENCE)
  --config.KEY=VALUE    config overrides, passed through as given (any number)
  --run-id ID           names the log files (default: the UTC time, e.g. 20250101-120000)
  --env KEY=VALUE       export KEY=VALUE on the workers before starting (any number)
  -- MORE_SPCT_ARGS     passed verbatim to spct after the config flags

$COMMON_FLAGS_HELP

Example:
  launch/run.sh rft --config configs/gemma2_27b_v5p.py --config.run_dir=/mnt/spct/gemma2-27b-rft \\
      --project my-proj --zone us-east5-a --name spct-v5p --dry-run
EOF
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STAGE=""
CONFIG=""
OVERRIDES=()
ENVS=()
EXTRA=()
RUN_ID=""

while (($#)); do
  common_flag "$@"
  if ((COMMON_SHIFT)); then
    shift "$COMMON_SHIFT"
    continue
  fi
  case "$1" in
    -h | --help)
      usage
      exit 0
      ;;
    --config | --config=*)
      flag_value --config "$@"
      CONFIG="$FLAG_VALUE"
      shift "$FLAG_SHIFT"
      ;;
    --config.*=*)
      OVERRIDES+=("$1")
      shift
      ;;
    --config.*)
      (($# >= 2)) || die "$1 needs a value"
      OVERRIDES+=("$1=$2")
      shift 2
      ;;
    --run-id | --run-id=*)
      flag_value --run-id "$@"
      RUN_ID="$FLAG_VALUE"
      shift "$FLAG_SHIFT"
      ;;
    --env | --env=*)
      flag_value --env "$@"
      [[ "$FLAG_VALUE" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env wants KEY=VALUE, got '$FLAG_VALUE'"
      ENVS+=("$FLAG_VALUE")
      shift "$FLAG_SHIFT"
      ;;
    --)
      shift
      EXTRA=("$@")
      break
      ;;
    -*) unknown_flag "$1" ;;
    *)
      [[ -z "$STAGE" ]] || die "one STAGE only, got '$STAGE' and '$1'"
      STAGE="$1"
      shift
      ;;
  esac
done

[[ -n "$STAGE" ]] || die "STAGE is required: one of $STAGES"
[[ " $STAGES " == *" $STAGE "* ]] || die "unknown STAGE '$STAGE': one of $STAGES"
if [[ " $INFERENCE " != *" $STAGE "* ]]; then
  require CONFIG --config
elif [[ -z "$CONFIG" ]] && ((${#OVERRIDES[@]})); then
  die "${OVERRIDES[0]} needs --config"
fi
require_tpu
if [[ -z "$RUN_ID" ]]; then
  RUN_ID="$(TZ=UTC printf '%(%Y%m%d-%H%M%S)T' -1)"
fi
[[ "$RUN_ID" =~ ^[A-Za-z0-9._-]+$ ]] || die "--run-id may hold letters, digits, '.', '_' and '-' only"
if [[ -n "$CONFIG" && "$CONFIG" != /* && ! -f "$REPO/$CONFIG" ]]; then
  info "warning: $CONFIG is not in $REPO; it must exist in the code on the workers (launch/setup.sh ships it)"
fi
require_cmd gcloud
ssh_flags

code="$(remote_path "$REMOTE_DIR")"
venv="$(remote_path "$VENV_DIR")"
logs="$(remote_path "$LOG_DIR")"

spct_cmd="\"$venv/bin/spct\" $(quote_word "$STAGE")"
if [[ "$STAGE" == eval ]]; then
  spct_cmd+=" run" # `spct eval` has two subcommands; only `run` needs the slice (`score` is a CPU job)
fi
if [[ -n "$CONFIG" ]]; then
  spct_cmd+=" --config $(quote_word "$CONFIG")"
fi
for w in ${OVERRIDES[@]+"${OVERRIDES[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}; do
  spct_cmd+=" $(quote_word "$w")"
done
exports=""
for e in ${ENVS[@]+"${ENVS[@]}"}; do
  exports+="export ${e%%=*}=$(quote_value "${e#*=}"); "
done

remote="set -e; mkdir -p \"$logs\"; cd \"$code\"; $WORKER_ID_SNIPPET; LOG=\"$logs/$STAGE-$RUN_ID-w\$W.log\"; "
remote+="if [ -f \"$logs/spct.pid\" ] && kill -0 \"\$(cat \"$logs/spct.pid\")\" 2>/dev/null; then "
remote+="echo \"worker \$W: spct is already running (pid \$(cat \"$logs/spct.pid\")); stop it with launch/stop.sh\" >&2; exit 1; fi; "
remote+="ln -sfn \"\$LOG\" \"$logs/latest.log\"; ${exports}"
remote+="nohup $spct_cmd > \"\$LOG\" 2>&1 < /dev/null & echo \$! > \"$logs/spct.pid\"; "
remote+="echo \"worker \$W: started $STAGE (pid \$!), log \$LOG\""

run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker=all "${SSH_FLAGS[@]}" "--command=$remote"
if ((!DRY_RUN)); then
  info "started '$STAGE' on all workers of $TPU_NAME (run id $RUN_ID); follow it with launch/logs.sh"
fi
