import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from auvmae_jax import masking, models
from auvmae_jax.errors import UserError
from auvmae_jax.models import PRESETS, Encoder, VideoMAE, ViTConfig, patchify, sincos_table, xla_attention


def _abstract_forward(cfg: ViTConfig, t: int, s: int, ratio: float):
    tt, hp, wp = cfg.grid(t, s)
    n_mask = masking.num_masked(hp * wp, ratio)
    video = jax.ShapeDtypeStruct((2, t, s, s, 3), jnp.float32)
    vis = jax.ShapeDtypeStruct((2, hp * wp - n_mask), jnp.int32)
    msk = jax.ShapeDtypeStruct((2, n_mask), jnp.int32)
    model = VideoMAE(cfg)
    variables = jax.eval_shape(lambda v, a, b: model.init(jax.random.key(0), v, a, b), video, vis, msk)
    out = jax.eval_shape(lambda p, v, a, b: model.apply(p, v, a, b), variables, video, vis, msk)
    enc = jax.eval_shape(lambda p, v, a: Encoder(cfg).apply({"params": p["params"]["encoder"]}, v, a),
                         variables, video, vis)
    return nn.meta.unbox(variables), enc, out


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_shapes_and_token_counts(preset):
    cfg = ViTConfig.from_config(dict(preset=preset, patch_size=16, tubelet_size=2))
    # 16 x 224 x 224 clip: 8 x 14 x 14 = 1568 tokens; tube mask 0.9 keeps 20 of 196 positions.
    variables, enc, out = _abstract_forward(cfg, 16, 224, 0.9)
    p = PRESETS[preset]
    assert enc.shape == (2, 8 * 20, p["width"])  # encoder sees (1 - rho) of the 1568 tokens
    assert out.shape == (2, 8 * 176, 2 * 16 * 16 * 3)
    enc_params = variables["params"]["encoder"]
    assert len([k for k in enc_params if k.startswith("block")]) == p["depth"]
    assert enc_params["block0"]["attn"]["qkv_kernel"].shape == (p["width"], 3, p["heads"],
                                                                 p["width"] // p["heads"])
    assert variables["params"]["decoder"]["mask_token"].shape == (1, 1, p["dec_width"])


def test_vit_b_parameter_count_matches_videomae():
    variables, _, _ = _abstract_forward(ViTConfig.from_config(dict(preset="B")), 16, 224, 0.9)
    n_enc = sum(np.prod(x.shape) for x in jax.tree.leaves(variables["params"]["encoder"]))
    # VideoMAE ViT-B/16 encoder: 86.2M parameters (no class token, fixed positions).
    assert 86.0e6 < n_enc < 86.5e6


def test_sincos_table_interleaves_sin_and_cos():
    table = sincos_table(3, 8)
    assert table.shape == (3, 8)
    np.testing.assert_allclose(table[0], [0, 1] * 4, atol=1e-7)
    np.testing.assert_allclose(table[1, :4], [np.sin(1), np.cos(1), np.sin(10000 ** -0.25),
                                              np.cos(10000 ** -0.25)], rtol=1e-6)
    np.testing.assert_allclose(table[2, 6], np.sin(2 / 10000 ** 0.75), rtol=1e-6)


def test_gelu_is_the_exact_erf_one():
    gelu = models.gelu
    # x * Phi(x), Phi the standard normal CDF: Phi(1) = 0.8413447, Phi(-1) = 0.1586553, Phi(2) = 0.9772499.
    x = jnp.asarray([0.0, 1.0, -1.0, 2.0, -3.0, 10.0], jnp.float32)
    np.testing.assert_allclose(gelu(x), [0, 0.8413447, -0.1586553, 1.9544997, -0.0040497, 10.0], atol=2e-7)
    grid = jnp.linspace(-8, 8, 4001)
    exact = functools.partial(jax.nn.gelu, approximate=False)
    np.testing.assert_allclose(gelu(grid), exact(grid), atol=1e-6)
    np.testing.assert_allclose(jax.vmap(jax.grad(gelu))(grid), jax.vmap(jax.grad(exact))(grid), atol=1e-6)
    assert gelu(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16
    # Not the tanh approximation (flax's default): it is off by up to ~5e-4.
    assert float(jnp.abs(gelu(grid) - jax.nn.gelu(grid, approximate=True)).max()) > 1e-4


def test_patchify_orders_tokens_thw_and_values_thwc():
    video = jnp.arange(1 * 4 * 4 * 4 * 3, dtype=jnp.float32).reshape(1, 4, 4, 4, 3)
    p = patchify(video, tubelet=2, patch=2)
    assert p.shape == (1, 2 * 2 * 2, 8, 3)
    # Token 1 = (t=0, h=0, w=1): pixels t in {0,1}, rows {0,1}, cols {2,3}.
    np.testing.assert_array_equal(p[0, 1, 0], video[0, 0, 0, 2])
    np.testing.assert_array_equal(p[0, 1, 1], video[0, 0, 0, 3])
    np.testing.assert_array_equal(p[0, 1, 2], video[0, 0, 1, 2])
    np.testing.assert_array_equal(p[0, 1, 4], video[0, 1, 0, 2])
    # Token 4 = (t=1, h=0, w=0): frames 2-3.
    np.testing.assert_array_equal(p[0, 4, 0], video[0, 2, 0, 0])


def test_encoder_ignores_masked_pixels():
    cfg = ViTConfig.from_config(dict(preset="mini", patch_size=8))
    model = Encoder(cfg)
    rng = np.random.default_rng(0)
    video = jnp.asarray(rng.normal(size=(1, 4, 32, 32, 3)), jnp.float32)
    visible, masked = masking.tube_mask(jax.random.key(1), 1, 16, 0.75)
    params = model.init(jax.random.key(0), video, visible)
    out = model.apply(params, video, visible)
    # Overwrite every masked tubelet: the encoder output must not change.
    m = np.asarray(masking.token_mask(masked, 2, 16)).reshape(1, 2, 4, 4)
    pix = np.repeat(np.repeat(np.repeat(m, 2, 1), 8, 2), 8, 3)[..., None]
    changed = jnp.where(pix, 100.0, video)
    np.testing.assert_allclose(model.apply(params, changed, visible), out, atol=1e-5)
    # ... while changing a visible tubelet does.
    assert not np.allclose(model.apply(params, video + (1 - pix), visible), out, atol=1e-3)


def test_visible_tubelets_are_embedded_as_the_full_clip_then_dropped():
    """SPEC §5: positions added to all tokens, masked ones dropped; embedding only the visible
    tubelets (what the encoder does) gives exactly those tokens."""
    cfg = ViTConfig.from_config(dict(preset="mini", patch_size=8, depth=0, final_norm=False))
    model = Encoder(cfg)
    video = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 32, 32, 3)), jnp.float32)
    visible, _ = masking.tube_mask(jax.random.key(1), 2, 16, 0.75)
    params = model.init(jax.random.key(0), video)
    every = model.apply(params, video)  # [2, 32, D]: embedding + positions of all tokens
    kernel, bias = params["params"]["patch_embed"]["kernel"], params["params"]["patch_embed"]["bias"]
    by_hand = patchify(video, 2, 8).reshape(2, 32, -1) @ nn.meta.unbox(kernel) + nn.meta.unbox(bias)
    np.testing.assert_allclose(every, by_hand + sincos_table(32, cfg.width), rtol=1e-5, atol=1e-5)
    ids = masking.tube_token_ids(visible, 2, 16)
    np.testing.assert_allclose(model.apply(params, video, visible), masking.gather_tokens(every, ids),
                               rtol=1e-5, atol=1e-5)


