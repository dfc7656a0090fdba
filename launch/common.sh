#!/usr/bin/env bash
# Shared helpers for the launch/*.sh scripts. Sourced, never run.
#
# What it gives a script:
#   - common flags (--project, --zone, --name, --dry-run, ...) with SPCT_* environment fallbacks,
#     parsed by `common_flag "$@"` inside the script's own flag loop;
#   - `run CMD ARGS...`: prints "+ CMD ARGS..." (shell-quoted, copy-pasteable, one command a line) and runs it,
#     or, under --dry-run, prints it on stdout and runs nothing;
#   - `require` / `die` for clear errors, `tpu_flags` / `ssh_flags` for the flags every gcloud TPU command takes.
#
# Variables set here are read by the scripts that source this file.
# shellcheck disable=SC2034

# ---- settings, from the environment first; flags override ---------------------------------------------------
PROJECT="${SPCT_PROJECT:-}"
ZONE="${SPCT_ZONE:-}"
TPU_NAME="${SPCT_TPU_NAME:-}"
ACCELERATOR_TYPE="${SPCT_ACCELERATOR_TYPE:-}"
RUNTIME_VERSION="${SPCT_RUNTIME_VERSION:-}"
REMOTE_DIR="${SPCT_REMOTE_DIR:-spct-jax}"     # code checkout on each worker, relative to the remote $HOME
VENV_DIR="${SPCT_VENV_DIR:-spct-venv}"        # virtualenv on each worker, relative to the remote $HOME
LOG_DIR="${SPCT_LOG_DIR:-spct_logs}"          # per-worker logs, relative to the remote $HOME
DRY_RUN=0
INTERNAL_IP=0
COMMON_SHIFT=0

# ---- messages -----------------------------------------------------------------------------------------------
die() {
  printf '%s: error: %s\n' "${SCRIPT_NAME:-launch}" "$*" >&2
  exit 2
}

info() {
  printf '%s: %s\n' "${SCRIPT_NAME:-launch}" "$*" >&2
}

# ---- quoting and running ------------------------------------------------------------------------------------
SAFE_WORD='^[A-Za-z0-9_./:=@,+%-]+$'

# Quote a value for a POSIX shell: bare when it holds only safe characters, else single-quoted whole.
quote_value() {
  if [[ "$1" =~ $SAFE_WORD ]]; then
    printf '%s' "$1"
  else
    quote_word_forced "$1"
  fi
}

# Quote one word of a command line: like quote_value, but `--flag=value` keeps the flag bare and quotes the value.
quote_word() {
  if [[ ! "$1" =~ $SAFE_WORD && "$1" =~ ^(--[A-Za-z0-9-]+=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    quote_word_forced "${BASH_REMATCH[2]}"
  else
    quote_value "$1"
  fi
}

quote_word_forced() {
  local w="$1" q="'\\''"
  printf "'%s'" "${w//\'/$q}"
}

# The command line as it would be typed: "+ word word ..."
format_cmd() {
  local out="+" w
  for w in "$@"; do
    out+=" $(quote_word "$w")"
  done
  printf '%s\n' "$out"
}

# Run a command, or only print it under --dry-run. Printed on stdout in a dry run, on stderr otherwise (a trace).
run() {
  if ((DRY_RUN)); then
    format_cmd "$@"
    return 0
  fi
  format_cmd "$@" >&2
  "$@"
}

# For a command whose stdout the caller captures (a describe in a poll loop): runs it quietly. Callers print the
# command once themselves (with `run`) in a dry run, and never call this then.
run_capture() {
  if ((DRY_RUN)); then
    return 0
  fi
  "$@"
}

# ---- flags --------------------------------------------------------------------------------------------------
# Reads the value of a flag given as `--flag value` or `--flag=value`. Sets FLAG_VALUE and FLAG_SHIFT.
flag_value() {
  local name="$1"
  shift
  if [[ "$1" == *=* ]]; then
    FLAG_VALUE="${1#*=}"
    FLAG_SHIFT=1
  else
    if (($# < 2)) || [[ "$2" == --* ]]; then
      die "$name needs a value"
    fi
    FLAG_VALUE="$2"
    FLAG_SHIFT=2
  fi
  if [[ -z "$FLAG_VALUE" ]]; then
    die "$name needs a non-empty value"
  fi
}

# Handles one common flag at "$1". Sets COMMON_SHIFT to the number of words consumed, or 0 if "$1" is not common.
common_flag() {
  COMMON_SHIFT=0
  case "$1" in
    --dry-run | -n)
      DRY_RUN=1
      COMMON_SHIFT=1
      ;;
    --internal-ip)
      INTERNAL_IP=1
      COMMON_SHIFT=1
      ;;
    --project | --project=*)
      flag_value --project "$@"
      PROJECT="$FLAG_VALUE"
      COMMON_SHIFT=$FLAG_SHIFT
      ;;
    --zone | --zone=*)
      flag_value --zone "$@"
      ZONE="$FLAG_VALUE"
      COMMON_SHIFT=$FLAG_SHIFT
      ;;
    --name | --name=* | --tpu | --tpu=*)
      flag_value --name "$@"
      TPU_NAME="$FLAG_VALUE"
      COMMON_SHIFT=$FLAG_SHIFT
      ;;
    --remote-dir | --remote-dir=*)
      flag_value --remote-dir "$@"
      REMOTE_DIR="$FLAG_VALUE"
      COMMON_SHIFT=$FLAG_SHIFT
      ;;
    --venv | --venv=*)
      flag_value --venv "$@"
      VENV_DIR="$FLAG_VALUE"
      COMMON_SHIFT=$FLAG_SHIFT
      ;;
    --log-dir | --log-dir=*)
      flag_value --log-dir "$@"
      LOG_DIR="$FLAG_VALUE"
      COMMON_SHIFT=$FLAG_SHIFT
      ;;
  esac
}

