"""The command line: one-line errors for bad input, every config file loads."""

import glob
import json
import os
import subprocess
import sys

import pytest

from auvmae_jax import cli
from tests.conftest import TINY_SYNTHETIC

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _auvmae(*args, cwd=ROOT):
    proc = subprocess.run([sys.executable, "-m", "auvmae_jax", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def _error_line(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if "error:" in x]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


# Key values of each config file, per `get_config` argument (SPEC §1-2 and the recipes the files state).
_PRETRAIN = {"task": "pretrain", "mask_ratio": 0.9, "decoder_mask_ratio": 0.0, "norm_pix_loss": True,
             "data.num_frames": 16, "data.image_size": 224, "model.patch_size": 16, "model.tubelet_size": 2,
             "optimizer.base_lr": 1.5e-4, "optimizer.b1": 0.9, "optimizer.b2": 0.95,
             "optimizer.weight_decay": 0.05, "optimizer.warmup_epochs": 40.0, "num_epochs": 500.0,
             "batch_size": 64}
_FINETUNE = {"task": "finetune", "loss.l_cls": 1.0, "loss.l_intra": 0.01, "loss.l_inter": 0.01,
             "loss.kind": "fro", "optimizer.layer_decay": 0.75, "num_epochs": 20.0, "batch_size": 32,
             "frame_stride": 4, "patch_mask_ratio": 0.5, "model.preset": "B", "model.drop_path": 0.1}
CONFIG_VALUES = {
    "pretrain.py": {**{p: dict(_PRETRAIN, **{"model.preset": p}) for p in ("mini", "tiny", "S", "B", "L")},
                    None: dict(_PRETRAIN, **{"model.preset": "B"})},
    "finetune.py": {
        None: dict(_FINETUNE, level="video", fold=1, clip_length=16, **{"data.name": "synthetic_faces"}),
        "bp4d,frame,2": dict(_FINETUNE, level="frame", fold=2, clip_length=128,
                             **{"data.name": "bp4d", "data.train_aug": True}),
        "disfa,patch,3": dict(_FINETUNE, level="patch", fold=3, clip_length=128,
                              **{"data.name": "disfa", "data.train_aug": True}),
    },
    "demo.py": {None: {"pretrain.model.preset": "mini", "finetune.model.preset": "mini",
                       "pretrain.mask_ratio": 0.75, "finetune.fold": 1, "finetune.level": "video",
                       "finetune.loss.l_intra": 0.01, "finetune.loss.l_inter": 0.01,
                       "pretrain.batch_size": 32, "finetune.batch_size": 32}},
}
NOT_CONFIGS = {"__init__.py", "common.py"}  # modules of the configs package without get_config


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_every_config_file_loads(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("cfg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    name = os.path.basename(path)
    if name in NOT_CONFIGS:
        assert not hasattr(module, "get_config")
        pytest.skip(f"configs/{name} is not a config file (no get_config)")
    assert name in CONFIG_VALUES, f"configs/{name}: add its key values to CONFIG_VALUES"
    for arg, values in CONFIG_VALUES[name].items():
        config = module.get_config(arg)
        got = {}
        for key in values:
            node = config
            for part in key.split("."):
                node = node[part]
            got[key] = node
        assert got == values, (name, arg)
        assert json.loads(config.to_json())  # serialisable, as the workdir's config.json


@pytest.mark.parametrize("config", ["configs/pretrain.py:mini", "configs/finetune.py:synthetic,video,1"])
def test_fields_that_default_to_none_take_overrides(config):
    # attention_impl and head_norm_eps default to None (auto / the layer_norm_eps); the README
    # and launch/tpu_pod.sh tell users to set them on the command line.
    cli._parse_flags(["auvmae pretrain", f"--config={config}", "--config.model.attention_impl=splash",
                      "--config.model.head_norm_eps=1e-5"])
    model = cli.FLAGS.config.model
    assert (model.attention_impl, model.head_norm_eps) == ("splash", 1e-5)
    cli._parse_flags(["auvmae pretrain", f"--config={config}"])
    assert (cli.FLAGS.config.model.attention_impl, cli.FLAGS.config.model.head_norm_eps) == (None, None)


def test_no_detect_and_no_align_spellings(monkeypatch):
    seen = []
    monkeypatch.setitem(cli.COMMANDS, "predict", lambda: seen.append((cli.FLAGS.detect, cli.FLAGS.align)))
    for args, want in [([], (True, True)), (["--no-detect", "--no-align"], (False, False)),
                       (["--nodetect"], (False, True)), (["--noalign"], (True, False))]:
        assert cli.main(["auvmae", "predict", *args]) == 0
        assert seen.pop() == want, args


def test_unknown_config_key_is_one_line(tmp_path):
    rc, _, err = _auvmae("pretrain", "--config=configs/pretrain.py:mini", f"--workdir={tmp_path}",
                         "--config.model.presett=B")
    assert rc == 2
    line = _error_line(err)
    assert "unknown config key 'presett' in --config.model.presett=B" in line
    assert 'Did you mean "preset"' in line


def test_missing_config_file_is_one_line(tmp_path):
    rc, _, err = _auvmae("pretrain", "--config=configs/nope.py", f"--workdir={tmp_path}")
    assert rc == 2
    assert "cannot load config file configs/nope.py" in _error_line(err)


def test_unknown_command_and_missing_workdir():
    assert cli.main(["auvmae", "fly"]) == 2
    rc, _, err = _auvmae("pretrain", "--config=configs/pretrain.py:mini")
    assert rc == 1 and "--workdir is required" in _error_line(err)


def test_empty_split_is_a_clear_error(synthetic_data_dir, tmp_path):
    rc, _, err = _auvmae("pretrain", "--config=configs/pretrain.py:mini", f"--workdir={tmp_path}",
                         f"--config.data.data_dir={synthetic_data_dir}",
                         *[f"--config.data.synthetic.{k}={v}" for k, v in TINY_SYNTHETIC.items()],
                         "--config.data.train_split=part1[:0]")
    assert rc == 1
    line = _error_line(err)
    assert "split 'part1[:0]' has no examples" in line and synthetic_data_dir in line


def test_unwritable_workdir_is_a_clear_error(synthetic_data_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    rc, _, err = _auvmae("pretrain", "--config=configs/pretrain.py:mini", f"--workdir={blocker}/run")
    assert rc == 1
    assert f"workdir {blocker}/run is not writable" in _error_line(err)


def test_preempted_finetune_exits_75_without_evaluating(monkeypatch, tmp_path, capsys):
    # A SIGTERM'd run (trainer.run raises Preempted after saving) must not be scored as if it had
    # finished; the exit code (EX_TEMPFAIL) is what launch/gpu_multinode.sbatch requeues on.
    from auvmae_jax import evaluation, finetune
    from auvmae_jax.errors import Preempted

    def stopped(config, workdir):
        raise Preempted(f"stopped on SIGTERM at step 3 of 6 after saving a checkpoint in {workdir}")

    evaluated = []
    monkeypatch.setattr(finetune, "train", stopped)
    monkeypatch.setattr(evaluation, "evaluate_workdir", lambda *a: evaluated.append(a))
    rc = cli.main(["auvmae", "finetune", "--config=configs/finetune.py:synthetic,video,1",
                   f"--workdir={tmp_path}"])
    assert rc == 75 and evaluated == []
    assert capsys.readouterr().err.strip() == (
        f"auvmae finetune: stopped on SIGTERM at step 3 of 6 after saving a checkpoint in {tmp_path}")


def test_job_commands_join_the_processes_first(monkeypatch, tmp_path):
    # `srun auvmae evaluate ...` on N processes is one evaluation, not N that each write metrics.json.
    from auvmae_jax import distributed

    calls = []
    monkeypatch.setattr(distributed, "initialize", lambda: calls.append(1))
    assert cli.main(["auvmae", "evaluate", f"--workdir={tmp_path}/none"]) == 1  # no workdir there
    assert cli.main(["auvmae", "convert"]) == 1  # a per-process tool: does not join
    assert calls == [1]


def test_log_lines_carry_the_time_even_after_a_library_logged_first():
    import logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        root.handlers = []
        logging.warning("a library logging before the CLI sets up")  # installs Python's default handler
        cli.setup_logging()
        assert [h.formatter._fmt for h in root.handlers] == ["%(asctime)s %(message)s"]
    finally:
        root.handlers, root.level = saved[0], saved[1]


_COMPILE = """
import sys
if sys.argv[1] == "jax_first":
    import jax
from auvmae_jax import cli
cli.setup_compilation_cache()
import jax, jax.numpy as jnp
print(jax.jit(lambda x: x * 2 + 1)(jnp.ones(3)).sum())
"""


@pytest.mark.parametrize("env_dir,max_size,order", [(None, None, "cli_first"), (None, None, "jax_first"),
                                                    ("", None, "cli_first"), ("own", None, "cli_first"),
                                                    (None, "100", "cli_first"), (None, "100", "jax_first")])
def test_compiled_programs_are_cached_on_disk(tmp_path, env_dir, max_size, order):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               PYTHONPATH=ROOT)
    if env_dir is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = env_dir and str(tmp_path / env_dir)
    if max_size is not None:
        env["JAX_COMPILATION_CACHE_MAX_SIZE"] = max_size
    for _ in range(2):  # the second run reads what the first wrote
        proc = subprocess.run([sys.executable, "-c", _COMPILE, order], env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.strip() == "9.0", proc.stderr
    default = glob.glob(str(tmp_path / "xdg/auvmae/jax/jit__lambda-*-cache"))
    own = glob.glob(str(tmp_path / "own/jit__lambda-*-cache"))
    # None: the CLI's default dir; "": the user turned the cache off; "own": the user's dir;
    # a user's limit of 100 bytes holds no program
    want = {(None, None): (1, 0), ("", None): (0, 0), ("own", None): (0, 1), (None, "100"): (0, 0)}
    assert (len(default), len(own)) == want[env_dir, max_size]
    if (env_dir, max_size) == (None, None):  # the default dir has a size limit: jax keeps access times
        assert len(glob.glob(str(tmp_path / "xdg/auvmae/jax/jit__lambda-*-atime"))) == 1


def test_command_help_lists_the_flags():
    rc, out, err = _auvmae("predict", "--help")
    assert rc == 0, err
    assert "predict    AUs in every frame" in out and "--batch_size" in out and "--workdir" in out


@pytest.mark.parametrize("case", ["preset", "config_arg", "mesh", "json", "manual_dir", "batch_size"])
def test_bad_input_is_one_line(case, tmp_path):
    work = str(tmp_path / "w")
    args, rc_want, text = {
        "preset": (["pretrain", "--config=configs/pretrain.py:XX", f"--workdir={work}",
                    f"--config.data.data_dir={tmp_path}/tfds"], 1, "config.model: unknown preset 'XX'"),
        "config_arg": (["finetune", "--config=configs/finetune.py:foo,video,1", f"--workdir={work}"], 2,
                       "config configs/finetune.py:foo,video,1: unknown dataset 'foo'"),
        "mesh": (["pretrain", "--config=configs/pretrain.py:mini", f"--workdir={work}",
                  "--config.mesh.fsdp=2", f"--config.data.data_dir={tmp_path}/tfds"], 1,
                 "does not divide 1 devices"),
        "json": (["evaluate", f"--workdir={work}"], 1, "config.json is not valid JSON"),
        "manual_dir": (["build-data", "--dataset=disfa", f"--manual_dir={tmp_path}/empty",
                        f"--data_dir={tmp_path}/tfds"], 1, "is empty"),
        "batch_size": (["predict", f"--checkpoint={work}", "--video=talk.mp4", "--batch_size=0"], 1,
                       "--batch_size=0: must be at least 1"),
    }[case]
    os.makedirs(work)
    os.makedirs(tmp_path / "empty")
    (tmp_path / "w" / "config.json").write_text("{not json")
    rc, _, err = _auvmae(*args)
    assert rc == rc_want and text in _error_line(err), err
    assert not (tmp_path / "tfds").exists()  # failed before any data was built or read


def _record_demo(monkeypatch):
    """The demo's training and scoring replaced by recorders of the configs they get."""
    from auvmae_jax import demo

    seen = {}

    def train(name):
        def fn(config, workdir):
            seen[name] = (config, workdir)
            return None, [{"step": 1, "loss": 2.0}, {"step": int(config.num_train_steps), "loss": 1.0}]
        return fn

    monkeypatch.setattr(demo.pretrain, "train", train("pretrain"))
    monkeypatch.setattr(demo.finetune, "train", train("finetune"))
    monkeypatch.setattr(demo.evaluation, "evaluate_workdir", lambda workdir: dict(
        split="part1", f1_mean=0.6, baseline_f1_mean=0.2, acc_mean=0.8))
    return seen


def test_demo_loss_summary():
    from auvmae_jax.demo import _losses

    two = [{"step": 100, "loss": 1.2}, {"step": 200, "loss": 0.51}]
    assert _losses(two, 2) == "loss 1.20 -> 0.51 by step 200"
    assert _losses([{"step": 100, "loss": 1.2}], 3) == "loss 1.200 at step 100 (the one step logged)"
    assert _losses([], 3).startswith("loss: nothing left to train")


def test_demo_runs_configs_demo_with_its_overrides(monkeypatch, tmp_path, capsys):
    seen = _record_demo(monkeypatch)
    assert cli.main(["auvmae", "demo", f"--workdir={tmp_path}", "--config.pretrain.num_train_steps=20",
                     "--config.finetune.num_train_steps=30",
                     "--config.pretrain.data.synthetic.num_subjects=60",
                     "--config.finetune.data.synthetic.num_subjects=60"]) == 0
    pre, (ft, ft_dir) = seen["pretrain"][0], seen["finetune"]
    assert (pre.num_train_steps, ft.num_train_steps) == (20, 30)
    assert pre.data.synthetic.num_subjects == ft.data.synthetic.num_subjects == 60
    assert pre.model.preset == ft.model.preset == "mini" and pre.batch_size == 32  # the rest: configs/demo.py
    assert pre.data.data_dir == ft.data.data_dir == str(tmp_path / "data")
    assert ft.init_from == seen["pretrain"][1] == str(tmp_path / "pretrain")
    assert ft_dir == str(tmp_path / "finetune")
    assert "mean F1 60.0 vs all-positive baseline 20.0" in capsys.readouterr().out
    # No flags: configs/demo.py as it is (the flags of the call above do not stick).
    assert cli.main(["auvmae", "demo", f"--workdir={tmp_path}"]) == 0
    assert (seen["pretrain"][0].num_train_steps, seen["finetune"][0].num_train_steps) == (1000, 4000)
    # --config names the file explicitly, as for the training commands.
    assert cli.main(["auvmae", "demo", f"--config={ROOT}/configs/demo.py", f"--workdir={tmp_path}",
                     "--config.finetune.num_train_steps=5"]) == 0
    assert (seen["pretrain"][0].num_train_steps, seen["finetune"][0].num_train_steps) == (1000, 5)
    # A data dir or an init_from given on the command line stands.
    assert cli.main(["auvmae", "demo", f"--workdir={tmp_path}",
                     f"--config.pretrain.data.data_dir={tmp_path}/d",
                     f"--config.finetune.init_from={tmp_path}/converted"]) == 0
    assert seen["pretrain"][0].data.data_dir == f"{tmp_path}/d"
    assert seen["finetune"][0].data.data_dir == str(tmp_path / "data")
    assert seen["finetune"][0].init_from == f"{tmp_path}/converted"


def test_demo_bad_config_is_one_line(monkeypatch, tmp_path, capsys):
    seen = _record_demo(monkeypatch)
    assert cli.main(["auvmae", "demo", f"--workdir={tmp_path}", "--config.pretrain.num_train_stepz=2"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'num_train_stepz' in --config.pretrain.num_train_stepz=2" in err
    assert "configs/demo.py" in err and len(err.splitlines()) == 1
    assert cli.main(["auvmae", "demo", "--config=configs/pretrain.py:mini", f"--workdir={tmp_path}"]) == 1
    assert capsys.readouterr().err == (
        "auvmae demo: error: config configs/pretrain.py:mini: no pretrain or finetune section; demo takes a "
        "file like configs/demo.py (a pre-training and a fine-tuning config)\n")
    assert seen == {}