def test_unknown_model_key_is_a_clear_error():
    with pytest.raises(UserError, match="unknown keys.*widht"):
        ViTConfig.from_config(dict(preset="B", widht=3))
    with pytest.raises(UserError, match="unknown preset"):
        ViTConfig.from_config(dict(preset="XL"))


def test_bfloat16_compute_keeps_float32_parameters():
    cfg = ViTConfig.from_config(dict(preset="mini", patch_size=8, dtype="bfloat16"))
    model = VideoMAE(cfg)
    video = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 32, 32, 3)), jnp.float32)
    vis, msk = masking.tube_mask(jax.random.key(0), 2, 16, 0.75)
    variables = nn.meta.unbox(model.init(jax.random.key(1), video.astype(jnp.bfloat16), vis, msk))
    assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype("float32")}
    # Every parameter moved off its initial value, so the zero-initialised biases count too.
    leaves, tree = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(5), len(leaves))
    variables = jax.tree.unflatten(tree, [x + 0.2 * jax.random.normal(k, x.shape)
                                          for x, k in zip(leaves, keys)])
    out = model.apply(variables, video.astype(jnp.bfloat16), vis, msk)
    assert out.dtype == jnp.bfloat16 and out.shape == (2, 2 * 12, 384)
    # The same parameters computing in float32: bf16 keeps 8 bits of mantissa (a relative
    # rounding of 2^-9 per operation); through 3 blocks the outputs differ by ~0.7% of their
    # spread (measured: RMS 0.0066 std, largest 0.046 std), well under 2% and 10%.
    ref = np.asarray(VideoMAE(dataclasses.replace(cfg, dtype="float32")).apply(variables, video, vis, msk))
    diff = np.asarray(out, np.float32) - ref
    assert np.sqrt(np.mean(diff ** 2)) < 0.02 * ref.std(), (np.sqrt(np.mean(diff ** 2)), ref.std())
    assert np.abs(diff).max() < 0.1 * ref.std(), (np.abs(diff).max(), ref.std())


