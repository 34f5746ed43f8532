"""The shared loop on a toy task: optimizer recipe, accumulation, NaN stop and resume."""

import functools
import os

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from auvmae_jax import finetune, trainer
from auvmae_jax.errors import Preempted, UserError
from configs import common


class Linear(nn.Module):
    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                                   ("embed", "mlp")), (3, 1))
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",)), (1,))
        return x @ kernel + bias


def _squared_error(params, batch, rng):
    pred = Linear().apply({"params": params}, batch["x"])[:, 0]
    return jnp.mean((pred - batch["y"]) ** 2), {}


def _config(**overrides):
    config = ml_collections.ConfigDict()
    common.loop_config(config)
    config.optimizer = common.optimizer_config(base_lr=12.8)  # lr 0.2 at batch 4
    config.optimizer.warmup_steps = 0
    config.optimizer.min_lr = 0.0
    config.optimizer.weight_decay = 0.0
    config.batch_size = 4
    config.num_train_steps = 6
    config.log_every = 1
    config.checkpoint_every = 2
    config.prefetch_to_device = 1
    config.update(overrides)
    return config


def _task(records, steps_per_epoch=1, lr_multipliers=None):
    data = grain.MapDataset.source(records).repeat().batch(4).to_iter_dataset()
    return lambda workdir: trainer.Task(model=Linear(), init_inputs=(jnp.zeros((1, 3)),),
                                        loss_fn=_squared_error, train_data=data,
                                        steps_per_epoch=steps_per_epoch, lr_multipliers=lr_multipliers)


def _records(n=64, nan_at=None):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.3).astype(np.float32)
    if nan_at is not None:
        x[nan_at] = np.nan
    return [{"x": a, "y": b} for a, b in zip(x, y)]


def test_schedule_warmup_peak_and_cosine():
    opt = common.optimizer_config(base_lr=1.5e-4)
    opt.warmup_epochs, opt.min_lr = 2, 0.0
    sched = trainer.learning_rate_schedule(opt, batch_size=512, num_steps=100, steps_per_epoch=10)
    peak = 1.5e-4 * 512 / 256
    assert np.isclose(sched(0), 0.0)
    assert np.isclose(sched(10), peak / 2)
    assert np.isclose(sched(20), peak)
    assert np.isclose(sched(60), peak / 2, rtol=1e-5)  # half-way through the cosine
    assert np.isclose(sched(100), 0.0, atol=1e-12)


def test_schedule_warmup_steps_override_epochs_and_clamp_to_the_run():
    opt = common.optimizer_config(base_lr=0.5)  # peak 0.5 at batch 256
    opt.min_lr, opt.warmup_epochs = 0.01, 2
    opt.warmup_steps = 5  # >= 0: 5 steps, not 2 epochs x 10 steps
    sched = trainer.learning_rate_schedule(opt, batch_size=256, num_steps=100, steps_per_epoch=10)
    assert float(sched(1)) == pytest.approx(0.1) and float(sched(5)) == pytest.approx(0.5)
    assert float(sched(100)) == pytest.approx(0.01)  # cosine down to min_lr
    # 40 warm-up epochs of 10 steps outlast a 50-step run: the warm-up ends at its last step.
    opt.warmup_steps, opt.warmup_epochs = -1, 40
    sched = trainer.learning_rate_schedule(opt, batch_size=256, num_steps=50, steps_per_epoch=10)
    assert float(sched(0)) == 0.0 and float(sched(49)) == pytest.approx(0.5)
    assert float(sched(48)) == pytest.approx(0.5 * 48 / 49)
    # A one-step run trains at the peak rate, not at the warm-up's 0.
    assert float(trainer.learning_rate_schedule(opt, 256, 1, 10)(0)) == pytest.approx(0.5)


def test_total_steps_from_epochs_unless_steps_are_given():
    assert trainer.total_steps(_config(num_train_steps=-1, num_epochs=2.5), steps_per_epoch=8) == 20
    assert trainer.total_steps(_config(num_train_steps=7, num_epochs=2.5), steps_per_epoch=8) == 7


def _adam_first_moment(opt_state):
    states = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
              if isinstance(s, optax.ScaleByAdamState)]
    assert len(states) == 1
    return states[0].mu


