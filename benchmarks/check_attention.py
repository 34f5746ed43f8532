"""Numbers before speed: cuDNN's fused attention against this project's, on the device at hand.

    python -m benchmarks.check_attention [--out=bench_out/check.jsonl] [--quick]

On NVIDIA GPUs the models run `jax.nn.dot_product_attention(implementation='cudnn')` in
bf16 (`models.attention_implementation`), a kernel the CPU test suite cannot run. For the
attention shapes of ViT-B (the encoder at mask 0.9 and over whole clips, the decoder over
a 16-frame clip), with bf16 queries, keys and values, this compares the output and the
gradients of `sum(out * r)` with respect to q, k and v against `models.xla_attention` in
float32 (the reference), as the largest absolute error over the reference's largest
absolute value. bf16 rounding alone costs `models.xla_attention` in bf16 an error too: cuDNN
passes where its error is at most twice that plus 0.01. Exits 1 if a shape fails. Where cuDNN
is not available (CPU, TPU, another GPU) it says so and reports bf16's own error only.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from auvmae_jax.models import xla_attention
from benchmarks.results import emit

# (name, batch, tokens, heads, head dim): ViT-B's attention at 16 frames of 224 px.
SHAPES = (("encoder, mask 0.9", 32, 160, 12, 64), ("encoder, whole clip", 8, 1568, 12, 64),
          ("decoder", 8, 1568, 6, 64))
QUICK_SHAPES = (("quick", 2, 40, 2, 16),)


def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one small shape (checks the script)")
    p.add_argument("--out", default="")
    return p.parse_args(argv)


def cudnn_attention(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")


def value_and_grads(attend, q, k, v, r):
    """`attend(q, k, v)` and the gradients of `sum(out * r)` w.r.t. q, k, v, all float32."""
    def loss(q, k, v):
        return jnp.sum(attend(q, k, v).astype(jnp.float32) * r)

    out = attend(q, k, v)
    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    return [np.asarray(x, np.float32) for x in (out, *grads)]


def relative_errors(got: list, ref: list) -> list[float]:
    return [float(np.abs(g - e).max() / max(np.abs(e).max(), 1e-30)) for g, e in zip(got, ref)]


def cudnn_available(q) -> str | None:
    """None where cuDNN's attention runs here, else why not."""
    if jax.default_backend() != "gpu":
        return f"cuDNN attention needs an NVIDIA GPU (backend {jax.default_backend()})"
    try:
        jax.block_until_ready(jax.jit(cudnn_attention)(q, q, q))
    except Exception as e:  # noqa: BLE001 - an unsupported GPU, cuDNN or shape, as jax words it
        return f"cuDNN attention does not run here: {' '.join(str(e).split())[:200]}"
    return None


def check(name: str, b: int, length: int, heads: int, dim: int, out: str = "") -> bool:
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v, r = (jax.random.normal(key, (b, length, heads, dim), jnp.float32) for key in keys)
    ref = value_and_grads(jax.jit(xla_attention), q, k, v, r)
    low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    bf16 = relative_errors(value_and_grads(jax.jit(xla_attention), *low, r), ref)
    result = {"shape": name, "batch": b, "tokens": length, "heads": heads, "head_dim": dim,
              "backend": jax.default_backend(), "xla_bf16_errors": bf16}
    why = cudnn_available(low[0])
    parts = ("output", "dq", "dk", "dv")
    line = ", ".join(f"{p} {e:.4f}" for p, e in zip(parts, bf16))
    print(f"{name} (batch {b}, {length} tokens, {heads} heads of {dim}): XLA attention in bf16: {line}")
    if why:
        print(f"  {why}: skipped")
        result["cudnn"] = why
        emit(result, out)
        return True
    cudnn = relative_errors(value_and_grads(jax.jit(cudnn_attention), *low, r), ref)
    ok = all(c <= 2 * e + 0.01 for c, e in zip(cudnn, bf16))
    print(f"  cuDNN: {', '.join(f'{p} {e:.4f}' for p, e in zip(parts, cudnn))}: {'PASS' if ok else 'FAIL'}")
    result.update(cudnn_errors=cudnn, passed=ok)
    emit(result, out)
    return ok


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    results = [check(*shape, out=args.out) for shape in (QUICK_SHAPES if args.quick else SHAPES)]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
