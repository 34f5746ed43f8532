"""Where a training step's time would go on a GPU, estimated from its compiled HLO, without one.

    pip install "jax[cuda13]"   # jax's CUDA plugin: it compiles for a GPU on a machine without one
    python -m benchmarks.gpu_estimate --preset=B --frames=16 --batch=32 [--gpu=H100]
    python -m benchmarks.gpu_estimate --hlo=step.txt --gpu=H100 --batch=32   # a compiled step's text

XLA compiles the real step (`steps.prepare`: the model, the task's loss, AdamW, donated state) for
the named GPU from a description of it (jax's compile-only topologies), as it would on that GPU
but without autotuning. Each kernel of the compiled step then gets a roofline time,
`max(FLOPs / (peak x eff), bytes / (bandwidth x eff), floor)`:

- matmuls (Triton GEMM fusions, cuBLAS calls): their dot FLOPs at `--gemm_eff` of the dense bf16
  peak (half that with float32 operands: TF32), or their bytes;
- cuDNN's fused attention: 4 B H L^2 D FLOPs forward, 10 B H L^2 D backward (it recomputes the
  scores) at `--attention_eff`;
- everything else (elementwise and reduction fusions, copies): bytes read and written at
  `--memory_eff` of the HBM bandwidth; an operand that only feeds slices counts as its slices;
- at least `--kernel_us` per kernel (launch and ramp).

It also prints XLA's memory footprint of the compiled step (0.65-0.75 of the footprints measured
on the H100: no cuBLAS/cuDNN workspaces planned without autotuning).

Summed per kind and per part of the model and pass (`profile_step.model_part`). The estimate
assumes kernels run one after another, and prices the entry computation's kernels only: a `while`
loop (chunked attention, gradient accumulation) would count once, not per iteration (the steps
with cuDNN attention and one micro-batch, those measured, have none). Against the eleven H100
step times measured in RESULTS.md (ViT-S and ViT-B, pre-training and fine-tuning, 16 to 128
frames) it comes out at 0.82-1.10 of them (short steps lose a few ms more to the host and the
gaps between kernels). It says where the memory-bound time is, which changes cut kernels or bytes,
and where the MFU aim stands; it is not a measurement: `bench_steps` and `profile_step` on the GPU
are.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import math
import re
import sys

from benchmarks import profile_step
from benchmarks import steps as bench
from benchmarks.results import emit

# (dense bf16 FLOP/s, HBM bytes/s, XLA's device description) of the GPUs it can compile for.
_SM90 = """gpu_device_info {{
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: {bandwidth} l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: {memory} shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: 9 minor: 0 }}
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
runtime_version {{ major: 13 minor: 0 }}
device_description_str: "{name}"
"""
GPUS = {
    "H100": (989e12, 3.35e12, _SM90.format(bandwidth=3352320000000, memory=84929347584,
                                           name="NVIDIA H100 80GB HBM3")),
    "H200": (989e12, 4.8e12, _SM90.format(bandwidth=4800000000000, memory=150754820096,
                                          name="NVIDIA H200")),
}

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4,
          "u32": 4, "f64": 8, "s64": 8, "u64": 8}
_ARRAY = re.compile(r"\b(pred|[suf]8|bf16|[suf]16|[suf]32|[suf]64)\[([0-9,]*)\]")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%(\S+) = (.*?) ([a-z][\w\-]*)\((.*)$")
# Matmul kernels: XLA's Triton GEMM fusions and cuBLAS calls.
_GEMM = re.compile(r'"kind":"__triton\w*gemm\w*"|custom_call_target="__cublas')
_FREE = {"parameter", "constant", "get-tuple-element", "bitcast", "tuple"}  # no kernel of their own


def shape_bytes(shape: str) -> int:
    """Bytes of every array in an HLO shape (`bf16[32,160,768]{2,1,0}`, or a tuple of them)."""
    return sum(_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d)
               for t, dims in _ARRAY.findall(shape))


def shape_dims(shape: str) -> list[int]:
    """Dimensions of the first array in an HLO shape."""
    match = _ARRAY.search(shape)
    return [int(d) for d in match.group(2).split(",") if d] if match else []


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str
    shape: str
    op: str
    operands: tuple[str, ...]
    line: str

    @property
    def calls(self) -> str | None:
        match = re.search(r"calls=%([\w.\-]+)", self.line)
        return match.group(1) if match else None


def parse_hlo(text: str) -> tuple[dict[str, list[Instruction]], str]:
    """({computation: its instructions}, the entry computation's name) of an HLO module's text."""
    computations: dict[str, list[Instruction]] = {}
    entry, current = "", None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{") and "(" in line:
            words = line.split()
            current = words[1 if words[0] == "ENTRY" else 0].lstrip("%")
            computations[current] = []
            entry = current if words[0] == "ENTRY" else entry
        elif current and line.startswith("  "):
            match = _INSTRUCTION.match(line)
            if match:
                args = match.group(4).split("), ")[0]
                computations[current].append(Instruction(match.group(1), match.group(2), match.group(3),
                                                         tuple(re.findall(r"%([\w.\-]+)", args)), line))
    return computations, entry


def dot_flops(computations: dict, name: str | None, shapes: dict[str, str]) -> tuple[float, float]:
    """(FLOPs, of which with float32 operands) of the dots in computation `name` and those it calls."""
    total = f32 = 0.0
    body = computations.get(name or "", [])
    local = {i.name: i.shape for i in body}
    for inst in body:
        if inst.op == "dot":
            lhs_shape = local.get(inst.operands[0]) or shapes[inst.operands[0]]
            lhs = shape_dims(lhs_shape)
            contracting = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", inst.line).group(1)
            k = math.prod(lhs[int(i)] for i in contracting.split(",") if i)
            flops = 2.0 * math.prod(shape_dims(inst.shape)) * k
            total += flops
            f32 += flops if lhs_shape.startswith("f32") else 0.0
        if inst.calls:
            sub, sub_f32 = dot_flops(computations, inst.calls, shapes)
            total, f32 = total + sub, f32 + sub_f32
    return total, f32


def read_bytes(computations: dict, name: str | None, operand_shapes: list[str]) -> int:
    """Bytes a fusion reads: each operand whole, or the slices of it where it only feeds slices."""
    body = computations.get(name or "")
    if not body:
        return sum(shape_bytes(s) for s in operand_shapes)
    params = {int(re.search(r"parameter\((\d+)\)", i.line).group(1)): i.name
              for i in body if i.op == "parameter"}
    users = collections.defaultdict(list)
    for inst in body:
        for operand in inst.operands:
            users[operand].append(inst)

    def sliced(value: str) -> int | None:  # bytes of the slices `value` feeds, None if not only slices
        total = 0
        for user in users.get(value, []):
            part = shape_bytes(user.shape) if user.op in ("slice", "dynamic-slice") else (
                sliced(user.name) if user.op == "bitcast" else None)
            if part is None:
                return None
            total += part
        return total if users.get(value) else None

    total = 0
    for i, shape in enumerate(operand_shapes):
        part = sliced(params[i]) if i in params else None
        total += shape_bytes(shape) if part is None else min(part, shape_bytes(shape))
    return total


@dataclasses.dataclass(frozen=True)
class Roofline:
    """A GPU and how close to its peaks each kind of kernel is assumed to run."""

    peak_flops: float  # dense bf16 FLOP/s
    bandwidth: float  # HBM bytes/s
    gemm_eff: float = 0.6
    attention_eff: float = 0.4
    memory_eff: float = 0.8
    kernel_s: float = 2.5e-6


def kernels(text: str, roof: Roofline) -> list[dict]:
    """One row per kernel of the compiled module's entry computation: name, kind ('gemm',
    'attention', 'memory'), FLOPs, bytes, estimated seconds, its JAX op name and its part."""
    computations, entry = parse_hlo(text)
    shapes = {i.name: i.shape for body in computations.values() for i in body}
    op_names = profile_step.hlo_op_names(text)
    rows = []
    for inst in computations[entry]:
        if inst.op in _FREE:
            continue
        operand_shapes = [shapes.get(o, "") for o in inst.operands]
        nbytes = shape_bytes(inst.shape) + read_bytes(
            computations, inst.calls if inst.op == "fusion" else None, operand_shapes)
        flops, kind = 0.0, "memory"
        memory_s = nbytes / (roof.bandwidth * roof.memory_eff)
        if inst.op == "custom-call" and "fmha" in inst.line:
            b, length, heads, d = shape_dims(operand_shapes[0])  # q: [B, L, H, D]
            flops = (10.0 if "Backward" in inst.line else 4.0) * b * heads * length * length * d
            kind, seconds = "attention", max(flops / (roof.peak_flops * roof.attention_eff), memory_s)
        elif _GEMM.search(inst.line):
            flops, f32 = dot_flops(computations, inst.calls, shapes) if inst.op == "fusion" else (0.0, 0.0)
            kind = "gemm"  # float32 operands: TF32 at half the bf16 rate
            seconds = max((flops + f32) / (roof.peak_flops * roof.gemm_eff), memory_s)
        else:
            seconds = memory_s
        op_name = op_names.get(inst.name)
        part, pass_ = profile_step.model_part(op_name)
        rows.append(dict(name=inst.name, kind=kind, flops=flops, bytes=nbytes,
                         seconds=max(seconds, roof.kernel_s), op_name=op_name, part=part, pass_=pass_))
    return rows


def summarise(rows: list[dict]) -> dict:
    """Totals, and time / kernels / bytes by kind and by (part, pass)."""
    kinds: dict = collections.defaultdict(lambda: [0, 0.0, 0.0])
    parts: dict = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for r in rows:
        for table, key in ((kinds, r["kind"]), (parts, f"{r['part']} ({r['pass_']})")):
            table[key][0] += 1
            table[key][1] += r["seconds"] * 1e3
            table[key][2] += r["bytes"] / 1e9

    def rounded(table):
        return {k: {"kernels": n, "ms": round(ms, 3), "gb": round(gb, 3)}
                for k, (n, ms, gb) in sorted(table.items(), key=lambda kv: -kv[1][1])}

    return {"kernels": len(rows), "ms": round(sum(r["seconds"] for r in rows) * 1e3, 3),
            "flops": sum(r["flops"] for r in rows), "gb": round(sum(r["bytes"] for r in rows) / 1e9, 3),
            "by_kind": rounded(kinds), "by_part": rounded(parts)}


def compile_for_gpu(setup: bench.Setup, gpu: str) -> tuple[str, float | None]:
    """(compiled HLO text, XLA's memory footprint in bytes) of `setup`'s train step for `gpu`,
    compiled on this machine. Needs jax's CUDA plugin (`pip install "jax[cuda13]"`), not a GPU."""
    import flax.linen as nn
    import jax
    from jax.experimental import topologies

    from auvmae_jax import sharding

    try:
        topology = topologies.get_topology_desc(platform="cuda", topology="1x1x1", target_config=GPUS[gpu][2])
    except Exception as e:  # no plugin: RuntimeError/ValueError/NotImplementedError, by jax version
        raise SystemExit(f"gpu_estimate: cannot compile for a CUDA GPU here ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160]}); it needs jax's CUDA plugin: "
                         'pip install "jax[cuda13]" (no GPU needed)') from None
    mesh = sharding.make_mesh({"data": -1}, topology.devices)
    rules = sharding.DEFAULT_RULES
    p = bench.prepare(setup, mesh, rules, abstract=True)  # outside the mesh: shapes only
    fn = bench.jit_train_step(p, mesh)  # also outside: its key is made on the host's backend
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        compiled = fn.trace(p.state, p.batch).lower(lowering_platforms=("cuda",)).compile()
    return compiled.as_text(), bench.compiled_bytes(compiled)


def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench.add_setup_args(p, attention_impl="cudnn")  # what 'auto' picks on the GPU in bf16
    p.add_argument("--gpu", default="H100", choices=sorted(GPUS))
    p.add_argument("--hlo", default="", help="estimate this compiled HLO text instead of compiling")
    p.add_argument("--save_hlo", default="", help="write the compiled HLO text here")
    p.add_argument("--gemm_eff", type=float, default=Roofline.gemm_eff)
    p.add_argument("--attention_eff", type=float, default=Roofline.attention_eff)
    p.add_argument("--memory_eff", type=float, default=Roofline.memory_eff)
    p.add_argument("--kernel_us", type=float, default=Roofline.kernel_s * 1e6)
    p.add_argument("--top", type=int, default=15, help="parts printed")
    p.add_argument("--out", default="")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    setup = bench.setup_from_args(args)
    memory = None
    if args.hlo:
        with open(args.hlo) as f:
            text = f.read()
    else:
        text, memory = compile_for_gpu(setup, args.gpu)
    if args.save_hlo:
        with open(args.save_hlo, "w") as f:
            f.write(text)
    peak, bandwidth, _ = GPUS[args.gpu]
    roof = Roofline(peak, bandwidth, args.gemm_eff, args.attention_eff, args.memory_eff,
                    args.kernel_us * 1e-6)
    summary = summarise(kernels(text, roof))
    model_flops = bench.model_flops(setup)
    mfu = model_flops / (summary["ms"] * 1e-3) / peak
    print(f"{args.gpu} (estimated, not measured): {setup}")
    print(f"{summary['kernels']} kernels, {summary['ms']:.2f} ms per step, {summary['gb']:.1f} GB moved, "
          f"{summary['flops'] / 1e12:.2f} TFLOP in matmuls and attention; model FLOPs "
          f"{model_flops / 1e12:.2f} T -> MFU {100 * mfu:.1f}% (assumed: matmuls at {roof.gemm_eff:.0%} of "
          f"{peak / 1e12:.0f} TFLOP/s, attention at {roof.attention_eff:.0%}, memory at "
          f"{roof.memory_eff:.0%} of {bandwidth / 1e12:.2f} TB/s, >= {roof.kernel_s * 1e6:.1f} us a kernel)")
    if memory is not None:
        print(f"memory (XLA's compiled footprint: arguments + outputs + temporaries - donated): "
              f"{memory / 2**30:.2f} GiB")
    tables = (("by kind", summary["by_kind"], None), ("by part", summary["by_part"], args.top))
    for title, table, limit in tables:
        print(f"  {title:<52} {'kernels':>8} {'ms':>8} {'GB':>7}")
        for key, row in list(table.items())[:limit]:
            print(f"  {key:<52} {row['kernels']:>8} {row['ms']:>8.3f} {row['gb']:>7.2f}")
    emit({**dataclasses.asdict(setup), "gpu": args.gpu, "estimated_mfu": round(mfu, 4),
          "model_flops_per_step": model_flops, "compiled_bytes": memory, **summary,
          "assumed": dataclasses.asdict(roof)}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