def test_gradient_clipping_caps_the_global_norm():
    params = {"kernel": jnp.zeros((3, 1)), "bias": jnp.zeros((1,))}
    big = {"kernel": jnp.asarray([[3.0], [0.0], [4.0]]), "bias": jnp.asarray([12.0])}  # global norm 13
    opt = common.optimizer_config(base_lr=1.0)
    opt.b1, opt.grad_clip = 0.0, 2.0  # b1 = 0: Adam's first moment is the gradient it is handed

    def handed(opt, grads):
        tx = trainer.make_optimizer(opt, optax.constant_schedule(0.1))
        return _adam_first_moment(tx.update(grads, tx.init(params), params)[1])

    clipped = handed(opt, big)
    assert float(optax.tree.norm(clipped)) == pytest.approx(2.0)  # the clip, when exceeded
    jax.tree.map(lambda c, g: np.testing.assert_allclose(c, g * 2 / 13, rtol=1e-6), clipped, big)
    small = jax.tree.map(lambda g: g / 13, big)  # norm 1 < 2: untouched
    jax.tree.map(lambda c, g: np.testing.assert_allclose(c, g, rtol=1e-6), handed(opt, small), small)
    opt.grad_clip = 0.0  # off
    jax.tree.map(lambda c, g: np.testing.assert_allclose(c, g, rtol=1e-6), handed(opt, big), big)


def test_weight_decay_on_every_weight_matrix_of_videomae():
    # VideoMAE decays every weight matrix (the attention's included) and nothing else.
    from auvmae_jax.models import VideoMAE, ViTConfig

    cfg = ViTConfig.from_config(dict(preset="tiny", patch_size=8))  # D 192 x 4, decoder 96 x 2
    shapes = jax.eval_shape(lambda: nn.meta.unbox(VideoMAE(cfg).init(
        jax.random.key(0), jnp.zeros((1, 4, 16, 16, 3)), jnp.zeros((1, 2), jnp.int32),
        jnp.zeros((1, 2), jnp.int32)))["params"])
    mask = trainer.decay_mask(shapes)
    flat = {jax.tree_util.keystr(k): (v, m) for (k, v), (_, m) in zip(
        jax.tree_util.tree_leaves_with_path(shapes), jax.tree_util.tree_leaves_with_path(mask))}
    assert all(m for k, (_, m) in flat.items() if "qkv_kernel" in k or "proj_kernel" in k)
    assert not any(m for k, (_, m) in flat.items() if "bias" in k or "scale" in k or "mask_token" in k)
    decayed = sum(int(np.prod(v.shape)) for v, m in flat.values() if m)
    patch = 2 * 8 * 8 * 3

    def blocks(d, depth):  # q/k/v, projection, MLP in and out
        return depth * (3 * d * d + d * d + 2 * d * 4 * d)

    assert decayed == (patch * 192 + blocks(192, 4)  # tubelet embedding, encoder
                       + 192 * 96 + blocks(96, 2) + 96 * patch)  # encoder_to_decoder, decoder, head


def test_weight_decay_reaches_the_update_of_the_decayed_weights_only():
    # With zero gradients AdamW's update is the decay alone: -lr * weight_decay * param on the
    # weight matrices, nothing on biases, norms and the mask token; a lr multiplier scales it.
    rng = np.random.default_rng(0)
    params = {"fc1": {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=(4,))},
              "attn": {"qkv_kernel": rng.normal(size=(4, 3, 2, 2)), "q_bias": rng.normal(size=(2, 2))},
              "norm": {"scale": rng.normal(size=(4,)), "bias": rng.normal(size=(4,))},
              "mask_token": rng.normal(size=(1, 1, 4))}
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    opt = common.optimizer_config(base_lr=1.0)
    opt.weight_decay = 0.05
    zeros = jax.tree.map(jnp.zeros_like, params)
    tx = trainer.make_optimizer(opt, optax.constant_schedule(0.1))
    updates = tx.update(zeros, tx.init(params), params)[0]
    flat_u = dict(jax.tree_util.tree_leaves_with_path(updates))
    for key, p in jax.tree_util.tree_leaves_with_path(params):
        name = jax.tree_util.keystr(key)
        expected = -0.005 * np.asarray(p) if name.endswith("kernel']") else np.zeros(p.shape)
        np.testing.assert_allclose(flat_u[key], expected, rtol=1e-6, atol=1e-9, err_msg=name)
    half = jax.tree.map(lambda _: 0.5, params)
    tx = trainer.make_optimizer(opt, optax.constant_schedule(0.1), half)
    scaled = tx.update(zeros, tx.init(params), params)[0]
    np.testing.assert_allclose(scaled["fc1"]["kernel"], -0.0025 * params["fc1"]["kernel"], rtol=1e-6)


