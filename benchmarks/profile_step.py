"""Where a training step's time goes: its parts timed one by one, and a profiler trace.

    python -m benchmarks.profile_step --preset=B --frames=16 --batch=32 --trace_dir=bench_out/trace
    python -m benchmarks.profile_step --task=finetune --preset=B --frames=16 --batch=32
    python -m benchmarks.profile_step --preset=tiny --quick          # seconds, on a CPU

Each part is its own jitted function over the same device batch and parameters,
timed like `steps.time_steps` (compiled ahead, warm-up calls, mean of `--steps`):

- inputs: uint8 frames -> normalised frames, tube masks, pixel targets (pre-training);
- embed + encoder forward; decoder forward + loss (pre-training, from the encoder's
  tokens); the whole forward (the task's loss);
- forward + backward (`value_and_grad` of the loss); the AdamW update alone;
- the full train step (donated state), as `bench_steps` times it.

Derived rows: backward = (forward + backward) - forward; "rest of the step" =
step - (forward + backward) - update (fusion across parts and the metrics make it
differ from 0 either way). Parts with a matmul count print TFLOP/s and MFU, so the
slow part shows itself. With `--trace_dir`, `--trace_steps` full steps run under
`jax.profiler.trace` (TensorBoard's profile plugin or Perfetto open it) and the
trace's device time is summed per op name: the top ops and the shares of matmul,
attention and everything else (elementwise fusions, reductions, copies); and, each op
traced back to the JAX op it was lowered from (the compiled step's HLO metadata), per
part of the model and pass: the encoder's and decoder's attention, q/k/v and output
projections, MLPs, LayerNorms and embeddings, forward and backward; the inputs and loss;
the optimizer update. The compiled step's HLO text goes beside the trace (`step.hlo.txt`), so
that `gpu_estimate --hlo` can set its estimate against the trace. Results also go to `--out` as
one JSON line.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import os
import re
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from auvmae_jax import augment, losses, pretrain, sharding
from auvmae_jax.models import Encoder
from benchmarks import steps as bench
from benchmarks.results import emit


def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench.add_setup_args(p)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--trace_dir", default="", help="write a jax.profiler trace of full steps here")
    p.add_argument("--trace_steps", type=int, default=3)
    p.add_argument("--top", type=int, default=15, help="ops listed from the trace")
    p.add_argument("--quick", action="store_true", help="CPU smoke size: 64x64 frames, batch 2, 2 steps")
    p.add_argument("--out", default="", help="append a JSON line here")
    return p.parse_args(argv)


def part_functions(setup: bench.Setup, p: bench.Prepared) -> dict[str, tuple]:
    """{part name: (function, arguments, donated)}; all share `p`'s parameters and batch."""
    cfg = setup.model_config()
    params, batch, rng = p.state.params, p.batch, jax.random.key(1)
    grads = jax.tree.map(jnp.zeros_like, params)

    def update(state, grads):
        updates, opt_state = p.tx.update(grads, state.opt_state, state.params)
        return optax.apply_updates(state.params, updates), opt_state

    def encoder(params, x, visible=None):
        return Encoder(cfg).apply({"params": params}, x, visible)

    out = {}
    if setup.task == "pretrain":
        grid = cfg.grid(setup.frames, setup.image_size)

        def inputs(batch, rng):  # the pre-training loss's own inputs
            return pretrain.mae_inputs(augment.apply_crops(batch)["frames"], rng, cfg, setup.mask_ratio, True,
                                       setup.decoder_mask_ratio)

        def decoder(params, tokens, visible, masked, queries, target):
            pred = p.model.apply({"params": params}, tokens, visible, masked, grid, True, queries,
                                 method=lambda m, *a: m.decoder(*a))
            return losses.reconstruction_loss(pred, target)

        x, visible, masked, queries, target = jax.jit(inputs)(batch, rng)
        tokens = jax.jit(encoder)(params["encoder"], x, visible)
        out["inputs"] = (inputs, (batch, rng), False)
        out["embed + encoder forward"] = (encoder, (params["encoder"], x, visible), False)
        out["decoder forward + loss"] = (decoder, (params, tokens, visible, masked, queries, target), False)
    else:
        def inputs(batch):
            return losses.normalize_frames(augment.apply_crops(batch)["frames"], cfg.dtype)[1]

        x = jax.jit(inputs)(batch)
        out["inputs"] = (inputs, (batch,), False)
        out["embed + encoder forward"] = (encoder, (params["encoder"], x), False)
    out["forward (loss)"] = (lambda q, b, r: p.loss_fn(q, b, r)[0], (params, batch, rng), False)
    grad_fn = jax.value_and_grad(p.loss_fn, has_aux=True)
    out["forward + backward"] = (lambda q, b, r: grad_fn(q, b, r)[1], (params, batch, rng), False)
    out["AdamW update"] = (update, (p.state, grads), False)
    out["train step"] = (bench.train_step_fn(p), (p.state, batch), True)
    return out


