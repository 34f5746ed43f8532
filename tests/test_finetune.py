"""Fine-tuning: per-frame head at every level, init from pre-training, resume, evaluate, crossval."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from auvmae_jax import crossval, evaluation, figures, finetune, masking, pretrain
from auvmae_jax.errors import UserError
from auvmae_jax.models import AUDetector, ViTConfig
from tests.conftest import mini_finetune_config, mini_pretrain_config


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("level,frames_in", [("video", 8), ("frame", 2), ("patch", 8)])
def test_head_predicts_every_frame_at_each_level(level, frames_in):
    config = mini_finetune_config("unused", level)
    lvl = finetune.level_settings(config)
    assert lvl.num_frames == frames_in
    model = finetune.build_model(config, num_classes=5)
    video = jnp.zeros((3, frames_in, 32, 32, 3))
    visible = finetune.visible_positions(jax.random.key(0), 3, model, video.shape, lvl.mask_ratio)
    assert (visible is None) == (level != "patch")
    if level == "patch":
        assert visible.shape == (3, 8)  # half of the 16 positions
    params = model.init(jax.random.key(1), video, visible)
    assert model.apply(params, video, visible).shape == (3, 8, 5)  # [B, T = clip_length, N]


def test_patch_level_pools_only_visible_tokens():
    cfg = ViTConfig.from_config(dict(preset="mini", patch_size=8, final_norm=False))
    model = AUDetector(cfg, num_classes=3)
    rng = np.random.default_rng(0)
    video = jnp.asarray(rng.normal(size=(1, 4, 32, 32, 3)), jnp.float32)
    visible, masked = masking.tube_mask(jax.random.key(2), 1, 16, 0.5)
    params = model.init(jax.random.key(0), video, visible)
    out = model.apply(params, video, visible)
    m = np.asarray(masking.token_mask(masked, 2, 16)).reshape(1, 2, 4, 4)
    pix = np.repeat(np.repeat(np.repeat(m, 2, 1), 8, 2), 8, 3)[..., None]
    np.testing.assert_allclose(model.apply(params, jnp.where(pix, -50.0, video), visible), out, atol=1e-5)
    assert not np.allclose(model.apply(params, jnp.where(pix, -50.0, video)), model.apply(params, video),
                           atol=1e-3)


def test_layer_decay_multipliers():
    params = {"encoder": {"patch_embed": {"kernel": 0}, "block0": {"fc1": {"kernel": 0}},
                          "block1": {"fc1": {"kernel": 0}}}, "fc_norm": {"scale": 0}, "head": {"kernel": 0}}
    m = finetune.layer_decay_multipliers(0.5, depth=2)(params)
    assert m["encoder"]["patch_embed"]["kernel"] == 0.125
    assert m["encoder"]["block0"]["fc1"]["kernel"] == 0.25
    assert m["encoder"]["block1"]["fc1"]["kernel"] == 0.5
    assert m["head"]["kernel"] == 1.0 and m["fc_norm"]["scale"] == 1.0


def test_clip_labels_stack_labels_and_valid_in_record_order():
    rng = np.random.default_rng(0)
    records = [{"labels": rng.integers(0, 2, (4, 3)).astype(np.uint8), "valid": np.ones((4, 3), np.uint8)}
               for _ in range(5)]
    out = finetune.clip_labels(records)
    assert out.shape == (5, 2, 4, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[3, 0], records[3]["labels"])
    np.testing.assert_array_equal(out[:, 1], 1)
    records[2] = {"labels": np.zeros((5, 3), np.uint8), "valid": np.zeros((5, 3), np.uint8)}
    with pytest.raises(UserError, match=r"clip 2 of the training split has labels of shape \(5, 3\)"):
        finetune.clip_labels(records)


def test_init_from_pretraining_then_resume_exactly(synthetic_data_dir, tmp_path):
    pre = mini_pretrain_config(synthetic_data_dir)
    pre.num_train_steps = 2
    pre_state, _ = pretrain.train(pre, str(tmp_path / "pre"))

    config = mini_finetune_config(synthetic_data_dir)
    config.init_from = str(tmp_path / "pre")
    config.optimizer.base_lr = 0.0  # lr 0: the encoder stays as loaded
    config.optimizer.min_lr = 0.0
    config.optimizer.weight_decay = 0.0
    config.num_train_steps = 1
    state, _ = finetune.train(config, str(tmp_path / "frozen"))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 state.params["encoder"]["block1"], pre_state.params["encoder"]["block1"])
    assert "norm" not in state.params["encoder"]  # pre-training's final norm is dropped

    config = mini_finetune_config(synthetic_data_dir)
    config.init_from = str(tmp_path / "pre")
    full_state, full = finetune.train(config, str(tmp_path / "full"))

    def kill(step, state):
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        finetune.train(config, str(tmp_path / "cut"), hooks=(kill,))
    cut_state, resumed = finetune.train(config, str(tmp_path / "cut"))
    assert [h["step"] for h in resumed] == [3, 4, 5, 6]
    for key in ("loss", "loss_cls", "loss_intra", "loss_inter"):
        np.testing.assert_allclose([h[key] for h in resumed], [h[key] for h in full[2:]], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 cut_state.params, full_state.params)


def test_evaluate_priors_and_crossval_write_their_files(synthetic_data_dir, tmp_path):
    config = mini_finetune_config(synthetic_data_dir)
    config.num_train_steps = 2
    config.checkpoint_every = 2
    config.data.repeats = 2  # two views of each decoded clip: labels repeated on the device
    _, history = finetune.train(config, str(tmp_path / "ft"))
    assert [h["step"] for h in history] == [1, 2] and np.isfinite([h["loss"] for h in history]).all()
    result = evaluation.evaluate_workdir(str(tmp_path / "ft"))
    with open(tmp_path / "ft" / "metrics.json") as f:
        saved = json.load(f)
    assert saved == result
    assert set(saved) >= {"f1", "f1_mean", "acc", "acc_mean", "baseline_f1_mean"}
    assert list(saved["f1"]) == [f"AU{a}" for a in (1, 2, 4, 6, 7, 9, 10, 12, 15, 17, 23, 24, 25, 26)]
    assert np.isclose(saved["f1_mean"], np.mean(list(saved["f1"].values())))
    assert "| AU1 |" in (tmp_path / "ft" / "metrics.md").read_text()

    paths = figures.priors_report(config, str(tmp_path / "ft"), pair=(6, 12))
    assert os.path.exists(paths["intra"]) and paths["inter"].endswith("inter_AU6_AU12.png")
    for name in ("intra_prior", "inter_prior", "class_weights", "learned_intra", "learned_inter"):
        assert os.path.exists(tmp_path / "ft" / "priors" / f"{name}.npy")

    mean = crossval.run_folds(config, str(tmp_path / "cv"))
    with open(tmp_path / "cv" / "crossval.json") as f:
        saved = json.load(f)
    assert [r["split"] for r in saved["folds"]] == ["part1", "part2", "part3"]
    assert np.isclose(mean["f1_mean"], np.mean([r["f1_mean"] for r in saved["folds"]]))


def test_short_finetune_beats_all_positive_baseline_on_held_out_subjects(tmp_path):
    """Many small synthetic identities, the mini model from scratch: ~1 min on 2 CPU cores.

    Fold 1 tests on part1's subjects, whose faces the model never sees; the all-positive
    baseline's F1 is what a detector without features scores.
    """
    synthetic = dict(image_size=32, clip_length=4, num_subjects=1200, videos_per_subject=1,
                     frames_per_video=4, seed=0)
    config = mini_finetune_config(str(tmp_path / "data"))
    config.data.synthetic = synthetic
    config.clip_length = 4
    config.data.crop_scale = (1.0, 1.0)  # aligned faces, as in the demo
    config.data.flip = False
    config.batch_size = 32
    config.eval_batch_size = 64
    config.num_train_steps = 1500
    config.optimizer.base_lr = 0.03  # peak lr 3.75e-3 at batch 32
    config.optimizer.warmup_steps = 20
    config.optimizer.min_lr = 1e-5
    config.log_every = 500
    config.checkpoint_every = 10_000
    workdir = str(tmp_path / "ft")
    finetune.train(config, workdir)
    result = evaluation.evaluate_workdir(workdir)
    assert result["split"] == "part1"
    assert 0.1 < result["baseline_f1_mean"] < 0.25
    assert result["f1_mean"] > result["baseline_f1_mean"] + 0.1, result
