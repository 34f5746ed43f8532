"""Jitted train and inference steps of the real model, timed on synthetic device batches.

The steps are the training tasks' own: `pretrain.pretrain_loss` and
`finetune.finetune_loss` (eq. 9 at video level) under `trainer.train_step`.
Timing: the step is compiled ahead (compile time reported apart), run `warmup`
times, then `steps` times back to back with the train state donated, and the
clock stops at `block_until_ready` on the outputs; the figure is the mean step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import types
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from auvmae_jax import finetune, knowledge, losses, masking, pretrain, sharding, trainer
from auvmae_jax.models import AUDetector, Encoder, VideoMAE, ViTConfig, inference_jit

# Dense bf16 peak of one device, FLOP/s, by a substring of `device.device_kind`.
PEAK_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L4", 121e12),
    ("TPU v6", 918e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 197e12),  # v5e ("TPU v5 lite")
    ("TPU v4", 275e12),
)
NUM_CLASSES = 12  # BP4D's AUs: the fine-tuning head's width


def device_peak(device: Any | None = None) -> tuple[float | None, str]:
    """(peak bf16 FLOP/s or None, the device kind it was looked up by)."""
    device = device or jax.devices()[0]
    kind = device.device_kind
    for name, peak in PEAK_BF16:
        if name.lower() in kind.lower():
            return peak, kind
    return None, kind


@dataclasses.dataclass(frozen=True)
class Setup:
    """One benchmarked step. `task`: 'pretrain', 'finetune' (video level) or 'infer'."""

    task: str
    preset: str
    frames: int
    batch: int
    image_size: int = 224
    patch_size: int = 16
    mask_ratio: float = 0.9
    decoder_mask_ratio: float = 0.0  # pre-training: VideoMAE V2's running-cell decoder mask
    dtype: str = "bfloat16"
    remat: bool = False
    attention_impl: str | None = None
    crop: bool = True  # training batches carry crop boxes (cropped in the step); False: ready frames

    def model_config(self) -> ViTConfig:
        return ViTConfig.from_config(dict(preset=self.preset, patch_size=self.patch_size, dtype=self.dtype,
                                          remat=self.remat, attention_impl=self.attention_impl))


def add_setup_args(p, attention_impl: str | None = None) -> None:
    """The command-line flags of one training step's `Setup` (profile_step, gpu_estimate)."""
    p.add_argument("--task", default="pretrain", choices=("pretrain", "finetune"))
    p.add_argument("--preset", default="B")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--patch_size", type=int, default=16)
    p.add_argument("--mask_ratio", type=float, default=0.9)
    p.add_argument("--decoder_mask_ratio", type=float, default=0.0, help="0: off; 0.5: VideoMAE V2's")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--remat", action="store_true")
    p.add_argument("--attention_impl", default=attention_impl,
                   help="auto (None), xla, cudnn, chunked, splash (TPU)")


def setup_from_args(args) -> Setup:
    """The `Setup` of `add_setup_args`' flags (masks for pre-training only)."""
    pre = args.task == "pretrain"
    return Setup(task=args.task, preset=args.preset, frames=args.frames, batch=args.batch,
                 image_size=args.image_size, patch_size=args.patch_size,
                 mask_ratio=args.mask_ratio if pre else 0.0,
                 decoder_mask_ratio=args.decoder_mask_ratio if pre else 0.0,
                 dtype=args.dtype, remat=args.remat, attention_impl=args.attention_impl)


def optimizer_config() -> types.SimpleNamespace:
    """The pre-training optimizer fields `trainer.make_optimizer` reads (configs/common.py)."""
    return types.SimpleNamespace(base_lr=1.5e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05,
                                 warmup_epochs=0.0, warmup_steps=10, warmup_init_lr=0.0,
                                 min_lr=1e-6, grad_clip=0.0)


def _priors(labels: np.ndarray) -> dict:
    flat = labels.reshape(-1, NUM_CLASSES)
    return {"class_weights": jnp.asarray(knowledge.class_weights(flat)),
            "intra_prior": jnp.asarray(knowledge.intra_prior(flat)),
            "inter_prior": jnp.asarray(knowledge.inter_prior(labels))}


