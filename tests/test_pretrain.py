"""Pre-training end to end on a tiny synthetic dataset: loss, resume, outputs."""

import collections
import contextlib
import glob
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from auvmae_jax import models, pretrain
from auvmae_jax.errors import UserError
from tests.conftest import mini_pretrain_config


class Interrupt(Exception):
    pass


def _kill_after(step_to_die: int):
    def hook(step, state):
        if step == step_to_die:
            raise Interrupt(step)

    return hook


def _learning_config(data_dir: str, steps: int, eval_every: int):
    """The mini config for a run that learns: `steps` steps at a higher rate, one checkpoint."""
    config = mini_pretrain_config(data_dir)
    config.num_train_steps = config.checkpoint_every = steps
    config.eval_every = eval_every
    config.optimizer.base_lr = 0.3
    config.optimizer.warmup_steps = 5
    return config


def _blind_encoder(next_fun, args, kwargs, context):
    """A flax method interceptor that zeroes the encoder's output: the decoder then knows where the
    masked tubelets are (mask tokens and position embeddings) but never sees a visible pixel."""
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, models.Encoder) and context.method_name == "__call__":
        return out * 0.0
    return out


def _train_seeing_and_blind(config, workdir, monkeypatch) -> dict:
    """`{'seeing': .., 'blind': ..}`: each run's training losses and held-out reconstruction losses
    (`eval_loss`, one per evaluation), the same config trained as it is and with `_blind_encoder`."""
    evals = []
    evaluate = pretrain.ReconstructionPictures.__call__

    def recording(self, state, step, writer):
        result = evaluate(self, state, step, writer)
        evals.append(result["eval_loss"])
        return result

    monkeypatch.setattr(pretrain.ReconstructionPictures, "__call__", recording)
    runs = {}
    for name in ("seeing", "blind"):
        evals.clear()
        with nn.intercept_methods(_blind_encoder) if name == "blind" else contextlib.nullcontext():
            _, history = pretrain.train(config, os.path.join(workdir, name))
        runs[name] = np.array([h["loss"] for h in history]), np.array(evals)
    return runs


def test_pretraining_lowers_the_loss(synthetic_data_dir, tmp_path, monkeypatch):
    config = _learning_config(synthetic_data_dir, steps=300, eval_every=150)
    runs = _train_seeing_and_blind(config, str(tmp_path / "run"), monkeypatch)
    (losses, evals), (blind, blind_evals) = runs["seeing"], runs["blind"]
    assert len(losses) == len(blind) == 300 and np.isfinite(losses).all()
    # Predicting zeros for the normalised target costs (n - 1) / n = 0.992 (n = 128 values
    # per channel); a random decoder costs more.
    assert np.mean(losses[:5]) > 1.0
    # A decoder blind to the pixels learns where the (aligned) faces' parts are and goes below
    # 0.992 too (0.869 over the last 10 steps, measured); reconstructing the masked tubelets from
    # the visible ones goes further (0.775): the gap must stay (margins half the measured ones).
    assert np.mean(losses[-10:]) < 0.85, losses[-10:]
    assert np.mean(losses[-10:]) < np.mean(blind[-10:]) - 0.045, (losses[-10:], blind[-10:])
    # The held-out reconstruction loss (fixed clips and masks, no dropout) at steps 150 and 300:
    # 0.830 then 0.783, blind 0.904 then 0.885; at the end, near the training loss (0.775).
    assert len(evals) == len(blind_evals) == 2
    assert evals[1] < evals[0] - 0.02, evals
    assert evals[1] < blind_evals[1] - 0.05, (evals, blind_evals)
    assert abs(evals[1] - np.mean(losses[-10:])) < 0.04, (evals, losses[-10:])
    # Reconstruction pictures (PNG + TensorBoard), checkpoints and the config are in the workdir.
    run = tmp_path / "run" / "seeing"
    pngs = sorted(glob.glob(str(run / "reconstructions/*.png")))
    assert [os.path.basename(p) for p in pngs] == ["step_0000150.png", "step_0000300.png"]
    assert glob.glob(str(run / "tensorboard/events.out.tfevents.*"))
    assert os.path.exists(run / "config.json")
    assert os.path.isdir(run / "checkpoints/300")


def test_unpatchify_inverts_patchify():
    from auvmae_jax.models import patchify

    # H != W (a swapped height and width would not come back) and 3 tubelets in time.
    video = np.random.default_rng(0).normal(size=(2, 6, 16, 24, 3)).astype(np.float32)
    tokens = np.asarray(patchify(jnp.asarray(video), tubelet=2, patch=8)).reshape(2, 3 * 2 * 3, -1)
    np.testing.assert_array_equal(pretrain.unpatchify(tokens, (3, 2, 3), tubelet=2, patch=8), video)
    # Token 4 = (t=0, h=1, w=1): frames 0-1, rows 8-15, columns 8-15, values ordered (t, h, w, c).
    np.testing.assert_array_equal(tokens[0, 4].reshape(2, 8, 8, 3), video[0, 0:2, 8:16, 8:16])


