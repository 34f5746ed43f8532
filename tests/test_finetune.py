"""Fine-tuning: per-frame head at every level, init from pre-training, resume, evaluate, crossval."""

import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from auvmae_jax import (
    crossval,
    evaluation,
    figures,
    finetune,
    input_pipeline,
    knowledge,
    losses,
    masking,
    metrics,
    pretrain,
    sharding,
    trainer,
)
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
    # A hand-set head on each temporal token's (pooled, normalised) features h_k: logit j * N + n
    # of token k is AU n of frame k * r + j, r = tubelet (2) x temporal stride.
    r = 2 * lvl.temporal_stride
    rng = np.random.default_rng(0)
    video = jnp.asarray(rng.normal(size=video.shape), jnp.float32)
    kernel, bias = rng.normal(size=(32, r * 5)), 0.1 * np.arange(r * 5)
    variables = nn.meta.unbox(params)
    variables["params"]["head"] = {"kernel": jnp.asarray(kernel, jnp.float32),
                                   "bias": jnp.asarray(bias, jnp.float32)}
    out, state = model.apply(variables, video, visible, capture_intermediates=True, mutable=["intermediates"])
    h = np.asarray(state["intermediates"]["fc_norm"]["__call__"][0], np.float64)  # [B, T/2, D]
    assert h.shape == (3, frames_in // 2, 32)
    expected = np.zeros((3, 8, 5))
    for k in range(frames_in // 2):
        for j in range(r):
            expected[:, k * r + j] = h[:, k] @ kernel[:, j * 5:(j + 1) * 5] + bias[j * 5:(j + 1) * 5]
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    if frames_in > 2:  # several tokens: their features (and so their frames' logits) differ
        assert not np.allclose(h[:, 0], h[:, 1], atol=1e-2)


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


def test_layer_decay_reaches_the_updates():
    """Through the optimizer the trainer builds: block k's update is decay^(depth+1-(k+1)) times the
    head's (fine-tuning's default decay 0.75)."""
    from configs import finetune as finetune_configs

    decay = finetune_configs.get_config("synthetic,video,1").optimizer.layer_decay
    assert decay == 0.75
    config = mini_finetune_config("unused")
    model = finetune.build_model(config, num_classes=3)
    video = jnp.zeros((1, 8, 32, 32, 3))
    shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), video)))
    params = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes["params"])
    depth = model.cfg.depth
    assert depth == 2
    opt = config.optimizer
    opt.weight_decay = 0.0
    tx = trainer.make_optimizer(opt, optax.constant_schedule(0.01),
                                finetune.layer_decay_multipliers(decay, depth)(params))
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    # Adam's first update of a constant gradient g is -lr * g / (|g| + eps) = -lr (float32's bias
    # corrections: within 1e-4), the same for every entry, times the entry's multiplier.
    head = np.asarray(updates["head"]["kernel"])
    np.testing.assert_allclose(head, -0.01, rtol=1e-4)
    enc = updates["encoder"]
    for path, k in ((("block1", "fc1", "kernel"), 1), (("block0", "attn", "qkv_kernel"), 2),
                    (("block0", "norm1", "scale"), 2), (("patch_embed", "kernel"), 3)):
        leaf = enc
        for key in path:
            leaf = leaf[key]
        np.testing.assert_allclose(leaf, head[0, 0] * decay ** k, rtol=1e-6, err_msg=str(path))
    np.testing.assert_allclose(updates["fc_norm"]["scale"], head[0, 0], rtol=1e-6)


class _Logits:
    """A stand-in for the detector whose logits are its parameter `logits`: eq. 9 on logits we choose."""

    cfg = ViTConfig.from_config(dict(preset="mini", patch_size=8))

    def apply(self, variables, x, visible=None, deterministic=True, rngs=None):
        assert x.shape[-1] == 3 and visible is None
        return variables["params"]["logits"]