def _batch_spec(setup: Setup) -> dict[str, tuple[tuple[int, ...], Any]]:
    """{key: (shape, dtype)} of a batch of `setup`."""
    s = setup.image_size
    spec = {"frames": ((setup.batch, setup.frames, s, s, 3), np.uint8)}
    if setup.task != "infer" and setup.crop:
        spec["crop"] = ((setup.batch, 4), np.float32)
    if setup.task == "finetune":
        spec["labels"] = spec["valid"] = ((setup.batch, setup.frames, NUM_CLASSES), np.uint8)
    return spec


def _random_labels(setup: Setup, rng: np.random.Generator) -> np.ndarray:
    """uint8 `[B, T, N]` AU labels, each on with probability 0.3."""
    return (rng.random((setup.batch, setup.frames, NUM_CLASSES)) < 0.3).astype(np.uint8)


def _host_batch(setup: Setup, rng: np.random.Generator) -> dict:
    s, spec = setup.image_size, _batch_spec(setup)
    batch = {"frames": rng.integers(0, 256, spec["frames"][0], dtype=np.uint8)}
    if "crop" in spec:  # crop boxes, cropped inside the training step:
        lo, hi = 0.1 * s, 0.9 * s  # here the centre 80% of the frame, mirrored in every other clip
        batch["crop"] = np.asarray([(hi, lo, lo, hi) if i % 2 else (lo, lo, hi, hi)
                                    for i in range(setup.batch)], np.float32)
    if "labels" in spec:
        batch["labels"] = _random_labels(setup, rng)
        batch["valid"] = np.ones_like(batch["labels"])
    return batch


@dataclasses.dataclass
class Prepared:
    """The pieces of one setup's step: model, loss, optimizer, sharded state and batch."""

    model: Any
    loss_fn: Any
    tx: Any
    state: trainer.TrainState
    shardings: trainer.TrainState
    batch: dict
    batch_sharding: Any


def prepare(setup: Setup, mesh, rules, abstract: bool = False) -> Prepared:
    """Model, the task's own loss, AdamW, initialised state and a device batch for `setup`.

    `abstract`: the state and batch as shapes with their shardings (`jax.ShapeDtypeStruct`),
    nothing placed on a device: for compiling only (`gpu_estimate`, a compile-only mesh).
    Call it outside `jax.set_mesh` then (flax applies sharding constraints under a mesh).
    """
    cfg = setup.model_config()
    rng = np.random.default_rng(0)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    if abstract:
        batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)
                 for k, (shape, dtype) in _batch_spec(setup).items()}
        labels = _random_labels(setup, rng) if setup.task == "finetune" else None
    else:
        host = _host_batch(setup, rng)
        batch = sharding.host_batch_to_global(host, batch_sharding)
        labels = host.get("labels")
    s, t = setup.image_size, setup.frames
    video = jnp.zeros((1, t, s, s, 3), jnp.float32)
    if setup.task == "pretrain":
        model = VideoMAE(cfg)
        _, hp, wp = cfg.grid(t, s)
        n_mask = masking.num_masked(hp * wp, setup.mask_ratio)
        init_inputs = (video, jnp.zeros((1, hp * wp - n_mask), jnp.int32), jnp.zeros((1, n_mask), jnp.int32))
        # At mask ratio 0 nothing is predicted: the loss is 0 and only the cost counts.
        loss_fn = functools.partial(pretrain.pretrain_loss, model=model, mask_ratio=setup.mask_ratio,
                                    norm_pix=True, decoder_mask_ratio=setup.decoder_mask_ratio)
    else:  # eq. 9 at video level with the default lambdas
        model = AUDetector(cfg, NUM_CLASSES)
        init_inputs = (video,)
        priors = _priors(labels if labels is not None else np.zeros((1, t, NUM_CLASSES), np.uint8))
        loss_fn = functools.partial(finetune.finetune_loss, model=model, priors=priors,
                                    level=finetune.Level("video", t, 1, 0.0), lambdas=(1.0, 0.01, 0.01),
                                    kind="fro")
    opt = optimizer_config()
    tx = trainer.make_optimizer(opt, trainer.learning_rate_schedule(opt, setup.batch, 1000, 100))
    task = trainer.Task(model=model, init_inputs=init_inputs, loss_fn=loss_fn, train_data=None,
                        steps_per_epoch=100)
    if abstract:
        boxed, shardings = trainer.state_shardings(task, tx, mesh, rules)
        state = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                             nn.meta.unbox(boxed), shardings)
    else:
        state, shardings = trainer.init_state(task, tx, mesh, rules, seed=0)
    return Prepared(model, loss_fn, tx, state, shardings, batch, batch_sharding)


