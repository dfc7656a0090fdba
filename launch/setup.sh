#!/usr/bin/env bash
# Put the code on every worker of a TPU slice and install it into a virtualenv with jax[tpu].
set -euo pipefail
SCRIPT_NAME="setup.sh"
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: launch/setup.sh --project P --zone Z --name N [options]

Copies the code to every worker (--worker=all) and installs it there:
  1. git archive of --ref (default HEAD) of the local checkout -> a tarball (committed files only!);
  2. gcloud compute tpus tpu-vm scp of the tarball to all workers;
  3. gcloud compute tpus tpu-vm ssh --worker=all: unpack into ~/<remote-dir> (replacing it), install the Python
     interpreter if missing (apt), create ~/<venv>, pip install -e ~/<remote-dir> plus jax[tpu].
With --git-url, step 1-2 become a git clone on each worker instead.
With --mount-bucket, a further ssh --worker=all mounts a Cloud Storage bucket with gcsfuse at the same path on
every worker, for the run dir and data (a run dir may also be gs://BUCKET/... itself, with gcsfs installed).

  --repo DIR        local checkout to archive (default: the repository this script is in)
  --ref REF         commit, branch or tag to ship (default HEAD; with --git-url: the default branch)
  --git-url URL     clone URL on the workers instead of copying an archive (workers need access to it)
  --python PY       interpreter on the workers; installed with apt if missing (default python3.11,
                    the package needs >= 3.11 and the TPU images ship Ubuntu 22.04's 3.10)
  --jax-spec S      the JAX requirement installed next to the package (default 'jax[tpu]'; the package's
                    own jax pin still applies)
  --extras E        the package's extras to install too, e.g. 'serve' (starlette, uvicorn) for spct serve
  --mount-bucket BUCKET[:MOUNT_POINT]
                    mount gs://BUCKET with 'gcsfuse --implicit-dirs' at MOUNT_POINT (absolute; default
                    /mnt/spct) on every worker; gcsfuse must be installed there (Cloud Storage FUSE install docs:
                    https://cloud.google.com/storage/docs/cloud-storage-fuse/install); skipped where already mounted
  --check           after installing, print jax.device_count() from every worker (all must join)

$COMMON_FLAGS_HELP

Example:
  launch/setup.sh --project my-proj --zone us-east5-a --name spct-v5p --mount-bucket my-bucket --dry-run
EOF
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REF=""
GIT_URL=""
PYTHON_BIN="python3.11"
JAX_SPEC="jax[tpu]"
EXTRAS=""
CHECK=0
MOUNT_BUCKET=""
MOUNT_POINT="/mnt/spct"

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
    --repo | --repo=*)
      flag_value --repo "$@"
      REPO="$FLAG_VALUE"
      shift "$FLAG_SHIFT"
      ;;
    --ref | --ref=*)
      flag_value --ref "$@"
      REF="$FLAG_VALUE"
      shift "$FLAG_SHIFT"
      ;;
    --git-url | --git-url=*)
      flag_value --git-url "$@"
      GIT_URL="$FLAG_VALUE"
      shift "$FLAG_SHIFT"
      ;;
    --python | --python=*)
      flag_value --python "$@"
      PYTHON_BIN="$FLAG_VALUE"
      shift "$FLAG_SHIFT"
      ;;
    --jax-spec | --jax-spec=*)
      flag_value --jax-spec "$@"
      JAX_SPEC="$FLAG_VALUE"
      shift "$FLAG_SHIFT"
      ;;
    --extras | --extras=*)
      flag_value --extras "$@"
      EXTRAS="$FLAG_VALUE"
      shift "$FLAG_SHIFT"
      ;;
    --mount-bucket | --mount-bucket=*)
      flag_value --mount-bucket "$@"
      MOUNT_BUCKET="${FLAG_VALUE#gs://}"
      if [[ "$MOUNT_BUCKET" == *:* ]]; then
        MOUNT_POINT="${MOUNT_BUCKET#*:}"
        MOUNT_BUCKET="${MOUNT_BUCKET%%:*}"
      fi
      shift "$FLAG_SHIFT"
      ;;
    --check)
      CHECK=1
      shift
      ;;
    *) unknown_flag "$1" ;;
  esac
done

