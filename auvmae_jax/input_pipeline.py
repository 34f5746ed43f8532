"""grain pipelines over TFDS ArrayRecord clips (the DATA.md record schema).

A record holds `frames` (JPEG bytes per frame) and, for labelled datasets,
`labels`/`valid` `[T, N]`. The pipeline samples `num_frames` frames with a
temporal stride, decodes only those, draws one random resized crop and flip per
clip, and batches uint8 frames with the crop boxes; cropping (`augment`) and
normalisation happen on the device.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from typing import Any

import grain
import jax
import numpy as np
from etils import epath
from PIL import Image

from auvmae_jax import data_mixture, paths
from auvmae_jax.errors import UserError

log = logging.getLogger("auvmae")


# ---------------------------------------------------------------------------- sources


def load_builder(data_cfg: Any):
    """The TFDS builder named by the data config, built first if it is the synthetic one.

    `data_cfg.name`: 'synthetic_faces' (built on demand into `data_dir` from
    `data_cfg.synthetic`), the name of a builder in `data_builders`, or the path
    of a prepared builder directory (`.../name/config/version`).
    """
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    data_dir = paths.resolve(data_cfg.data_dir)  # local (`~` expanded) or gs://
    if data_cfg.name == "synthetic_faces":
        import data_builders

        return data_builders.build_synthetic(data_dir, **dict(data_cfg.synthetic))
    if epath.Path(paths.resolve(data_cfg.name)).is_dir():  # a prepared builder directory
        return tfds.builder_from_directory(data_cfg.name)
    if "/" in data_cfg.name:  # 'builder/config', or a variant of it built with options: not registered
        return data_mixture.built_builder(data_cfg.name, data_dir)
    import data_builders  # noqa: F401  (registers the project's builders)

    try:
        builder = tfds.builder(data_cfg.name, data_dir=data_dir)
    except Exception as e:  # tfds raises several types for unknown names/configs
        raise UserError(f"dataset {data_cfg.name!r} in {data_dir}: {e}") from e
    if not builder.is_prepared():  # the one config built with other options (`auvmae build-data`)
        return data_mixture.built_builder(data_cfg.name, data_dir)
    return builder


def data_source(builder, split: str):
    """Random-access source of one split; a clear error if it is missing or empty."""
    where = f"dataset {builder.data_dir}"
    try:
        num_examples = builder.info.splits[split].num_examples
    except Exception as e:  # unknown split names raise KeyError or ValueError
        raise UserError(f"{where}: cannot read split {split!r} ({e}); "
                        f"splits: {', '.join(sorted(builder.info.splits))}") from e
    if num_examples == 0:
        raise UserError(f"{where}: split {split!r} has no examples")
    return builder.as_data_source(split)


# ---------------------------------------------------------------------------- transforms


@dataclasses.dataclass(frozen=True)
class ClipSampler:
    """Record -> `{'frames': uint8 [T, S, S, 3], ('labels', 'valid': uint8 [T*stride, N])}`.

    Training picks a random temporal start, a random resized crop (area `crop_scale`
    of the frame, aspect ratio `crop_ratio`) shared by every frame, and a
    horizontal flip with probability 1/2; evaluation takes the first frames, no
    crop and no flip. Labels cover every frame of the sampled span.

    The crop is drawn here and applied on the device (`augment`): a training example
    holds the decoded frames as stored and `crop`, float32 `[4]`, the box
    `(x0, y0, x1, y1)` in pixels (`x0 > x1`: flipped). Only frames stored at another
    size than `image_size` are cropped and resized here, with the identity box.

    `repeats = r > 1` (training; repeated sampling as in VideoMAE V2 and MAE-ST): the
    frames are decoded once and cut `r` times with their own crops and flips. The
    example holds the frames once, `crop` `[r, 4]` and the labels once; the device makes
    the views (`augment.apply_crops`), each with its own mask. JPEG decoding, the input
    pipeline's main cost, is then paid, and the frames copied and sent, once per `r`
    samples. (Frames cropped on the host come per view: `[r, T, S, S, 3]`.)
    """

    num_frames: int
    temporal_stride: int
    image_size: int
    train: bool
    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    with_labels: bool = False
    repeats: int = 1

    @property
    def views(self) -> int:
        """Examples cut from one decoded clip: `repeats` in training, 1 in evaluation."""
        return self.repeats if self.train else 1

    def __call__(self, record: dict[str, Any], rng: np.random.Generator | None = None) -> dict:
        frames = record["frames"]
        span = (self.num_frames - 1) * self.temporal_stride + 1
        if len(frames) < span:
            raise UserError(
                f"clip of {len(frames)} frames is shorter than {self.num_frames} frames at stride "
                f"{self.temporal_stride}; rebuild the data with a longer clip_length"
            )
        start = int(rng.integers(0, len(frames) - span + 1)) if self.train else 0
        ids = range(start, start + span, self.temporal_stride)
        images = [decode_jpeg(frames[i]) for i in ids]
        size = (self.image_size, self.image_size)
        # Frames stored at image_size go as they are (the device crops); others are resized here.
        clip = stack_images(images) if images[0].size == size else None
        views = [self._view(images, clip, rng) for _ in range(self.views)]
        if self.views == 1:
            example = views[0]
        else:  # the frames once where the device crops them
            example = {"frames": clip if clip is not None else np.stack([v["frames"] for v in views]),
                       "crop": np.stack([v["crop"] for v in views])}
        if self.with_labels:
            full = range(start, start + self.num_frames * self.temporal_stride)
            for key in ("labels", "valid"):
                arr = np.asarray(record[key])
                # Past the clip's end (stride > 1) labels are unknown: valid = 0.
                padded = np.concatenate([arr, np.zeros((len(full), arr.shape[1]), arr.dtype)])
                example[key] = padded[full.start:full.stop].astype(np.uint8)
        return example

    def _view(self, images: list, clip: np.ndarray | None, rng: np.random.Generator | None) -> dict:
        """One view: `frames` uint8 `[T, S, S, 3]` and, in training, its `crop` box."""
        size = (self.image_size, self.image_size)
        if not self.train:
            return {"frames": clip if clip is not None else
                    stack_images([im.resize(size, Image.BILINEAR) for im in images])}
        x0, y0, x1, y1 = self._crop_box(images[0].size, rng)
        flip = self.flip and rng.random() < 0.5
        if clip is not None:  # cropped on the device (augment.resized_crop); x0 > x1 mirrors
            return {"frames": clip, "crop": np.asarray((x1, y0, x0, y1) if flip else (x0, y0, x1, y1),
                                                       np.float32)}
        out = stack_images([im.resize(size, Image.BILINEAR, box=(x0, y0, x1, y1)) for im in images])
        return {"frames": np.ascontiguousarray(out[:, :, ::-1] if flip else out),
                "crop": np.asarray((0, 0, *size), np.float32)}  # the identity box

    def _crop_box(self, size: tuple[int, int], rng: np.random.Generator):
        """Random resized crop box (x0, y0, x1, y1), torchvision's sampling rule."""
        width, height = size
        area = width * height
        for _ in range(10):
            target = area * rng.uniform(*self.crop_scale)
            ratio = np.exp(rng.uniform(np.log(self.crop_ratio[0]), np.log(self.crop_ratio[1])))
            w = int(round(np.sqrt(target * ratio)))
            h = int(round(np.sqrt(target / ratio)))
            if 0 < w <= width and 0 < h <= height:
                x0 = int(rng.integers(0, width - w + 1))
                y0 = int(rng.integers(0, height - h + 1))
                return (x0, y0, x0 + w, y0 + h)
        return (0, 0, width, height)


