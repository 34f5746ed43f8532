"""Video ViT encoder, VideoMAE decoder and presets.

Shapes: video `[B, T, H, W, 3]` (normalised), tokens `[B, L, D]` with
`L = T/kt * H/p * W/p` flattened in `(t, h, w)` order. Parameters carry logical
axis names (`embed`, `mlp`, `heads`, `kv`, ...); `sharding.py` maps them to the mesh.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from auvmae_jax import masking
from auvmae_jax.errors import UserError

# width, depth, heads of the encoder; the MAE decoder's width, depth, heads.
PRESETS: dict[str, dict[str, int]] = {
    "mini": dict(width=32, depth=2, heads=2, dec_width=32, dec_depth=1, dec_heads=2),
    "tiny": dict(width=192, depth=4, heads=3, dec_width=96, dec_depth=2, dec_heads=3),
    "S": dict(width=384, depth=12, heads=6, dec_width=192, dec_depth=4, dec_heads=3),
    "B": dict(width=768, depth=12, heads=12, dec_width=384, dec_depth=4, dec_heads=6),
    "L": dict(width=1024, depth=24, heads=16, dec_width=512, dec_depth=4, dec_heads=8),
}


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Architecture of the video ViT (and of its MAE decoder)."""

    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    tubelet_size: int = 2
    layer_norm_eps: float = 1e-6
    head_norm_eps: float | None = None  # decoder's last norm and fc_norm (transformers: 1e-5); None: same
    final_norm: bool = True  # official pre-training encoders end in a LayerNorm
    dec_width: int = 384
    dec_depth: int = 4
    dec_heads: int = 6
    drop_path: float = 0.0
    dtype: str = "float32"  # compute dtype; parameters stay float32
    remat: bool = False
    attention_impl: str | None = None  # None/'auto': cudnn where it applies, else 'xla'/'chunked'
    attention_chunk: int = 1024  # queries per chunk of 'chunked' attention

    @classmethod
    def from_config(cls, cfg: Any) -> ViTConfig:
        """From a config dict with `preset` and optional overrides of any field."""
        cfg = dict(cfg)
        preset = cfg.pop("preset", None)
        if preset and preset not in PRESETS:
            raise UserError(f"config.model: unknown preset {preset!r}; known: {sorted(PRESETS)}")
        fields = dict(PRESETS[preset]) if preset else {}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(cfg) - names
        if unknown:
            raise UserError(f"config.model: unknown keys {sorted(unknown)}; known: {sorted(names)}")
        fields.update(cfg)
        return cls(**fields)

    def grid(self, num_frames: int, height: int, width: int | None = None) -> tuple[int, int, int]:
        """Token grid `(t, h, w)` of a clip of `num_frames` frames of `height x width`."""
        width = height if width is None else width
        kt, p = self.tubelet_size, self.patch_size
        if num_frames % kt or height % p or width % p:
            raise ValueError(
                f"clip {num_frames}x{height}x{width} is not divisible into {kt}x{p}x{p} tubelets")
        return num_frames // kt, height // p, width // p