def test_loop_fits_a_linear_model(tmp_path):
    _, history = trainer.run(_config(num_train_steps=150, checkpoint_every=150, log_every=10), str(tmp_path),
                             _task(_records()))
    assert history[-1]["loss"] < 1e-3 * history[0]["loss"]
    assert history[-1]["step"] == 150 and history[0]["steps_per_sec"] > 0


def test_epochs_decide_the_steps_and_the_last_checkpoints_are_kept(tmp_path):
    config = _config(num_train_steps=-1, num_epochs=2.5, checkpoint_every=1, keep_checkpoints=2)
    state, history = trainer.run(config, str(tmp_path), _task(_records(), steps_per_epoch=2))
    assert int(state.step) == 5 and [h["step"] for h in history] == [1, 2, 3, 4, 5]
    assert sorted(os.listdir(tmp_path / "checkpoints"), key=int) == ["4", "5"]  # 1-3 pruned


def test_run_applies_the_tasks_lr_multipliers(tmp_path):
    state, _ = trainer.run(_config(num_train_steps=3), str(tmp_path),
                           _task(_records(), lr_multipliers=lambda p: {"kernel": 0.0, "bias": 1.0}))
    np.testing.assert_array_equal(state.params["kernel"], np.ones((3, 1)))  # frozen by a 0 multiplier
    assert abs(float(state.params["bias"][0])) > 0.1  # lr 0.2: moved from 0 towards 0.3


def test_gradient_accumulation_equals_one_big_batch():
    params = {"kernel": jnp.asarray([[0.5], [0.1], [-0.3]]), "bias": jnp.asarray([0.2])}
    tx = optax.sgd(0.1)
    state = trainer.TrainState(jnp.int32(0), params, tx.init(params))
    recs = _records(8)
    batch = {k: jnp.stack([r[k] for r in recs]) for k in ("x", "y")}
    step = functools.partial(trainer.train_step, loss_fn=_squared_error, tx=tx,
                             base_key=jax.random.key(0), batch_spec=None)
    one, m1 = step(state, batch, accum_steps=1)
    four, m4 = step(state, batch, accum_steps=4)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), one.params, four.params)
    assert float(jnp.abs(one.params["kernel"] - params["kernel"]).max()) > 1e-3  # a real update

    # A loss that is no mean over rows tells the micro-batches apart: each sees 2 of the 8
    # rows (micro-batch i: rows i and i + 4, so each device keeps its own rows), and the step
    # reports the mean of their 4 losses.
    seen = []

    def worst_error(params, batch, rng):
        seen.append(batch["x"].shape)
        pred = Linear().apply({"params": params}, batch["x"])[:, 0]
        return jnp.max(jnp.abs(pred - batch["y"])), {}

    x, y = np.asarray(batch["x"]), np.asarray(batch["y"])
    err = np.abs(x @ np.asarray(params["kernel"])[:, 0] + 0.2 - y)
    _, m = functools.partial(step, loss_fn=worst_error)(state, batch, accum_steps=4)
    assert (2, 3) in seen and (8, 3) not in seen
    np.testing.assert_allclose(m["loss"], np.mean([max(err[i], err[i + 4]) for i in range(4)]), rtol=1e-6)
    assert abs(float(m["loss"]) - err.max()) > 1e-3  # not the whole batch's worst


def test_a_step_splits_into_whole_clips_per_batch_shard_and_micro_batch():
    trainer.check_batch(_config(batch_size=12, grad_accum_steps=2), {"data": 3})
    config = _config(batch_size=12, grad_accum_steps=2, data={"repeats": 2})  # 6 clips of 2 views
    trainer.check_batch(config, {"data": 3})  # a clip per shard and micro-batch
    with pytest.raises(UserError, match="batch_size 12 does not split into 2 batch shards x 2 micro-batches "
                                        r"of whole clips \(2 views each\): use a multiple of 8"):
        trainer.check_batch(config, {"data": 2, "fsdp": 1})
    with pytest.raises(UserError, match="use a multiple of 8"):
        trainer.check_batch(_config(batch_size=12), {"data": 2, "fsdp": 4})
    # Batch axes within one process would hand the same global rows different clips per process.
    trainer.check_batch(_config(batch_size=12), {"data": 2, "fsdp": 2}, processes=2)
    with pytest.raises(UserError, match=r"batch axes \(data x fsdp = 1\) do not span the 2 processes"):
        trainer.check_batch(_config(batch_size=12), {"data": 1, "fsdp": 1}, processes=2)


