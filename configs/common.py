"""Config pieces shared by pre-training and fine-tuning: data, optimizer, mesh, loop."""

from __future__ import annotations

import ml_collections

from auvmae_jax.sharding import DEFAULT_RULES


def data_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        # 'synthetic_faces' (built on demand), a data_builders name, or a prepared builder dir.
        name="synthetic_faces",
        data_dir="~/tensorflow_datasets",
        synthetic=dict(image_size=224, clip_length=16, num_subjects=24, videos_per_subject=2,
                       frames_per_video=96, seed=0),
        train_split="part1+part2+part3",
        image_size=224,
        crop_scale=(0.5, 1.0),
        crop_ratio=(3 / 4, 4 / 3),
        flip=True,
        worker_count=0,  # grain worker processes decoding JPEGs (0: in the main process)
        read_threads=16,  # threads per reading process, each making one batch (bounds the buffer)
        repeats=1,  # training views per decoded clip (repeated sampling; VideoMAE V2 uses 4)
    ))


def optimizer_config(base_lr: float) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        base_lr=base_lr,  # per 256 clips: lr = base_lr * batch_size / 256
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        weight_decay=0.05,
        warmup_epochs=40.0,
        warmup_steps=-1,  # >= 0 overrides warmup_epochs
        warmup_init_lr=0.0,
        min_lr=1e-6,
        grad_clip=0.0,  # global-norm clipping, 0 = off
        layer_decay=1.0,  # layer-wise lr decay (fine-tuning), 1 = off
    ))


def loop_config(config: ml_collections.ConfigDict) -> None:
    """Fields of the shared training loop (trainer.py), set in place."""
    config.seed = 0
    config.batch_size = 64
    config.num_epochs = 500.0
    config.num_train_steps = -1  # > 0 overrides num_epochs
    config.grad_accum_steps = 1
    config.mesh = dict(data=-1, fsdp=1, tensor=1)
    config.logical_axis_rules = [list(r) for r in DEFAULT_RULES]
    config.log_every = 50
    config.eval_every = 1000
    config.checkpoint_every = 1000
    config.keep_checkpoints = 3
    config.prefetch_to_device = 2