def time_parts(setup: bench.Setup, mesh, steps: int, warmup: int) -> tuple[dict[str, float], bench.Prepared]:
    """Mean milliseconds of each part of `setup`'s step."""
    rules = sharding.DEFAULT_RULES
    times = {}
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        p = bench.prepare(setup, mesh, rules)
        for name, (fn, args, donated) in part_functions(setup, p).items():
            if donated:  # the state is donated: run on a copy, keep `p.state` for the trace
                args = (jax.tree.map(jnp.copy, args[0]), *args[1:])
            compiled = jax.jit(fn, donate_argnums=(0,) if donated else ()).lower(*args).compile()
            seconds, _ = bench.time_steps(compiled, args, donated, steps, warmup)
            times[name] = seconds * 1e3
    return times, p


def table(setup: bench.Setup, times: dict[str, float]) -> list[dict]:
    """Rows (part, ms, share of the step, TFLOP/s, MFU) including the derived ones."""
    rows = dict(times)
    rows["backward (derived)"] = times["forward + backward"] - times["forward (loss)"]
    rows["rest of the step (derived)"] = (times["train step"] - times["forward + backward"]
                                          - times["AdamW update"])
    fwd = bench.forward_flops(setup)
    flops = {"embed + encoder forward": fwd["embed"] + fwd["encoder"],
             "decoder forward + loss": fwd.get("decoder"),
             "forward (loss)": sum(fwd.values()),
             "backward (derived)": 2 * sum(fwd.values()),
             "forward + backward": 3 * sum(fwd.values()),
             "train step": bench.model_flops(setup)}
    peak, _ = bench.device_peak()
    peak = peak * jax.device_count() if peak else None
    out = []
    for name, ms in rows.items():
        f = flops.get(name)
        tflops = f / (ms * 1e-3) / 1e12 if f and ms > 0 else None
        out.append({"part": name, "ms": round(ms, 3), "share": round(ms / times["train step"], 4),
                    "tflop_per_s": None if tflops is None else round(tflops, 3),
                    "mfu": None if tflops is None or peak is None else round(tflops * 1e12 / peak, 4)})
    return out


# Op or kernel names by kind, for the trace summary where an op's JAX name is unknown
# (cuBLAS/cuDNN/XLA kernel names on GPU, HLO op names on TPU and CPU).
KINDS = (("attention", re.compile(r"sdpa|fmha|flash|attention|softmax", re.I)),
         ("matmul", re.compile(r"gemm|matmul|nvjet|xmma|cutlass|cublas|dot|conv", re.I)))
