#!/usr/bin/env bash
# Copy this checkout to every worker of a TPU VM slice and install it with the TPU extras.
#
# Usage:
#   launch/install.sh NAME ZONE
#   REPO_URL=https://github.com/ORG/entropix_rl.git [REF=main] launch/install.sh NAME ZONE
#
# Default: packs the tracked and untracked-but-not-ignored files of this checkout (so local
# edits travel), copies the archive to all workers with `gcloud ... scp --worker=all` and
# unpacks it into ~/entropix_rl (replacing the previous copy). With REPO_URL set, each worker
# clones REF instead. Then on every worker: `pip install -c constraints.txt -e ".[tpu]"` and a check that JAX
# sees the TPU chips. Run from anywhere inside the repository.
# PROJECT (env) is passed as --project when set.
set -euo pipefail

if [[ $# -ne 2 ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 2
fi

NAME="$1"
ZONE="$2"
REMOTE_DIR="entropix_rl"
PROJECT_FLAG=()
if [[ -n "${PROJECT:-}" ]]; then
  PROJECT_FLAG=(--project="${PROJECT}")
fi
gssh() {
  gcloud compute tpus tpu-vm ssh "${NAME}" "${PROJECT_FLAG[@]}" --zone="${ZONE}" --worker=all \
    --command="$1"
}

if [[ -n "${REPO_URL:-}" ]]; then
  REF="${REF:-main}"
  gssh "set -e; rm -rf ~/${REMOTE_DIR}; git clone --branch ${REF} ${REPO_URL} ~/${REMOTE_DIR}"
else
  ROOT="$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
  ARCHIVE="$(mktemp -t entropix_rl.XXXXXX).tar.gz"
  trap 'rm -f "${ARCHIVE}"' EXIT
  (cd "${ROOT}" && git ls-files -z --cached --others --exclude-standard \
    | tar --null -czf "${ARCHIVE}" -T -)
  gcloud compute tpus tpu-vm scp "${ARCHIVE}" "${NAME}:~/entropix_rl.tar.gz" \
    "${PROJECT_FLAG[@]}" --zone="${ZONE}" --worker=all
  gssh "set -e; rm -rf ~/${REMOTE_DIR}; mkdir -p ~/${REMOTE_DIR}; \
tar -xzf ~/entropix_rl.tar.gz -C ~/${REMOTE_DIR}; rm ~/entropix_rl.tar.gz"
fi

gssh "set -e; cd ~/${REMOTE_DIR}; python3 -m pip install -U pip; \
python3 -m pip install -c constraints.txt -e '.[tpu]'; \
python3 -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.device_count())'"
