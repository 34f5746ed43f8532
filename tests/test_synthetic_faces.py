"""The synthetic face-video builder: determinism, label structure, splits, reading back."""

import io
import os
import subprocess
import sys

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import data_builders
from data_builders import clips
from data_builders.synthetic_faces import MINORITY_AUS, render, synthetic_faces, timeline

TINY = dict(image_size=32, clip_length=16, num_subjects=6, videos_per_subject=2, frames_per_video=40)


def _shards(builder) -> dict[str, bytes]:
    d = builder.data_dir
    return {f: open(os.path.join(d, f), "rb").read() for f in sorted(os.listdir(d)) if ".array_record" in f}


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Builds of the tiny config: "a" here, "b" in another process (protobuf map order
    differs between processes), "seed1" with another seed."""
    out = {name: data_builders.build_synthetic(str(tmp_path_factory.mktemp(name)), **TINY, seed=seed)
           for name, seed in (("a", 0), ("seed1", 1))}
    other = str(tmp_path_factory.mktemp("b"))
    code = f"import data_builders; data_builders.build_synthetic({other!r}, **{TINY!r}, seed=0)"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
    out["b"] = tfds.builder_from_directory(os.path.join(other, *out["a"].data_dir.split(os.sep)[-3:]))
    return out


def test_builds_without_tensorflow(builds, tmp_path):
    assert "tensorflow" not in sys.modules
    # TensorFlow is not installed here, so a try-import of it would go unnoticed: build and read back
    # in a process where `import tensorflow` raises an error no `except ImportError` swallows.
    fake = tmp_path / "fake" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise RuntimeError("TENSORFLOW-IMPORTED")\n')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "fake"), root,
                                                       os.environ.get("PYTHONPATH", "")]))
    probe = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, capture_output=True,
                           text=True)
    assert probe.returncode != 0 and "TENSORFLOW-IMPORTED" in probe.stderr  # the fake is what imports
    small = dict(TINY, num_subjects=3, videos_per_subject=1)
    code = ("import data_builders\n"
            f"b = data_builders.build_synthetic({str(tmp_path / 'data')!r}, **{small!r})\n"
            "r = b.as_data_source('part1')[0]\nprint('RECORD', len(r['frames']), r['labels'].shape)")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "TENSORFLOW-IMPORTED" not in proc.stderr, proc.stderr[-3000:]
    assert "RECORD 16 (16, " in proc.stdout


def test_same_config_same_bytes(builds):
    a, b = _shards(builds["a"]), _shards(builds["b"])
    assert a and list(a) == list(b)
    for name in a:
        assert a[name] == b[name], name


def test_other_seed_other_frames(builds):
    a = builds["a"].as_data_source("part1")
    c = builds["seed1"].as_data_source("part1")
    assert a[0]["frames"][0] != c[0]["frames"][0]


def test_config_name_encodes_parameters():
    base = synthetic_faces.SyntheticFacesConfig(**TINY)
    assert base.name == "s32_t16_n6x2x40_seed0_q90"
    others = [dict(TINY, seed=1), dict(TINY, image_size=64), dict(TINY, clip_stride=8),
              dict(TINY, jpeg_quality=80), dict(TINY, frames_per_video=41)]
    names = {synthetic_faces.SyntheticFacesConfig(**kw).name for kw in others}
    assert base.name not in names and len(names) == len(others)
    with pytest.raises(ValueError):
        synthetic_faces.SyntheticFacesConfig(clip_length=8, clip_stride=9)


def test_second_call_reuses_the_build(builds):
    first = builds["a"]
    mtimes = {f: os.path.getmtime(os.path.join(first.data_dir, f)) for f in _shards(first)}
    again = data_builders.build_synthetic(os.path.dirname(os.path.dirname(os.path.dirname(first.data_dir))),
                                          **TINY, seed=0)
    assert again.data_dir == first.data_dir
    assert {f: os.path.getmtime(os.path.join(first.data_dir, f)) for f in mtimes} == mtimes


def _all_examples(builder, split):
    src = builder.as_data_source(split)
    return [src[i] for i in range(len(src))]


def test_subjects_dealt_to_disjoint_parts(builds):
    b = builds["a"]
    subjects = {}
    for part in clips.PARTS:
        subjects[part] = {ex["subject"].decode() for ex in _all_examples(b, part)}
        assert subjects[part], part
        if f"{part}_aug" in b.info.splits:
            assert {ex["subject"].decode() for ex in _all_examples(b, f"{part}_aug")} <= subjects[part]
    everyone = [synthetic_faces.subject_id(i) for i in range(TINY["num_subjects"])]
    assert sorted(set.union(*subjects.values())) == everyone
    for s in everyone:
        assert sum(s in subjects[p] for p in clips.PARTS) == 1
    dealt = clips.assign_parts(everyone)
    assert subjects == {p: {s for s in everyone if dealt[s] == p} for p in clips.PARTS}


def test_read_back_through_grain(builds):
    b = tfds.builder_from_directory(builds["a"].data_dir)
    assert b.info.metadata["aus"] == [1, 2, 4, 6, 7, 9, 10, 12, 15, 17, 23, 24, 25, 26]
    assert b.info.metadata["minority_aus"] == list(MINORITY_AUS)

    def decode(ex):
        frames = np.stack([np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in ex["frames"]])
        return dict(ex, frames=frames)

    ds = grain.MapDataset.source(b.as_data_source("part1")).map(decode)
    t, s, n = TINY["clip_length"], TINY["image_size"], len(render.AUS)
    starts = {lo + 1 for lo, _ in clips.iter_clips(TINY["frames_per_video"], t)}  # 1, 17, 33
    seen = set()
    for i in range(len(ds)):
        ex = ds[i]
        assert ex["frames"].shape == (t, s, s, 3) and ex["frames"].dtype == np.uint8
        assert ex["labels"].shape == (t, n) and ex["labels"].dtype == np.uint8
        assert ex["valid"].dtype == np.uint8 and set(np.unique(ex["labels"])) <= {0, 1}
        start = int(ex["start_frame"])
        assert start in starts
        seen.add((ex["video"], start))
        real = min(t, TINY["frames_per_video"] - (start - 1))
        np.testing.assert_array_equal(ex["valid"][:real], 1)
        np.testing.assert_array_equal(ex["valid"][real:], 0)
        np.testing.assert_array_equal(ex["labels"][real:], 0)
        np.testing.assert_array_equal(ex["frames"][real:], ex["frames"][real - 1:real].repeat(t - real, 0))
    assert len(seen) == len(ds) and any(start == 33 for _, start in seen)  # the padded last clips


def test_labels_match_the_generator_and_aug_clips_follow_spans(builds):
    b = builds["a"]
    cfg = b.builder_config
    minority = [render.AUS.index(au) for au in MINORITY_AUS]
    parts = clips.assign_parts([synthetic_faces.subject_id(i) for i in range(cfg.num_subjects)])
    for part in clips.PARTS:
        expected_aug = set()
        for i in range(cfg.num_subjects):
            sid = synthetic_faces.subject_id(i)
            if parts[sid] != part:
                continue
            for v in range(cfg.videos_per_subject):
                lab = timeline.labels_from_intensities(synthetic_faces.video_intensities(cfg, i, v))
                spans = clips.minority_spans(lab, np.ones_like(lab), minority)
                for lo, _ in clips.iter_clips(len(lab), cfg.clip_length, spans=spans):
                    expected_aug.add((f"{sid}_V{v + 1}", lo + 1))
        split = f"{part}_aug"
        got = {(ex["video"].decode(), int(ex["start_frame"])) for ex in _all_examples(b, split)} \
            if split in b.info.splits else set()
        assert got == expected_aug
    for ex in _all_examples(b, "part2"):
        i, v = int(ex["subject"][1:]) - 1, int(ex["video"].decode().split("_V")[1]) - 1
        lab = timeline.labels_from_intensities(synthetic_faces.video_intensities(cfg, i, v))
        lo = int(ex["start_frame"]) - 1
        real = min(cfg.clip_length, len(lab) - lo)
        np.testing.assert_array_equal(ex["labels"][:real], lab[lo:lo + real])


@pytest.fixture(scope="module")
def label_sample():
    """Intensities of 1,500 videos of 96 frames: `[144000, 14]`."""
    return np.concatenate([timeline.sample_au_intensities(np.random.default_rng((7, i)), 96)
                           for i in range(1500)])


def test_label_base_rates_and_minority_aus(label_sample):
    rates = timeline.labels_from_intensities(label_sample).mean(0)
    assert np.all(rates > 0.02) and np.all(rates < 0.35), dict(zip(render.AUS, rates))
    order = [render.AUS[k] for k in np.argsort(rates)]
    assert set(order[:len(MINORITY_AUS)]) == set(MINORITY_AUS)  # minority = the rarest


def test_labels_co_occur(label_sample):
    lab = timeline.labels_from_intensities(label_sample).astype(bool)
    c = render.AUS.index
    lift = (lab[:, c(6)] & lab[:, c(12)]).mean() / (lab[:, c(6)].mean() * lab[:, c(12)].mean())
    assert lift > 2
    lift = (lab[:, c(1)] & lab[:, c(2)]).mean() / (lab[:, c(1)].mean() * lab[:, c(2)].mean())
    assert lift > 2


def test_episodes_ramp_up_and_down(label_sample):
    x = label_sample.reshape(1500, 96, -1)
    rise = x[:, 1:][x[:, :-1] < 0.01]  # the frame after a neutral one
    fall = x[:, :-1][x[:, 1:] < 0.01]  # the frame before a neutral one
    assert rise.max() < 1.6 and fall.max() < 1.6  # no jump from neutral to active
    active = label_sample[label_sample > 0.05]
    assert 0.15 < np.mean(active < timeline.LABEL_THRESHOLD) < 0.6  # ramps carry sub-threshold frames
    lab = timeline.labels_from_intensities(x[..., render.AUS.index(12)]).reshape(-1)
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, lab, 0])))[::2]
    assert runs.mean() > 8  # episodes, not flicker


def test_render_is_deterministic_and_each_au_shows():
    ident = render.sample_identity(np.random.default_rng(3))
    intens = np.zeros((1 + len(render.AUS), len(render.AUS)), np.float32)
    intens[np.arange(1, len(render.AUS) + 1), np.arange(len(render.AUS))] = 5.0
    frames = render.render_frames(ident, intens, 64, np.random.default_rng(1))
    assert frames.shape == (15, 64, 64, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, render.render_frames(ident, intens, 64, np.random.default_rng(1)))
    neutral = render.render_frames(ident, np.zeros_like(intens), 64, np.random.default_rng(1)).astype(int)
    region = {1: "upper", 2: "upper", 4: "upper", 6: "upper", 7: "upper", 9: "middle"}
    bands = {"upper": (0, 31), "middle": (22, 38), "lower": (38, 64)}  # rows of 64
    for k, au in enumerate(render.AUS):
        rows, _ = np.nonzero(np.abs(frames[k + 1] - neutral[k + 1]).max(-1) > 30)
        assert len(rows) >= 10, au  # several pixels change clearly at full intensity
        lo, hi = bands[region.get(au, "lower")]
        assert lo <= rows.mean() < hi, (au, rows.mean())  # in the right part of the face