def test_attention_implementation_choice():
    from auvmae_jax.models import attention_implementation as pick

    assert pick(None, jnp.bfloat16, 64, backend="gpu") == "cudnn"
    assert pick("auto", jnp.float16, 128, backend="gpu") == "cudnn"
    assert pick(None, jnp.float32, 64, backend="gpu") == "xla"  # cuDNN fused attention: 16-bit only
    assert pick(None, jnp.bfloat16, 12, backend="gpu") == "xla"  # head dim not a multiple of 8
    assert pick(None, jnp.bfloat16, 256, backend="gpu") == "xla"
    assert pick(None, jnp.bfloat16, 64, backend="tpu") == "xla"
    assert pick(None, jnp.bfloat16, 64, backend="cpu") == "xla"
    assert pick("cudnn", jnp.float32, 64, backend="cpu") == "cudnn"  # asked for: taken as is
    # Long sequences (ViT-B at 128 frames: 12,544 tokens) without a fused kernel: query chunks.
    assert pick(None, jnp.bfloat16, 64, backend="tpu", length=12544) == "chunked"
    assert pick(None, jnp.float32, 64, backend="gpu", length=4096) == "chunked"
    assert pick(None, jnp.float32, 64, backend="cpu", length=4095) == "xla"
    assert pick(None, jnp.bfloat16, 64, backend="gpu", length=12544) == "cudnn"
    assert pick("xla", jnp.float32, 64, backend="cpu", length=12544) == "xla"
    assert pick("chunked", jnp.float32, 64, backend="gpu") == "chunked"
    assert pick("splash", jnp.bfloat16, 64, backend="tpu") == "splash"  # TPU's kernel: asked for only
    with pytest.raises(ValueError, match="unknown attention_impl 'flash'"):
        pick("flash", jnp.bfloat16, 64)


def test_inference_jit_compiles_without_ynn_fusions_on_cpu_and_computes_the_same(monkeypatch):
    assert models.inference_compiler_options("gpu") is None
    assert models.inference_compiler_options("tpu") is None
    assert models.inference_compiler_options("cpu") == models.CPU_INFERENCE_OPTIONS
    cfg = ViTConfig.from_config(dict(preset="mini", attention_impl="xla"))
    block = models.Block(cfg, 32, 2)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 32)), jnp.float32)
    params = nn.meta.unbox(block.init(jax.random.key(0), x))
    plain = jax.jit(block.apply).lower(params, x).compile()
    inference = models.inference_jit(block.apply).lower(params, x).compile()
    # XLA:CPU's defaults hand the block's matmuls (the whole attention: both matmuls and the
    # softmax, in one) to YNNPACK fusions; the inference compile keeps none of them.
    assert "__ynn_fusion" in plain.as_text()
    assert "__ynn_fusion" not in inference.as_text()
    np.testing.assert_allclose(inference(params, x), plain(params, x), rtol=1e-5, atol=1e-5)
    # A jaxlib whose XLA lacks the option compiles with its defaults rather than failing.
    monkeypatch.setattr(models, "CPU_INFERENCE_OPTIONS", {"xla_cpu_no_such_option": ""})
    assert models.inference_compiler_options("cpu") is None
    np.testing.assert_allclose(models.inference_jit(block.apply)(params, x), plain(params, x), rtol=1e-6)


