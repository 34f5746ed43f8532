#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM pod slice (e.g. v5p-64: 8 workers).
#
#   TPU=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh pretrain --config=configs/pretrain.py:B \
#       --workdir=gs://my-bucket/runs/vitb --config.data.data_dir=gs://my-bucket/tensorflow_datasets \
#       --config.batch_size=1024
#
# Copies this checkout (committed files) to every worker, installs it with jax[tpu],
# and starts the same command on all of them; each worker joins the others through
# jax.distributed (AUVMAE_DISTRIBUTED=1: the TPU environment gives the rest). Data,
# checkpoints and TensorBoard logs go to gs:// so every worker sees them.
# After a preemption (SIGTERM: a checkpoint is saved) recreate the slice and run the
# same line again: it resumes from the workdir. SETUP=0 skips copying and installing.
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}"
GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE" ${PROJECT:+--project="$PROJECT"} --worker=all)
on_all() { "${GCLOUD[@]}" ssh "$TPU" "${WHERE[@]}" --command="$1"; }

if [ "${SETUP:-1}" = 1 ]; then
  cd "$(dirname "$0")/.."
  git archive --format=tar.gz -o /tmp/auvmae.tgz HEAD
  "${GCLOUD[@]}" scp /tmp/auvmae.tgz "$TPU":auvmae.tgz "${WHERE[@]}"
  on_all "rm -rf ~/auvmae && mkdir -p ~/auvmae && tar -xzf ~/auvmae.tgz -C ~/auvmae && \
    cd ~/auvmae && python3 -m pip install -q -U 'jax[tpu]>=0.10,<0.12' -e '.[gcs]'"
fi
ARGS=$(printf '%q ' "$@")
on_all "set -o pipefail; cd ~/auvmae && AUVMAE_DISTRIBUTED=1 TF_CPP_MIN_LOG_LEVEL=3 python3 -m auvmae_jax $ARGS 2>&1 | tee -a ~/auvmae.log"
