"""Mesh from config, parameter shardings by logical rules, and 8-device == 1-device training."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from auvmae_jax import sharding
from auvmae_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs a few pre-training steps with the given mesh; prints shardings and losses as JSON.
SCRIPT = r"""
import json, sys
import jax
from auvmae_jax import pretrain, sharding
from tests.conftest import mini_pretrain_config

data_dir, workdir, mesh, model = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
config = mini_pretrain_config(data_dir)
config.mesh = mesh
config.model.update(model)
config.num_train_steps = 4
config.checkpoint_every = 100
state, history = pretrain.train(config, workdir)
block = state.params["encoder"]["block0"]
out = {
    "devices": jax.device_count(),
    "batch_axes": sharding.batch_axes(sharding.batch_sharding(
        sharding.make_mesh(config.mesh), sharding.rules_from_config(config.logical_axis_rules))),
    "losses": [h["loss"] for h in history],
    "fc1": [str(block["fc1"]["kernel"].sharding.spec),
            list(block["fc1"]["kernel"].addressable_shards[0].data.shape)],
    "qkv": [str(block["attn"]["qkv_kernel"].sharding.spec),
            list(block["attn"]["qkv_kernel"].addressable_shards[0].data.shape)],
    "fc2": str(block["fc2"]["kernel"].sharding.spec),
    "norm": str(block["norm1"]["scale"].sharding.spec),
    "mask_token": str(state.params["decoder"]["mask_token"].sharding.spec),
    "adam_mu_fc1": [str(x.sharding.spec) for p, x in jax.tree_util.tree_leaves_with_path(state.opt_state)
                    if "mu" in str(p) and "block0" in str(p) and "fc1" in str(p) and "kernel" in str(p)],
}
print("RESULT " + json.dumps(out))
"""


def _run(data_dir, workdir, mesh, devices, model=None):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, data_dir, workdir, json.dumps(mesh),
                           json.dumps(model or {})],
                          env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_mesh_shape_resolves_and_checks():
    assert sharding.mesh_shape({"data": -1, "fsdp": 1, "tensor": 1}, 8) == (8, 1, 1)
    assert sharding.mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == (2, 2, 2)
    with pytest.raises(UserError, match="unknown axes"):
        sharding.mesh_shape({"model": 2}, 8)
    with pytest.raises(UserError, match="needs 6 devices"):
        sharding.mesh_shape({"data": 3, "fsdp": 2}, 8)
    with pytest.raises(UserError, match="does not divide"):
        sharding.mesh_shape({"data": -1, "fsdp": 3}, 8)


def test_eight_devices_shard_by_rules_and_match_one_device(synthetic_data_dir, tmp_path):
    one = _run(synthetic_data_dir, str(tmp_path / "one"), {"data": -1}, 1)
    # Eight devices, with chunked attention (the decoder's 32 tokens in chunks of 8) on top:
    # the same losses as one device with XLA's attention.
    eight = _run(synthetic_data_dir, str(tmp_path / "eight"), {"data": 2, "fsdp": 2, "tensor": 2}, 8,
                 {"attention_impl": "chunked", "attention_chunk": 8})
    assert one["devices"] == 1 and eight["devices"] == 8
    assert eight["batch_axes"] == {"data": 2, "fsdp": 2}  # the batch: data x fsdp (tensor: replicated)
    # mini preset: width 32, mlp 128, 2 heads of 16. embed -> fsdp, mlp/heads -> tensor.
    assert eight["fc1"] == ["P('fsdp', 'tensor')", [16, 64]]
    assert eight["qkv"] == ["P('fsdp', None, 'tensor', None)", [16, 3, 1, 16]]
    assert eight["fc2"] == "P('tensor', 'fsdp')"
    assert eight["norm"] == "P(None,)"
    assert eight["mask_token"] == "P(None, None, 'fsdp')"
    assert set(eight["adam_mu_fc1"]) == {"P('fsdp', 'tensor')"}  # optimizer state follows
    assert len(one["losses"]) == len(eight["losses"]) == 4
    for a, b in zip(one["losses"], eight["losses"]):
        assert abs(a - b) < 1e-4 * abs(a), (one["losses"], eight["losses"])


# Pre-training loss and gradients of the mini model on a (data 2, fsdp 2, tensor 2) mesh, with
# splash attention per shard (its interpreter on this CPU) against XLA's attention.
SPLASH_SCRIPT = r"""
import dataclasses, json
import flax.linen as nn
import jax, jax.numpy as jnp, numpy as np
from auvmae_jax import losses, masking, sharding
from auvmae_jax.models import VideoMAE, ViTConfig

mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
cfg = ViTConfig.from_config(dict(preset="mini", patch_size=8, attention_impl="xla"))
video = jnp.asarray(np.random.default_rng(0).normal(size=(4, 4, 32, 32, 3)), jnp.float32)
vis, msk = masking.tube_mask(jax.random.key(0), 4, 16, 0.5)
params = nn.meta.unbox(VideoMAE(cfg).init(jax.random.key(1), video, vis, msk))["params"]
out = {}
with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
    batch = jax.device_put((video, vis, msk), sharding.batch_sharding(mesh, sharding.DEFAULT_RULES))
    for impl in ("xla", "splash"):
        model = VideoMAE(dataclasses.replace(cfg, attention_impl=impl))
        def loss(p, video, vis, msk):
            return jnp.mean(model.apply({"params": p}, video, vis, msk) ** 2)
        fn = jax.jit(jax.value_and_grad(loss))
        value, grads = fn(params, *batch)
        out[impl] = [float(value)] + [np.asarray(g).ravel().tolist() for g in jax.tree.leaves(grads)]
        jaxpr = str(jax.make_jaxpr(loss)(params, *batch))
        out[impl + "_kernel"] = "shard_map" in jaxpr and "pallas_call" in jaxpr
print("RESULT " + json.dumps(out))
"""


def test_splash_attention_per_shard_equals_xla_attention_on_eight_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", SPLASH_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads([x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1][len("RESULT "):])
    assert out["splash_kernel"] and not out["xla_kernel"]  # the Pallas kernel, per shard (shard_map)
    assert out["splash"][0] == pytest.approx(out["xla"][0], rel=1e-5)
    for a, b in zip(out["xla"][1:], out["splash"][1:]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