def test_attention_equals_explicit_softmax_attention():
    from auvmae_jax.models import Attention

    cfg = ViTConfig.from_config(dict(preset="mini", attention_impl="xla"))
    attn = Attention(cfg, 32, 2)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 10, 32)), jnp.float32)
    params = nn.meta.unbox(attn.init(jax.random.key(0), x))["params"]
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(3), p.shape), params)
    out = attn.apply({"params": params}, x)
    # Reference: the textbook formula, heads written out.
    qkv = np.einsum("bld,dkhe->blkhe", x, params["qkv_kernel"])
    q = qkv[:, :, 0] + params["q_bias"]
    k = qkv[:, :, 1]
    v = qkv[:, :, 2] + params["v_bias"]
    logits = np.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(16)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    ref = np.einsum("bhqk,bkhe,hed->bqd", weights, v, params["proj_kernel"]) + params["proj_bias"]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_remat_changes_neither_values_nor_gradients():
    base = dict(preset="mini", patch_size=8, drop_path=0.1)
    video = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 32, 32, 3)), jnp.float32)
    vis, msk = masking.tube_mask(jax.random.key(0), 2, 16, 0.75)
    plain, remat = (VideoMAE(ViTConfig.from_config(dict(base, remat=r))) for r in (False, True))
    params = nn.meta.unbox(plain.init(jax.random.key(1), video, vis, msk))["params"]

    def loss(p, model):
        out = model.apply({"params": p}, video, vis, msk, deterministic=False,
                          rngs={"dropout": jax.random.key(2)})
        return jnp.mean(out ** 2)

    (l0, g0), (l1, g1) = (jax.value_and_grad(loss)(params, m) for m in (plain, remat))
    assert jax.tree.structure(g0) == jax.tree.structure(g1)  # same parameter names
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g0, g1)
    # The rematerialised backward pass recomputes each block: the jaxpr says so.
    assert "remat" in str(jax.make_jaxpr(jax.grad(loss), static_argnums=1)(params, remat))
    assert "remat" not in str(jax.make_jaxpr(jax.grad(loss), static_argnums=1)(params, plain))


def test_drop_path_drops_whole_samples_and_scales_the_survivors():
    cfg = ViTConfig.from_config(dict(preset="mini", attention_impl="xla"))
    rate, batch = 0.25, 400
    block = models.Block(cfg, 32, 2, drop_path=rate)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, 3, 32)), jnp.float32)
    params = nn.meta.unbox(block.init(jax.random.key(0), x))["params"]
    # The MLP branch silenced (fc2 = 0): the block is x + drop(attention branch).
    params["fc2"] = jax.tree.map(jnp.zeros_like, params["fc2"])
    branch = np.asarray(models.Block(cfg, 32, 2, drop_path=0.0).apply({"params": params}, x) - x)
    assert np.abs(branch).min() > 0  # every entry of the branch is there to be dropped or not
    out = block.apply({"params": params}, x, deterministic=False, rngs={"dropout": jax.random.key(3)})
    seen = np.asarray(out - x)
    dropped = np.all(np.abs(seen) < 1e-6, axis=(1, 2))
    # Per sample: a dropped sample loses the whole branch, a kept one has all of it, scaled by 1/(1-p).
    np.testing.assert_allclose(seen[~dropped], branch[~dropped] / (1 - rate), rtol=1e-4, atol=1e-5)
    # Binomial(400, 0.25): 100 dropped expected, sd 8.7; 60..140 is over 4.5 sd.
    assert 60 < dropped.sum() < 140, dropped.sum()
    # Deterministic (evaluation): nothing dropped, nothing scaled.
    kept = block.apply({"params": params}, x, deterministic=True, rngs={"dropout": jax.random.key(3)})
    np.testing.assert_allclose(np.asarray(kept - x), branch, rtol=1e-6, atol=1e-6)


