"""Side by side with HuggingFace `transformers` VideoMAE (PyTorch), one run, one device.

    python -m benchmarks.bench_hf --preset=B --frames=16 --batch=32 --out=bench_out/hf.jsonl
    python -m benchmarks.bench_hf --preset=tiny --image_size=64 --patch_size=8 --batch=8 --dtype=float32

The same architecture (preset), batch, clip, mask ratio and device on both sides:
  - pre-training step: forward + backward + AdamW update (`VideoMAEForPreTraining`,
    normalised-pixel loss) against our jitted train step with the state donated, both
    handed ready frames (our step as it trains, cropping its clips on the device, is timed
    too: PyTorch's data loader does that work on the host);
  - inference: encoder forward over full clips (`VideoMAEModel`) against our encoder.
Both sides compute in bf16 (or `--dtype=float32`, for CPUs) with float32 parameters
(PyTorch: autocast, fused AdamW on GPUs, SDPA attention). Everything is built first, then
the steps take turns for `--rounds` rounds of `--steps` calls each, so that a shared
machine's slow spells fall on both sides alike. Prints each step's median time over the
rounds (and their range) and the ratio PyTorch / JAX (above 1: JAX faster). The second
line is PERFORMANCE.md's CPU reference. Skips with a message when torch or transformers
is missing.
"""

from __future__ import annotations

import os

# Both frameworks share the device: JAX must not grab 75% of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from auvmae_jax import masking, sharding  # noqa: E402
from auvmae_jax.models import PRESETS, inference_jit  # noqa: E402
from benchmarks import steps as bench  # noqa: E402
from benchmarks.results import emit  # noqa: E402


def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="B")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--patch_size", type=int, default=16)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                   help="compute dtype of both sides (parameters float32); float32 on CPUs")
    p.add_argument("--mask_ratio", type=float, default=0.9)
    p.add_argument("--rounds", type=int, default=5, help="the sides take turns this many times")
    p.add_argument("--steps", type=int, default=4, help="timed steps of each side per round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--torch_compile", action="store_true", help="torch.compile the PyTorch models")
    p.add_argument("--quick", action="store_true",
                   help="CPU smoke size: 32x32 frames, batch 2, mask 0.5, 3 rounds of 1 step")
    p.add_argument("--out", default="")
    return p.parse_args(argv)


def hf_config(preset: str, frames: int, image_size: int, patch: int = 16):
    from transformers import VideoMAEConfig

    p = PRESETS[preset]
    return VideoMAEConfig(
        image_size=image_size, patch_size=patch, num_channels=3, num_frames=frames, tubelet_size=2,
        hidden_size=p["width"], num_hidden_layers=p["depth"], num_attention_heads=p["heads"],
        intermediate_size=4 * p["width"], hidden_act="gelu", qkv_bias=True, use_mean_pooling=False,
        decoder_hidden_size=p["dec_width"], decoder_num_hidden_layers=p["dec_depth"],
        decoder_num_attention_heads=p["dec_heads"], decoder_intermediate_size=4 * p["dec_width"],
        norm_pix_loss=True, layer_norm_eps=1e-6, attn_implementation="sdpa")