@pytest.mark.parametrize("norm_pix", [True, False])
def test_reconstruct_with_a_perfect_prediction_gives_back_the_frames(norm_pix):
    """`reconstruct` puts the decoder's predictions (normalised tubelets with `norm_pix`, else
    [0, 1] pixels) back into the clip: predicting the target exactly returns the frames."""
    from auvmae_jax import losses, masking
    from auvmae_jax.models import ViTConfig

    cfg = ViTConfig.from_config(dict(preset="mini", patch_size=8))
    frames = np.random.default_rng(1).integers(0, 256, (2, 4, 16, 24, 3)).astype(np.uint8)
    key, grid = jax.random.key(7), (2, 2, 3)
    _, masked = masking.tube_mask(key, 2, 6, 0.5)  # the masks reconstruct draws from the same key
    ids = masking.tube_token_ids(masked, 2, 6)
    target = losses.mae_targets(jnp.asarray(frames / 255.0, jnp.float32), 2, 8, norm_pix, ids)

    class Predicts:
        def __init__(self, pred):
            self.cfg, self.pred = cfg, pred

        def apply(self, variables, x, visible, masked_):
            np.testing.assert_array_equal(masked_, masked)
            return self.pred

    masked_frames, recon, loss = pretrain.reconstruct(Predicts(target), {}, frames, key, 0.5, norm_pix)
    assert loss == pytest.approx(0.0, abs=1e-10)
    np.testing.assert_allclose(recon, frames / 255.0, atol=1e-5)
    # The masked picture: grey (0.5) on the masked tubelets, the frames elsewhere.
    hidden = np.zeros((2, 12, 2 * 8 * 8 * 3), bool)
    hidden[np.arange(2)[:, None], np.asarray(ids)] = True
    hidden = pretrain.unpatchify(hidden, grid, 2, 8)
    assert hidden.mean() == 0.5  # 3 of the 6 positions, at both temporal indices
    np.testing.assert_array_equal(masked_frames[hidden], 0.5)
    np.testing.assert_allclose(masked_frames[~hidden], (frames / 255.0)[~hidden], atol=1e-6)
    # A prediction off by 0.1 everywhere: loss 0.01, and only the masked pixels move.
    _, recon, loss = pretrain.reconstruct(Predicts(target + 0.1), {}, frames, key, 0.5, norm_pix)
    assert loss == pytest.approx(0.01, rel=1e-4)
    np.testing.assert_allclose(recon[~hidden], (frames / 255.0)[~hidden], atol=1e-6)
    assert np.abs(recon[hidden] - (frames / 255.0)[hidden]).mean() > 0.01


def test_mae_inputs_with_decoder_masking_target_the_running_cell_tokens():
    from auvmae_jax import losses, masking
    from auvmae_jax.models import ViTConfig

    cfg = ViTConfig.from_config(dict(preset="mini", patch_size=8, dtype="float32"))
    frames = jnp.asarray(np.random.default_rng(0).integers(0, 256, (16, 4, 32, 32, 3)), jnp.uint8)
    key = jax.random.key(3)
    x, vis, msk, q0, t0 = pretrain.mae_inputs(frames, key, cfg, 0.75, True)
    _, vis5, msk5, q5, t5 = pretrain.mae_inputs(frames, key, cfg, 0.75, True, decoder_mask_ratio=0.5)
    # Off: the decoder predicts every masked token. On: the same tube mask for the encoder,
    # and 8 of each frame's 16 positions for the decoder, whether the encoder saw them or not.
    np.testing.assert_array_equal(q0, masking.tube_token_ids(msk, 2, 16))
    np.testing.assert_array_equal(vis5, vis)
    np.testing.assert_array_equal(msk5, msk)
    assert q5.shape == (16, 2 * 8) and t5.shape == (16, 16, 2 * 8 * 8 * 3)
    seen = [np.isin(q % 16, v).any() for q, v in zip(np.asarray(q5), np.asarray(vis))]
    assert any(seen)
    every = losses.mae_targets(frames.astype(jnp.float32) / 255.0, 2, 8, True)
    np.testing.assert_allclose(t5, np.take_along_axis(np.asarray(every), np.asarray(q5)[..., None], 1),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t0, np.take_along_axis(np.asarray(every), np.asarray(q0)[..., None], 1),
                               rtol=1e-5, atol=1e-5)