def sincos_table(length: int, dim: int) -> np.ndarray:
    """VideoMAE's fixed position table `[length, dim]`: sin on even, cos on odd dims."""
    pos = np.arange(length, dtype=np.float64)[:, None]
    j = np.arange(dim)[None, :]
    angle = pos / np.power(10000.0, 2 * (j // 2) / dim)
    return np.where(j % 2 == 0, np.sin(angle), np.cos(angle)).astype(np.float32)


def patchify(video: jax.Array, tubelet: int, patch: int) -> jax.Array:
    """`[B, T, H, W, C]` -> `[B, L, tubelet*patch*patch, C]`, tokens in (t, h, w) order."""
    b, t, h, w, c = video.shape
    x = video.reshape(b, t // tubelet, tubelet, h // patch, patch, w // patch, patch, c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, (t // tubelet) * (h // patch) * (w // patch), tubelet * patch * patch, c)


ATTENTION_IMPLS = (None, "auto", "xla", "cudnn", "chunked", "splash")
# 'auto' switches from XLA's attention to query chunks from this many tokens: XLA's keeps
# every `L x L` score matrix (ViT-B at 128 frames: 3.8 GB of bf16 scores per clip and block).
CHUNKED_FROM_TOKENS = 4096


def attention_implementation(requested: str | None, dtype: Any, head_dim: int,
                             backend: str | None = None, length: int | None = None) -> str:
    """The attention implementation to use: 'cudnn', 'xla', 'chunked' or 'splash'.

    Asked-for ones are taken as asked ('splash': `splash_attention`, TPU's fused kernel,
    only when asked for). None/'auto' picks cuDNN's fused (flash)
    attention on NVIDIA GPUs where it applies (bf16/fp16 inputs, head dim a multiple
    of 8 up to 128); elsewhere (CPU, TPU, float32) XLA's, or `chunked_attention` for
    sequences of `CHUNKED_FROM_TOKENS` tokens or more. `backend` defaults to
    `jax.default_backend()`; `length` is the number of tokens (None: short).
    """
    if requested not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention_impl {requested!r}; known: {ATTENTION_IMPLS}")
    if requested not in (None, "auto"):
        return requested
    backend = jax.default_backend() if backend is None else backend
    fused_dtype = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if backend in ("gpu", "cuda") and fused_dtype and head_dim % 8 == 0 and head_dim <= 128:
        return "cudnn"
    return "chunked" if length is not None and length >= CHUNKED_FROM_TOKENS else "xla"


# XLA:CPU (jax 0.10) hands matmuls and their neighbours to YNNPACK fusions. In a forward pass
# that keeps nothing for a backward one, the whole attention (both matmuls and the softmax
# between them) becomes one such fusion, which runs 2-3x slower than the same ops apart.
# Inference jits on CPUs compile without those fusions (`inference_jit`): encoder inference
# over full clips 1.3-1.6x faster (tiny at 64 px, ViT-S and ViT-B at 224 px; this project's
# 2-core CPU machine). Training steps keep them: their backward matmuls gain from them.
CPU_INFERENCE_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _known_compile_options(options: tuple[tuple[str, Any], ...]) -> bool:
    """Whether this jaxlib's XLA takes these compile options (it raises on unknown names)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(np.float32(0)).compile()
    except jax.errors.JaxRuntimeError:
        return False
    return True


def inference_compiler_options(backend: str | None = None) -> dict[str, Any] | None:
    """XLA options for inference-only jits: `CPU_INFERENCE_OPTIONS` on CPUs where this
    jaxlib knows them, else None (XLA's defaults). `backend`: `jax.default_backend()`."""
    backend = jax.default_backend() if backend is None else backend
    if backend != "cpu" or not _known_compile_options(tuple(CPU_INFERENCE_OPTIONS.items())):
        return None
    return dict(CPU_INFERENCE_OPTIONS)


def inference_jit(fn, **jit_kwargs):
    """`jax.jit` for a forward pass only (evaluation, prediction, features, benchmarks)."""
    return jax.jit(fn, compiler_options=inference_compiler_options(), **jit_kwargs)


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Softmax attention `[B, L, H, D]` as two einsums over heads-major operands.

    The softmax's exponentials (float32, shifted by each row's maximum) multiply the values
    unnormalised and the `[B, H, L, D]` result is divided by their sums, rather than the
    `[B, H, L, L]` probabilities. What `jax.nn.dot_product_attention(implementation='xla')`
    computes, without its masking and grouped-query machinery, which on XLA:CPU
    materialises constant `[B, H, L, L]` arrays and contracts over a strided head axis:
    the tiny preset's pre-training step (16 x 64 x 64, patch 8, batch 8, float32) went from
    281 to 195 ms, its inference from 135 to 110 ms on this project's 2-core CPU machine.
    """
    scale = jnp.asarray(1.0 / np.sqrt(q.shape[-1]), q.dtype)
    q, k, v = (x.swapaxes(1, 2) for x in (q, k, v))  # [B, H, L, D]
    logits = jnp.einsum("bhqd,bhkd->bhqk", q * scale, k, preferred_element_type=jnp.float32)
    # The shift cancels in the quotient: no gradient needed through it.
    e = jnp.exp(logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True)))
    out = jnp.einsum("bhqk,bhkd->bhqd", e.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return (out / e.sum(-1, keepdims=True)).astype(v.dtype).swapaxes(1, 2)


def chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array, chunk: int = 1024) -> jax.Array:
    """Exact softmax attention `[B, L, H, D]`, computed at most `chunk` queries at a time.

    Each query row's softmax sees all keys, so the result is XLA's attention; but only
    one chunk's `chunk x L` scores exist at once, in the forward pass and (each chunk
    recomputed, as flash attention does) in the backward pass: memory for long clips
    where no fused kernel runs. Chunks are made equal, so at most `n - 1` padded queries.
    """
    b, lq, h, d = q.shape
    n = -(-lq // chunk)
    chunk = -(-lq // n)
    q = jnp.pad(q, ((0, 0), (0, n * chunk - lq), (0, 0), (0, 0)))  # padded queries are dropped
    q = q.reshape(b, n, chunk, h, d).swapaxes(0, 1)

    @jax.checkpoint
    def one_chunk(qc):
        return xla_attention(qc, k, v)

    out = jax.lax.map(one_chunk, q)  # [n, B, chunk, H, D]
    return out.swapaxes(0, 1).reshape(b, n * chunk, h, d)[:, :lq]


# Splash attention's tiles: queries and keys in blocks of the largest of these that divides
# the sequence, padded to a multiple of 128 (the TPU's lane width, the kernel's unit).
SPLASH_BLOCKS = (512, 256, 128)


@functools.cache
def _splash_kernel(heads: int, length: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    block = next(b for b in SPLASH_BLOCKS if length % b == 0)
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                              block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                              block_q_dq=block, block_kv_dq=block)
    mask = splash.MultiHeadMask([splash.FullMask((length, length))] * heads)
    with jax.ensure_compile_time_eval():  # concrete mask tables, whatever trace asks first
        return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                      interpret=interpret)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, interpret: bool | None = None) -> jax.Array:
    """Softmax attention `[B, L, H, D]` by the TPU's fused kernel (Pallas splash attention).

    jax's own flash-attention kernel for TPUs (what `jax.nn.dot_product_attention` lacks
    there): tiles of queries and keys in VMEM, no `L x L` matrix in HBM, forward and
    backward. The sequence is padded to a multiple of 128; padded keys and queries form a
    segment of their own (segment ids), so real queries never see them. Under a mesh it
    runs per shard (`shard_map`: batch and heads as the logical axis rules shard them; the
    sequence is never sharded). Off TPUs it runs in Pallas's interpreter (`interpret`
    default), slowly: for tests. Its forward and backward kernels lower for TPUs (tested with
    `jax.export(platforms=['tpu'])` at ViT-B's shapes); not yet run on a TPU by this project.
    """
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    interpret = jax.default_backend() != "tpu" if interpret is None else interpret

    def attend(q, k, v):
        _, length, heads, d = q.shape
        padded = -(-length // 128) * 128
        kernel = _splash_kernel(heads, padded, interpret)
        q = q * jnp.asarray(1.0 / np.sqrt(d), q.dtype)
        pad = ((0, 0), (0, padded - length), (0, 0), (0, 0))
        q, k, v = (jnp.pad(x, pad).swapaxes(1, 2) for x in (q, k, v))  # [B, H, L', D]
        ids = None
        if padded > length:
            seg = (jnp.arange(padded) >= length).astype(jnp.int32)
            ids = splash.SegmentIds(q=seg, kv=seg)
        out = jax.vmap(lambda q, k, v: kernel(q, k, v, segment_ids=ids))(q, k, v)
        return out.swapaxes(1, 2)[:, :length]

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return attend(q, k, v)
    spec = nn.logical_to_mesh_axes(("batch", "length", "heads", "kv"))
    return jax.shard_map(attend, in_specs=(spec,) * 3, out_specs=spec, check_vma=False)(q, k, v)


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU, `x * Phi(x)` as PyTorch computes it: `0.5 x (1 + erf(x / sqrt 2))`.

    `jax.nn.gelu(approximate=False)` goes through `erfc` instead, whose two rational
    branches and exponential cost XLA:CPU about three passes over the MLP's activations:
    the tiny preset's pre-training step on this project's 2-core CPU machine took 10 ms
    (6%) longer with it. The two differ by at most 1e-6 (float32 rounding of `1 + erf`
    for negative `x`, where the result is near 0), as PyTorch's CPU kernel does from both.
    """
    return 0.5 * x * (1 + jax.lax.erf(x * jnp.asarray(1 / np.sqrt(2), x.dtype)))


def _dense_init(names: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.xavier_uniform(), names)


def _zeros(names: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def _norm(cfg: ViTConfig, name: str | None = None, head: bool = False) -> nn.LayerNorm:
    """LayerNorm; `head` ones (decoder output, fc_norm) use `head_norm_eps` where it is set."""
    eps = cfg.head_norm_eps if head and cfg.head_norm_eps is not None else cfg.layer_norm_eps
    return nn.LayerNorm(
        epsilon=eps,
        dtype=cfg.dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
        bias_init=_zeros(("norm",)),
        name=name,
    )


class Attention(nn.Module):
    """Multi-head self-attention with VideoMAE's q/v bias (no k bias)."""

    cfg: ViTConfig
    width: int
    heads: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d, h = self.width, self.heads
        dh = d // h
        dtype = self.cfg.dtype
        # Kernels kept in their natural ranks so that each dim carries its logical name.
        w_qkv = self.param("qkv_kernel", _dense_init(("embed", None, "heads", "kv")), (d, 3, h, dh))
        q_bias = self.param("q_bias", _zeros(("heads", "kv")), (h, dh))
        v_bias = self.param("v_bias", _zeros(("heads", "kv")), (h, dh))
        w_out = self.param("proj_kernel", _dense_init(("heads", "kv", "embed")), (h, dh, d))
        b_out = self.param("proj_bias", _zeros(("embed",)), (d,))
        x = x.astype(dtype)
        qkv = jnp.einsum("bld,dkhe->blkhe", x, w_qkv.astype(dtype))
        q = qkv[:, :, 0] + q_bias.astype(dtype)
        k = qkv[:, :, 1]
        v = qkv[:, :, 2] + v_bias.astype(dtype)
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
        impl = attention_implementation(self.cfg.attention_impl, dtype, dh, length=x.shape[1])
        if impl == "chunked":
            out = chunked_attention(q, k, v, self.cfg.attention_chunk)
        elif impl == "xla":
            out = xla_attention(q, k, v)
        elif impl == "splash":
            out = splash_attention(q, k, v)
        else:
            out = jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
        return jnp.einsum("blhe,hed->bld", out, w_out.astype(dtype)) + b_out.astype(dtype)


class Block(nn.Module):
    """Pre-norm transformer block; drop path (stochastic depth) on both branches."""

    cfg: ViTConfig
    width: int
    heads: int
    drop_path: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg = self.cfg
        # One keep/drop decision per sample: dropout broadcast over tokens and channels.
        drop = nn.Dropout(self.drop_path, broadcast_dims=(1, 2))
        y = Attention(cfg, self.width, self.heads, name="attn")(_norm(cfg, "norm1")(x))
        x = x + drop(y, deterministic=deterministic)
        hidden = int(self.width * cfg.mlp_ratio)
        y = _norm(cfg, "norm2")(x)
        y = nn.Dense(hidden, dtype=cfg.dtype, kernel_init=_dense_init(("embed", "mlp")),
                     bias_init=_zeros(("mlp",)), name="fc1")(y)
        y = nn.with_logical_constraint(gelu(y), ("batch", "length", "mlp"))
        y = nn.Dense(self.width, dtype=cfg.dtype, kernel_init=_dense_init(("mlp", "embed")),
                     bias_init=_zeros(("embed",)), name="fc2")(y)
        x = x + drop(y, deterministic=deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "act_embed"))


def _stack(cfg: ViTConfig, x: jax.Array, width: int, heads: int, depth: int,
           drop_path: float, deterministic: bool, prefix: str) -> jax.Array:
    block_cls = nn.remat(Block, static_argnums=(2,)) if cfg.remat else Block
    for i in range(depth):
        rate = drop_path * i / max(depth - 1, 1)  # linearly increasing, as VideoMAE
        x = block_cls(cfg, width, heads, rate, name=f"{prefix}{i}")(x, deterministic)
    return x


class Encoder(nn.Module):
    """Tubelet embedding + fixed positions + ViT blocks over the visible tokens.

    `visible`: `[B, Sv]` sorted spatial indices kept at every temporal index (tube
    mask), or None for all tokens. Returns `[B, Tt*Sv, D]` in (t, s) order.
    """

    cfg: ViTConfig

    @nn.compact
    def __call__(self, video: jax.Array, visible: jax.Array | None = None,
                 deterministic: bool = True) -> jax.Array:
        cfg = self.cfg
        b, t, h, w, _ = video.shape
        tt, hp, wp = cfg.grid(t, h, w)
        x = patchify(video, cfg.tubelet_size, cfg.patch_size).reshape(b, tt * hp * wp, -1)
        pos = jnp.asarray(sincos_table(tt * hp * wp, cfg.width))
        if visible is None:
            pos = pos[None]
        else:  # embed only the visible tubelets: each tubelet's embedding is its own linear map
            ids = masking.tube_token_ids(visible, tt, hp * wp)
            x, pos = masking.gather_tokens(x, ids), pos[ids]
        x = nn.Dense(cfg.width, dtype=cfg.dtype, kernel_init=_dense_init(("patch", "embed")),
                     bias_init=_zeros(("embed",)), name="patch_embed")(x)
        x = x + pos.astype(x.dtype)
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        x = _stack(cfg, x, cfg.width, cfg.heads, cfg.depth, cfg.drop_path, deterministic, "block")
        if cfg.final_norm:
            x = _norm(cfg, "norm")(x)
        return x


class Decoder(nn.Module):
    """VideoMAE decoder: predicts the pixels of the masked tubelets, ascending order.

    `tokens`: encoder output `[B, Tt*Sv, D]`; `visible`/`masked`: `[B, Sv]`/`[B, Sm]`.
    Returns `[B, Tt*Sm, kt*p*p*3]`. `queries` (token ids `[B, Q]`, ascending) replaces the
    masked tokens as the ones predicted: VideoMAE V2's decoder masking
    (`masking.decoder_queries`); returns `[B, Q, kt*p*p*3]`.
    """

    cfg: ViTConfig

    @nn.compact
    def __call__(self, tokens: jax.Array, visible: jax.Array, masked: jax.Array,
                 grid: tuple[int, int, int], deterministic: bool = True,
                 queries: jax.Array | None = None) -> jax.Array:
        cfg = self.cfg
        tt, hp, wp = grid
        x = nn.Dense(cfg.dec_width, use_bias=False, dtype=cfg.dtype,
                     kernel_init=_dense_init(("embed", "dec_embed")), name="encoder_to_decoder")(tokens)
        pos = jnp.asarray(sincos_table(tt * hp * wp, cfg.dec_width)).astype(x.dtype)
        query_ids = masking.tube_token_ids(masked, tt, hp * wp) if queries is None else queries
        mask_token = self.param("mask_token", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), (None, None, "dec_embed")), (1, 1, cfg.dec_width))
        x_vis = x + pos[masking.tube_token_ids(visible, tt, hp * wp)]
        x_msk = mask_token.astype(x.dtype) + pos[query_ids]
        x = jnp.concatenate([x_vis, x_msk], axis=1)
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        x = _stack(cfg, x, cfg.dec_width, cfg.dec_heads, cfg.dec_depth, 0.0, deterministic, "block")
        x = _norm(cfg, "norm", head=True)(x[:, x.shape[1] - query_ids.shape[1]:])  # the predicted tokens
        out = cfg.tubelet_size * cfg.patch_size**2 * 3
        return nn.Dense(out, dtype=cfg.dtype, kernel_init=_dense_init(("dec_embed", "patch")),
                        bias_init=_zeros(("patch",)), name="head")(x)