def _eq9_by_hand(z, y, v, w, k_intra, k_inter, lambdas):
    """(total, L_cls, L_intra, L_inter) of SPEC §2 written out with loops over frames and pairs."""
    z, y, v = (np.asarray(a, np.float64) for a in (z, y, v))
    b, t, n = z.shape
    bce = np.log1p(np.exp(z)) - z * y  # -log sigmoid(z) if y else -log(1 - sigmoid(z))
    frames = [(i, f) for i in range(b) for f in range(t) if v[i, f].any()]
    l_cls = sum((v[i, f] * w * bce[i, f]).sum() for i, f in frames) / len(frames)
    hard, p = z > 0, 1 / (1 + np.exp(-z))
    c = np.zeros((n, n))
    for a in range(n):
        for c_ in range(n):
            both = [(i, f) for i in range(b) for f in range(t) if v[i, f, a] and v[i, f, c_]]
            n11 = sum(hard[i, f, a] and hard[i, f, c_] for i, f in both)
            union = sum(hard[i, f, a] or hard[i, f, c_] for i, f in both)
            c[a, c_] = n11 / max(union, 1)
    s = np.zeros((n, n, 16))
    for a in range(n):
        for c_ in range(n):
            steps = [(i, f) for i in range(b) for f in range(t - 1)
                     if v[i, f, a] and v[i, f, c_] and v[i, f + 1, a] and v[i, f + 1, c_]]
            for state in range(16):
                bits = [(state >> k) & 1 for k in range(4)]
                terms = [np.prod([q if bit else 1 - q for q, bit in zip(
                    (p[i, f, a], p[i, f, c_], p[i, f + 1, a], p[i, f + 1, c_]), bits)]) for i, f in steps]
                s[a, c_, state] = np.mean(terms)
    l_intra = np.sqrt(((k_intra - c) ** 2).sum())
    l_inter = np.sqrt(((k_inter - s) ** 2).sum())
    return lambdas[0] * l_cls + lambdas[1] * l_intra + lambdas[2] * l_inter, l_cls, l_intra, l_inter


def test_finetune_loss_is_eq9_over_the_valid_frames():
    # 2 clips of 3 frames, 2 AUs; clip 1's last frame is padding (valid = 0), AU1 unknown at clip 0, t=1.
    z = np.array([[[2.0, -1.0], [0.5, 1.5], [-2.0, 0.3]],
                  [[1.0, 1.0], [-0.7, 2.2], [3.0, -3.0]]], np.float32)
    y = np.array([[[1, 0], [1, 1], [0, 1]], [[1, 0], [0, 1], [0, 0]]], np.uint8)
    v = np.ones_like(y)
    v[1, 2] = 0
    v[0, 1, 1] = 0
    priors = {"class_weights": jnp.asarray([1.5, 0.5]), "intra_prior": jnp.asarray([[1.0, 0.4], [0.4, 0.9]]),
              "inter_prior": jnp.asarray(np.full((2, 2, 16), 1 / 16) + np.eye(16)[[3, 12]][None] / 5)}
    lambdas = (0.7, 0.2, 0.05)
    level = finetune.Level("video", 3, 1, 0.0)
    loss_fn = functools.partial(finetune.finetune_loss, model=_Logits(), level=level, priors=priors,
                                lambdas=lambdas, kind="fro")

    def run(z, y):
        batch = {"frames": jnp.zeros((2, 3, 16, 16, 3), jnp.uint8), "labels": jnp.asarray(y),
                 "valid": jnp.asarray(v)}
        total, aux = loss_fn({"logits": jnp.asarray(z)}, batch, jax.random.key(0))
        return float(total), [float(aux[k]) for k in ("loss_cls", "loss_intra", "loss_inter")]

    total, terms = run(z, y)
    want = _eq9_by_hand(z, y, v, np.asarray(priors["class_weights"]), np.asarray(priors["intra_prior"]),
                        np.asarray(priors["inter_prior"]), lambdas)
    np.testing.assert_allclose(terms, want[1:], rtol=1e-5)
    assert total == pytest.approx(want[0], rel=1e-5)
    # The three terms differ, so another weighting (lambdas swapped) gives another total.
    assert min(abs(terms[0] - terms[1]), abs(terms[1] - terms[2]), abs(terms[0] - terms[2])) > 0.05
    assert abs(total - (lambdas[0] * terms[0] + lambdas[2] * terms[1] + lambdas[1] * terms[2])) > 1e-3
    # The padding frame's logits and labels enter no term: not L_cls, C or S (its hard
    # decisions flipped here would change C, and the transition into it S).
    padded = z.copy()
    padded[1, 2] = [-3.0, 3.0]
    other = y.copy()
    other[1, 2] = [1, 1]
    total_p, terms_p = run(padded, other)
    np.testing.assert_allclose(terms_p, terms, rtol=1e-6)
    # ... while the same change on a valid frame does change them.
    changed = z.copy()
    changed[1, 1] = [0.7, 2.2]
    assert all(abs(a - b) > 1e-3 for a, b in zip(run(changed, y)[1], terms))