SKIPPED_LINES = ("XLA Modules", "Steps", "Framework", "Source", "TraceMe", "python")
NOT_OPS = re.compile(r"^(ThunkExecutor|SlinkyThreadPool|end: )")  # CPU runtime waits and markers
HLO_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{$")
HLO_INSTRUCTION = re.compile(r"^\s*(ROOT )?%([\w.\-]+) = ")
HLO_OP_NAME = re.compile(r'metadata=\{[^}]*?op_name="([^"]*)"')
HLO_CALLS = re.compile(r"calls=%([\w.\-]+)")
ATTENTION_PROJECTIONS = re.compile(r"bld,dkhe->blkhe|blhe,hed->bld")  # models.Attention's einsums


def hlo_op_names(hlo_text: str) -> dict[str, str]:
    """{HLO instruction name: the JAX op name it was lowered from} of a compiled module's text.

    An instruction without one of its own (a fusion, often) takes that of the computation it
    calls: its root's, or else its first instruction's that has one.
    """
    names: dict[str, str] = {}
    calls: dict[str, str] = {}
    computation_op: dict[str, str] = {}
    computation = ""
    for line in hlo_text.splitlines():
        if m := HLO_COMPUTATION.match(line):
            computation = m.group(1)
            continue
        if not (m := HLO_INSTRUCTION.match(line)):
            continue
        root, name = m.groups()
        if op := HLO_OP_NAME.search(line):
            names[name] = op.group(1)
            if root or computation not in computation_op:
                computation_op[computation] = op.group(1)
        elif called := HLO_CALLS.search(line):
            calls[name] = called.group(1)
    for name, called in calls.items():
        if called in computation_op:
            names[name] = computation_op[called]
    return names


def model_part(op_name: str | None) -> tuple[str, str]:
    """(part of the step, pass) of an op by its JAX name, e.g. ('decoder attention',
    'backward'): the encoder's and decoder's attention (softmax and its two einsums), their
    q/k/v and output projections, LayerNorms, MLPs (with GELU and the residual adds), and
    embeddings; the task's inputs and loss; the optimizer update (outside the gradient).
    With remat, a block's recomputation counts in the backward pass, where it runs."""
    if not op_name:
        return "unattributed", "-"
    if "jvp(" not in op_name:
        return "optimizer update & metrics", "-"
    pass_ = "backward" if "transpose(jvp(" in op_name else "forward"
    found = list(re.finditer(r"/(encoder|decoder)/", op_name))  # the innermost (remat repeats them)
    if not found:
        model = re.search(r"\((VideoMAE|AUDetector)\)/", op_name)
        return ("model head" if model else "inputs & loss"), pass_
    module = found[-1].group(1)
    rest = re.sub(r"(checkpoint|rematted_computation)/", "", op_name[found[-1].end():])
    if re.match(r"block\d+/(.*/)?attn/", rest):
        sub = "attention projections" if ATTENTION_PROJECTIONS.search(rest) else "attention"
    elif re.match(r"(block\d+/(.*/)?)?norm\d*/", rest):
        sub = "LayerNorms"
    elif re.match(r"block\d+/", rest):
        sub = "MLP & residuals"
    else:
        sub = "embedding & head"
    return f"{module} {sub}", pass_


def op_kind(name: str, op_name: str | None) -> str:
    """'attention', 'matmul' or 'other': by the op's JAX name where known, else by `name`."""
    if op_name:
        if model_part(op_name)[0].endswith(" attention"):
            return "attention"
        return "matmul" if re.search(r"dot_general|conv_general", op_name) else "other"
    return next((k for k, pattern in KINDS if pattern.search(name)), "other")


def summarise_trace(trace_dir: str, num_steps: int, hlo_text: str = "") -> dict:
    """Device time per op name (ms per step) from the newest `.xplane.pb` under `trace_dir`.

    Device planes (`/device:...`) where there are any: their kernel lines ("Stream ...",
    GPU), else their "XLA Ops" line (TPU); on a CPU-only trace, the XLA client's threads.
    Self time: an event's time less the events it encloses on the same line. With the
    compiled step's `hlo_text`, each event's HLO op (its `hlo_op` stat, or its name) leads to
    the JAX op it came from: time by kind (matmul, attention, other) and by part of the model
    and pass (`model_part`).
    """
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True),
                   key=os.path.getmtime)
    if not files:
        raise FileNotFoundError(f"no .xplane.pb trace under {trace_dir}")
    data = jax.profiler.ProfileData.from_file(files[-1])
    op_names = hlo_op_names(hlo_text)
    planes = [pl for pl in data.planes if pl.name.startswith("/device:")]
    if not planes:
        planes = [pl for pl in data.planes if pl.name.startswith("/host:CPU")]
    per_op: collections.Counter = collections.Counter()
    kinds: collections.Counter = collections.Counter()
    parts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for plane in planes:
        lines = list(plane.lines)
        streams = [ln for ln in lines if ln.name.startswith("Stream")]  # GPU kernels
        ops = [ln for ln in lines if ln.name == "XLA Ops"]  # TPU
        if plane.name.startswith("/host:"):
            lines = [ln for ln in lines if ln.name.startswith("tf_XLA")]
        else:
            lines = streams or ops or [ln for ln in lines if not ln.name.startswith(SKIPPED_LINES)]
        for line in lines:
            for event, ns in _self_times(line.events):
                if NOT_OPS.match(event.name):
                    continue
                ms = ns / 1e6 / num_steps
                op_name = op_names.get(dict(event.stats).get("hlo_op") or event.name)
                per_op[event.name] += ms
                kinds[op_kind(event.name, op_name)] += ms
                part, pass_ = model_part(op_name)
                parts[part][pass_] += ms
    by_part = {part: {k: round(v, 3) for k, v in passes.items()}
               for part, passes in sorted(parts.items(), key=lambda kv: -sum(kv[1].values()))}
    return {"file": files[-1], "ms_per_step": sum(per_op.values()),
            "kinds": {k: round(v, 3) for k, v in kinds.most_common()},
            "parts": by_part if op_names else {},
            "ops": [(name, round(ms, 3)) for name, ms in per_op.most_common()]}