class VideoMAE(nn.Module):
    """Masked autoencoder for pre-training: encoder over visible tokens + decoder."""

    cfg: ViTConfig

    def setup(self):
        self.encoder = Encoder(self.cfg)
        self.decoder = Decoder(self.cfg)

    def __call__(self, video: jax.Array, visible: jax.Array, masked: jax.Array,
                 deterministic: bool = True, queries: jax.Array | None = None) -> jax.Array:
        grid = self.cfg.grid(*video.shape[1:4])
        tokens = self.encoder(video, visible, deterministic)
        return self.decoder(tokens, visible, masked, grid, deterministic, queries)


class AUDetector(nn.Module):
    """Encoder + per-frame AU head (SPEC §2): logits `[B, T, N]` for every frame.

    Tokens are averaged over their spatial positions (the visible ones, for patch
    level) at each temporal index, normalised (`fc_norm`), and one linear layer
    emits `r * N` logits per temporal token, `r = tubelet_size * temporal_stride`.
    """

    cfg: ViTConfig
    num_classes: int
    temporal_stride: int = 1

    @nn.compact
    def __call__(self, video: jax.Array, visible: jax.Array | None = None,
                 deterministic: bool = True) -> jax.Array:
        cfg = self.cfg
        b = video.shape[0]
        tt, hp, wp = cfg.grid(*video.shape[1:4])
        tokens = Encoder(cfg, name="encoder")(video, visible, deterministic)
        per_time = tokens.reshape(b, tt, -1, cfg.width).mean(axis=2)  # [B, Tt, D]
        per_time = _norm(cfg, "fc_norm", head=True)(per_time)
        r = cfg.tubelet_size * self.temporal_stride
        logits = nn.Dense(r * self.num_classes, dtype=cfg.dtype,
                          kernel_init=nn.with_logical_partitioning(nn.initializers.truncated_normal(0.02),
                                                                   ("embed", "classes")),
                          bias_init=_zeros(("classes",)), name="head")(per_time)
        return logits.reshape(b, tt * r, self.num_classes).astype(jnp.float32)
