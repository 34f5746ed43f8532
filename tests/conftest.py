"""Shared fixtures: tiny configs and small synthetic face datasets made by the tests."""

from __future__ import annotations

import os

# Quiet TF-free TFDS and keep XLA on one host device unless a test asks for more
# (multi-device tests start their own subprocess with the flag set).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# No persistent compilation cache (the CLI's default is ~/.cache/auvmae/jax): tests compile afresh.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "")

import pytest  # noqa: E402


def free_port() -> int:
    """A free TCP port on the loopback address (coordinators, emulators)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


TINY_SYNTHETIC = dict(image_size=32, clip_length=8, num_subjects=6, videos_per_subject=1,
                      frames_per_video=32, seed=0)


def mini_pretrain_config(data_dir: str):
    """configs/pretrain.py:mini shrunk to 4x32x32 clips: a step takes milliseconds."""
    from configs import pretrain

    config = pretrain.get_config("mini")
    config.data.data_dir = data_dir
    config.data.synthetic = dict(TINY_SYNTHETIC)
    config.data.num_frames = 4
    config.data.image_size = 32
    config.data.crop_scale = (0.7, 1.0)
    config.model.patch_size = 8
    config.model.dtype = "float32"
    config.mask_ratio = 0.75
    config.batch_size = 8
    config.num_train_steps = 6
    config.optimizer.base_lr = 0.1  # peak lr 3e-3 at batch 8
    config.optimizer.warmup_steps = 1
    config.log_every = 1
    config.eval_every = 1000
    config.checkpoint_every = 2
    config.prefetch_to_device = 1
    return config


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> str:
    """A tiny synthetic face-video dataset, built once per test session."""
    import data_builders

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    data_builders.build_synthetic(data_dir, **TINY_SYNTHETIC)
    return data_dir


def mini_finetune_config(data_dir: str, level: str = "video"):
    """configs/finetune.py:synthetic,LEVEL,1 shrunk to the tiny dataset and the mini model."""
    from configs import finetune

    config = finetune.get_config(f"synthetic,{level},1")
    config.data.data_dir = data_dir
    config.data.synthetic = dict(TINY_SYNTHETIC)
    config.clip_length = TINY_SYNTHETIC["clip_length"]
    config.data.image_size = 32
    config.model.preset = "mini"
    config.model.patch_size = 8
    config.model.dtype = "float32"
    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_train_steps = 6
    config.optimizer.base_lr = 0.1
    config.optimizer.warmup_steps = 1
    config.log_every = 1
    config.eval_every = 1000
    config.checkpoint_every = 2
    config.prefetch_to_device = 1
    return config