def stack_images(images: list[Image.Image]) -> np.ndarray:
    """uint8 `[T, H, W, 3]` of equally sized RGB images, each written once into the array.

    `np.stack([np.asarray(im) ...])` makes a bytes copy of each image, an array of it and then
    the stack: 16 JPEG frames of 224 px took 7.6 ms to decode and stack that way, 4.3 ms this
    way (the decode itself, lazy in PIL, happens here too).
    """
    width, height = images[0].size
    out = np.empty((len(images), height, width, 3), np.uint8)
    for i, image in enumerate(images):
        out[i] = image
    return out


def decode_jpeg(data) -> Image.Image:
    """JPEG bytes -> RGB image (greyscale or CMYK frames converted)."""
    image = Image.open(io.BytesIO(bytes(data)))
    return image if image.mode == "RGB" else image.convert("RGB")


# ---------------------------------------------------------------------------- datasets


def make_dataset(
    source,
    sampler: ClipSampler,
    *,
    batch_size: int,
    seed: int,
    worker_count: int = 0,
    read_threads: int = 16,
    repeat: bool = True,
    shard_by_process: bool = True,
) -> grain.IterDataset:
    """Per-process batches of `batch_size // process_count` examples (with `r` views per
    clip, `data.repeats`: that many / r clips, each with its r crop boxes).

    Each process reads its own strided shard of the records. Training shuffles
    (re-shuffled every epoch) and repeats forever. Batches are made by
    `read_threads` threads, at most that many ready or in flight (grain's default
    would buffer 500 batches: gigabytes of 224-pixel clips); `worker_count > 0`
    runs that in each of that many worker processes.
    """
    ds = grain.MapDataset.source(source)
    if shard_by_process and jax.process_count() > 1:
        ds = ds[jax.process_index():: jax.process_count()]
    nproc = jax.process_count() if shard_by_process else 1
    if batch_size % nproc:
        raise UserError(f"batch_size {batch_size} is not divisible by {nproc} processes")
    local_batch = batch_size // nproc
    repeats = sampler.views
    if local_batch % repeats:
        raise UserError(f"data.repeats={repeats} does not divide the per-process batch of {local_batch}")
    if repeat and len(ds) < local_batch:
        log.warning("only %d clips for a per-process batch of %d: clips repeat in a batch",
                    len(ds), local_batch)
    ds = ds.seed(seed)
    if repeat:
        ds = ds.shuffle().repeat()
    ds = ds.random_map(sampler) if sampler.train else ds.map(sampler)
    ds = ds.batch(local_batch // repeats, drop_remainder=repeat)  # clips; their views on the device
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=read_threads))
    if worker_count > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (defaults suffice)
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return it


def sampler_from_config(data_cfg: Any, *, train: bool, with_labels: bool = False) -> ClipSampler:
    return ClipSampler(
        num_frames=data_cfg.num_frames,
        temporal_stride=data_cfg.temporal_stride,
        image_size=data_cfg.image_size,
        train=train,
        crop_scale=tuple(data_cfg.crop_scale),
        crop_ratio=tuple(data_cfg.crop_ratio),
        flip=data_cfg.flip,
        with_labels=with_labels,
        repeats=data_cfg.get("repeats", 1),
    )