class _Recorder:
    """A stand-in for the detector that records the frames and visible positions it is handed."""

    cfg = ViTConfig.from_config(dict(preset="mini", patch_size=8))

    def __init__(self):
        self.seen = []

    def apply(self, variables, x, visible=None, deterministic=True, rngs=None):
        self.seen.append((np.asarray(x), None if visible is None else np.asarray(visible)))
        return jnp.zeros((x.shape[0], 8, 2)) + variables["params"]["bias"]


@pytest.mark.parametrize("level,frames_in", [("video", 8), ("frame", 2), ("patch", 8)])
def test_finetune_loss_hands_the_model_each_levels_input(level, frames_in):
    """The clip as sampled (ImageNet-normalised); at patch level with the tube mask of ratio 0.5
    drawn from the first half of the step's key, `jax.random.split(rng)[0]`: per clip, the 8 of
    the 16 spatial positions with the lowest uniform noise stay visible (SPEC §2)."""
    lvl = finetune.level_settings(mini_finetune_config("unused", level))
    assert (lvl.num_frames, lvl.mask_ratio) == (frames_in, 0.5 if level == "patch" else 0.0)
    model = _Recorder()
    frames = np.random.default_rng(0).integers(0, 256, (4, frames_in, 32, 32, 3), dtype=np.uint8)
    batch = {"frames": jnp.asarray(frames), "labels": jnp.ones((4, 8, 2), jnp.uint8),
             "valid": jnp.ones((4, 8, 2), jnp.uint8)}
    priors = {"class_weights": jnp.ones(2), "intra_prior": jnp.eye(2),
              "inter_prior": jnp.full((2, 2, 16), 1 / 16)}
    loss_fn = functools.partial(finetune.finetune_loss, model=model, level=lvl, priors=priors,
                                lambdas=(1.0, 0.01, 0.01), kind="fro")
    for seed in (0, 1):  # two steps' keys
        assert np.isfinite(float(loss_fn({"bias": jnp.zeros(2)}, batch, jax.random.key(seed))[0]))
    normalised = (frames / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    for x, _ in model.seen:
        assert x.shape == (4, frames_in, 32, 32, 3)
        np.testing.assert_allclose(x, normalised, rtol=1e-5, atol=1e-5)
    if level != "patch":
        assert [v for _, v in model.seen] == [None, None]
        return
    for seed, (_, visible) in enumerate(model.seen):
        noise = np.asarray(jax.random.uniform(jax.random.split(jax.random.key(seed))[0], (4, 16)))
        want = np.sort(np.argsort(noise, axis=1)[:, :8], axis=1)
        assert visible is not None and visible.shape == (4, 8)
        np.testing.assert_array_equal(visible, want)
        assert len({tuple(row) for row in visible}) == 4  # every clip its own mask
    assert not np.array_equal(model.seen[0][1], model.seen[1][1])  # every step new ones


def test_frame_level_samples_every_4th_frame_and_labels_every_frame(synthetic_data_dir):
    config = mini_finetune_config(synthetic_data_dir, "frame")
    record = input_pipeline.data_source(input_pipeline.load_builder(config.data), "part1")[0]
    decoded = input_pipeline.stack_images([input_pipeline.decode_jpeg(f) for f in record["frames"]])
    labels, valid = (np.asarray(record[k]) for k in ("labels", "valid"))
    assert decoded.shape == (8, 32, 32, 3) and valid.all()
    assert len({frame.tobytes() for frame in decoded}) == 8  # the frames tell their index
    example = finetune.sampler(config, train=False)(record)  # evaluation: from the start
    np.testing.assert_array_equal(example["frames"], decoded[[0, 4]])
    np.testing.assert_array_equal(example["labels"], labels)
    np.testing.assert_array_equal(example["valid"], valid)
    starts = set()
    for seed in range(12):  # training: a random start; labels for the 8 frames from it, unknown past the end
        example = finetune.sampler(config, train=True)(record, np.random.default_rng(seed))
        found = [s for s in range(4) if np.array_equal(example["frames"], decoded[[s, s + 4]])]
        assert len(found) == 1, seed  # frames s and s + 4 of the record, s in 0..3
        start = found[0]
        starts.add(start)
        np.testing.assert_array_equal(example["labels"][:8 - start], labels[start:])
        np.testing.assert_array_equal(example["valid"], np.where(np.arange(8)[:, None] < 8 - start, valid, 0))
    assert len(starts) > 1, starts


@pytest.mark.parametrize("level,stride", [("patch", 1), ("frame", 4)])
def test_short_finetune_then_evaluation_at_level(level, stride, synthetic_data_dir, tmp_path):
    """`synthetic,patch,1` and `synthetic,frame,1`: 3 training steps, then the test fold's scores,
    from the model's probabilities on every frame of each test clip: at patch level behind the
    evaluator's fixed tube mask (key seed + 3, one per batch of 8), at frame level from every
    4th frame."""
    config = mini_finetune_config(synthetic_data_dir, level)
    config.num_train_steps = config.checkpoint_every = 3
    workdir = str(tmp_path / "ft")
    _, history = finetune.train(config, workdir)
    assert [h["step"] for h in history] == [1, 2, 3] and np.isfinite([h["loss"] for h in history]).all()
    result = evaluation.evaluate_workdir(workdir)
    assert result["split"] == "part1"

    builder = input_pipeline.load_builder(config.data)
    aus = finetune.aus_of(builder)
    source = input_pipeline.data_source(builder, "part1")
    model = finetune.build_model(config, len(aus))
    params = finetune.load_checkpoint_params(workdir)
    evaluator = evaluation.Evaluator(model, finetune.level_settings(config), source,
                                     finetune.sampler(config, train=False), aus, config.eval_batch_size,
                                     seed=config.seed)
    with sharding.config_mesh(config):
        probs, labels, valid = evaluator.predict(params)
        again = evaluator.predict(params)[0]
    assert len(source) == config.eval_batch_size == 8 and probs.shape == (8, 8, len(aus))
    np.testing.assert_array_equal(again, probs)  # the same masks at every evaluation
    clips = np.stack([input_pipeline.stack_images([input_pipeline.decode_jpeg(f) for f in r["frames"]])
                      for r in source])[:, ::stride]  # frame level: frames 0 and 4
    assert clips.shape == (8, 8 // stride, 32, 32, 3)
    x = losses.normalize_frames(clips)[1]
    visible = None
    if level == "patch":
        visible = masking.tube_mask(jax.random.key(config.seed + 3), 8, 16, 0.5)[0]
    direct = np.asarray(jax.nn.sigmoid(model.apply({"params": params}, x, visible)))
    np.testing.assert_allclose(probs, direct, rtol=1e-5, atol=1e-6)
    if level == "patch":  # the mask matters: without it, other probabilities
        unmasked = np.asarray(jax.nn.sigmoid(model.apply({"params": params}, x)))
        assert np.abs(unmasked - direct).max() > 1e-3
    for i, r in enumerate(source):
        np.testing.assert_array_equal(labels[i], r["labels"])
        np.testing.assert_array_equal(valid[i], r["valid"])
    # Every frame of the 8 clips scored (8 each, 2 of them seen at frame level), as these probs score.
    assert result["num_frames"] == 64
    rescored = metrics.as_json(metrics.f1_accuracy(probs, labels, valid), aus)
    assert result["f1"] == pytest.approx(rescored["f1"]) and result["acc"] == pytest.approx(rescored["acc"])


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
    config.eval_batch_size = 3  # the 8 test clips in batches of 3, 3 and 2 (padded)
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
    # Another split gets its own files; the test fold's stay.
    other = evaluation.evaluate_workdir(str(tmp_path / "ft"), "part2[:4]")
    assert json.loads((tmp_path / "ft" / "metrics_part2_4.json").read_text()) == other
    assert other["split"] == "part2[:4]"
    assert "(part2[:4])" in (tmp_path / "ft" / "metrics_part2_4.md").read_text()
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text()) == saved

    # The evaluator's probabilities are the model's on each test clip (part1), in record order; the
    # last clip's last 3 frames made padding (valid = 0), as at a video's end.
    builder = input_pipeline.load_builder(config.data)
    aus = finetune.aus_of(builder)
    source = input_pipeline.data_source(builder, "part1")
    assert len(source) == 8 and all(np.asarray(r["valid"]).all() for r in source)
    records = [dict(r) for r in source]
    records[7]["valid"] = np.asarray(records[7]["valid"]).copy()
    records[7]["valid"][5:] = 0
    model = finetune.build_model(config, len(aus))
    params = finetune.load_checkpoint_params(str(tmp_path / "ft"))
    evaluator = evaluation.Evaluator(model, finetune.level_settings(config), records,
                                     finetune.sampler(config, train=False), aus, config.eval_batch_size)
    with sharding.config_mesh(config):
        probs, labels, valid = evaluator.predict(params)
        padded = evaluator.evaluate(params)
    assert probs.shape == labels.shape == (8, 8, len(aus))
    for i in (0, 4, 7):  # in the first, second and last (padded) batch
        clip = input_pipeline.stack_images([input_pipeline.decode_jpeg(f) for f in records[i]["frames"]])
        direct = jax.nn.sigmoid(model.apply({"params": params}, losses.normalize_frames(clip[None])[1]))
        np.testing.assert_allclose(probs[i], direct[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(labels[i], records[i]["labels"])
        np.testing.assert_array_equal(valid[i], records[i]["valid"])
    # Scores over the valid frames: the split's 64 (metrics.json), 61 without the padding.
    assert saved["num_frames"] == 64 and padded["num_frames"] == 61
    rescored = metrics.as_json(metrics.f1_accuracy(probs, labels, valid), aus)
    assert padded["f1"] == pytest.approx(rescored["f1"]) and padded["acc"] == pytest.approx(rescored["acc"])
    assert saved["f1"] == pytest.approx(metrics.as_json(metrics.f1_accuracy(probs, labels), aus)["f1"])

    paths = figures.priors_report(config, str(tmp_path / "ft"), pair=(6, 12))
    assert os.path.exists(paths["intra"]) and paths["inter"].endswith("inter_AU6_AU12.png")
    pri = knowledge.compute_priors(*finetune.clip_labels(input_pipeline.data_source(
        builder, "part2+part3")).transpose(1, 0, 2, 3))
    for name in ("intra_prior", "inter_prior", "class_weights"):
        np.testing.assert_allclose(np.load(tmp_path / "ft" / "priors" / f"{name}.npy"), pri[name], rtol=1e-6)
    # The learned matrices drawn beside them: those of the test clips' predictions (all valid).
    np.testing.assert_allclose(np.load(tmp_path / "ft" / "priors" / "learned_intra.npy"),
                               knowledge.learned_intra(probs), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "ft" / "priors" / "learned_inter.npy"),
                               knowledge.learned_inter(probs), rtol=1e-5, atol=1e-6)

    mean = crossval.run_folds(config, str(tmp_path / "cv"))
    with open(tmp_path / "cv" / "crossval.json") as f:
        saved = json.load(f)
    assert [r["split"] for r in saved["folds"]] == ["part1", "part2", "part3"]
    assert np.isclose(mean["f1_mean"], np.mean([r["f1_mean"] for r in saved["folds"]]))


def test_architecture_comes_from_the_init_checkpoint(tmp_path):
    from configs import finetune as finetune_configs

    config = finetune_configs.get_config("disfa,video,1")  # ViT-B, patch 16
    config.lock()  # as config_flags hands it over
    pre, converted = tmp_path / "pre", tmp_path / "converted"
    for d, model in ((pre, {"preset": "mini", "patch_size": 8, "dtype": "float32", "dec_width": 32}),
                     (converted, {"width": 64, "depth": 2, "heads": 4, "patch_size": 16, "tubelet_size": 2,
                                  "layer_norm_eps": 1e-12})):
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"task": "pretrain", "model": model}))
    config.init_from = str(pre)
    assert finetune.adopt_architecture(config) == dict(width=32, depth=2, heads=2, patch_size=8)
    cfg = ViTConfig.from_config(config.model)
    assert (cfg.width, cfg.depth, cfg.heads, cfg.patch_size, cfg.dtype) == (32, 2, 2, 8, "bfloat16")
    config.init_from = str(converted)
    assert finetune.adopt_architecture(config) == dict(width=64, heads=4, patch_size=16)
    assert ViTConfig.from_config(config.model).layer_norm_eps == 1e-6  # the config's: only the shape is taken
    assert finetune.adopt_architecture(config) == {}  # now the same


