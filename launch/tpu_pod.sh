#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM pod slice (e.g. v5p-64: 8 workers).
#
#   TPU=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh pretrain --config=configs/pretrain.py:B \
#       --workdir=gs://my-bucket/runs/vitb --config.data.data_dir=gs://my-bucket/tensorflow_datasets \
#       --config.batch_size=1024
#
# Copies this checkout (committed files) to every worker as ~/auvmae, installs it there,
# and starts the same command on all of them; each worker joins the others through
# jax.distributed (AUVMAE_DISTRIBUTED=1: the TPU environment gives the rest). Data,
# checkpoints and TensorBoard logs go to gs:// so every worker sees them.
# The install (INSTALL, run in ~/auvmae on each worker) makes ~/auvmae-venv with uv and a
# Python of its own (PYTHON_VERSION, 3.12): the TPU images' Python (3.10 on Ubuntu 22.04)
# is older than jax supports; JAX_SPEC pins jax. The command runs with ~/auvmae-venv's
# python where it exists, the worker's python3 otherwise.
# Attention: XLA's (query chunks from 4,096 tokens) unless --config.model.attention_impl=splash
# (jax's Pallas flash-attention kernel for TPUs; not yet run on a TPU by this project).
# After a preemption (SIGTERM: a checkpoint is saved) recreate the slice and run the
# same line again: it resumes from the workdir. SETUP=0 skips copying and installing.
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}"
GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE" ${PROJECT:+--project="$PROJECT"} --worker=all)
on_all() { "${GCLOUD[@]}" ssh "$TPU" "${WHERE[@]}" --command="$1"; }
JAX_SPEC=${JAX_SPEC:-'jax[tpu]>=0.10,<0.12'}
# uv from PyPI into ~/.local (the images' pip), or where pip may not install (PEP 668) uv's installer.
UV='export PATH=~/.local/bin:$PATH && { command -v uv >/dev/null || python3 -m pip install -q --user uv \
  || curl -LsSf https://astral.sh/uv/install.sh | sh; }'
INSTALL=${INSTALL:-"$UV && uv venv -q --allow-existing --python ${PYTHON_VERSION:-3.12} ~/auvmae-venv && \
  uv pip install -q --python ~/auvmae-venv/bin/python '$JAX_SPEC' -e '.[gcs]'"}

if [ "${SETUP:-1}" = 1 ]; then
  cd "$(dirname "$0")/.."
  if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
    echo "tpu_pod.sh: uncommitted changes are not copied (the workers get HEAD, $(git rev-parse --short HEAD))" >&2
  fi
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  git archive --format=tar.gz -o "$tmp/auvmae.tgz" HEAD
  "${GCLOUD[@]}" scp "$tmp/auvmae.tgz" "$TPU":auvmae.tgz "${WHERE[@]}"
  on_all "set -eo pipefail; rm -rf ~/auvmae && mkdir -p ~/auvmae && tar -xzf ~/auvmae.tgz -C ~/auvmae && cd ~/auvmae && $INSTALL"
fi
# The run is detached from the ssh session (its own session, hang-ups ignored, output appended to
# ~/auvmae.log): a dropped connection or Ctrl-C here does not stop training. This session follows
# the log until the run ends and exits with its code (75: preempted, saved; run the line again).
# Reattach: gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=0 --command='tail -f ~/auvmae.log'
# Stop it (a checkpoint is saved first): the same ssh, --worker=all --command='pkill -TERM -f "m auvmae_jax"'.
ARGS=$(printf '%q ' "$@")
on_all "cd ~/auvmae && PY=~/auvmae-venv/bin/python && { [ -x \$PY ] || PY=python3; } && touch ~/auvmae.log && \
  from=\$((\$(stat -c %s ~/auvmae.log) + 1)) && \
  { AUVMAE_DISTRIBUTED=1 TF_CPP_MIN_LOG_LEVEL=3 setsid nohup \$PY -m auvmae_jax $ARGS >> ~/auvmae.log 2>&1 \
      < /dev/null & } && pid=\$! && tail -c +\$from --pid=\$pid -f ~/auvmae.log; wait \$pid"