def test_drop_path_rate_rises_linearly_over_the_encoder_blocks_only():
    cfg = ViTConfig.from_config(dict(preset="mini", patch_size=8, depth=3, drop_path=0.2))
    video = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 32, 32, 3)), jnp.float32)
    vis, msk = masking.tube_mask(jax.random.key(0), 2, 16, 0.75)
    rates = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, models.Block) and context.method_name == "__call__":
            rates["/".join(context.module.path)] = context.module.drop_path
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        variables = VideoMAE(cfg).init(jax.random.key(1), video, vis, msk)
    # VideoMAE: drop_path * i / (depth - 1) in block i (0, 0.1, 0.2); none in the decoder.
    enc = {k.split("/")[-1]: v for k, v in rates.items() if k.startswith("encoder/")}
    assert enc == pytest.approx({f"block{i}": 0.1 * i for i in range(3)})
    assert [v for k, v in rates.items() if k.startswith("decoder/")] == [0.0]
    # Deterministic: the model with drop path computes what it computes without; not so in training.
    plain = VideoMAE(dataclasses.replace(cfg, drop_path=0.0))
    np.testing.assert_allclose(VideoMAE(cfg).apply(variables, video, vis, msk),
                               plain.apply(variables, video, vis, msk), rtol=1e-6, atol=1e-6)
    train = VideoMAE(cfg).apply(variables, video, vis, msk, deterministic=False,
                                rngs={"dropout": jax.random.key(4)})
    assert not np.allclose(train, plain.apply(variables, video, vis, msk), atol=1e-4)


def test_our_and_chunked_attention_equal_jax_xla_attention_in_values_and_gradients():
    from auvmae_jax.models import chunked_attention

    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 50, 3, 8)), jnp.float32) for _ in range(3))
    w = jnp.asarray(rng.normal(size=(2, 50, 3, 8)), jnp.float32)

    def jax_xla(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, implementation="xla")

    def chunked(q, k, v):
        return chunked_attention(q, k, v, chunk=16)  # 50 queries: 4 chunks, the last one padded

    # Ours (xla_attention, also inside each chunk) against jax's own XLA attention.
    _assert_same_attention(xla_attention, jax_xla, q, k, v, w)
    _assert_same_attention(chunked, jax_xla, q, k, v, w)


def _assert_same_attention(ours, ref, q, k, v, w, grad_atol=1e-6):
    """Equal values and gradients (of a weighted sum) in float32; in bf16, the result in bf16 (float32
    logits and softmax inside) within bf16's rounding."""
    np.testing.assert_allclose(ours(q, k, v), ref(q, k, v), rtol=1e-5, atol=1e-6)
    grads = [jax.grad(lambda *a, f=f: (f(*a) * w).sum(), argnums=(0, 1, 2))(q, k, v) for f in (ref, ours)]
    for a, b in zip(*grads):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=grad_atol)
    qb, kb, vb = (x.astype(jnp.bfloat16) for x in (q, k, v))
    out = ours(qb, kb, vb)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), ref(qb, kb, vb).astype(jnp.float32), atol=0.03)


@pytest.mark.parametrize("length", [50, 384])
def test_splash_attention_equals_xla_attention_in_values_and_gradients(length):
    from auvmae_jax.models import splash_attention

    # 50 tokens: padded to 128 (the padding a segment of its own); 384: three blocks of 128.
    rng = np.random.default_rng(length)
    q, k, v, w = (jnp.asarray(rng.normal(size=(2, length, 2, 16)), jnp.float32) for _ in range(4))
    _assert_same_attention(splash_attention, xla_attention, q, k, v, w, grad_atol=1e-5)


@pytest.mark.parametrize("length, heads, head_dim",
                         [(160, 12, 64), (1568, 6, 64), (12544, 12, 64), (512, 3, 32)])