def test_pretraining_with_decoder_masking_lowers_the_loss(synthetic_data_dir, tmp_path, monkeypatch):
    config = _learning_config(synthetic_data_dir, steps=150, eval_every=150)
    config.decoder_mask_ratio = 0.5
    runs = _train_seeing_and_blind(config, str(tmp_path / "run"), monkeypatch)
    (losses, evals), (blind, blind_evals) = runs["seeing"], runs["blind"]
    # Measured over the last 10 steps: 0.913, blind 0.949 (half of each frame's tokens are the
    # targets, some of them visible to the encoder: only a seeing model can copy those).
    assert np.mean(losses[:5]) > 1.0 and np.mean(losses[-10:]) < 0.94, losses
    assert np.mean(losses[-10:]) < np.mean(blind[-10:]) - 0.018, (losses[-10:], blind[-10:])
    # The pictures (and their held-out loss) reconstruct every masked tubelet, as without it:
    # 0.905, blind 0.958.
    assert os.path.exists(tmp_path / "run/seeing/reconstructions/step_0000150.png")
    assert len(evals) == len(blind_evals) == 1 and evals[0] < blind_evals[0] - 0.025, (evals, blind_evals)
    config.decoder_mask_ratio = 0.3
    with pytest.raises(UserError, match=r"config.decoder_mask_ratio = 0.3 \(0: off\): a running cell drops"):
        pretrain.train(config, str(tmp_path / "bad"))


def test_resume_continues_exactly(synthetic_data_dir, tmp_path):
    config = mini_pretrain_config(synthetic_data_dir)  # 6 steps, checkpoint every 2
    full_state, full = pretrain.train(config, str(tmp_path / "full"))

    with pytest.raises(Interrupt):  # dies after step 3: the last checkpoint is step 2
        pretrain.train(config, str(tmp_path / "cut"), hooks=(_kill_after(3),))
    cut_state, resumed = pretrain.train(config, str(tmp_path / "cut"))

    assert [h["step"] for h in resumed] == [3, 4, 5, 6]
    np.testing.assert_allclose([h["loss"] for h in resumed], [h["loss"] for h in full[2:]], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 cut_state.params, full_state.params)
    assert int(cut_state.step) == 6


def test_pretraining_on_a_weighted_mixture_of_built_datasets(tmp_path):
    """`data.mixture` reads several built datasets (here two synthetic builds) as one source."""
    import data_builders
    from tests.conftest import TINY_SYNTHETIC

    data_dir = str(tmp_path / "data")
    built = {}
    for seed in (0, 1):
        builder = data_builders.build_synthetic(data_dir, **dict(TINY_SYNTHETIC, seed=seed))
        built[f"synthetic_faces/{builder.builder_config.name}"] = builder
    names = sorted(f"synthetic_faces/{p}" for p in os.listdir(os.path.join(data_dir, "synthetic_faces"))
                   if not p.startswith("."))
    assert sorted(built) == names
    config = mini_pretrain_config(data_dir)
    config.data.mixture = f"{names[0]}:3,{names[1]}:1"
    config.data.mixture_split = "part1"
    source = pretrain.training_source(config.data)
    builds = [built[n].as_data_source("part1") for n in names]
    firsts = [{bytes(r["frames"][0]) for r in b} for b in builds]
    assert len(builds[0]) == len(builds[1]) == 8 and not firsts[0] & firsts[1]
    assert len(source) == 16  # both builds' records, in weights 3:1
    drawn = collections.Counter(next(k for k in (0, 1) if bytes(r["frames"][0]) in firsts[k]) for r in source)
    # grain interleaves the two deterministically by weight (no sampling noise): 3/4 of the 16
    # records (12) from the first build, 4 from the second, within one record of rounding.
    assert abs(drawn[0] - 12) <= 1 and drawn[0] + drawn[1] == 16, drawn
    # The first build's 8 records repeat to fill its share; every record of both is in.
    assert len({bytes(r["frames"][0]) for r in source} & firsts[0]) == 8
    config.num_train_steps = 2
    _, history = pretrain.train(config, str(tmp_path / "w"))
    assert history[-1]["step"] == 2 and np.isfinite(history[-1]["loss"])


def test_steps_after_the_first_compile_nothing(synthetic_data_dir, tmp_path):
    # A step that re-traces (a changed shape, dtype, weak type or sharding of the state or the
    # batch) would recompile the whole model: none may, across logging and checkpoint saves.
    config = mini_pretrain_config(synthetic_data_dir)  # logs every step, saves every 2
    config.num_train_steps = 8
    counts = collections.Counter()
    jax.monitoring.register_event_duration_secs_listener(lambda name, secs, **kw: counts.update([name]))
    seen = {}

    def hook(step, state):
        seen[step] = (counts["/jax/core/compile/jaxpr_trace_duration"],
                      counts["/jax/core/compile/backend_compile_duration"])

    pretrain.train(config, str(tmp_path / "run"), hooks=(hook,))
    assert seen[1][1] > 0  # the step itself compiled by then
    assert {seen[s] for s in range(1, 8)} == {seen[1]}, seen  # step 8 evaluates: it may compile
