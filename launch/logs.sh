#!/usr/bin/env bash
# Stream (tail -F) a run's log from one worker or from all of them.
set -euo pipefail
SCRIPT_NAME="logs.sh"
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: launch/logs.sh --project P --zone Z --name N [options]

Follows ~/<log-dir>/latest.log (the newest run started by launch/run.sh) with 'tail -F' over ssh; Ctrl-C stops
following and leaves the run alone. With --worker=all every line is prefixed with its worker, e.g. "[w3] ".

  --worker W       0 (default), another worker number, or all
  --file F         log file under ~/<log-dir> (default latest.log), e.g. rft-20250101-120000-w0.log
  --lines K        lines of history to show first (default 100)
  --no-follow      print the last --lines lines and exit (no -F)

$COMMON_FLAGS_HELP
EOF
}

WORKER="0"
FILE="latest.log"
LINES=100
FOLLOW=1

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
    --worker | --worker=*)
      flag_value --worker "$@"
      WORKER="$FLAG_VALUE"
      shift "$FLAG_SHIFT"
      ;;
    --file | --file=*)
      flag_value --file "$@"
      FILE="$FLAG_VALUE"
      shift "$FLAG_SHIFT"
      ;;
    --lines | --lines=*)
      flag_value --lines "$@"
      LINES="$FLAG_VALUE"
      shift "$FLAG_SHIFT"
      ;;
    --no-follow)
      FOLLOW=0
      shift
      ;;
    *) unknown_flag "$1" ;;
  esac
done

require_tpu
[[ "$WORKER" == all || "$WORKER" =~ ^[0-9]+$ ]] || die "--worker must be a worker number or 'all', got '$WORKER'"
[[ "$LINES" =~ ^[0-9]+$ ]] || die "--lines must be a whole number"
[[ "$FILE" =~ ^[A-Za-z0-9._-]+$ ]] || die "--file must be a file name under the log folder, got '$FILE'"
require_cmd gcloud
ssh_flags

logs="$(remote_path "$LOG_DIR")"
tail_cmd="tail -n $LINES"
if ((FOLLOW)); then
  tail_cmd+=" -F"
fi
tail_cmd+=" \"$logs/$FILE\""
if [[ "$WORKER" == all ]]; then
  remote="$WORKER_ID_SNIPPET; $tail_cmd | sed -u \"s/^/[w\$W] /\""
else
  remote="$tail_cmd"
fi

run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "--worker=$WORKER" "${SSH_FLAGS[@]}" "--command=$remote"