def test_nan_loss_stops_with_the_last_good_checkpoint_and_resumes(tmp_path):
    # Batch 3 (records 8-11) holds a NaN: step 3 fails, the step-2 checkpoint stays.
    with pytest.raises(UserError, match=r"non-finite loss .* at step 3 .* last good checkpoint: step 2"):
        trainer.run(_config(), str(tmp_path), _task(_records(nan_at=9)))
    state, history = trainer.run(_config(), str(tmp_path), _task(_records()))
    assert [h["step"] for h in history] == [3, 4, 5, 6]
    assert np.isfinite([h["loss"] for h in history]).all()


def test_sigterm_saves_and_the_relaunch_continues(tmp_path):
    import os
    import signal

    def preempt(step, state):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = rf"SIGTERM at step 4 of 6 .* in {tmp_path}; run the same command"
    with pytest.raises(Preempted, match=stopped) as stop:
        trainer.run(_config(checkpoint_every=100), str(tmp_path), _task(_records()), hooks=(preempt,))
    state, history = stop.value.state, stop.value.history
    # The signal came after step 3's save decision: step 4 runs, is saved, and the run stops.
    assert int(state.step) == 4 and history[-1]["step"] == 4
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]
    assert "process_0-of-1.json" in os.listdir(tmp_path / "checkpoints" / "4" / "data")  # its data position
    full_state, full = trainer.run(_config(checkpoint_every=100), str(tmp_path / "ref"), _task(_records()))
    state, resumed = trainer.run(_config(checkpoint_every=100), str(tmp_path), _task(_records()))
    assert [h["step"] for h in resumed] == [5, 6]
    np.testing.assert_allclose([h["loss"] for h in history + resumed], [h["loss"] for h in full], rtol=1e-6)
    jax.tree.map(np.testing.assert_allclose, state.params, full_state.params)


def test_a_config_that_does_not_fit_the_checkpoint_is_one_line_and_keeps_config_json(tmp_path):
    import json

    trainer.run(_config(num_train_steps=2), str(tmp_path), _task(_records()))
    clipped = _config(num_train_steps=4)
    clipped.optimizer.grad_clip = 1.0  # another optimizer state: the checkpoint cannot be restored
    misfit = r"it has opt_state/0/0/count, which this config's train state lacks"
    with pytest.raises(UserError, match=rf"checkpoint {tmp_path}/checkpoints/2 does not fit this config's "
                                        rf"model and optimizer \({misfit}\)"):
        trainer.run(clipped, str(tmp_path), _task(_records()))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["num_train_steps"] == 2 and saved["optimizer"]["grad_clip"] == 0.0  # what wrote it
    _, history = trainer.run(_config(num_train_steps=4), str(tmp_path), _task(_records()))
    assert [h["step"] for h in history] == [3, 4]
    assert json.loads((tmp_path / "config.json").read_text())["num_train_steps"] == 4


@pytest.mark.parametrize("damage", ["cut_a_data_file", "empty_step_dir", "cut_metadata"])
def test_a_damaged_checkpoint_is_one_line_that_says_what_to_delete(tmp_path, damage):
    import shutil

    trainer.run(_config(num_train_steps=4), str(tmp_path), _task(_records()))  # checkpoints 2 and 4
    latest = tmp_path / "checkpoints" / "4"
    if damage == "cut_a_data_file":  # the largest file of the saved arrays, cut short
        files = [p for p in (latest / "state").rglob("*") if p.is_file()]
        biggest = max(files, key=lambda p: p.stat().st_size)
        biggest.write_bytes(biggest.read_bytes()[:100])
    elif damage == "empty_step_dir":
        for child in latest.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    else:
        (latest / "state" / "_METADATA").write_text('{"tree_metadata": ')
    said = r"is damaged, .*; delete that directory to fall back on step 2, the checkpoint before it$"
    with pytest.raises(UserError, match=rf"checkpoint {tmp_path}/checkpoints/4 cannot be read \(.+\): it "
                                        + said):
        trainer.run(_config(num_train_steps=6), str(tmp_path), _task(_records()))
    with pytest.raises(UserError, match=said):  # evaluate, predict, init_from: the same line
        finetune.load_checkpoint_params(str(tmp_path))
    shutil.rmtree(latest)  # as the line says
    _, history = trainer.run(_config(num_train_steps=6), str(tmp_path), _task(_records()))
    assert [h["step"] for h in history] == [3, 4, 5, 6]


