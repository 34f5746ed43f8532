"""The benchmark scripts run at a tiny size and print every figure they promise."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module: str, *args: str) -> tuple[str, list[dict]]:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(x[len("RESULT "):]) for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    return proc.stdout, results


def test_step_benchmark_prints_times_flops_and_the_mask_ratio(tmp_path):
    out = tmp_path / "steps.jsonl"
    text, results = _run("benchmarks.bench_steps", "--presets=mini", "--frames=4", "--quick",
                         "--tasks=pretrain,infer", f"--out={out}")
    assert "device: cpu x1" in text and "MFU against bf16 peak unknown" in text
    steps = [r for r in results if "task" in r]
    assert [(r["task"], r["mask_ratio"]) for r in steps] == [("pretrain", 0.9), ("pretrain", 0.0),
                                                             ("infer", 0.0)]
    for r in steps:
        assert r["step_ms"] > 0 and r["clips_per_s"] > 0 and r["compile_s"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["clips_per_s"] * 2 * 4 * 4, rel=1e-3)  # 2x4x4 tokens
        assert r["model_flops_per_step"] > 0 and r["xla_flops_per_step"] > 0
        assert r["compiled_bytes"] > 0 and r["mfu"] is None and r["attention"] == "xla"
    # mini at mask 0.9: the encoder sees 2 of 16 positions, the pixel head predicts 14 of them
    # (at this width the head outweighs the encoder; ViT-B is checked below).
    assert steps[0]["model_flops_per_step"] != steps[1]["model_flops_per_step"]
    assert steps[0]["xla_flops_per_step"] != steps[1]["xla_flops_per_step"]
    ratio = [r for r in results if "mask_time_ratio" in r]
    assert len(ratio) == 1 and ratio[0]["mask_time_ratio"] > 0
    assert len(out.read_text().splitlines()) == 3
    assert "mask ratio 0.9 / 0.0 step time: mini T=4" in text


def test_model_flops_count_the_architecture():
    from benchmarks import steps

    # ViT-B, 16 x 224 x 224, 1568 tokens, one clip, inference: 2 * (patch embed + 12 blocks + head).
    setup = steps.Setup(task="infer", preset="B", frames=16, batch=1)
    d, n = 768, 1568
    blocks = 12 * (2 * n * d * d * 12 + 4 * n * n * d)
    expected = 2 * n * 1536 * d + blocks + 2 * 8 * d * 12 * 2
    assert steps.model_flops(setup) == pytest.approx(expected)
    train = steps.Setup(task="finetune", preset="B", frames=16, batch=1)
    assert steps.model_flops(train) == pytest.approx(3 * expected)
    # Pre-training at mask 0.9: the encoder sees 8 x 20 tokens.
    pre = steps.model_flops(steps.Setup(task="pretrain", preset="B", frames=16, batch=1, mask_ratio=0.9))
    pre0 = steps.model_flops(steps.Setup(task="pretrain", preset="B", frames=16, batch=1, mask_ratio=0.0))
    assert 0.1 < pre / pre0 < 0.3
    # Only the 160 visible tubelets are embedded; the decoder runs over all 1568 tokens.
    v, m, dd = 160, 1408, 384
    dec = 4 * (2 * n * dd * dd * 12 + 4 * n * n * dd)
    enc = 12 * (2 * v * d * d * 12 + 4 * v * v * d)
    assert pre == pytest.approx(3 * (2 * v * 1536 * d + enc + 2 * v * d * dd + dec + 2 * m * dd * 1536))
    # VideoMAE V2's decoder masking at 0.5: the decoder over the 160 visible + 8 x 98 running-cell
    # tokens, the pixel head over the 784.
    dual = steps.model_flops(steps.Setup(task="pretrain", preset="B", frames=16, batch=1, mask_ratio=0.9,
                                         decoder_mask_ratio=0.5))
    q = 784
    dec_q = 4 * (2 * (v + q) * dd * dd * 12 + 4 * (v + q) ** 2 * dd)
    assert dual == pytest.approx(3 * (2 * v * 1536 * d + enc + 2 * v * d * dd + dec_q + 2 * q * dd * 1536))
    assert 0.65 < dual / pre < 0.75


@pytest.mark.parametrize("task,mask,dec", [("pretrain", 0.9, 0), ("pretrain", 0.5, 0), ("pretrain", 0.9, 0.5),
                                          ("finetune", 0, 0), ("infer", 0, 0)])
def test_model_flops_agree_with_xla_cost_analysis(task, mask, dec):
    """The architecture count (matmuls, and the crop's) is within a few % of XLA's count of the
    whole step."""
    import flax.linen as nn
    import jax

    from auvmae_jax import sharding
    from benchmarks import steps

    setup = steps.Setup(task=task, preset="tiny", frames=8, batch=8, image_size=128, mask_ratio=mask,
                        decoder_mask_ratio=dec, dtype="float32")
    mesh = sharding.make_mesh({"data": -1})
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
        fn, args, _ = steps.build(setup, mesh, sharding.DEFAULT_RULES)
        xla = steps._cost(fn.lower(*args))["flops"]
    # Training: two [128 x 128] resampling matmuls per frame and channel (inference: no crop).
    crop = 0 if task == "infer" else 2 * 2 * 8 * 8 * 128**3 * 3
    assert steps.crop_flops(setup) == crop
    assert steps.model_flops(setup) + crop == pytest.approx(xla, rel=0.06)


def test_device_peaks():
    from benchmarks import steps

    class Dev:
        def __init__(self, kind):
            self.device_kind = kind

    assert steps.device_peak(Dev("NVIDIA H100 80GB HBM3")) == (989e12, "NVIDIA H100 80GB HBM3")
    assert steps.device_peak(Dev("NVIDIA H100 PCIe"))[0] == 756e12
    assert steps.device_peak(Dev("TPU v5 lite"))[0] == 197e12
    assert steps.device_peak(Dev("cpu"))[0] is None


def test_input_benchmark_times_the_pipeline(tmp_path):
    text, results = _run("benchmarks.bench_input", "--quick", "--workers=0", "--repeats=1,2",
                         f"--data_dir={tmp_path / 'tfds'}")
    assert len(results) == 2 and results[0]["workers"] == 0 and results[0]["clips_per_s"] > 0
    assert results[0]["shape"] == [4, 4, 32, 32, 3] and results[0]["crop"] == "device"
    assert results[1]["repeats"] == 2 and results[1]["shape"] == [2, 4, 32, 32, 3]  # 2 clips x 2 views
    assert "2 views per decoded clip" in text
    text, results = _run("benchmarks.bench_input", "--quick", "--workers=0", "--stored_size=40",
                         f"--data_dir={tmp_path / 'tfds'}")
    assert results[0]["shape"] == [4, 4, 32, 32, 3] and results[0]["crop"] == "host"
    assert "stored at 40px, crop on the host" in text


def test_pytorch_comparison_times_both_sides_in_turns(tmp_path):
    out = tmp_path / "hf.jsonl"
    text, (r,) = _run("benchmarks.bench_hf", "--preset=mini", "--frames=4", "--quick",
                      f"--out={out}")
    assert r["torch_device"] == "cpu" and r["attention"] == "xla" and r["rounds"] == 3
    for side in ("torch_train", "torch_infer", "jax_train", "jax_train_crop", "jax_infer"):
        rounds = r[f"{side}_ms_rounds"]
        assert len(rounds) == 3 and min(rounds) > 0
        assert r[f"{side}_ms"] == pytest.approx(sorted(rounds)[1], abs=1e-3)  # the median
    assert r["train_ratio_torch_over_jax"] == pytest.approx(r["torch_train_ms"] / r["jax_train_ms"])
    assert r["infer_ratio_torch_over_jax"] == pytest.approx(r["torch_infer_ms"] / r["jax_infer_ms"])
    assert "pre-training step (fwd+bwd+AdamW): PyTorch" in text and "inference (encoder" in text
    assert "cropping its clips on the device" in text
    assert json.loads(out.read_text()) == r


def test_step_profile_times_every_part_and_reads_its_trace(tmp_path):
    out = tmp_path / "profile.jsonl"
    text, results = _run("benchmarks.profile_step", "--preset=mini", "--frames=4", "--quick",
                         f"--trace_dir={tmp_path / 'trace'}", "--trace_steps=2", f"--out={out}")
    (r,) = results
    ms = {p["part"]: p["ms"] for p in r["parts"]}
    assert list(ms) == ["inputs", "embed + encoder forward", "decoder forward + loss", "forward (loss)",
                        "forward + backward", "AdamW update", "train step", "backward (derived)",
                        "rest of the step (derived)"]
    assert all(ms[k] > 0 for k in list(ms)[:7])
    # No comparison of times: a mini step's are noise (the suite runs tests side by side).
    backward = ms["forward + backward"] - ms["forward (loss)"]
    assert ms["backward (derived)"] == pytest.approx(backward, abs=2e-3)
    step = [p for p in r["parts"] if p["part"] == "train step"][0]
    assert step["share"] == 1.0 and step["tflop_per_s"] > 0
    assert r["trace"]["ms_per_step"] > 0 and r["trace"]["ops"] and "forward + backward" in text
    parts = r["trace"]["parts"]  # every op of the step, attributed to a part of the model and a pass
    assert sum(sum(p.values()) for p in parts.values()) == pytest.approx(r["trace"]["ms_per_step"], rel=1e-3)
    for part in ("encoder attention", "decoder attention", "decoder MLP & residuals", "inputs & loss"):
        assert parts[part]["forward"] > 0 and parts[part]["backward"] > 0, part
    assert parts["optimizer update & metrics"]["-"] > 0 and "by part of the step" in text
    assert r["trace"]["kinds"]["matmul"] > 0 and r["trace"]["kinds"]["attention"] > 0
    assert json.loads(out.read_text())["parts"] == r["parts"]
    # The compiled step beside the trace, for gpu_estimate --hlo: every op a kernel with a part.
    from benchmarks import gpu_estimate

    hlo = (tmp_path / "trace" / "step.hlo.txt").read_text()
    rows = gpu_estimate.kernels(hlo, gpu_estimate.Roofline(1e12, 1e11))
    assert len(rows) > 20 and {r["part"] for r in rows} >= {"decoder attention", "inputs & loss"}


def test_trace_self_times_subtract_enclosed_events():
    from collections import namedtuple

    from benchmarks.profile_step import _self_times

    Event = namedtuple("Event", "name start_ns duration_ns")
    events = [Event("child", 2, 3), Event("parent", 0, 10), Event("grandchild", 3, 1), Event("next", 10, 4),
              Event("child2", 6, 1)]
    assert sorted((e.name, ns) for e, ns in _self_times(events)) == sorted(
        [("parent", 6), ("child", 2), ("grandchild", 1), ("child2", 1), ("next", 4)])


# Excerpts of a compiled pre-training step's HLO (XLA:CPU): a fusion with its own JAX name, one
# without (it takes its computation's root's), and a dot that no JAX op named.
BWD = "jit(train_step)/transpose(jvp(VideoMAE))/decoder/block0"
FWD = "jit(train_step)/jvp(VideoMAE)/decoder/block1"
HLO = f"""
%fused_computation.178 (param_0.1: f32[], param_1.2: f32[8,3,512,32]) -> f32[8,3,512,512] {{
  %param_1.2 = f32[8,3,512,32]{{3,2,1,0}} parameter(1)
  %neg.7 = f32[8,3,512]{{2,1,0}} negate(%x), metadata={{op_name="{BWD}/attn/neg" stack_frame_id=1}}
  ROOT %mul.124 = f32[8,3,512,512]{{3,2,1,0}} multiply(%a, %b), metadata={{op_name="{BWD}/attn/mul"}}
}}
%fused_computation.273 (param_0.366: f32[8,3072,64]) -> f32[8,3072,64] {{
  ROOT %dot.177 = f32[8,3072,64]{{2,1,0}} dot(%param_0.366, %param_1.378), lhs_batch_dims={{0}}
}}
ENTRY %main.1 (p: f32[8]) -> f32[8] {{
  %ynn_fusion.178 = f32[8,3,512,512]{{3,2,1,0}} fusion(%c, %d), kind=kCustom, calls=%fused_computation.178
  %ynn_fusion.273 = f32[8,3072,64]{{2,1,0}} fusion(%e), kind=kCustom, calls=%fused_computation.273
  ROOT %ynn_fusion.204 = f32[4096,384]{{1,0}} fusion(%f), metadata={{op_name="{FWD}/fc1/dot_general"}}
}}
"""


def test_trace_ops_are_named_by_the_jax_ops_they_came_from():
    from benchmarks.profile_step import hlo_op_names, model_part, op_kind

    names = hlo_op_names(HLO)
    assert names["ynn_fusion.178"] == "jit(train_step)/transpose(jvp(VideoMAE))/decoder/block0/attn/mul"
    assert names["ynn_fusion.204"] == "jit(train_step)/jvp(VideoMAE)/decoder/block1/fc1/dot_general"
    assert names["neg.7"].endswith("/attn/neg") and "ynn_fusion.273" not in names
    assert model_part(names["ynn_fusion.178"]) == ("decoder attention", "backward")
    assert model_part(names["ynn_fusion.204"]) == ("decoder MLP & residuals", "forward")
    step = "jit(train_step)/"
    for op, part in [
        ("jvp(VideoMAE)/encoder/block3/attn/bld,dkhe->blkhe/dot_general",
         ("encoder attention projections", "forward")),
        ("transpose(jvp(VideoMAE))/encoder/block0/attn/blhe,hed->bld/dot_general",
         ("encoder attention projections", "backward")),
        ("jvp(AUDetector)/encoder/block0/attn/bhqd,bhkd->bhqk/dot_general", ("encoder attention", "forward")),
        ("jvp(VideoMAE)/decoder/block0/norm1/reduce_sum", ("decoder LayerNorms", "forward")),
        ("transpose(jvp(VideoMAE))/encoder/norm/mul", ("encoder LayerNorms", "backward")),
        ("jvp(VideoMAE)/decoder/block1/erf", ("decoder MLP & residuals", "forward")),
        ("jvp(VideoMAE)/encoder/patch_embed/dot_general", ("encoder embedding & head", "forward")),
        ("jvp(AUDetector)/fc_norm/reduce_sum", ("model head", "forward")),
        ("jvp(jit(take_along_axis))/gather", ("inputs & loss", "forward")),
        ("transpose(jvp())/mul", ("inputs & loss", "backward")),
        ("mul", ("optimizer update & metrics", "-")),
        ("transpose(jvp(AUDetector))/encoder/jvp(AUDetector)/encoder/checkpoint/rematted_computation/"
         "block1/norm2/mul", ("encoder LayerNorms", "backward")),  # remat's recomputation
        ("transpose(jvp(AUDetector))/encoder/jvp(AUDetector)/encoder/checkpoint/block0/attn/exp",
         ("encoder attention", "backward")),
    ]:
        assert model_part(step + op) == part, op
    assert model_part(None) == ("unattributed", "-")
    assert op_kind("ynn_fusion.178", names["ynn_fusion.178"]) == "attention"
    assert op_kind("ynn_fusion.204", names["ynn_fusion.204"]) == "matmul"
    assert op_kind("copy.5", step + "jvp()/transpose") == "other"
    # Without a JAX name, by the kernel's: cuBLAS and cuDNN's on GPUs.
    assert op_kind("nvjet_hsh_128x256_64x4_1x2_h_bz_coopA_NTN", None) == "matmul"
    assert op_kind("cudnn_generated_fort_native_sdpa_sm90_flash_fprop", None) == "attention"


def test_device_check_runs_its_parts_of_run_all_and_collects_the_results(tmp_path):
    # No .whl/ in a clean clone: nothing to install, run_all.sh's parts run with this environment.
    env = dict(os.environ, OUT=str(tmp_path), QUICK="1", PRESET="mini", JAX_PLATFORMS="cpu",
               PYTHON=sys.executable)
    proc = subprocess.run(["bash", "benchmarks/device_check.sh"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "log.txt").read_text()
    assert [p for p in "012345678" if f"== part {p}," in log] == ["0", "1", "5", "7", "8"], log
    assert "ended with status" not in log, log[-3000:]
    steps = [json.loads(x) for x in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [(r["task"], r["mask_ratio"], r["decoder_mask_ratio"]) for r in steps] == [
        ("pretrain", 0.9, 0.0), ("finetune", 0.0, 0.0), ("pretrain", 0.9, 0.5)]
    (profile,) = [json.loads(x) for x in (tmp_path / "profile.jsonl").read_text().splitlines()]
    assert profile["task"] == "pretrain" and profile["trace"]["ms_per_step"] > 0
    inputs = [json.loads(x) for x in (tmp_path / "input.jsonl").read_text().splitlines()]
    assert [(r["repeats"], r["workers"]) for r in inputs] == [(1, 0), (1, 2), (4, 0), (4, 2)]
    (check,) = [json.loads(x) for x in (tmp_path / "check.jsonl").read_text().splitlines()]
    assert check["cudnn"] == "cuDNN attention needs an NVIDIA GPU (backend cpu)"


def test_attention_check_passes_a_kernel_within_bf16s_error_and_fails_a_wrong_one(monkeypatch, capsys):
    import jax.numpy as jnp

    from auvmae_jax.models import xla_attention
    from benchmarks import check_attention as ca

    monkeypatch.setattr(ca, "cudnn_available", lambda q: None)  # as on a GPU with cuDNN
    monkeypatch.setattr(ca, "cudnn_attention", xla_attention)  # bf16's own error: passes
    assert ca.main(["--quick"]) == 0
    assert "PASS" in capsys.readouterr().out
    # Keys and values swapped: a wrong kernel, caught by its output and gradients.
    monkeypatch.setattr(ca, "cudnn_attention", lambda q, k, v: xla_attention(q, v, k))
    assert ca.main(["--quick"]) == 1
    assert "FAIL" in capsys.readouterr().out
    # Off by 3% (a wrong scale, say): also caught, though bf16 itself errs by under 1%.
    monkeypatch.setattr(ca, "cudnn_attention", lambda q, k, v: xla_attention(q, k, v) * jnp.bfloat16(1.03))
    assert ca.main(["--quick"]) == 1


def test_compile_only_reports_memory_and_long_clips_pick_chunked_attention():
    # 32 frames of 256 px: 16 x 16 x 16 = 4096 tokens, where 'auto' leaves XLA's attention
    # for query chunks off GPU; --steps=0 compiles the step and reports without running it.
    common = ["--presets=mini", "--frames=32", "--image_size=256", "--batch=1", "--tasks=finetune",
              "--steps=0", "--dtype=float32"]
    _, (auto,) = _run("benchmarks.bench_steps", *common)
    _, (xla,) = _run("benchmarks.bench_steps", *common, "--attention_impl=xla")
    assert auto["attention"] == "chunked" and xla["attention"] == "xla"
    assert auto["step_ms"] is None and auto["mfu"] is None and auto["model_flops_per_step"] > 0
    # mini has 2 heads and 2 blocks: XLA's attention keeps 2 x 4096 x 4096 float32 softmax
    # exponentials (128 MiB) per block for the backward pass; query chunks save most of that.
    scores = 2 * 128 * 2**20
    assert xla["compiled_bytes"] > scores and auto["compiled_bytes"] < xla["compiled_bytes"] - 0.8 * scores, (
        xla["compiled_bytes"], auto["compiled_bytes"])


# A compiled GPU module in miniature: a Triton GEMM fusion, a fusion reading a slice of its
# output, cuDNN's fused attention (forward and backward) and a small reduction.
GPU_HLO = """HloModule jit_train_step, entry_computation_layout={}

%gemm_body (p.0: bf16[64,128], p.1: bf16[128,256]) -> bf16[64,256] {
  %p.0 = bf16[64,128]{1,0} parameter(0)
  %p.1 = bf16[128,256]{1,0} parameter(1)
  ROOT %dot.1 = bf16[64,256]{1,0} dot(%p.0, %p.1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%tf32_body (p.4: f32[64,128], p.5: f32[128,256]) -> f32[64,256] {
  %p.4 = f32[64,128]{1,0} parameter(0)
  %p.5 = f32[128,256]{1,0} parameter(1)
  ROOT %dot.2 = f32[64,256]{1,0} dot(%p.4, %p.5), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%slice_body (p.2: bf16[64,256]) -> bf16[64,128] {
  %p.2 = bf16[64,256]{1,0} parameter(0)
  %bitcast.9 = bf16[64,2,128]{2,1,0} bitcast(%p.2)
  ROOT %slice.1 = bf16[64,1,128]{2,1,0} slice(%bitcast.9), slice={[0:64], [1:2], [0:128]}
}

%sum_body (p.3: f32[1000]) -> f32[] {
  %p.3 = f32[1000]{0} parameter(0)
  %zero = f32[] constant(0)
  ROOT %reduce.1 = f32[] reduce(%p.3, %zero), dimensions={0}, to_apply=%add
}

ENTRY %main.1 (a: bf16[64,128], b: bf16[128,256], q: bf16[2,16,4,8], w: f32[1000]) -> f32[] {
  %a = bf16[64,128]{1,0} parameter(0)
  %b = bf16[128,256]{1,0} parameter(1)
  %q = bf16[2,16,4,8]{3,2,1,0} parameter(2)
  %w = f32[1000]{0} parameter(3)
  %gemm_fusion_dot.1 = bf16[64,256]{1,0} fusion(%a, %b), kind=kCustom, calls=%gemm_body, metadata={op_name="jit(train_step)/jvp(VideoMAE)/decoder/block0/fc1/dot_general"}, backend_config={"fusion_backend_config":{"kind":"__triton_nested_gemm_fusion"}}
  %fa = f32[64,128]{1,0} parameter(4)
  %fb = f32[128,256]{1,0} parameter(5)
  %gemm_fusion_dot.2 = f32[64,256]{1,0} fusion(%fa, %fb), kind=kCustom, calls=%tf32_body, metadata={op_name="jit(train_step)/jvp(bvoh,bthwc->bvtowc)/dot_general"}, backend_config={"fusion_backend_config":{"kind":"__triton_nested_gemm_fusion"}}
  %loop_slice_fusion = bf16[64,1,128]{2,1,0} fusion(%gemm_fusion_dot.1), kind=kLoop, calls=%slice_body, metadata={op_name="jit(train_step)/jvp(VideoMAE)/decoder/block0/erf"}
  %fwd = (bf16[2,4,16,8]{3,1,2,0}, f32[2,4,16]{2,1,0}, u8[0]{0}) custom-call(%q, %q, %q), custom_call_target="__cudnn$fmhaSoftmax", metadata={op_name="jit(train_step)/jvp(VideoMAE)/encoder/block0/attn/dot_product_attention_fwd"}
  %bwd = (bf16[2,16,4,8]{3,2,1,0}, bf16[2,16,4,8]{3,2,1,0}, bf16[2,16,4,8]{3,2,1,0}, u8[0]{0}) custom-call(%q, %q, %q), custom_call_target="__cudnn$fmhaSoftmaxBackward", metadata={op_name="jit(train_step)/transpose(jvp(VideoMAE))/encoder/block0/attn/dot_product_attention_bwd"}
  ROOT %input_reduce_fusion = f32[] fusion(%w), kind=kInput, calls=%sum_body, metadata={op_name="jit(train_step)/reduce_sum"}
}
"""  # noqa: E501  (HLO instructions are one line each)


def test_gpu_estimate_prices_each_kernel_of_a_compiled_module_by_its_roofline():
    from benchmarks import gpu_estimate as ge

    assert ge.shape_bytes("(bf16[2,4,16,8]{3,1,2,0}, f32[2,4,16]{2,1,0}, u8[0]{0})") == 2048 + 512
    roof = ge.Roofline(peak_flops=1e12, bandwidth=1e9, gemm_eff=0.5, attention_eff=0.25, memory_eff=1.0,
                       kernel_s=5e-6)
    rows = {r["name"]: r for r in ge.kernels(GPU_HLO, roof)}
    assert set(rows) == {"gemm_fusion_dot.1", "gemm_fusion_dot.2", "loop_slice_fusion", "fwd", "bwd",
                         "input_reduce_fusion"}
    gemm = rows["gemm_fusion_dot.1"]
    assert (gemm["kind"], gemm["flops"]) == ("gemm", 2 * 64 * 256 * 128)
    assert gemm["bytes"] == 2 * (64 * 256 + 64 * 128 + 128 * 256)  # written + read: 114,688
    assert gemm["seconds"] == pytest.approx(114688 / 1e9)  # memory-bound at this bandwidth
    assert (gemm["part"], gemm["pass_"]) == ("decoder MLP & residuals", "forward")
    fast = ge.Roofline(peak_flops=1e12, bandwidth=1e15, gemm_eff=0.5)  # compute-bound matmuls
    timed = {r["name"]: r["seconds"] for r in ge.kernels(GPU_HLO, fast)}
    assert timed["gemm_fusion_dot.1"] == pytest.approx(2 * 64 * 256 * 128 / 0.5e12)
    assert timed["gemm_fusion_dot.2"] == pytest.approx(2 * timed["gemm_fusion_dot.1"])  # TF32: half the rate
    # It reads half of the GEMM's output (one slice), not all of it.
    assert rows["loop_slice_fusion"]["bytes"] == 2 * (64 * 128 + 64 * 128)
    fwd, bwd = rows["fwd"], rows["bwd"]
    assert (fwd["kind"], fwd["flops"]) == ("attention", 4 * 2 * 4 * 16 * 16 * 8)  # 4 B H L^2 D
    assert bwd["flops"] == 10 * 2 * 4 * 16 * 16 * 8  # and the scores recomputed
    assert fwd["bytes"] == 3 * 2048 + 2048 + 512  # q, k, v read; output and softmax statistics written
    assert fwd["seconds"] == pytest.approx(8704 / 1e9)  # over 16384 / 0.25e12 s of FLOPs
    assert rows["input_reduce_fusion"]["bytes"] == 4004
    assert rows["input_reduce_fusion"]["seconds"] == 5e-6  # the floor: a tiny kernel
    assert (bwd["part"], bwd["pass_"]) == ("encoder attention", "backward")
    summary = ge.summarise(list(rows.values()))
    assert summary["kernels"] == 6
    assert summary["by_kind"]["attention"]["kernels"] == 2
    assert summary["ms"] == pytest.approx(1e3 * sum(r["seconds"] for r in rows.values()), abs=1e-3)
    assert summary["by_part"]["optimizer update & metrics (-)"]["ms"] == pytest.approx(0.005)


def test_gpu_estimate_without_jax_cuda_plugin_says_what_to_install(tmp_path):
    import importlib.metadata

    for plugin in ("jax-cuda13-plugin", "jax-cuda12-plugin"):
        try:
            importlib.metadata.version(plugin)
        except importlib.metadata.PackageNotFoundError:
            continue
        pytest.skip(f"{plugin} is installed here: gpu_estimate compiles instead")
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_estimate", "--preset=mini", "--batch=2",
                           "--image_size=32"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("gpu_estimate: cannot compile for a CUDA GPU here")
    assert 'pip install "jax[cuda13]"' in proc.stderr
