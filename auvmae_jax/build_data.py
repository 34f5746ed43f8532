"""`auvmae build-data`: the real datasets from their shipped folders into ArrayRecord clips.

`--dataset` names a builder config: `disfa` (left camera), `disfa/right`, `bp4d`,
`face_videos/<corpus>` (voxceleb2, celebv_hq, faceforensics, vfhq, mead). The
options change the config (and so its name: builds with other options coexist in
`data_dir`). Videos are prepared in `workers` local processes, or on Apache Beam
when `beam_pipeline_options` is given (e.g. `runner=DirectRunner,direct_num_workers=4`,
or a Dataflow/Spark/Flink runner with its options). TensorFlow is not needed.
"""

from __future__ import annotations

import logging
import os

from auvmae_jax import paths
from auvmae_jax.errors import UserError

log = logging.getLogger("auvmae")

DATASETS = ("disfa", "disfa/right", "bp4d", "face_videos/voxceleb2", "face_videos/celebv_hq",
            "face_videos/faceforensics", "face_videos/vfhq", "face_videos/mead")


def make_builder(dataset: str, data_dir: str, *, clip_length: int | None = None,
                 clip_stride: int | None = None, image_size: int = 224, detect: bool = True,
                 jpeg_quality: int = 90, align: bool = True):
    """The builder of `dataset` (see `DATASETS`) with these options, not yet prepared.

    `align` (with `detect`) rotates the face crops so that the eyes are horizontal."""
    import data_builders

    name, _, variant = dataset.partition("/")
    options = dict(image_size=image_size, detect_faces=detect, jpeg_quality=jpeg_quality,
                   clip_stride=clip_stride, align_faces=align)
    if clip_length is not None:
        options["clip_length"] = clip_length
    if name == "disfa" and variant in ("", "left", "right"):
        cls, config_cls, options["camera"] = data_builders.Disfa, data_builders.DisfaConfig, variant or "left"
    elif name == "bp4d" and not variant:
        cls, config_cls = data_builders.Bp4d, data_builders.Bp4dConfig
    elif name == "face_videos" and variant in data_builders.face_videos.CORPORA:
        cls, config_cls, options["corpus"] = data_builders.FaceVideos, data_builders.FaceVideosConfig, variant
    else:
        raise UserError(f"--dataset={dataset}: unknown; known: {', '.join(DATASETS)}")
    try:
        config = config_cls(**options)
    except ValueError as e:
        raise UserError(f"--dataset={dataset}: {e}") from None
    config = cls.builder_configs.get(config.name, config)  # tfds wants the registered object
    return cls(config=config, data_dir=os.path.expanduser(data_dir), file_format="array_record")


def beam_options(text: str):
    """Beam `PipelineOptions` from 'key=value,key=value' (as `tfds build --beam_pipeline_options`)."""
    try:
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError:
        raise UserError("--beam_pipeline_options needs Apache Beam: pip install 'auvmae-jax[beam]'") from None
    flags = [f"--{kv.strip().lstrip('-')}" for kv in text.split(",") if kv.strip()]
    return PipelineOptions(flags)


def build(dataset: str, manual_dir: str, data_dir: str, *, workers: int = 1,
          beam_pipeline_options: str = "", **options):
    """Prepares `dataset` from `manual_dir` into `data_dir`; returns the builder.

    Already prepared: returns it untouched. The builder's `report` (when built here)
    holds the problems and counts; the summary is logged. Raises `UserError` when
    the manual dir is missing or nothing could be built.
    """
    import tensorflow_datasets as tfds

    from data_builders import staging

    manual_dir = os.path.expanduser(manual_dir)
    if not os.path.isdir(manual_dir):
        raise UserError(f"--manual_dir={manual_dir}: no such folder")
    builder = make_builder(dataset, data_dir, **options)
    if builder.is_prepared():
        log.info("%s is already built in %s", dataset, builder.data_dir)
        return builder
    if workers < 1:
        raise UserError(f"--workers={workers}: must be >= 1")
    if not os.listdir(manual_dir):
        raise UserError(f"--manual_dir={manual_dir} is empty: place the dataset's folders there as they ship "
                        "(layouts in DATA.md and in the builder's docstring)")
    if not paths.is_url(data_dir):
        try:
            os.makedirs(os.path.expanduser(data_dir), exist_ok=True)
        except OSError as e:
            raise UserError(f"--data_dir={data_dir}: cannot create it ({e.strerror or e})") from e
    elif beam_pipeline_options and "DirectRunner" not in beam_pipeline_options:
        raise UserError(f"--data_dir={data_dir}: ArrayRecord writes local files only, so a URL data_dir is "
                        "built locally then uploaded; a distributed Beam runner needs a data_dir on storage "
                        "its workers share (copy it to the bucket afterwards)")
    tfds.disable_progress_bar()
    config = tfds.download.DownloadConfig(
        manual_dir=manual_dir, try_download_gcs=False,
        beam_options=beam_options(beam_pipeline_options) if beam_pipeline_options else None)
    log.info("building %s (config %s) from %s", dataset, builder.builder_config.name, manual_dir)

    def prepare(local):
        local.num_workers = workers
        local.download_and_prepare(download_config=config)

    builder = staging.prepare(lambda d: make_builder(dataset, d, **options), data_dir, prepare)
    splits = ", ".join(f"{k}: {v.num_examples}" for k, v in sorted(builder.info.splits.items()))
    log.info("%s\n  clips: %s\n  written to %s", builder.report.summary(), splits, builder.data_dir)
    return builder
