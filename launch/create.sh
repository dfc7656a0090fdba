#!/usr/bin/env bash
# Create a Cloud TPU slice (a queued resource by default, or a plain TPU VM) and wait until it is usable.
set -euo pipefail
SCRIPT_NAME="create.sh"
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: launch/create.sh --project P --zone Z --name N --accelerator-type T --runtime-version V [options] [-- GCLOUD_FLAGS...]

Creates the TPU slice N and waits until it is ready: a queued resource (default) polled until ACTIVE, or with
--no-queued a plain TPU VM polled until READY.

  --accelerator-type T   e.g. v5p-64, v5litepod-16, v6e-8                      [SPCT_ACCELERATOR_TYPE]
  --runtime-version V    TPU VM image: v2-alpha-tpuv5 (v5p), v2-alpha-tpuv5-lite (v5e),
                         v2-alpha-tpuv6e (v6e), tpu-ubuntu2204-base (v4)        [SPCT_RUNTIME_VERSION]
  --queued               create a queued resource (the default)
  --no-queued, --tpu-vm  create a plain TPU VM with 'gcloud compute tpus tpu-vm create'
  --qr-name Q            queued-resource name (default: the --name)
  --spot                 spot capacity (cheap, preemptible at any time)
  --reserved             use the project's reservation
  --no-wait              return after the create command; do not poll
  --poll-interval S      seconds between describe polls (default 30)
  --timeout S            give up waiting after S seconds; 0 waits forever (default 0)
  -- GCLOUD_FLAGS...     passed verbatim to the gcloud create command (e.g. --valid-until-duration=6h)

$COMMON_FLAGS_HELP

Example:
  launch/create.sh --project my-proj --zone us-east5-a --name spct-v5p \\
      --accelerator-type v5p-64 --runtime-version v2-alpha-tpuv5 --spot --dry-run
EOF
}

QUEUED=1
QR_NAME=""
CAPACITY=""
WAIT=1
POLL_INTERVAL=30
TIMEOUT=0
EXTRA=()

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
    --accelerator-type | --accelerator-type=*)
      flag_value --accelerator-type "$@"
      ACCELERATOR_TYPE="$FLAG_VALUE"
      shift "$FLAG_SHIFT"
      ;;
    --runtime-version | --runtime-version=*)
      flag_value --runtime-version "$@"
      RUNTIME_VERSION="$FLAG_VALUE"
      shift "$FLAG_SHIFT"
      ;;
    --queued)
      QUEUED=1
      shift
      ;;
    --no-queued | --tpu-vm)
      QUEUED=0
      shift
      ;;
    --qr-name | --qr-name=*)
      flag_value --qr-name "$@"
      QR_NAME="$FLAG_VALUE"
      shift "$FLAG_SHIFT"
      ;;
    --spot | --reserved)
      if [[ -n "$CAPACITY" && "$CAPACITY" != "$1" ]]; then
        die "--spot and --reserved exclude each other"
      fi
      CAPACITY="$1"
      shift
      ;;
    --no-wait)
      WAIT=0
      shift
      ;;
    --poll-interval | --poll-interval=*)
      flag_value --poll-interval "$@"
      POLL_INTERVAL="$FLAG_VALUE"
      shift "$FLAG_SHIFT"
      ;;
    --timeout | --timeout=*)
      flag_value --timeout "$@"
      TIMEOUT="$FLAG_VALUE"
      shift "$FLAG_SHIFT"
      ;;
    --)
      shift
      EXTRA=("$@")
      break
      ;;
    *) unknown_flag "$1" ;;
  esac
done

require_tpu
require ACCELERATOR_TYPE --accelerator-type SPCT_ACCELERATOR_TYPE
if [[ ! "$ACCELERATOR_TYPE" =~ ^v[0-9]+[a-z]*-[0-9]+$ ]]; then
  die "--accelerator-type '$ACCELERATOR_TYPE' does not look like a TPU type (e.g. v5p-64, v5litepod-16)"
fi
if [[ -z "$RUNTIME_VERSION" ]]; then
  hint="$(suggest_runtime "$ACCELERATOR_TYPE")"
  if [[ -n "$hint" ]]; then
    die "--runtime-version is required (or set SPCT_RUNTIME_VERSION); for $ACCELERATOR_TYPE use $hint"
  fi
  die "--runtime-version is required (or set SPCT_RUNTIME_VERSION)"
fi
[[ "$POLL_INTERVAL" =~ ^[0-9]+$ ]] || die "--poll-interval must be a whole number of seconds"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "--timeout must be a whole number of seconds"
QR_NAME="${QR_NAME:-$TPU_NAME}"
require_cmd gcloud
tpu_flags

if ((QUEUED)); then
  create=(gcloud compute tpus queued-resources create "$QR_NAME" "--node-id=$TPU_NAME"
    "--accelerator-type=$ACCELERATOR_TYPE" "--runtime-version=$RUNTIME_VERSION" "${TPU_FLAGS[@]}")
  describe=(gcloud compute tpus queued-resources describe "$QR_NAME" "${TPU_FLAGS[@]}" "--format=value(state.state)")
  ready_state="ACTIVE"
  failed_states=" FAILED SUSPENDING SUSPENDED DELETING "
else
  create=(gcloud compute tpus tpu-vm create "$TPU_NAME" "--accelerator-type=$ACCELERATOR_TYPE"
    "--version=$RUNTIME_VERSION" "${TPU_FLAGS[@]}")
  describe=(gcloud compute tpus tpu-vm describe "$TPU_NAME" "${TPU_FLAGS[@]}" "--format=value(state)")
  ready_state="READY"
  failed_states=" PREEMPTED TERMINATED STOPPING STOPPED DELETING "
fi
if [[ -n "$CAPACITY" ]]; then
  create+=("$CAPACITY")
fi
if ((${#EXTRA[@]})); then
  create+=("${EXTRA[@]}")
fi

run "${create[@]}"

if ((!WAIT)); then
  exit 0
fi
if ((DRY_RUN)); then
  # Shown once; a real run repeats it every --poll-interval seconds until the state is $ready_state.
  run "${describe[@]}"
  info "(dry run) would poll the describe command every ${POLL_INTERVAL}s until the state is $ready_state"
  exit 0
fi

info "waiting for $ready_state (polling every ${POLL_INTERVAL}s; a queued resource can wait a long time for capacity)"
format_cmd "${describe[@]}" >&2
start=$SECONDS
last=""
while true; do
  state="$(run_capture "${describe[@]}" || true)"
  state="${state//[[:space:]]/}"
  if [[ "$state" != "$last" ]]; then
    info "state: ${state:-<none>}"
    last="$state"
  fi
  if [[ "$state" == "$ready_state" ]]; then
    break
  fi
  if [[ -n "$state" && "$failed_states" == *" $state "* ]]; then
    die "$TPU_NAME reached state $state; delete it with launch/delete.sh and try again"
  fi
  if ((TIMEOUT > 0 && SECONDS - start >= TIMEOUT)); then
    die "$TPU_NAME not $ready_state after ${TIMEOUT}s (last state: ${state:-<none>}); it is still requested, see launch/delete.sh"
  fi
  sleep "$POLL_INTERVAL"
done
info "$TPU_NAME is $ready_state; next: launch/setup.sh"
