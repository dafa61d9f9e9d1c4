#!/usr/bin/env bash
# Run experiments/train.py on every worker of a TPU VM slice (multi-host JAX).
#
# Usage:
#   launch/run.sh NAME ZONE CONFIG WORKDIR [--config.key=value ...]
#
# Example:
#   launch/run.sh entropix-v5p us-east5-a configs/qwen25_7b.py:clip_cov \
#       gs://BUCKET/runs/7b_clip_cov --config.rl.steps=200
#
# CONFIG is a path inside the repository copy on the workers (launch/install.sh puts it in
# ~/entropix_rl). WORKDIR must be shared by all hosts (a gs:// bucket) for multi-host runs;
# re-running with the same WORKDIR resumes from its latest checkpoint. Every worker runs
#   python3 experiments/train.py --config=CONFIG --workdir=WORKDIR \
#       --config.distributed.enabled=true [overrides]
# and its output goes to ~/entropix_rl/logs/<basename of WORKDIR>.log on that worker; the
# command's own output streams from all workers. DETACH=1 starts it under nohup and returns.
# PROJECT (env) is passed as --project when set.
#
# A preempted run saves a checkpoint and exits with code 75; run.sh reports it and runs the
# same command again, which resumes it, up to MAX_RESUMES (env, default 3) times, then exits
# with 75 itself (launch/sweep.py reads that as "preempted"). Any other failure exits as it came.
set -euo pipefail

if [[ $# -lt 4 ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 2
fi

NAME="$1"
ZONE="$2"
CONFIG="$3"
WORKDIR="$4"
shift 4
PROJECT_FLAG=()
if [[ -n "${PROJECT:-}" ]]; then
  PROJECT_FLAG=(--project="${PROJECT}")
fi

ARGS=(--config="${CONFIG}" --workdir="${WORKDIR}" --config.distributed.enabled=true "$@")
QUOTED="$(printf '%q ' "${ARGS[@]}")"
LOG="logs/$(basename "${WORKDIR}").log"
TRAIN="python3 experiments/train.py ${QUOTED}"
if [[ "${DETACH:-0}" == "1" ]]; then
  REMOTE="cd ~/entropix_rl && mkdir -p logs && nohup ${TRAIN} > ${LOG} 2>&1 < /dev/null &"
else
  REMOTE="cd ~/entropix_rl && mkdir -p logs && ${TRAIN} 2>&1 | tee ${LOG}"
fi

PREEMPTED=75
MAX_RESUMES="${MAX_RESUMES:-3}"
echo "[run.sh] ${NAME}: ${TRAIN}"
for ((attempt = 0; ; attempt++)); do
  rc=0
  gcloud compute tpus tpu-vm ssh "${NAME}" "${PROJECT_FLAG[@]}" --zone="${ZONE}" --worker=all \
    --command="set -o pipefail; ${REMOTE}" || rc=$?
  if [[ "${rc}" -ne "${PREEMPTED}" ]]; then
    exit "${rc}"
  fi
  if [[ "${attempt}" -ge "${MAX_RESUMES}" ]]; then
    echo "[run.sh] ${NAME}: preempted again after ${MAX_RESUMES} resumes; giving up (exit 75)"
    exit "${PREEMPTED}"
  fi
  echo "[run.sh] ${NAME}: preempted (checkpoint saved in ${WORKDIR}); resuming, attempt $((attempt + 1))/${MAX_RESUMES}"
done
