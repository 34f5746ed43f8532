"""The command line: one-line errors for bad input, every config file loads."""

import glob
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


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_every_config_file_loads(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("cfg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if hasattr(module, "get_config"):
        args = ["mini", "tiny", "S", "B", "L"] if path.endswith("pretrain.py") else [None]
        for arg in args:
            assert module.get_config(arg).to_dict()


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
