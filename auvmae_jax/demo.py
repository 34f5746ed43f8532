"""`auvmae demo`: the main job end to end on the built-in synthetic face videos."""

from __future__ import annotations

import logging
import os

from auvmae_jax import pretrain

log = logging.getLogger("auvmae")


def run(workdir: str) -> dict:
    """Build synthetic data into WORKDIR/data, pre-train a tiny model into WORKDIR/pretrain."""
    from configs import demo as demo_config

    workdir = os.path.abspath(os.path.expanduser(workdir))
    config = demo_config.get_config()
    config.pretrain.data.data_dir = os.path.join(workdir, "data")
    pre_dir = os.path.join(workdir, "pretrain")
    _, history = pretrain.train(config.pretrain, pre_dir)
    first, last = history[0]["loss"], history[-1]["loss"]
    print(f"\nPre-training: loss {first:.4f} -> {last:.4f} over {history[-1]['step']} steps")
    print(f"  checkpoints:      {os.path.join(pre_dir, 'checkpoints')}")
    print(f"  TensorBoard logs: tensorboard --logdir {os.path.join(pre_dir, 'tensorboard')}")
    print(f"  reconstructions:  {os.path.join(pre_dir, 'reconstructions')}")
    return {"pretrain_loss": (first, last)}
