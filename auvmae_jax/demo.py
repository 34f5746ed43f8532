"""`auvmae demo`: the main job end to end on the built-in synthetic face videos.

Builds the data into WORKDIR/data, pre-trains a tiny VideoMAE into WORKDIR/pretrain,
fine-tunes it at video level with all three losses into WORKDIR/finetune, and scores
the held-out subjects of fold 1 against the all-positive baseline. The workdirs are
ordinary ones: `auvmae evaluate --workdir=WORKDIR/finetune` and
`--config.init_from=WORKDIR/pretrain` take them as they are. The CLI passes
`configs/demo.py` with the command line's `--config.KEY=VALUE` overrides (or
another `--config` file of the same shape).
"""

from __future__ import annotations

import logging
import os

import ml_collections

from auvmae_jax import evaluation, finetune, paths, pretrain

log = logging.getLogger("auvmae")


def run(workdir: str, config: ml_collections.ConfigDict | None = None) -> dict:
    """The demo with `config` (default: `configs/demo.py`), its `pretrain` and `finetune` sections.

    Empty `data.data_dir`s become WORKDIR/data and an empty `finetune.init_from` WORKDIR/pretrain
    (`configs/demo.py` leaves them empty; an override stands).
    """
    from configs import demo as demo_config

    workdir = paths.resolve(workdir)
    if config is None:
        config = demo_config.get_config()
    data_dir = os.path.join(workdir, "data")
    pre_dir, ft_dir = os.path.join(workdir, "pretrain"), os.path.join(workdir, "finetune")

    config.pretrain.data.data_dir = config.pretrain.data.data_dir or data_dir
    _, pre_history = pretrain.train(config.pretrain, pre_dir)

    config.finetune.data.data_dir = config.finetune.data.data_dir or data_dir
    config.finetune.init_from = config.finetune.init_from or pre_dir
    _, ft_history = finetune.train(config.finetune, ft_dir)
    result = evaluation.evaluate_workdir(ft_dir)

    print(f"\nPre-training: reconstruction {_losses(pre_history, 4)}")
    print(f"  checkpoints:      {os.path.join(pre_dir, 'checkpoints')}")
    print(f"  TensorBoard logs: tensorboard --logdir {workdir}")
    print(f"  reconstructions:  {os.path.join(pre_dir, 'reconstructions')}")
    print(f"Fine-tuning (video level, all losses): {_losses(ft_history, 3)}")
    print(f"  held-out subjects ({result['split']}): mean F1 {100 * result['f1_mean']:.1f} vs "
          f"all-positive baseline {100 * result['baseline_f1_mean']:.1f}; "
          f"mean accuracy {100 * result['acc_mean']:.1f}")
    print(f"  metrics: {os.path.join(ft_dir, 'metrics.json')}, table: {os.path.join(ft_dir, 'metrics.md')}")
    pre_loss = (pre_history[0]["loss"], pre_history[-1]["loss"]) if pre_history else None
    return {"pretrain_loss": pre_loss, "f1_mean": result["f1_mean"],
            "baseline_f1_mean": result["baseline_f1_mean"]}


def _losses(history: list[dict], digits: int) -> str:
    """'loss A -> B by step N' over this run's logged steps; a finished workdir has none."""
    if not history:
        return "loss: nothing left to train (the workdir's last checkpoint is its final step)"
    first, last = history[0], history[-1]
    if len(history) == 1:
        return f"loss {last['loss']:.{digits}f} at step {last['step']} (the one step logged)"
    return f"loss {first['loss']:.{digits}f} -> {last['loss']:.{digits}f} by step {last['step']}"
