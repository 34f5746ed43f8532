"""Evaluation of a fine-tuned AU detector on a held-out split (F1, accuracy, baseline)."""

from __future__ import annotations

import logging
import math
import os
import re

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from auvmae_jax import input_pipeline, losses, metrics, paths, sharding
from auvmae_jax.errors import UserError
from auvmae_jax.models import inference_jit

log = logging.getLogger("auvmae")


class Evaluator:
    """Predicts every clip of `source` in order and scores per-AU F1 and accuracy.

    Runs under the mesh and logical axis rules in effect (`jax.set_mesh`,
    `nn.logical_axis_rules`), each batch sharded over the batch axes like a training
    batch. Each process reads its own shard of the clips; batches are padded with
    blank clips to one size, so every process runs the same steps, and the scores
    sum every process's counts: the same figures on all of them.
    """

    def __init__(self, model, level, source, sampler, aus: list[int], batch_size: int, seed: int = 0):
        self.model, self.level, self.source, self.sampler = model, level, source, sampler
        self.aus, self.batch_size, self.seed = aus, batch_size, seed
        self._predict = inference_jit(self._probs)

    def _probs(self, params, frames: jax.Array) -> jax.Array:
        _, x = losses.normalize_frames(frames, self.model.cfg.dtype)
        visible = None
        if self.level.mask_ratio > 0:  # patch level: the same masks at every evaluation
            from auvmae_jax.finetune import visible_positions

            visible = visible_positions(jax.random.key(self.seed + 3), x.shape[0], self.model, x.shape,
                                        self.level.mask_ratio)
        return jax.nn.sigmoid(self.model.apply({"params": params}, x, visible))

    def predict(self, params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probs, labels, valid), each `[clips, T, N]`, for the clips of this process's shard."""
        mesh = jax.sharding.get_mesh()
        spec = sharding.batch_sharding(mesh, nn.get_logical_axis_rules())
        shards = math.prod(mesh.shape[a] for a in jax.tree.leaves(tuple(spec.spec)))
        nproc = jax.process_count()
        per_shard = math.ceil(self.batch_size / shards)  # a global batch that divides over the shards
        local = per_shard * shards // nproc
        ds = input_pipeline.make_dataset(self.source, self.sampler, batch_size=local * nproc,
                                         seed=self.seed, repeat=False)
        num_batches = math.ceil(math.ceil(len(self.source) / nproc) / local)
        probs, labels, valid = [], [], []
        it = iter(ds)
        for _ in range(num_batches):
            batch = next(it, None)
            n = 0 if batch is None else len(batch["frames"])
            frames = _pad(batch["frames"] if n else None, local, self._frame_shape())
            out = self._predict(params, sharding.host_batch_to_global({"frames": frames}, spec)["frames"])
            out = multihost_utils.global_array_to_host_local_array(out, mesh, spec.spec)  # own rows
            if n:
                probs.append(np.asarray(out)[:n])
                labels.append(batch["labels"])
                valid.append(batch["valid"])
        if not probs:  # more processes than clips
            return tuple(np.zeros((0, 0, len(self.aus)), np.float32) for _ in range(3))
        return np.concatenate(probs), np.concatenate(labels), np.concatenate(valid)

    def _frame_shape(self):
        s = self.sampler.image_size
        return (self.sampler.num_frames, s, s, 3)

    def evaluate(self, params) -> dict:
        """Scores over the whole split: every process's confusion counts, summed."""
        probs, labels, valid = self.predict(params)
        counts = metrics.confusion_counts(probs, labels, valid)
        if jax.process_count() > 1:
            counts = {k: np.asarray(multihost_utils.process_allgather(np.asarray(v))).sum(0)
                      for k, v in counts.items()}
        return metrics.as_json(metrics.scores_from_counts(counts), self.aus)

    def periodic(self, state, step: int, writer) -> dict:
        result = self.evaluate(state.params)
        scalars = {"eval/f1_mean": result["f1_mean"], "eval/acc_mean": result["acc_mean"],
                   "eval/baseline_f1_mean": result["baseline_f1_mean"]}
        scalars.update({f"eval/f1_{k}": v for k, v in result["f1"].items()})
        writer.write_scalars(step, scalars)
        return result


def _pad(frames: np.ndarray | None, size: int, shape) -> np.ndarray:
    out = np.zeros((size, *shape), np.uint8)
    if frames is not None:
        out[: len(frames)] = frames
    return out


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = paths.join(workdir, "config.json")
    if not paths.exists(path):
        raise UserError(f"{path} not found: is {workdir} a training workdir?")
    return ml_collections.ConfigDict(paths.read_json(path))


def evaluate_workdir(workdir: str, split: str | None = None) -> dict:
    """Evaluate the latest checkpoint of a fine-tuning workdir on its test fold (or `split`).

    Writes `WORKDIR/metrics.json` and `WORKDIR/metrics.md` (another split:
    `metrics_SPLIT.json` and `.md`, so the test fold's scores stay); returns the metrics.
    """
    from auvmae_jax import finetune

    config = load_config(workdir)
    if config.get("task") != "finetune":
        raise UserError(f"{workdir} is not a fine-tuning workdir (task {config.get('task')!r})")
    builder = input_pipeline.load_builder(config.data)
    aus = finetune.aus_of(builder)
    test_split = finetune.splits(config, builder)[1]
    split = split or test_split
    source = input_pipeline.data_source(builder, split)
    model = finetune.build_model(config, len(aus))
    params = finetune.load_checkpoint_params(workdir)
    with sharding.config_mesh(config):
        evaluator = Evaluator(model, finetune.level_settings(config), source,
                              finetune.sampler(config, train=False), aus, config.eval_batch_size, config.seed)
        result = evaluator.evaluate(params)
    result["split"] = split
    name = os.path.basename(paths.resolve(workdir).rstrip("/"))
    stem = "metrics" if split == test_split else "metrics_" + re.sub(r"[^\w+-]+", "_", split).strip("_")
    write_metrics(workdir, result, aus, title=f"{name} ({split})", stem=stem)
    return result


def write_metrics(workdir: str, result: dict, aus: list[int], title: str, stem: str = "metrics") -> None:
    """`WORKDIR/STEM.json` (the metrics) and `STEM.md` (the table, also printed); process 0."""
    if jax.process_index() != 0:
        return
    paths.write_json(paths.join(workdir, f"{stem}.json"), result)
    table = metrics.markdown_table({title: result, "all-positive baseline": metrics.baseline_row(result)},
                                   aus)
    paths.write_text(paths.join(workdir, f"{stem}.md"), table + "\n")
    print(table)