def test_splash_attention_lowers_for_tpu(length, heads, head_dim):
    # ViT-B's encoder at mask 0.9 (160 tokens), its decoder (1,568), 128-frame clips (12,544), the tiny
    # decoder (head dim 32): forward and backward lower for a TPU without one (jax.export), each
    # Pallas kernel (forward, dq, dkv) as one Mosaic custom call. Mosaic's own compile is libtpu's.
    from auvmae_jax.models import splash_attention

    q = jax.ShapeDtypeStruct((2, length, heads, head_dim), jnp.bfloat16)

    def grads(q, k, v):
        loss = lambda *a: splash_attention(*a, interpret=False).astype(jnp.float32).sum()  # noqa: E731
        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    module = jax.export.export(jax.jit(grads), platforms=["tpu"])(q, q, q).mlir_module()
    assert module.count("tpu_custom_call") == 3


def test_chunked_attention_keeps_less_memory_for_long_sequences():
    from auvmae_jax.models import chunked_attention

    q = k = v = jax.ShapeDtypeStruct((1, 2048, 4, 32), jnp.float32)

    def temp_bytes(fn):
        grad = jax.grad(lambda q, k, v: (fn(q, k, v) ** 2).sum(), argnums=(0, 1, 2))
        return jax.jit(grad).lower(q, k, v).compile().memory_analysis().temp_size_in_bytes

    full = temp_bytes(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"))
    chunked = temp_bytes(lambda q, k, v: chunked_attention(q, k, v, chunk=256))
    # The 4 x 2048 x 2048 float32 scores alone take 64 MiB; XLA's forward + backward keeps several
    # (257 MiB measured, 36 MiB chunked).
    assert full > 64 * 2**20 and chunked < full / 4, (full, chunked)


def test_model_with_chunked_attention_equals_xla_attention():
    cfg = ViTConfig.from_config(dict(preset="mini", patch_size=8, attention_impl="xla"))
    video = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 32, 32, 3)), jnp.float32)
    vis, msk = masking.tube_mask(jax.random.key(0), 2, 16, 0.5)
    variables = nn.meta.unbox(VideoMAE(cfg).init(jax.random.key(1), video, vis, msk))
    out = VideoMAE(cfg).apply(variables, video, vis, msk)
    chunked = VideoMAE(dataclasses.replace(cfg, attention_impl="chunked")).apply(variables, video, vis, msk)
    np.testing.assert_allclose(chunked, out, rtol=1e-5, atol=1e-5)


def test_decoder_predicts_the_tokens_it_is_asked_for():
    cfg = ViTConfig.from_config(dict(preset="mini", patch_size=8))
    video = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 32, 32, 3)), jnp.float32)
    vis, msk = masking.tube_mask(jax.random.key(0), 2, 16, 0.75)
    model = VideoMAE(cfg)
    variables = nn.meta.unbox(model.init(jax.random.key(1), video, vis, msk))
    default = model.apply(variables, video, vis, msk)
    assert default.shape == (2, 2 * 12, 2 * 8 * 8 * 3)  # every masked tubelet, ascending
    asked = model.apply(variables, video, vis, msk, queries=masking.tube_token_ids(msk, 2, 16))
    np.testing.assert_allclose(asked, default, rtol=1e-6)
    # VideoMAE V2's running cell: half of each frame's 16 positions, visible ones among them.
    cells = masking.decoder_queries(jax.random.key(2), 2, (2, 4, 4), 0.5)
    out = model.apply(variables, video, vis, msk, queries=cells)
    assert out.shape == (2, 2 * 8, 384) and np.isfinite(out).all()
    # The mask tokens differ only by their positions: other positions, other predictions.
    assert not np.allclose(out[:, :1], out[:, 1:2])
    # Prediction k is query k's: permuted queries give the predictions permuted alike, for the
    # running cell's queries and for the masked tokens (default order: ascending).
    perm = np.random.default_rng(1).permutation(16)
    np.testing.assert_allclose(model.apply(variables, video, vis, msk, queries=cells[:, perm]),
                               out[:, perm], rtol=1e-5, atol=1e-5)
    ids = masking.tube_token_ids(msk, 2, 16)
    perm = np.random.default_rng(2).permutation(24)
    np.testing.assert_allclose(model.apply(variables, video, vis, msk, queries=ids[:, perm]),
                               default[:, perm], rtol=1e-5, atol=1e-5)