def test_priors_of_a_pretraining_workdir(synthetic_data_dir, tmp_path):
    from auvmae_jax import cli

    work = tmp_path / "pre"
    (work / "checkpoints" / "2").mkdir(parents=True)  # a pre-training checkpoint: no AU head to run
    (work / "config.json").write_text(json.dumps({"task": "pretrain"}))
    assert cli.main(["auvmae", "priors", f"--workdir={work}"]) == 1  # its config is no fine-tuning one
    # With a fine-tuning config: the fold's priors, drawn alone.
    out = figures.priors_report(mini_finetune_config(synthetic_data_dir), str(work), pair=(6, 12))
    assert sorted(os.listdir(work / "priors")) == sorted(
        ["class_weights.npy", "inter_prior.npy", "intra_prior.npy", "priors.json", "intra.png",
         "inter_AU6_AU12.png"]), os.listdir(work / "priors")
    assert out["intra"].endswith("intra.png")


def test_ablation_rows_zero_the_right_lambdas(synthetic_data_dir, tmp_path, monkeypatch):
    """Table 3's rows, each a 3-fold cross-validation: the training itself replaced by a recorder."""
    config = mini_finetune_config(synthetic_data_dir)
    config.loss.l_cls, config.loss.l_intra, config.loss.l_inter = 0.9, 0.02, 0.03  # told apart
    aus = finetune.aus_of(input_pipeline.load_builder(config.data))
    trained = []

    def fake_train(cfg, workdir):
        trained.append((os.path.relpath(workdir, tmp_path), cfg.fold, cfg.loss.l_cls, cfg.loss.l_intra,
                        cfg.loss.l_inter))

    def fake_evaluate(workdir):
        rng = np.random.default_rng(len(trained))
        return metrics.as_json(metrics.f1_accuracy(rng.random((4, 8, len(aus))),
                                                   rng.integers(0, 2, (4, 8, len(aus)))), aus)

    monkeypatch.setattr(finetune, "train", fake_train)
    monkeypatch.setattr(evaluation, "evaluate_workdir", fake_evaluate)
    rows = crossval.run_ablation(config, str(tmp_path))
    lambdas = {"baseline": (0.9, 0.0, 0.0), "intra": (0.9, 0.02, 0.0), "inter": (0.9, 0.0, 0.03),
               "all": (0.9, 0.02, 0.03)}
    assert trained == [(f"{row}/fold{k}", k, *lam) for row, lam in lambdas.items() for k in (1, 2, 3)]
    assert list(rows) == ["baseline", "+intra", "+inter", "+all"]
    assert (config.loss.l_intra, config.loss.l_inter, config.fold) == (0.02, 0.03, 1)  # left as it was
    with open(tmp_path / "ablation.json") as f:
        assert json.load(f) == rows
    with open(tmp_path / "intra" / "crossval.json") as f:
        assert json.load(f)["mean"] == rows["+intra"]
    # On DISFA (here in name only: the synthetic records stand in) the tables end with the paper's.
    config.dataset = "disfa"
    rows = crossval.run_ablation(config, str(tmp_path / "disfa"))
    ablation_md = (tmp_path / "disfa" / "ablation.md").read_text()
    assert "Against the paper's Table 3 (DISFA, video level, mean F1 %):" in ablation_md
    assert f"| +all | {100 * rows['+all']['f1_mean']:.1f} | 69.6 |" in ablation_md
    cv_md = (tmp_path / "disfa" / "all" / "crossval.md").read_text()
    assert "Against the paper's Table 2 (DISFA" in cv_md and "| AU-vMAE (paper) | 56.5 | 62.6 |" in cv_md
    config.level = "frame"  # Tables 1 and 2 are video level: no comparison there
    crossval.run_folds(config, str(tmp_path / "frame"))
    assert "paper" not in (tmp_path / "frame" / "crossval.md").read_text()


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
