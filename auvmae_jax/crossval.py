"""3-fold subject-independent cross-validation and the loss ablation (paper Table 3).

On BP4D and DISFA the tables written end with the paper's figures for the same setting
(`published.py`): Table 1/2 below a video-level cross-validation, Table 3's column of the
level below an ablation.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

import jax

from auvmae_jax import evaluation, finetune, input_pipeline, metrics, paths, published

log = logging.getLogger("auvmae")

# Table 3 rows: which knowledge terms are on (their lambdas come from the config).
ABLATION_ROWS = {"baseline": (False, False), "+intra": (True, False), "+inter": (False, True),
                 "+all": (True, True)}


def run_folds(config: Any, workdir: str) -> dict:
    """Fine-tune and evaluate folds 1-3 into `workdir/foldK`; the fold mean in crossval.json."""
    results = []
    for fold in (1, 2, 3):
        fold_config = copy.deepcopy(config)
        fold_config.fold = fold
        fold_dir = os.path.join(workdir, f"fold{fold}")
        finetune.train(fold_config, fold_dir)
        results.append(evaluation.evaluate_workdir(fold_dir))
    mean = metrics.average_folds(results)
    aus = _aus(config)
    rows = {f"fold {k}": r for k, r in zip((1, 2, 3), results)}
    rows["mean"] = mean
    rows["all-positive baseline (mean)"] = metrics.baseline_row(mean)
    table = metrics.markdown_table(rows, aus)
    if config.get("level") == "video" and config.get("dataset") in published.F1:
        table += "\n\n" + published.comparison_table(config.dataset, mean, aus)
    if jax.process_index() == 0:
        paths.write_json(paths.join(workdir, "crossval.json"), {"folds": results, "mean": mean})
        paths.write_text(paths.join(workdir, "crossval.md"), table + "\n")
    print(table)
    return mean


def run_ablation(config: Any, workdir: str) -> dict:
    """The four rows of Table 3, each a 3-fold cross-validation, into `workdir/<row>`."""
    rows = {}
    for name, (intra, inter) in ABLATION_ROWS.items():
        row_config = copy.deepcopy(config)
        row_config.loss.l_intra = config.loss.l_intra if intra else 0.0
        row_config.loss.l_inter = config.loss.l_inter if inter else 0.0
        log.info("ablation row %s: l_intra=%g l_inter=%g", name, row_config.loss.l_intra,
                 row_config.loss.l_inter)
        rows[name] = run_folds(row_config, os.path.join(workdir, name.lstrip("+")))
    table = metrics.markdown_table(rows, _aus(config))
    paper = published.ablation_table(config.get("dataset", ""), config.get("level", ""),
                                     {name: row["f1_mean"] for name, row in rows.items()})
    if paper:
        table += "\n\n" + paper
    if jax.process_index() == 0:
        paths.write_json(paths.join(workdir, "ablation.json"), rows)
        paths.write_text(paths.join(workdir, "ablation.md"), table + "\n")
    print("\nAblation (mean F1 over 3 folds):\n" + table)
    return rows


def _aus(config: Any) -> list[int]:
    return finetune.aus_of(input_pipeline.load_builder(config.data))
