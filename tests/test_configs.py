"""Every config file loads, names a valid model, and tiles its clips into tubelets."""

import pytest

from auvmae_jax import finetune
from auvmae_jax.errors import UserError
from auvmae_jax.models import PRESETS, ViTConfig
from configs import demo
from configs import finetune as finetune_configs
from configs import pretrain as pretrain_configs


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_pretrain_presets(preset):
    config = pretrain_configs.get_config(preset)
    cfg = ViTConfig.from_config(config.model)
    assert cfg.width == PRESETS[preset]["width"]
    t, h, w = cfg.grid(config.data.num_frames, config.data.image_size)
    assert (t, h, w) == (8, 14, 14)  # 16 frames of 224 px in 2 x 16 x 16 tubelets
    assert 0 < config.mask_ratio < 1 and config.data.mixture == ""


@pytest.mark.parametrize("dataset", sorted(finetune_configs.DATASETS))
@pytest.mark.parametrize("level", finetune.LEVELS)
@pytest.mark.parametrize("fold", [1, 2, 3])
def test_finetune_configs(dataset, level, fold):
    config = finetune_configs.get_config(f"{dataset},{level},{fold}")
    lvl = finetune.level_settings(config)
    cfg = ViTConfig.from_config(config.model)
    cfg.grid(lvl.num_frames, config.data.image_size)  # raises if the clip does not tile
    assert lvl.num_frames * lvl.temporal_stride == config.clip_length
    assert config.data.name == finetune_configs.DATASETS[dataset][0]


def test_demo_config_is_consistent_and_honest():
    config = demo.get_config()
    pre, ft = config.pretrain, config.finetune
    assert pre.data.synthetic == ft.data.synthetic  # one dataset for both stages
    assert pre.data.num_frames == ft.clip_length == ft.data.synthetic.clip_length
    for key in ("preset", "patch_size", "tubelet_size"):  # the encoder transfers as it is
        assert pre.model[key] == ft.model[key]
    # Pre-training reads only the fine-tuning fold's training subjects.
    assert "part1" not in pre.data.train_split and ft.fold == 1
    lvl = finetune.level_settings(ft)
    ViTConfig.from_config(ft.model).grid(lvl.num_frames, ft.data.image_size)


def test_unknown_preset_and_dataset_are_refused():
    with pytest.raises(UserError, match="unknown preset"):
        ViTConfig.from_config(dict(preset="XL"))
    with pytest.raises(ValueError, match="unknown dataset"):
        finetune_configs.get_config("affwild,video,1")
