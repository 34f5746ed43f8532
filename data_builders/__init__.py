"""TFDS builders of the project (importable without TensorFlow).

`build_synthetic(data_dir, **config)` prepares the synthetic face videos once and
returns the builder; `clips` holds the record-schema helpers the AU builders share.
Importing this package registers the builders with TFDS (`tfds.builder('synthetic_faces')`,
`disfa`, `bp4d`, `face_videos`; the real ones are built by `auvmae build-data`).
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from data_builders import staging
from data_builders.bp4d import Bp4d, Bp4dConfig
from data_builders.disfa import Disfa, DisfaConfig
from data_builders.face_videos import FaceVideos, FaceVideosConfig
from data_builders.synthetic_faces import SyntheticFaces, SyntheticFacesConfig

__all__ = ["Bp4d", "Bp4dConfig", "Disfa", "DisfaConfig", "FaceVideos", "FaceVideosConfig",
           "SyntheticFaces", "SyntheticFacesConfig", "build_synthetic"]


def build_synthetic(data_dir: str, **config_kwargs) -> SyntheticFaces:
    """The `synthetic_faces` builder for `SyntheticFacesConfig(**config_kwargs)`, prepared.

    Builds into `data_dir/synthetic_faces/<config name>/<version>` unless already
    there; configs with different parameters have different names, so they coexist.
    A `gs://` data_dir is built locally and uploaded (`staging.prepare`).
    """
    config = SyntheticFacesConfig(**config_kwargs)
    config = SyntheticFaces.builder_configs.get(config.name, config)  # tfds wants the registered object

    def make(d: str) -> SyntheticFaces:
        return SyntheticFaces(config=config, data_dir=os.path.expanduser(d), file_format="array_record")

    return staging.prepare(make, data_dir, lambda b: b.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)))
