"""Side by side with HuggingFace `transformers` VideoMAE (PyTorch), one run, one device.

    python -m benchmarks.bench_hf --preset=B --frames=16 --batch=32 --out=bench_out/hf.jsonl
    python -m benchmarks.bench_hf --preset=tiny --image_size=64 --patch_size=8 --batch=8 --dtype=float32

The same architecture (preset), batch, clip, mask ratio and device on both sides:
  - pre-training step: forward + backward + AdamW update (`VideoMAEForPreTraining`,
    normalised-pixel loss) against our jitted train step with the state donated;
  - inference: encoder forward over full clips (`VideoMAEModel`) against our encoder.
Both sides compute in bf16 (or `--dtype=float32`, for CPUs) with float32 parameters
(PyTorch: autocast, fused AdamW on GPUs, SDPA attention). Prints each step time and the
ratio PyTorch / JAX (above 1: JAX faster). The second line is PERFORMANCE.md's CPU reference.
Skips with a message when torch or transformers is missing.
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
import numpy as np  # noqa: E402

from auvmae_jax import masking, sharding  # noqa: E402
from auvmae_jax.models import PRESETS  # noqa: E402
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
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--torch_compile", action="store_true", help="torch.compile the PyTorch models")
    p.add_argument("--quick", action="store_true",
                   help="CPU smoke size: 32x32 frames, batch 2, mask 0.5, 2 steps")
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


def torch_times(args) -> dict:
    """Seconds per PyTorch pre-training step and per encoder inference."""
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

    def timed(fn):
        for _ in range(args.warmup):
            fn()
        sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            fn()
        sync()
        return (time.perf_counter() - start) / args.steps

    def compiled(model):
        return torch.compile(model) if args.torch_compile else model

    def autocast():
        return torch.autocast(device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def train_time() -> float:
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

        return timed(train_step)

    def infer_time() -> float:
        run = compiled(VideoMAEModel(config).to(device).eval())

        @torch.inference_mode()
        def infer():
            with autocast():
                return run(pixel_values=x).last_hidden_state

        return timed(infer)

    train = train_time()
    inference = infer_time()
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"torch_train_ms": train * 1e3, "torch_infer_ms": inference * 1e3,
            "torch": torch.__version__, "torch_device": device}


def jax_times(args) -> dict:
    """Seconds per JAX pre-training step (state donated) and per encoder inference."""
    setup = bench.Setup(task="pretrain", preset=args.preset, frames=args.frames, batch=args.batch,
                        image_size=args.image_size, patch_size=args.patch_size, mask_ratio=args.mask_ratio,
                        dtype=args.dtype)
    mesh = sharding.make_mesh({"data": -1})
    rules = sharding.DEFAULT_RULES
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        fn, fn_args, facts = bench.build(setup, mesh, rules)
        compiled = fn.lower(*fn_args).compile()
        train, (state, _) = bench.time_steps(compiled, fn_args, True, args.steps, args.warmup)
    cfg = setup.model_config()
    frames = jax.device_put(np.random.default_rng(0).integers(
        0, 256, (args.batch, args.frames, args.image_size, args.image_size, 3), dtype=np.uint8))
    encoder_params = state.params["encoder"]
    infer_fn = jax.jit(lambda p, f: bench.encoder_inference(cfg, p, f))
    infer, _ = bench.time_steps(infer_fn.lower(encoder_params, frames).compile(), (encoder_params, frames),
                             False, args.steps, args.warmup)
    return {"jax_train_ms": train * 1e3, "jax_infer_ms": infer * 1e3, "jax": jax.__version__,
            "attention": bench._attention_name(setup)}


def main(argv=None) -> int:
    args = parse(argv)
    if args.quick:  # 2x2 patches per frame: mask half of them
        args.image_size, args.batch, args.steps, args.warmup, args.mask_ratio = 32, 2, 2, 1, 0.5
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
    result = {"preset": args.preset, "frames": args.frames, "batch": args.batch,
              "image_size": args.image_size, "patch_size": args.patch_size, "dtype": args.dtype,
              "mask_ratio": args.mask_ratio, "device_kind": kind,
              "torch_compile": args.torch_compile, **torch_times(args), **jax_times(args)}
    result["train_ratio_torch_over_jax"] = result["torch_train_ms"] / result["jax_train_ms"]
    result["infer_ratio_torch_over_jax"] = result["torch_infer_ms"] / result["jax_infer_ms"]
    print(f"pre-training step (fwd+bwd+AdamW): PyTorch {result['torch_train_ms']:.2f} ms, "
          f"JAX {result['jax_train_ms']:.2f} ms, ratio {result['train_ratio_torch_over_jax']:.2f}")
    print(f"inference (encoder, full clips):   PyTorch {result['torch_infer_ms']:.2f} ms, "
          f"JAX {result['jax_infer_ms']:.2f} ms, ratio {result['infer_ratio_torch_over_jax']:.2f}")
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
