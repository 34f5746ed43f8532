"""`auvmae build-data`: exit codes, summary, deterministic bytes, found by name for training."""

import os
import subprocess
import sys

import ml_collections
import pytest

from auvmae_jax import build_data, input_pipeline
from auvmae_jax.errors import UserError
from tests import dataset_replicas as R
from tests.test_disfa import _write_labels as write_labels
from tests.test_disfa import write_disfa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS = ["--clip_length=8", "--image_size=32", "--workers=2"]


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "auvmae_jax", "build-data", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _shards(folder):
    return {f: open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))
            if ".array_record" in f}


@pytest.fixture(scope="module")
def disfa_manual(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("manual"))
    write_disfa(root)
    return root


def test_cli_builds_reports_and_rebuilds_the_same_bytes(disfa_manual, tmp_path):
    runs = [_cli("--dataset=disfa", f"--manual_dir={disfa_manual}", f"--data_dir={tmp_path / d}",
                 *OPTIONS) for d in ("a", "b")]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    log = runs[0].stderr
    assert "LeftVideoSN002_comp.avi: skipped" in log and "videos_built: 4" in log
    assert "part1: 6" in log and "part1_aug:" in log
    a = os.path.join(tmp_path, "a", "disfa", "left_s32_t8", "1.1.0")
    b = os.path.join(tmp_path, "b", "disfa", "left_s32_t8", "1.1.0")
    shards_a, shards_b = _shards(a), _shards(b)
    assert shards_a and shards_a == shards_b

    config = ml_collections.ConfigDict({"name": "disfa", "data_dir": str(tmp_path / "a")})
    builder = input_pipeline.load_builder(config)  # the one built config, found by the dataset's name
    assert builder.info.splits["part2"].num_examples == 3 and builder.info.metadata["aus"][0] == 1


def test_cli_errors(tmp_path):
    bad = _cli("--dataset=affwild", f"--manual_dir={tmp_path}")
    assert bad.returncode == 1 and "unknown; known: disfa" in bad.stderr
    empty = tmp_path / "only_corrupt"
    R.write_corrupt(str(empty / "Videos_LeftCamera" / "LeftVideoSN001_comp.avi"))
    (empty / "ActionUnit_Labels" / "SN001").mkdir(parents=True)
    (empty / "ActionUnit_Labels" / "SN001" / "SN001_au1.txt").write_text("1,2\n")
    nothing = _cli("--dataset=disfa", f"--manual_dir={empty}", f"--data_dir={tmp_path / 'out'}",
                   "--no-detect")
    assert nothing.returncode == 1
    assert nothing.stderr.strip().splitlines()[-1].startswith("auvmae build-data: error: ")
    assert "no video could be built" in nothing.stderr and "LeftVideoSN001_comp.avi" in nothing.stderr


def test_cli_beam_build_with_a_part_that_fails_entirely(tmp_path):
    """Beam: part2's only video shows no face. The rest is built, exit 0, the summary counts it."""
    pytest.importorskip("apache_beam")
    import numpy as np

    manual = tmp_path / "manual"
    videos = manual / "Videos_LeftCamera"
    R.write_video(str(videos / "LeftVideoSN001_comp.avi"), R.face_frames(0, 6))
    write_labels(str(manual), "SN001", 0, 6)
    R.write_video(str(videos / "LeftVideoSN013_comp.avi"), np.full((6, 64, 80, 3), 90, np.uint8))
    write_labels(str(manual), "SN013", 1, 6)
    run = _cli("--dataset=disfa", f"--manual_dir={manual}", f"--data_dir={tmp_path / 'out'}",
               "--clip_length=8", "--image_size=32",
               "--beam_pipeline_options=runner=DirectRunner,direct_num_workers=1")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert "LeftVideoSN013_comp.avi: skipped: no face found in any of its 6 frames" in run.stderr
    assert "videos_built: 1" in run.stderr and "videos_skipped: 1" in run.stderr
    clips_line = next(line for line in run.stderr.splitlines() if line.strip().startswith("clips:"))
    assert "part1: 1" in clips_line and "part2" not in clips_line


def test_make_builder_options():
    builder = build_data.make_builder("face_videos/mead", "/tmp/unused", clip_length=16, detect=False)
    assert builder.builder_config.name == "mead_t16_nodetect" and builder.builder_config.corpus == "mead"
    assert build_data.make_builder("disfa/right", "/tmp/unused").builder_config.name == "right"
    assert build_data.make_builder("bp4d", "/tmp/unused").builder_config.clip_length == 128
    with pytest.raises(UserError, match="clip_stride"):
        build_data.make_builder("bp4d", "/tmp/unused", clip_length=8, clip_stride=9)
    with pytest.raises(UserError, match="no such folder"):
        build_data.build("bp4d", "/nonexistent/manual", "/tmp/unused")


def test_load_builder_by_config_name(disfa_manual, tmp_path):
    build_data.build("disfa", disfa_manual, str(tmp_path), clip_length=8, image_size=32, detect=False)
    config = ml_collections.ConfigDict({"name": "disfa/left_s32_t8_nodetect", "data_dir": str(tmp_path)})
    builder = input_pipeline.load_builder(config)
    assert builder.info.splits["part1"].num_examples == 6
    config.name = "disfa/left_s64"
    with pytest.raises(UserError, match="disfa/left_s64"):
        input_pipeline.load_builder(config)


def test_tfds_build_finds_each_builder_folder(disfa_manual, tmp_path):
    """What `tfds build data_builders/disfa --manual_dir=...` does (its CLI needs TensorFlow)."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.scripts.cli import build as tfds_build

    for name in ("disfa", "bp4d", "face_videos"):
        cls, kwargs = tfds_build._get_builder_cls_and_kwargs(os.path.join(ROOT, "data_builders", name),
                                                             has_imports=False)
        assert cls.name == name and kwargs == {}
    cls, _ = tfds_build._get_builder_cls_and_kwargs(os.path.join(ROOT, "data_builders", "disfa"),
                                                    has_imports=False)
    manual = tmp_path / "right"
    R.write_video(str(manual / "Video_RightCamera" / "RightVideoSN003_Comp.avi"), R.face_frames(3, 6))
    write_labels(str(manual), "SN003", 0, 6)
    builder = cls(config="right", data_dir=str(tmp_path / "out"))  # tfds build passes no file_format
    assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD  # random access for training
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    assert builder.builder_config.camera == "right" and builder.info.splits["part3"].num_examples == 1
    clip = builder.as_data_source("part3")[0]
    assert clip["valid"][:6].all() and not clip["valid"][6:].any() and len(clip["frames"]) == 128
