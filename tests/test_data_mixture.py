"""Read-time mixtures of built datasets: proportions, repetition, specs, and a real built pair."""

import collections

import ml_collections
import pytest

from auvmae_jax import data_mixture, input_pipeline
from auvmae_jax.errors import UserError


def test_proportions_follow_the_weights_and_small_sources_repeat():
    a = [("a", i) for i in range(100)]
    b = [("b", i) for i in range(10)]
    mixed = data_mixture.mix_sources([a, b], [1.0, 1.0])
    assert len(mixed) == 110
    records = [mixed[i] for i in range(len(mixed))]
    counts = collections.Counter(name for name, _ in records)
    assert counts == {"a": 55, "b": 55}
    assert {i for name, i in records if name == "b"} == set(range(10))  # b repeats
    three = data_mixture.mix_sources([a, b], [3.0, 1.0], length=40)
    assert collections.Counter(name for name, _ in (three[i] for i in range(40))) == {"a": 30, "b": 10}
    only_a = data_mixture.mix_sources([a, b], [1.0, 0.0])
    assert {only_a[i][0] for i in range(len(only_a))} == {"a"}


def test_bad_mixtures():
    with pytest.raises(UserError, match="weights"):
        data_mixture.mix_sources([[1]], [-1.0])
    with pytest.raises(UserError, match="no records"):
        data_mixture.mix_sources([[1], []], [1.0, 1.0])
    with pytest.raises(UserError, match="not a number"):
        data_mixture.parse_spec("face_videos/mead:heavy")
    assert data_mixture.parse_spec("face_videos/voxceleb2:2, face_videos/mead") == [
        ("face_videos/voxceleb2", 2.0), ("face_videos/mead", 1.0)]


def test_mixture_of_built_datasets_feeds_the_pipeline(tmp_path):
    import data_builders

    data_dir = str(tmp_path)
    for seed in (0, 1):
        data_builders.build_synthetic(data_dir, image_size=32, clip_length=8, num_subjects=3,
                                      videos_per_subject=1, frames_per_video=16, seed=seed)
    names = sorted(f"synthetic_faces/{p.name}" for p in (tmp_path / "synthetic_faces").iterdir()
                   if not p.name.startswith("."))
    mixed = data_mixture.load_mixture(f"{names[0]}:1,{names[1]}:1", data_dir, split="part1", length=8)
    sampler = input_pipeline.ClipSampler(num_frames=4, temporal_stride=1, image_size=32, train=True)
    batch = next(iter(input_pipeline.make_dataset(mixed, sampler, batch_size=4, seed=0)))
    assert batch["frames"].shape == (4, 4, 32, 32, 3)
    with pytest.raises(UserError, match="not built"):
        data_mixture.load_mixture("face_videos/mead", data_dir)
    # 'builder/config' finds the one build of that config made with other options (as
    # `build-data --no-detect` of face_videos/voxceleb2 writes voxceleb2_nodetect), not one of two.
    prefix = names[0].split("_n")[0]  # synthetic_faces/s32_t8
    with pytest.raises(UserError, match="several builds"):
        input_pipeline.load_builder(ml_collections.ConfigDict({"name": prefix, "data_dir": data_dir}))
    (tmp_path / "synthetic_faces" / names[1].split("/")[1]).rename(tmp_path / "elsewhere")
    builder = input_pipeline.load_builder(ml_collections.ConfigDict({"name": prefix, "data_dir": data_dir}))
    assert builder.info.config_name == names[0].split("/")[1]
    assert len(data_mixture.load_mixture(f"{prefix}:1", data_dir, split="part1")) > 0
