"""Step benchmark: pre-training, fine-tuning and inference steps of the real model.

    python -m benchmarks.bench_steps --presets=tiny,S,B --frames=16,32,128 --out=bench_out/steps.jsonl
    python -m benchmarks.bench_steps --preset=tiny --quick      # seconds, on a CPU

Prints one line per setup (step time, clips/s, tokens/s, FLOPs per step counted from
the architecture and by XLA's cost analysis, MFU against the device's bf16 peak,
memory) and, for pre-training, the step-time ratio of mask ratio 0.9 to 0.0.
Each line also goes to `--out` as JSON (`RESULT {...}` on stdout too).
"""

from __future__ import annotations

import argparse
import sys

import jax

from benchmarks import steps as bench
from benchmarks.results import emit

# Clips per batch for 16 frames; longer clips get proportionally fewer (same token count).
BATCH_16 = {"mini": 8, "tiny": 64, "S": 32, "B": 32, "L": 16}


def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", "--preset", default="tiny,S,B", help="model presets, comma separated")
    p.add_argument("--frames", default="16,32,128", help="clip lengths, comma separated")
    p.add_argument("--tasks", default="pretrain,finetune,infer")
    p.add_argument("--mask_ratios", default="0.9,0.0", help="pre-training mask ratios")
    p.add_argument("--decoder_mask_ratio", type=float, default=0.0,
                   help="pre-training: VideoMAE V2's running-cell decoder mask (0: off, 0.5: V2's)")
    p.add_argument("--batch", type=int, default=0, help="clips per step (0: by preset and clip length)")
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--dtype", default="bfloat16", help="compute dtype; parameters stay float32")
    p.add_argument("--remat", action="store_true", help="rematerialise each block in the backward pass")
    p.add_argument("--attention_impl", default=None, help="auto (default), xla, cudnn, chunked, splash (TPU)")
    p.add_argument("--steps", type=int, default=10, help="timed steps; 0: compile only (memory, FLOPs)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--quick", action="store_true",
                   help="CPU smoke size: 64x64 frames, batch 2, 2 steps (overrides sizes)")
    p.add_argument("--out", default="", help="append JSON lines here")
    return p.parse_args(argv)


def setups(args) -> list[bench.Setup]:
    out = []
    presets = args.presets.split(",")
    frames = [int(f) for f in args.frames.split(",")]
    ratios = [float(r) for r in args.mask_ratios.split(",")]
    for preset in presets:
        for t in frames:
            batch = args.batch or max(1, BATCH_16.get(preset, 8) * 16 // t)
            common = dict(preset=preset, frames=t, batch=batch, image_size=args.image_size,
                          dtype=args.dtype, remat=args.remat, attention_impl=args.attention_impl)
            for task in args.tasks.split(","):
                for ratio in (ratios if task == "pretrain" else [0.0]):
                    dec = args.decoder_mask_ratio if task == "pretrain" else 0.0
                    out.append(bench.Setup(task=task, mask_ratio=ratio, decoder_mask_ratio=dec, **common))
    return out


def line(r: dict) -> str:
    def gb(x):
        return "-" if x is None else f"{x / 2**30:.2f}"

    mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    xla = "-" if r["xla_flops_per_step"] is None else f"{r['xla_flops_per_step'] / 1e12:.4g}"
    mask = f" mask={r['mask_ratio']:.1f}" if r["task"] == "pretrain" else ""
    if r.get("decoder_mask_ratio"):
        mask += f" decoder_mask={r['decoder_mask_ratio']:.2f}"
    timing = ("not timed" if r["step_ms"] is None else
              f"step {r['step_ms']:.2f} ms, {r['clips_per_s']:.1f} clips/s, {r['tokens_per_s']:.3g} tokens/s")
    return (f"{r['task']:<8} {r['preset']:<4} T={r['frames']:<3} B={r['batch']:<3}{mask} "
            f"attn={r['attention']} | {timing}, {r['model_flops_per_step'] / 1e12:.4g} TFLOP/step "
            f"(XLA {xla}), MFU {mfu}, mem {gb(r['compiled_bytes'])} GiB "
            f"(peak in use {gb(r['peak_bytes_in_use'])}), compile {r['compile_s']:.1f} s")


def main(argv=None) -> int:
    args = parse(argv)
    if args.quick:
        args.image_size, args.batch, args.steps, args.warmup = 64, max(2, jax.device_count()), 2, 1
    peak, kind = bench.device_peak()
    print(f"device: {kind} x{jax.device_count()} ({jax.default_backend()}), jax {jax.__version__}; "
          f"MFU against bf16 peak "
          f"{'unknown' if peak is None else f'{peak / 1e12:.0f} TFLOP/s per device'}", flush=True)
    results = []
    for setup in setups(args):
        try:
            r = bench.measure(setup, steps=args.steps, warmup=args.warmup)
        except Exception as e:  # e.g. out of memory at the largest sizes: report and go on
            print(f"FAILED {setup}: {type(e).__name__}: {str(e).splitlines()[0][:300]}", flush=True)
            continue
        results.append(r)
        print(line(r), flush=True)
        emit(r, args.out)
    for r in results:  # mask 0.9 vs 0.0 at the same preset and clip length
        if r["task"] == "pretrain" and r["mask_ratio"] == 0.0 and r["step_ms"]:
            hi = [x for x in results if x["task"] == "pretrain" and x["mask_ratio"] == 0.9
                  and (x["preset"], x["frames"]) == (r["preset"], r["frames"])]
            if hi:
                ratio = hi[0]["step_ms"] / r["step_ms"]
                print(f"mask ratio 0.9 / 0.0 step time: {r['preset']} T={r['frames']}: {ratio:.3f}")
                emit({"mask_time_ratio": round(ratio, 4), "preset": r["preset"], "frames": r["frames"]})
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