def torch_steps(args) -> tuple[dict, dict]:
    """({name: one PyTorch step, run to completion}, facts): the pre-training step and the
    encoder's inference."""
    import torch
    from transformers import VideoMAEForPreTraining, VideoMAEModel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = hf_config(args.preset, args.frames, args.image_size, args.patch_size)
    s, t, b = args.image_size, args.frames, args.batch
    spatial = (s // args.patch_size) ** 2
    n_mask = masking.num_masked(spatial, args.mask_ratio)  # the same count as our tube mask
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, t, 3, s, s, generator=gen).to(device)
    noise = torch.rand(b, spatial, generator=gen)
    spatial_mask = torch.zeros(b, spatial, dtype=torch.bool)
    spatial_mask.scatter_(1, noise.argsort(1)[:, :n_mask], True)
    mask = spatial_mask.repeat(1, t // 2).to(device)  # tube mask, (t, h, w) token order

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def compiled(model):
        return torch.compile(model) if args.torch_compile else model

    def autocast():
        return torch.autocast(device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    model = VideoMAEForPreTraining(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05,
                            fused=device == "cuda")
    run = compiled(model)

    def train_step():
        with autocast():
            loss = run(pixel_values=x, bool_masked_pos=mask).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()

    encoder = compiled(VideoMAEModel(config).to(device).eval())

    @torch.inference_mode()
    def infer():
        with autocast():
            encoder(pixel_values=x)
        sync()

    return {"torch_train": train_step, "torch_infer": infer}, {"torch": torch.__version__,
                                                              "torch_device": device}


def jax_steps(args) -> tuple[dict, dict]:
    """({name: one JAX step, run to completion}, facts): the jitted pre-training step (state
    donated) on ready frames, as PyTorch's is handed; the same step cropping its clips on the
    device, as it trains; and the encoder's inference."""
    mesh = sharding.make_mesh({"data": -1})
    rules = sharding.DEFAULT_RULES
    steps = {}
    for name, crop in (("jax_train", False), ("jax_train_crop", True)):
        setup = bench.Setup(task="pretrain", preset=args.preset, frames=args.frames, batch=args.batch,
                            image_size=args.image_size, patch_size=args.patch_size,
                            mask_ratio=args.mask_ratio, dtype=args.dtype, crop=crop)
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            fn, fn_args, _ = bench.build(setup, mesh, rules)
            steps[name] = _donating(fn.lower(*fn_args).compile(), fn_args)
    cfg = setup.model_config()
    frames = jax.device_put(np.random.default_rng(0).integers(
        0, 256, (args.batch, args.frames, args.image_size, args.image_size, 3), dtype=np.uint8))
    encoder_params = jax.tree.map(jnp.copy, fn_args[0].params["encoder"])
    infer = inference_jit(lambda p, f: bench.encoder_inference(cfg, p, f))
    infer = infer.lower(encoder_params, frames).compile()
    steps["jax_infer"] = lambda: jax.block_until_ready(infer(encoder_params, frames))
    return steps, {"jax": jax.__version__, "attention": bench._attention_name(setup)}


def _donating(compiled, fn_args: tuple):
    """One call of `compiled` per call, its donated state threaded to the next."""
    holder = list(fn_args)

    def step():
        holder[0], metrics = compiled(*holder)
        jax.block_until_ready(metrics)

    return step


def timed_rounds(steps: dict, rounds: int, per_round: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds per step of each of `steps`, one figure per round: the steps take turns,
    `per_round` calls each, so that a shared machine's slow spells fall on both sides."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(per_round):
                step()
            times[name].append((time.perf_counter() - start) / per_round * 1e3)
    return times


def main(argv=None) -> int:
    args = parse(argv)
    if args.quick:  # 2x2 patches per frame: mask half of them
        args.image_size, args.batch, args.mask_ratio = 32, 2, 0.5
        args.rounds, args.steps, args.warmup = 3, 1, 1
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        print(f"SKIPPED: PyTorch comparison needs torch and transformers ({e})")
        return 0
    _, kind = bench.device_peak()
    compute = "bf16 compute" if args.dtype == "bfloat16" else "float32 compute"
    print(f"device: {kind}; preset {args.preset}, {args.frames} frames of {args.image_size}px, "
          f"patch {args.patch_size}, batch {args.batch}, mask ratio {args.mask_ratio}, {compute}, "
          f"float32 parameters", flush=True)
    torch_fns, torch_facts = torch_steps(args)
    jax_fns, jax_facts = jax_steps(args)
    times = timed_rounds({**torch_fns, **jax_fns}, args.rounds, args.steps, args.warmup)
    result = {"preset": args.preset, "frames": args.frames, "batch": args.batch,
              "image_size": args.image_size, "patch_size": args.patch_size, "dtype": args.dtype,
              "mask_ratio": args.mask_ratio, "device_kind": kind, "torch_compile": args.torch_compile,
              "rounds": args.rounds, "steps_per_round": args.steps, **torch_facts, **jax_facts}
    for name, ms in times.items():
        result[f"{name}_ms"] = float(np.median(ms))
        result[f"{name}_ms_rounds"] = [round(x, 3) for x in ms]
    result["train_ratio_torch_over_jax"] = result["torch_train_ms"] / result["jax_train_ms"]
    result["infer_ratio_torch_over_jax"] = result["torch_infer_ms"] / result["jax_infer_ms"]

    def line(name: str) -> str:
        ms = times[name]
        return f"{result[name + '_ms']:.2f} ms ({min(ms):.2f}-{max(ms):.2f})"

    calls = f"{args.steps} step{'s' if args.steps > 1 else ''}"
    print(f"median of {args.rounds} rounds, the sides taking turns, {calls} each a round (range):")
    print(f"pre-training step (fwd+bwd+AdamW): PyTorch {line('torch_train')}, JAX {line('jax_train')}, "
          f"ratio {result['train_ratio_torch_over_jax']:.2f}")
    print(f"  JAX's step cropping its clips on the device, as it trains: {line('jax_train_crop')} "
          "(PyTorch's loader crops on the host)")
    print(f"inference (encoder, full clips):   PyTorch {line('torch_infer')}, JAX {line('jax_infer')}, "
          f"ratio {result['infer_ratio_torch_over_jax']:.2f}")
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
