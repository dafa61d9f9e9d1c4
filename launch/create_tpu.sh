#!/usr/bin/env bash
# Create a Cloud TPU VM slice for entropix_rl.
#
# Usage:
#   launch/create_tpu.sh NAME ZONE ACCELERATOR_TYPE [RUNTIME_VERSION]
#   QUEUED=1 [SPOT=1] launch/create_tpu.sh NAME ZONE ACCELERATOR_TYPE [RUNTIME_VERSION]
#
# Examples:
#   launch/create_tpu.sh entropix-v5p us-east5-a v5p-32          # 16 chips, 4 hosts
#   QUEUED=1 SPOT=1 launch/create_tpu.sh entropix-v6e us-east5-b v6e-64
#
# RUNTIME_VERSION defaults by generation: v5p -> v2-alpha-tpuv5, v6e -> v2-alpha-tpuv6e,
# v5litepod -> v2-alpha-tpuv5-lite, anything else -> tpu-ubuntu2204-base.
# QUEUED=1 uses `gcloud compute tpus queued-resources create` (waits for capacity instead of
# failing; the usual path for large slices); SPOT=1 requests preemptible capacity there.
# PROJECT (env) is passed as --project when set; otherwise gcloud's default project is used.
set -euo pipefail

if [[ $# -lt 3 || $# -gt 4 ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 2
fi

NAME="$1"
ZONE="$2"
ACCEL="$3"
case "${ACCEL}" in
  v5p-*) DEFAULT_VERSION="v2-alpha-tpuv5" ;;
  v6e-*) DEFAULT_VERSION="v2-alpha-tpuv6e" ;;
  v5litepod-*) DEFAULT_VERSION="v2-alpha-tpuv5-lite" ;;
  *) DEFAULT_VERSION="tpu-ubuntu2204-base" ;;
esac
VERSION="${4:-${DEFAULT_VERSION}}"
PROJECT_FLAG=()
if [[ -n "${PROJECT:-}" ]]; then
  PROJECT_FLAG=(--project="${PROJECT}")
fi

if [[ "${QUEUED:-0}" == "1" ]]; then
  SPOT_FLAG=()
  if [[ "${SPOT:-0}" == "1" ]]; then
    SPOT_FLAG=(--spot)
  fi
  set -x
  gcloud compute tpus queued-resources create "${NAME}-qr" "${PROJECT_FLAG[@]}" \
    --node-id="${NAME}" --zone="${ZONE}" --accelerator-type="${ACCEL}" \
    --runtime-version="${VERSION}" "${SPOT_FLAG[@]}"
  set +x
  echo "Queued. Watch with:"
  echo "  gcloud compute tpus queued-resources describe ${NAME}-qr --zone=${ZONE}"
else
  set -x
  gcloud compute tpus tpu-vm create "${NAME}" "${PROJECT_FLAG[@]}" \
    --zone="${ZONE}" --accelerator-type="${ACCEL}" --version="${VERSION}"
fi
