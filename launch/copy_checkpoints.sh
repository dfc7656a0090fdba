#!/usr/bin/env bash
# Copy checkpoints to a local folder, from a GCS bucket or from a worker's disk.
set -euo pipefail
SCRIPT_NAME="copy_checkpoints.sh"
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: launch/copy_checkpoints.sh --src SRC --dest DIR [options]

  --src SRC     gs://bucket/path: the run dir's objects on GCS, copied with 'gcloud storage rsync -r' (--project
                is passed on if given; --zone and --name are not needed); for a run dir /mnt/spct/X on a gcsfuse
                mount of gs://BUCKET at /mnt/spct, that is gs://BUCKET/X; any other path: a folder on a worker,
                relative to its home unless absolute (e.g. spct-jax/runs/rft), copied with
                'gcloud compute tpus tpu-vm scp --recurse' (needs --project, --zone, --name)
  --dest DIR    local folder; created if missing (required)
  --worker W    the worker to copy from, for a worker path (default 0)
  --gsutil      use 'gsutil -m rsync -r' instead of 'gcloud storage rsync -r'

Multi-host runs write one checkpoint across all hosts: give the trainer a run dir on a Cloud Storage FUSE mount
of a bucket, at the same path on every worker (setup.sh --mount-bucket), so the whole checkpoint is in one place,
the bucket. A worker-disk checkpoint is complete only for single-host slices (e.g. v5litepod-8).

$COMMON_FLAGS_HELP
EOF
}

SRC=""
DEST=""
WORKER="0"
USE_GSUTIL=0

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
    --src | --src=*)
      flag_value --src "$@"
      SRC="$FLAG_VALUE"
      shift "$FLAG_SHIFT"
      ;;
    --dest | --dest=*)
      flag_value --dest "$@"
      DEST="$FLAG_VALUE"
      shift "$FLAG_SHIFT"
      ;;
    --worker | --worker=*)
      flag_value --worker "$@"
      WORKER="$FLAG_VALUE"
      shift "$FLAG_SHIFT"
      ;;
    --gsutil)
      USE_GSUTIL=1
      shift
      ;;
    *) unknown_flag "$1" ;;
  esac
done

require SRC --src
require DEST --dest
[[ "$WORKER" =~ ^[0-9]+$ ]] || die "--worker must be one worker number, got '$WORKER'"

if [[ "$SRC" == gs://* ]]; then
  if ((USE_GSUTIL)); then
    cmd=(gsutil -m rsync -r "$SRC" "$DEST")
  else
    cmd=(gcloud storage rsync -r "$SRC" "$DEST")
    if [[ -n "$PROJECT" ]]; then
      cmd+=("--project=$PROJECT")
    fi
  fi
else
  require_tpu
  ssh_flags
  cmd=(gcloud compute tpus tpu-vm scp --recurse "$TPU_NAME:$SRC" "$DEST" "--worker=$WORKER" "${SSH_FLAGS[@]}")
fi
require_cmd "${cmd[0]}"

run mkdir -p "$DEST"
run "${cmd[@]}"
