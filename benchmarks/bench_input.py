"""Input pipeline benchmark: clips/s of the grain pipeline by worker count.

    python -m benchmarks.bench_input --workers=0,2,4,8 [--repeats=1,4] --model_results=bench_out/steps.jsonl

Builds a small synthetic face dataset (JPEG frames in ArrayRecord, the record schema
of every builder) once under `--data_dir`, then times the training pipeline
(decode the sampled frames, draw a random resized crop and flip, batch) for each worker count,
and prints it beside the clips/s the model consumes (from `bench_steps` results, if
given). Frames stored at the sampled size are cropped on the device, in the training
step (`augment`), so the host only decodes; `--stored_size` other than `--image_size`
times the host's crop-and-resize path too. `--repeats=1,4` also times repeated sampling
(each decoded clip cut into that many views on the device; clips/s counts views). Skips
with a message where grain or TFDS is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from benchmarks.results import emit


def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="0,2,4,8")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--image_size", type=int, default=224, help="sampled frame size")
    p.add_argument("--stored_size", type=int, default=0,
                   help="stored frame size (default: image_size; another size: cropped on the host)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=10, help="timed batches per worker count")
    p.add_argument("--read_threads", type=int, default=16, help="threads per reading process")
    p.add_argument("--repeats", default="1", help="views per decoded clip (data.repeats), comma-separated")
    p.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(), "auvmae_bench_tfds"))
    p.add_argument("--model_results", default="", help="bench_steps JSON lines to compare with")
    p.add_argument("--quick", action="store_true", help="CPU smoke size: 32px frames, 4 frames, batch 4")
    p.add_argument("--out", default="")
    return p.parse_args(argv)


def model_rates(path: str, frames: int) -> list[str]:
    """'task preset: N clips/s' lines of the model's consumption at `frames` frames."""
    if not path or not os.path.exists(path):
        return []
    lines = []
    with open(path) as f:
        for row in map(json.loads, f):
            if row.get("frames") == frames and row.get("task") in ("pretrain", "finetune") \
                    and row.get("mask_ratio") in (0.9, 0.0):
                if row["task"] == "pretrain" and row["mask_ratio"] != 0.9:
                    continue
                lines.append(f"model consumes: {row['task']} {row['preset']} ({row['device_kind']}): "
                             f"{row['clips_per_s']:.1f} clips/s")
    return lines


def main(argv=None) -> int:
    args = parse(argv)
    if args.quick:
        args.image_size, args.frames, args.batch, args.batches = 32, 4, 4, 3
    try:
        import grain  # noqa: F401
        import tensorflow_datasets  # noqa: F401
    except ImportError as e:
        print(f"SKIPPED: the input pipeline benchmark needs grain and tensorflow_datasets ({e})")
        return 0
    import data_builders
    from auvmae_jax import input_pipeline

    clip = max(args.frames, 16)
    stored = args.stored_size or args.image_size
    synthetic = dict(image_size=stored, clip_length=clip, num_subjects=4, videos_per_subject=1,
                     frames_per_video=2 * clip, seed=0)
    start = time.perf_counter()
    builder = data_builders.build_synthetic(args.data_dir, **synthetic)
    print(f"dataset: {builder.data_dir} ({time.perf_counter() - start:.1f} s to build or open)", flush=True)
    source = input_pipeline.data_source(builder, "part1+part2+part3")
    for repeats in [int(r) for r in args.repeats.split(",")]:
        sampler = input_pipeline.ClipSampler(num_frames=args.frames, temporal_stride=1,
                                             image_size=args.image_size, train=True, repeats=repeats)
        for workers in [int(w) for w in args.workers.split(",")]:
            it = iter(input_pipeline.make_dataset(source, sampler, batch_size=args.batch, seed=0,
                                                  worker_count=workers, read_threads=args.read_threads))
            r = time_pipeline(args, it, workers)
            r.update(repeats=repeats, stored_size=stored,
                     crop="device" if stored == args.image_size else "host")
            print(f"input pipeline: {workers} workers x {args.read_threads} threads, {repeats} views per "
                  f"decoded clip: {r['clips_per_s']:.1f} clips/s ({args.frames}x{args.image_size}px clips "
                  f"stored at {stored}px, crop on the {r['crop']}, {os.cpu_count()} CPUs)", flush=True)
            emit(r, args.out)
            del it  # its worker processes end here
    for line in model_rates(args.model_results, args.frames):
        print(line)
    return 0


def time_pipeline(args: argparse.Namespace, it, workers: int) -> dict:
    """Steady-state clips/s (views) of a training pipeline's iterator with `workers` processes."""
    # Up to `ahead` batches are made ahead of the consumer: start-up (worker processes) and
    # twice that are not timed, and the timed run is at least that long (a steady rate).
    ahead = (args.read_threads + 1) * max(workers, 1)
    for _ in range(2 * ahead):
        next(it)
    timed = max(args.batches, ahead)
    start = time.perf_counter()
    for _ in range(timed):
        batch = next(it)
    rate = timed * args.batch / (time.perf_counter() - start)
    return {"workers": workers, "read_threads": args.read_threads, "clips_per_s": round(rate, 2),
            "frames": args.frames, "image_size": args.image_size, "batch": args.batch,
            "cpus": os.cpu_count(), "shape": list(batch["frames"].shape)}


if __name__ == "__main__":
    sys.exit(main())
