#!/usr/bin/env bash
# Stop the run started by launch/run.sh on every worker with SIGTERM: the trainer saves a checkpoint and exits.
set -euo pipefail
SCRIPT_NAME="stop.sh"
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: launch/stop.sh --project P --zone Z --name N [options]

Sends a signal (default TERM) to the pid in ~/<log-dir>/spct.pid on every worker (--worker=all). On SIGTERM the
trainer writes a checkpoint to its run dir and exits, exactly as on a preemption; 'launch/run.sh' with the same
config resumes from it.

  --signal SIG     TERM (default), INT or KILL (KILL skips the checkpoint)

$COMMON_FLAGS_HELP
EOF
}

SIGNAL="TERM"

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
    --signal | --signal=*)
      flag_value --signal "$@"
      SIGNAL="${FLAG_VALUE#SIG}"
      shift "$FLAG_SHIFT"
      ;;
    *) unknown_flag "$1" ;;
  esac
done

require_tpu
[[ "$SIGNAL" == TERM || "$SIGNAL" == INT || "$SIGNAL" == KILL ]] || die "--signal must be TERM, INT or KILL"
require_cmd gcloud
ssh_flags

logs="$(remote_path "$LOG_DIR")"
remote="if [ -f \"$logs/spct.pid\" ] && kill -0 \"\$(cat \"$logs/spct.pid\")\" 2>/dev/null; then "
remote+="kill -$SIGNAL \"\$(cat \"$logs/spct.pid\")\" && echo \"\$(hostname): sent SIG$SIGNAL to \$(cat \"$logs/spct.pid\")\"; "
remote+="else echo \"\$(hostname): no spct running\"; fi"

run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker=all "${SSH_FLAGS[@]}" "--command=$remote"
