#!/usr/bin/env bash
# Delete the TPU slice: the queued resource (with its node) by default, or a plain TPU VM.
set -euo pipefail
SCRIPT_NAME="delete.sh"
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: launch/delete.sh --project P --zone Z --name N [options]

Deletes without asking (--quiet). Everything on the workers' disks goes with them: keep checkpoints in a bucket
(a run dir on a gcsfuse mount, see setup.sh --mount-bucket) or copy them first with launch/copy_checkpoints.sh.

  --queued               delete the queued resource and its TPU node (--force) (the default)
  --no-queued, --tpu-vm  delete a plain TPU VM made with 'create.sh --no-queued'
  --qr-name Q            queued-resource name (default: the --name)
  --async                return without waiting for the deletion to finish

$COMMON_FLAGS_HELP
EOF
}

QUEUED=1
QR_NAME=""
ASYNC=0

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
    --async)
      ASYNC=1
      shift
      ;;
    *) unknown_flag "$1" ;;
  esac
done

require_tpu
QR_NAME="${QR_NAME:-$TPU_NAME}"
require_cmd gcloud
tpu_flags

if ((QUEUED)); then
  cmd=(gcloud compute tpus queued-resources delete "$QR_NAME" "${TPU_FLAGS[@]}" --force --quiet)
else
  cmd=(gcloud compute tpus tpu-vm delete "$TPU_NAME" "${TPU_FLAGS[@]}" --quiet)
fi
if ((ASYNC)); then
  cmd+=(--async)
fi
run "${cmd[@]}"
