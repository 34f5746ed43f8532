"""Weighted mixtures of built datasets, made at read time (the paper's joint face-video corpus).

The face-video corpora are built one config each (`auvmae build-data
--dataset=face_videos/<corpus>`); pre-training on all of them mixes their
records with weights here, so a weight change needs no rebuild. The mixture is a
random-access source like one split's: `input_pipeline.make_dataset` takes it as
it takes `builder.as_data_source(split)`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import grain
from etils import epath

from auvmae_jax import paths
from auvmae_jax.errors import UserError


def mix_sources(sources: Sequence, weights: Sequence[float], length: int | None = None) -> grain.MapDataset:
    """Records of `sources` in proportion to `weights`, `length` of them (default: all sources' total).

    A source smaller than its share repeats; positions interleave the sources
    deterministically (grain's `MapDataset.mix`), and the training pipeline's
    shuffle then mixes them over the whole epoch.
    """
    if len(sources) != len(weights) or not sources:
        raise UserError(f"mixture: {len(sources)} sources for {len(weights)} weights")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise UserError(f"mixture: weights must be >= 0 with a positive sum, got {list(weights)}")
    if any(len(s) == 0 for s in sources):
        raise UserError("mixture: a source has no records")
    total = sum(weights)
    length = sum(len(s) for s in sources) if length is None else length
    kept = [(s, w / total) for s, w in zip(sources, weights) if w > 0]
    datasets = [grain.MapDataset.source(s).repeat(max(1, math.ceil(w * length / len(s)))) for s, w in kept]
    mixed = grain.MapDataset.mix(datasets, [w for _, w in kept])
    return mixed[:length] if len(mixed) > length else mixed


def parse_spec(spec: str) -> list[tuple[str, float]]:
    """'face_videos/voxceleb2:2,face_videos/mead:1' -> [(name, weight), ...] (weight 1 if left out)."""
    out = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        name, _, weight = part.rpartition(":") if ":" in part else (part, "", "1")
        try:
            out.append((name, float(weight)))
        except ValueError:
            raise UserError(f"mixture {spec!r}: weight {weight!r} of {name} is not a number") from None
    if not out:
        raise UserError(f"mixture {spec!r}: no dataset named")
    return out


def built_builder(name: str, data_dir: str):
    """The prepared builder `name`: a builder directory, or `builder/config` built in `data_dir`
    (its newest version; configs with derived names are not registered, so read from disk).

    Where `name` itself is not built, the one build that it names short is taken: for
    `builder/config`, the config built with other options (`auvmae build-data --no-detect` of
    `face_videos/voxceleb2` writes `face_videos/voxceleb2_nodetect`); for `builder`, its one
    built config. With several such builds the error lists them.
    """
    import tensorflow_datasets as tfds

    given = epath.Path(paths.resolve(name))  # a builder directory (local or gs://), or a name
    if (given / "dataset_info.json").exists():
        return tfds.builder_from_directory(str(given))
    root = epath.Path(paths.resolve(data_dir))
    is_dir = given.is_dir()
    folder = given if is_dir else root / name
    versions = _versions(folder)
    if not versions and not is_dir:
        candidates = folder.parent.glob(folder.name + "_*") if "/" in name else folder.glob("*")
        variants = sorted((c for c in candidates if _versions(c)), key=str)
        if len(variants) > 1:
            names = ", ".join(str(c)[len(str(root)) + 1:] for c in variants)
            raise UserError(f"dataset {name!r}: several builds in {data_dir}: {names} (set data.name to one)")
        versions = _versions(variants[0]) if variants else []
    if not versions:
        raise UserError(f"dataset {name!r} is not built in {data_dir}: run `auvmae build-data`")
    return tfds.builder_from_directory(str(versions[-1].parent))


def _versions(folder: epath.Path) -> list[epath.Path]:
    """`folder/<version>/dataset_info.json` files, oldest version first."""
    def version(path: epath.Path) -> list[int]:
        return [int(x) for x in re.findall(r"\d+", path.parent.name)]

    return sorted(folder.glob("*/dataset_info.json"), key=version)


def load_mixture(spec: str, data_dir: str, split: str = "train",
                 length: int | None = None) -> grain.MapDataset:
    """The mixture `spec` (see `parse_spec`) of datasets built in `data_dir` (see `built_builder`)."""
    sources, weights = [], []
    for name, weight in parse_spec(spec):
        builder = built_builder(name, data_dir)
        if split not in builder.info.splits:
            raise UserError(f"mixture: dataset {builder.data_dir} has no split {split!r}")
        sources.append(builder.as_data_source(split))
        weights.append(weight)
    return mix_sources(sources, weights, length)
