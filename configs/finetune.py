"""Knowledge-guided AU fine-tuning (SPEC §2): `--config=configs/finetune.py:DATASET,LEVEL,FOLD`.

DATASET: synthetic | disfa | bp4d; LEVEL: video | frame | patch; FOLD: 1 | 2 | 3
(fold k tests on part k and trains on the other two). Defaults follow the paper and
VideoMAE's fine-tuning recipe: 128-frame clips, ViT-B, 20 epochs, lambdas 1/0.01/0.01.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from configs import common

DATASETS = {
    # name -> (builder, clip length of its records)
    "synthetic": ("synthetic_faces", 16),
    "disfa": ("disfa", 128),
    "bp4d": ("bp4d", 128),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    dataset, level, fold = (arg or "synthetic,video,1").split(",")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(DATASETS)}")
    builder, clip_length = DATASETS[dataset]
    config = ml_collections.ConfigDict()
    config.task = "finetune"
    common.loop_config(config)
    config.dataset = dataset
    config.level = level  # video | frame | patch: the one key that picks the input level
    config.fold = int(fold)
    config.clip_length = clip_length  # frames per record; the model predicts every one
    config.frame_stride = 4  # frame level: every 4th frame
    config.patch_mask_ratio = 0.5  # patch level: tube mask on the input
    config.data = common.data_config()
    config.data.name = builder
    del config.data["train_split"]  # the fold decides the splits
    # The minority-AU clips (SPEC §3, `partK_aug`) join training: the paper's recipe on the real
    # datasets; off for the synthetic one (its minority spans are drawn, not observed).
    config.data.train_aug = dataset != "synthetic"
    config.data.crop_scale = (0.8, 1.0)  # faces are pre-cropped: mild crops keep every AU region
    config.data.synthetic.clip_length = clip_length
    config.init_from = ""  # a pre-training workdir or a converted checkpoint dir
    # None fields are placeholders, so that the command line can set them (configs/pretrain.py)
    config.model = dict(preset="B", patch_size=16, tubelet_size=2, dtype="bfloat16", remat=False,
                        attention_impl=placeholder(str), attention_chunk=1024, drop_path=0.1,
                        layer_norm_eps=1e-6, head_norm_eps=placeholder(float), final_norm=False)
    config.loss = dict(l_cls=1.0, l_intra=0.01, l_inter=0.01, kind="fro")  # kind: fro | mse
    config.optimizer = common.optimizer_config(base_lr=1e-3)
    config.optimizer.b2 = 0.999
    config.optimizer.warmup_epochs = 2.0
    config.optimizer.layer_decay = 0.75
    config.batch_size = 32
    config.eval_batch_size = 32
    config.num_epochs = 20.0
    config.eval_every = 500
    config.checkpoint_every = 500
    return config