def build(setup: Setup, mesh, rules) -> tuple[Any, tuple, dict]:
    """(jitted function, its arguments, facts) for `setup`, inside mesh and rules."""
    p = prepare(setup, mesh, rules)
    if setup.task == "infer":  # per-frame AU logits of full clips, as the evaluator runs them
        dtype = setup.model_config().dtype

        def infer(params, batch):
            return p.model.apply({"params": params}, losses.normalize_frames(batch["frames"], dtype)[1])

        fn = inference_jit(infer, in_shardings=(p.shardings.params, p.batch_sharding))
        return fn, (p.state.params, p.batch), {"donated": False}
    return jit_train_step(p, mesh), (p.state, p.batch), {"donated": True}


def jit_train_step(p: Prepared, mesh):
    """The jitted train step of `p`: state and batch sharded as prepared, the state donated."""
    return jax.jit(train_step_fn(p), in_shardings=(p.shardings, p.batch_sharding),
                   out_shardings=(p.shardings, sharding.replicated(mesh)), donate_argnums=(0,))


def train_step_fn(p: Prepared):
    """The trainer's step (forward, backward, AdamW) with this setup's loss."""
    return functools.partial(trainer.train_step, loss_fn=p.loss_fn, tx=p.tx, base_key=jax.random.key(1),
                             accum_steps=1, batch_spec=None)


def encoder_inference(cfg: ViTConfig, params, frames: jax.Array):
    """Encoder tokens of full clips (no mask): the inference step compared with PyTorch."""
    return Encoder(cfg).apply({"params": params}, losses.normalize_frames(frames, cfg.dtype)[1])


def time_steps(compiled, args: tuple, donated: bool, steps: int, warmup: int) -> tuple[float, tuple]:
    """(mean seconds per call of `compiled`, the arguments after the last call).

    A donated first argument (the train state) is threaded from call to call.
    """
    def call(args):
        out = compiled(*args)
        return (out[0], *args[1:]) if donated else args, out

    for _ in range(warmup):
        args, out = call(args)
    jax.block_until_ready(out)
    start = time.perf_counter()
    for _ in range(steps):
        args, out = call(args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps, args


def _blocks_flops(batch: int, tokens: int, width: int, depth: int, mlp_ratio: float) -> float:
    """Forward matmul FLOPs of `depth` ViT blocks over `tokens` tokens per clip."""
    dense = 2 * tokens * width * width * (3 + 1 + 2 * mlp_ratio)
    attention = 2 * 2 * tokens * tokens * width
    return batch * depth * (dense + attention)


def forward_flops(setup: Setup) -> dict[str, float]:
    """Forward matmul FLOPs of one batch by part, counted from the architecture.

    Pre-training: `embed` (the visible tubelets only), `encoder` (its blocks over the
    visible tokens), `decoder` (encoder-to-decoder projection, blocks over the visible
    tokens and the predicted ones, pixel head over those: all tokens and the masked ones,
    or with decoder masking the visible ones and a running cell's). Fine-tuning and inference: `embed` (every
    tubelet), `encoder`, `head` (per-frame AU logits).
    """
    cfg = setup.model_config()
    tt, hp, wp = cfg.grid(setup.frames, setup.image_size)
    b, tokens, patch = setup.batch, tt * hp * wp, cfg.tubelet_size * cfg.patch_size**2 * 3
    if setup.task != "pretrain":
        return {"embed": 2 * b * tokens * patch * cfg.width,
                "encoder": _blocks_flops(b, tokens, cfg.width, cfg.depth, cfg.mlp_ratio),
                "head": 2 * b * tt * cfg.width * NUM_CLASSES * cfg.tubelet_size}
    n_mask = masking.num_masked(hp * wp, setup.mask_ratio)
    visible, predicted = tt * (hp * wp - n_mask), tt * n_mask
    if setup.decoder_mask_ratio > 0:
        predicted = masking.running_cell_tokens((tt, hp, wp), setup.decoder_mask_ratio).shape[1]
    return {"embed": 2 * b * visible * patch * cfg.width,
            "encoder": _blocks_flops(b, visible, cfg.width, cfg.depth, cfg.mlp_ratio),
            "decoder": (2 * b * visible * cfg.width * cfg.dec_width
                        + _blocks_flops(b, visible + predicted, cfg.dec_width, cfg.dec_depth, cfg.mlp_ratio)
                        + 2 * b * predicted * cfg.dec_width * patch)}


def model_flops(setup: Setup) -> float:
    """Matmul FLOPs of one step counted from the architecture (backward = 2 x forward).

    The MFU convention: rematerialised recomputation is not counted.
    """
    fwd = sum(forward_flops(setup).values())
    return fwd if setup.task == "infer" else 3 * fwd


def crop_flops(setup: Setup) -> float:
    """FLOPs of the training step's crop (`augment.resized_crop`: two matmuls per clip
    over every frame), not counted in the model's FLOPs or its MFU."""
    s = setup.image_size
    return 0.0 if setup.task == "infer" or not setup.crop else 2 * (2 * setup.batch * setup.frames * s**3 * 3)


def _cost(stage) -> dict:
    try:
        cost = stage.cost_analysis()
    except Exception:  # not every backend analyses every stage
        return {}
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0] if cost else {}
    return cost or {}