def test_a_save_that_fails_is_one_line_with_the_last_complete_checkpoint(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    save = ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):
        if step == 4:
            raise ValueError("RESOURCE_EXHAUSTED: Error writing to file: No space left on device [28]")
        return save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    with pytest.raises(UserError, match=rf"^cannot save checkpoint 4 in {tmp_path}/checkpoints: no space "
                       r"left on device; the last complete checkpoint: step 2 \(the same command resumes"):
        trainer.run(_config(num_train_steps=6), str(tmp_path), _task(_records()))
    monkeypatch.setattr(ocp.CheckpointManager, "save", save)  # space freed
    _, history = trainer.run(_config(num_train_steps=6), str(tmp_path), _task(_records()))
    assert [h["step"] for h in history] == [3, 4, 5, 6]


def test_a_finished_run_again_trains_nothing_and_writes_no_events(tmp_path):
    import os

    state, history = trainer.run(_config(num_train_steps=2), str(tmp_path), _task(_records()))
    events = sorted(os.listdir(tmp_path / "tensorboard"))
    again, history2 = trainer.run(_config(num_train_steps=2), str(tmp_path), _task(_records()))
    assert len(history) == 2 and history2 == [] and int(again.step) == 2
    jax.tree.map(np.testing.assert_array_equal, again.params, state.params)
    assert sorted(os.listdir(tmp_path / "tensorboard")) == events  # no empty event file added


def test_data_positions_are_per_process_and_survive_a_new_process_count(tmp_path):
    import json

    from etils import epath

    handler = trainer.DataPositions()
    handler.save(epath.Path(tmp_path), trainer.DataPositionsSave({"next_index": 7}))
    assert json.loads((tmp_path / "process_0-of-1.json").read_text()) == {"next_index": 7}
    assert handler.restore(epath.Path(tmp_path)) == {"next_index": 7}
    # Saved by two processes, restored by one: the lowest process's position.
    other = tmp_path / "two"
    other.mkdir()
    for i, index in ((1, 5), (0, 3)):
        (other / f"process_{i}-of-2.json").write_text(json.dumps({"next_index": index}))
    assert handler.restore(epath.Path(other)) == {"next_index": 3}
    (tmp_path / "none").mkdir()
    assert handler.restore(epath.Path(tmp_path / "none")) is None


def test_a_second_run_on_a_workdir_in_use_stops_with_one_line(tmp_path):
    import json
    import socket
    import subprocess
    import sys

    lock = tmp_path / trainer.LOCK_FILE
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a run of another process of this machine holds the workdir
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid,
                                    "since": "2026-12-03 08:00", "start": trainer._process_start(other.pid)}))
        said = (rf"^workdir {tmp_path} is in use by process {other.pid} on this machine, running since "
                r"2026-12-03 08:00 \(.*\.auvmae_lock\): two runs would overwrite each other's checkpoints")
        with pytest.raises(UserError, match=said):
            trainer.run(_config(num_train_steps=2), str(tmp_path), _task(_records()))
        assert not (tmp_path / "checkpoints").exists() or not os.listdir(tmp_path / "checkpoints")
    finally:
        other.kill()
        other.wait()
    # Its process gone (a hard kill), or the lock written by another machine: taken over.
    for name, held in (("gone", {"host": socket.gethostname(), "pid": other.pid, "start": None}),
                       ("elsewhere", {"host": "another-machine", "pid": os.getpid(), "start": None})):
        (tmp_path / name).mkdir()
        (tmp_path / name / trainer.LOCK_FILE).write_text(json.dumps(held))
        _, history = trainer.run(_config(num_train_steps=2), str(tmp_path / name), _task(_records()))
        assert history[-1]["step"] == 2
        assert not (tmp_path / name / trainer.LOCK_FILE).exists()  # released at the end
