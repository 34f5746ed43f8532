"""VideoMAE pre-training (SPEC §1).

`--config=configs/pretrain.py:B` picks the model preset (mini, tiny, S, B, L).
Defaults follow the paper: 16x224x224 clips, tube mask 0.9, AdamW with
lr 1.5e-4 * batch / 256, 40 warm-up epochs then cosine, 500 epochs.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = arg or "B"
    config = ml_collections.ConfigDict()
    config.task = "pretrain"
    common.loop_config(config)
    config.data = common.data_config()
    config.data.num_frames = 16
    config.data.temporal_stride = 1  # 4 to prepare frame-level fine-tuning (SPEC §1)
    # Weighted mix of built datasets instead of `name`, e.g. the paper's five corpora:
    # "face_videos/voxceleb2:1,face_videos/celebv_hq:1,face_videos/faceforensics:1,face_videos/vfhq:1,
    # face_videos/mead:1" (weights are relative), each read from its `mixture_split`.
    config.data.mixture = ""
    config.data.mixture_split = "train"
    # attention_impl None: auto (models.py); None fields are placeholders, so that the
    # command line can set them (--config.model.attention_impl=xla)
    config.model = dict(preset=preset, patch_size=16, tubelet_size=2, dtype="bfloat16", remat=False,
                        attention_impl=placeholder(str), attention_chunk=1024, drop_path=0.0,
                        layer_norm_eps=1e-6, head_norm_eps=placeholder(float))
    config.mask_ratio = 0.9
    # 0: the decoder predicts every masked tubelet (the paper). 0.5: VideoMAE V2's dual
    # masking, a running-cell mask keeps half of each frame's tokens for the decoder and the
    # loss (ViT-B at 16 frames: 944 decoder tokens instead of 1,568; 0.25 and 0.75 also work).
    config.decoder_mask_ratio = 0.0
    config.norm_pix_loss = True
    config.optimizer = common.optimizer_config(base_lr=1.5e-4)
    config.num_images = 2  # clips shown in the reconstruction pictures
    return config