# Call from a script's flag loop for a word nothing matched.
unknown_flag() {
  die "unknown argument '$1' (see --help)"
}

# ---- checks -------------------------------------------------------------------------------------------------
# require VAR_NAME --flag ENV_NAME: dies with a clear message when the variable is empty.
require() {
  local var="$1" flag="$2" env="${3:-}"
  if [[ -z "${!var:-}" ]]; then
    if [[ -n "$env" ]]; then
      die "$flag is required (or set $env)"
    fi
    die "$flag is required"
  fi
}

require_tpu() {
  require PROJECT --project SPCT_PROJECT
  require ZONE --zone SPCT_ZONE
  require TPU_NAME --name SPCT_TPU_NAME
  check_remote_dir --remote-dir "$REMOTE_DIR"
  check_remote_dir --venv "$VENV_DIR"
  check_remote_dir --log-dir "$LOG_DIR"
}

# A folder on the workers: plain path characters, no '.' or '..' part, not '/' (setup.sh replaces --remote-dir).
check_remote_dir() {
  local flag="$1" dir="$2" plain='^/?[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$'
  if [[ ! "$dir" =~ $plain || "/$dir/" == *"/./"* || "/$dir/" == *"/../"* ]]; then
    die "$flag '$dir' must be a plain folder path (letters, digits, '_', '.', '-', '/'; no '.' or '..' parts)"
  fi
}

# A value that goes inside double quotes in a remote command must not hold ", $, \ or a backquote.
check_dq_safe() {
  local flag="$1" value="$2"
  if [[ "$value" == *[\"\$\\\`]* ]]; then
    die "$flag must not contain \", \$, \\ or a backquote"
  fi
}

# The runtime image that goes with an accelerator type, for error messages and the README.
suggest_runtime() {
  case "$1" in
    v5p-*) printf 'v2-alpha-tpuv5' ;;
    v5litepod-* | v5e-*) printf 'v2-alpha-tpuv5-lite' ;;
    v6e-*) printf 'v2-alpha-tpuv6e' ;;
    v4-*) printf 'tpu-ubuntu2204-base' ;;
    *) printf '' ;;
  esac
}

# Real runs need the tool on PATH; a dry run needs nothing.
require_cmd() {
  if ((DRY_RUN)); then
    return 0
  fi
  command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH (install the Google Cloud SDK), or use --dry-run"
}

# Paths on the workers are relative to the remote $HOME unless absolute; this renders one for a remote shell.
remote_path() {
  case "$1" in
    /*) printf '%s' "$1" ;;
    *) printf "\$HOME/%s" "$1" ;;
  esac
}

# A remote shell snippet that sets W to the worker number, from the TPU VM metadata server (the hostname if that
# fails).
# shellcheck disable=SC2016
WORKER_ID_SNIPPET='W=$(curl -sf --connect-timeout 5 -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)'

# ---- gcloud flag groups -------------------------------------------------------------------------------------
tpu_flags() {
  TPU_FLAGS=("--zone=$ZONE" "--project=$PROJECT")
}

ssh_flags() {
  tpu_flags
  SSH_FLAGS=("${TPU_FLAGS[@]}")
  if ((INTERNAL_IP)); then
    SSH_FLAGS+=(--internal-ip)
  fi
}

COMMON_FLAGS_HELP='Common flags (each also read from the environment variable shown):
  --project P        Google Cloud project                               [SPCT_PROJECT]
  --zone Z           zone of the TPU, e.g. us-east5-a                   [SPCT_ZONE]
  --name N           TPU VM name (the node id); --tpu is an alias       [SPCT_TPU_NAME]
  --remote-dir D     code checkout on each worker, under ~              [SPCT_REMOTE_DIR, default spct-jax]
  --venv D           virtualenv on each worker, under ~                 [SPCT_VENV_DIR, default spct-venv]
  --log-dir D        log folder on each worker, under ~                 [SPCT_LOG_DIR, default spct_logs]
  --internal-ip      ssh/scp over internal IPs (when running inside the VPC)
  --dry-run, -n      print every command ("+ ..." one a line on stdout) and run nothing
  -h, --help         this help'