def _self_times(events) -> list[tuple[object, float]]:
    """(event, self time ns) of the events of one trace line: duration less enclosed events'."""
    events = list(events)
    spans = sorted((e.start_ns, -e.duration_ns, i) for i, e in enumerate(events))
    self_ns = [-d for _, d, _ in spans]
    stack: list[tuple[float, int]] = []  # (end, index) of the enclosing events
    for i, (start, neg_dur, _) in enumerate(spans):
        while stack and stack[-1][0] <= start:
            stack.pop()
        if stack:
            self_ns[stack[-1][1]] += neg_dur
        stack.append((start - neg_dur, i))
    return [(events[i], ns) for (_, _, i), ns in zip(spans, self_ns)]


def trace(p: bench.Prepared, mesh, trace_dir: str, num_steps: int) -> str:
    """Run `num_steps` full train steps (after one untraced) under the profiler; returns the
    compiled step's HLO text (its ops' JAX names)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
        state = jax.tree.map(jnp.copy, p.state)
        step = jax.jit(bench.train_step_fn(p), donate_argnums=(0,)).lower(state, p.batch).compile()
        state, metrics = step(state, p.batch)
        jax.block_until_ready(metrics)
        with jax.profiler.trace(trace_dir):
            for i in range(num_steps):
                with jax.profiler.StepTraceAnnotation("train", step_num=i):
                    state, metrics = step(state, p.batch)
            jax.block_until_ready((state, metrics))
    return step.as_text()


def main(argv=None) -> int:
    args = parse(argv)
    if args.quick:
        args.image_size, args.batch, args.steps, args.warmup = 64, max(2, jax.device_count()), 2, 1
    setup = bench.setup_from_args(args)
    peak, kind = bench.device_peak()
    print(f"device: {kind} x{jax.device_count()} ({jax.default_backend()}), jax {jax.__version__}; {setup}",
          flush=True)
    mesh = sharding.make_mesh({"data": -1})
    times, prepared = time_parts(setup, mesh, args.steps, args.warmup)
    rows = table(setup, times)
    print(f"{'part':<30} {'ms':>9} {'of step':>8} {'TFLOP/s':>9} {'MFU':>7}")
    for r in rows:
        tf = "-" if r["tflop_per_s"] is None else f"{r['tflop_per_s']:.2f}"
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        print(f"{r['part']:<30} {r['ms']:>9.3f} {100 * r['share']:>7.1f}% {tf:>9} {mfu:>7}")
    result = {**dataclasses.asdict(setup), "device_kind": kind, "parts": rows}
    if args.trace_dir:
        hlo = trace(prepared, mesh, args.trace_dir, args.trace_steps)
        with open(os.path.join(args.trace_dir, "step.hlo.txt"), "w") as f:  # for `gpu_estimate --hlo`
            f.write(hlo)
        summary = summarise_trace(args.trace_dir, args.trace_steps, hlo)
        print(f"trace: {summary['file']}: {summary['ms_per_step']:.2f} ms of op time per step; by kind: "
              + ", ".join(f"{k} {v:.2f} ms" for k, v in summary["kinds"].items()))
        print(f"  {'by part of the step, ms per step':<40} {'forward':>9} {'backward':>9}")
        for part, passes in summary["parts"].items():
            fwd, bwd = passes.get("forward", passes.get("-", 0.0)), passes.get("backward")
            print(f"  {part:<40} {fwd:>9.3f} {'' if bwd is None else f'{bwd:9.3f}':>9}")
        print(f"  top {args.top} ops:")
        for name, ms in summary["ops"][: args.top]:
            print(f"  {ms:9.3f} ms  {name[:110]}")
        result["trace"] = {**summary, "ops": summary["ops"][: args.top]}
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