require_tpu
[[ "$PYTHON_BIN" =~ ^[A-Za-z0-9._/-]+$ ]] || die "--python '$PYTHON_BIN' is not a plain interpreter name"
check_dq_safe --jax-spec "$JAX_SPEC"
[[ -z "$EXTRAS" || "$EXTRAS" =~ ^[a-z0-9_-]+(,[a-z0-9_-]+)*$ ]] || die "--extras '$EXTRAS' must be names like serve or a,b"
check_dq_safe --git-url "$GIT_URL"
check_dq_safe --ref "$REF"
if [[ -n "$MOUNT_BUCKET" ]]; then
  [[ "$MOUNT_BUCKET" =~ ^[a-z0-9][a-z0-9._-]*[a-z0-9]$ ]] ||
    die "--mount-bucket: '$MOUNT_BUCKET' is not a bucket name (lower-case letters, digits, '.', '_', '-')"
  [[ "$MOUNT_POINT" == /* ]] || die "--mount-bucket: the mount point '$MOUNT_POINT' must be an absolute path"
  check_remote_dir --mount-bucket "$MOUNT_POINT"
fi
require_cmd gcloud
ssh_flags

code="$(remote_path "$REMOTE_DIR")"
venv="$(remote_path "$VENV_DIR")"
tarball_remote="spct-jax-src.tar.gz"   # relative to the remote home (scp's default directory)

# The remote script, one line (joined with &&) so that the dry run prints one command a line.
steps=()
if [[ -z "$GIT_URL" ]]; then
  REF="${REF:-HEAD}"
  tarball_local="${TMPDIR:-/tmp}/spct-jax-src-${TPU_NAME}.tar.gz"
  if ((!DRY_RUN)); then
    require_cmd git
    git -C "$REPO" rev-parse --verify --quiet "${REF}^{commit}" >/dev/null ||
      die "no commit '$REF' in $REPO: commit your work first (git archive ships committed files only), or use --git-url"
    if [[ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
      info "warning: $REPO has uncommitted changes; they are NOT shipped (only '$REF' is)"
    fi
    trap 'rm -f "$tarball_local"' EXIT
  fi
  run git -C "$REPO" archive --format=tar.gz "--output=$tarball_local" "$REF"
  run gcloud compute tpus tpu-vm scp "$tarball_local" "$TPU_NAME:$tarball_remote" --worker=all "${SSH_FLAGS[@]}"
  steps+=("rm -rf \"$code\"" "mkdir -p \"$code\"" "tar -xzf \"\$HOME/$tarball_remote\" -C \"$code\""
    "rm -f \"\$HOME/$tarball_remote\"")
else
  steps+=("rm -rf \"$code\"" "git clone -q \"$GIT_URL\" \"$code\"")
  if [[ -n "$REF" ]]; then
    steps+=("git -C \"$code\" checkout -q \"$REF\"")
  fi
fi
steps+=(
  "{ command -v $PYTHON_BIN >/dev/null || { sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q $PYTHON_BIN $PYTHON_BIN-venv; }; }"
  "{ test -x \"$venv/bin/python\" || $PYTHON_BIN -m venv \"$venv\"; }"
  "\"$venv/bin/pip\" install -q --upgrade pip"
  "\"$venv/bin/pip\" install -q -e \"$code${EXTRAS:+[$EXTRAS]}\" \"$JAX_SPEC\""
)
remote=""
for s in "${steps[@]}"; do
  remote+="${remote:+ && }$s"
done

run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker=all "${SSH_FLAGS[@]}" "--command=$remote"

if [[ -n "$MOUNT_BUCKET" ]]; then
  # gcsfuse daemonizes once the mount is up, so the ssh session returns; the mount point is created (root-owned
  # folders such as /mnt need sudo) and handed to the ssh user, who runs gcsfuse. Already mounted: left alone.
  install_docs="https://cloud.google.com/storage/docs/cloud-storage-fuse/install"
  mount="{ command -v gcsfuse >/dev/null || { echo \"gcsfuse is not installed on this worker: see $install_docs\" >&2;"
  mount+=" exit 1; }; } && { mountpoint -q \"$MOUNT_POINT\" || { sudo mkdir -p \"$MOUNT_POINT\""
  mount+=" && sudo chown \"\$(id -u):\$(id -g)\" \"$MOUNT_POINT\""
  mount+=" && gcsfuse --implicit-dirs \"$MOUNT_BUCKET\" \"$MOUNT_POINT\"; }; }"
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker=all "${SSH_FLAGS[@]}" "--command=$mount"
fi

if ((CHECK)); then
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker=all "${SSH_FLAGS[@]}" \
    "--command=\"$venv/bin/python\" -c \"import jax; print(jax.process_index(), jax.device_count())\""
fi
if ((!DRY_RUN)); then
  if [[ -n "$MOUNT_BUCKET" ]]; then
    info "gs://$MOUNT_BUCKET is mounted at $MOUNT_POINT on every worker: pass --config.run_dir=$MOUNT_POINT/<run>"
  fi
  info "installed on all workers of $TPU_NAME; next: launch/run.sh rft --config configs/<name>.py"
fi