def compiled_bytes(compiled) -> float | None:
    """Bytes the compiled step needs on a device: arguments + outputs + temporaries - aliased."""
    try:
        m = compiled.memory_analysis()
        return float(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                     - m.alias_size_in_bytes)
    except Exception:  # not every backend reports it
        return None


def peak_bytes_in_use() -> float | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    return float(stats["peak_bytes_in_use"]) if "peak_bytes_in_use" in stats else None


def measure(setup: Setup, steps: int = 10, warmup: int = 2, mesh=None) -> dict:
    """Everything the benchmark prints for one setup, as a flat dict."""
    mesh = mesh or sharding.make_mesh({"data": -1})
    rules = sharding.DEFAULT_RULES
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        fn, args, facts = build(setup, mesh, rules)
        lowered = fn.lower(*args)
        start = time.perf_counter()
        compiled = lowered.compile()
        compile_s = time.perf_counter() - start
        # Preferably counted on the HLO before compilation: on GPU the compiled module
        # hands matmuls and attention to cuBLAS/cuDNN calls, which its count leaves out.
        xla_flops = _cost(lowered).get("flops") or _cost(compiled).get("flops")
        seconds = time_steps(compiled, args, facts["donated"], steps, warmup)[0] if steps else None
    cfg = setup.model_config()
    tt, hp, wp = cfg.grid(setup.frames, setup.image_size)
    n_dev = mesh.size
    peak, kind = device_peak()
    flops = model_flops(setup)
    timed = seconds is not None
    result = dict(dataclasses.asdict(setup), attention=_attention_name(setup),
                  devices=n_dev, device_kind=kind, compile_s=round(compile_s, 2),
                  step_ms=round(seconds * 1e3, 3) if timed else None,
                  clips_per_s=round(setup.batch / seconds, 2) if timed else None,
                  tokens_per_s=round(setup.batch * tt * hp * wp / seconds, 1) if timed else None,
                  model_flops_per_step=flops, crop_flops_per_step=crop_flops(setup),
                  xla_flops_per_step=xla_flops,
                  peak_tflops_per_device=None if peak is None else peak / 1e12,
                  mfu=None if peak is None or not timed else round(flops / seconds / (peak * n_dev), 4),
                  compiled_bytes=compiled_bytes(compiled), peak_bytes_in_use=peak_bytes_in_use())
    return result


def _attention_name(setup: Setup) -> str:
    """The attention the model runs over all of a clip's tokens (the longest sequence of
    these steps: the encoder's when fine-tuning, the decoder's when pre-training)."""
    from auvmae_jax.models import attention_implementation

    cfg = setup.model_config()
    tokens = math.prod(cfg.grid(setup.frames, setup.image_size))
    return attention_implementation(cfg.attention_impl, cfg.dtype, cfg.width // cfg.heads, length=tokens)
