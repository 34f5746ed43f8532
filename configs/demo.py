"""The demo: tiny model on small synthetic face videos, minutes on 2 CPU cores.

`auvmae demo` builds the data into WORKDIR/data and pre-trains into
WORKDIR/pretrain with `get_config().pretrain`.
"""

from __future__ import annotations

import ml_collections

from configs import finetune, pretrain

# Many short videos: a ViT generalises to unseen faces only after seeing many identities.
SYNTHETIC = dict(image_size=64, clip_length=8, num_subjects=240, videos_per_subject=1, frames_per_video=32,
                 seed=0)


def pretrain_config() -> ml_collections.ConfigDict:
    config = pretrain.get_config("tiny")
    config.data.synthetic = dict(SYNTHETIC)
    config.data.image_size = 64
    config.data.num_frames = 8
    config.data.crop_scale = (0.6, 1.0)
    config.model.patch_size = 16  # 4 x 4 positions: 16x fewer tokens than patch 16 at 224
    config.model.dtype = "float32"  # CPU: bf16 matmuls are slower there
    config.mask_ratio = 0.75  # 0.9 of 16 positions would leave 2 visible
    config.batch_size = 32
    config.num_train_steps = 300
    config.optimizer.base_lr = 8e-3  # peak lr 1e-3 at batch 32: a short run of a tiny model
    config.optimizer.warmup_steps = 30
    config.optimizer.grad_clip = 1.0
    config.log_every = 25
    config.eval_every = 100
    config.checkpoint_every = 100
    return config


def finetune_config() -> ml_collections.ConfigDict:
    """Video level, all three losses, fold 1: tested on subjects never trained on."""
    config = finetune.get_config("synthetic,video,1")
    config.data.synthetic = dict(SYNTHETIC)
    config.clip_length = SYNTHETIC["clip_length"]
    config.data.image_size = 64
    config.model.preset = "tiny"
    config.model.patch_size = 16
    config.model.dtype = "float32"
    config.model.drop_path = 0.0
    config.batch_size = 32
    config.eval_batch_size = 32
    config.num_train_steps = 1000
    config.optimizer.base_lr = 8e-3  # peak lr 1e-3 at batch 32
    config.optimizer.layer_decay = 0.9
    config.optimizer.warmup_steps = 50
    config.optimizer.min_lr = 1e-4
    config.log_every = 50
    config.eval_every = 500
    config.checkpoint_every = 500
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.pretrain = pretrain_config()
    config.finetune = finetune_config()  # init_from = the pre-training workdir, set by the demo
    return config
