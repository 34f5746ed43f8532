"""Heat maps of the AU-pair knowledge: priors vs learned (the paper's Figs. 3, 4 and 6)."""

from __future__ import annotations

import io
import logging
import os
from typing import Any

import jax
import numpy as np

from auvmae_jax import paths, sharding

log = logging.getLogger("auvmae")

STATE_NAMES = ["00", "01", "10", "11"]  # (y_i, y_j) of a frame


def fsm_grid(k_pair: np.ndarray) -> np.ndarray:
    """`[16]` transition frequencies of one pair -> `[4, 4]` (state at t, state at t+1).

    State s = s0 + 2 s1 + 4 s2 + 8 s3 (SPEC §2.3), so `s = now + 4 * next` with
    `now = y_i(t) + 2 y_j(t)`; rows and columns are ordered 00, 01, 10, 11 as
    `y_i y_j`.
    """
    grid = np.asarray(k_pair).reshape(4, 4).T  # [now, next], now = y_i + 2 y_j
    order = [0, 2, 1, 3]  # y_i + 2 y_j for "00", "01", "10", "11" written as y_i y_j
    return grid[np.ix_(order, order)]


def _panels(mats: list[np.ndarray], titles: list[str], ticks: tuple[list[str], list[str]],
            path: str, labels: tuple[str, str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(mats), figsize=(5.2 * len(mats), 4.6), squeeze=False)
    for ax, mat, title in zip(axes[0], mats, titles):
        im = ax.imshow(mat, vmin=0, vmax=max(1e-6, float(np.max(mats))), cmap="viridis")
        ax.set_title(title)
        ax.set_xticks(range(len(ticks[1])), ticks[1], rotation=90 if len(ticks[1]) > 4 else 0)
        ax.set_yticks(range(len(ticks[0])), ticks[0])
        ax.set_xlabel(labels[1])
        ax.set_ylabel(labels[0])
        if mat.shape[0] <= 16:
            for (r, c), v in np.ndenumerate(mat):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6 if mat.shape[0] > 8 else 8,
                        color="white" if v < 0.5 * np.max(mats) else "black")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    paths.write_bytes(path, buf.getvalue())
    plt.close(fig)
    return path


def draw_intra(prior: np.ndarray, learned: np.ndarray | None, aus: list[int], path: str) -> str:
    names = [f"AU{a}" for a in aus]
    mats, titles = [prior], ["prior K_intra (training labels)"]
    if learned is not None:
        mats.append(np.asarray(learned))
        titles.append("learned C (predictions)")
    return _panels(mats, titles, (names, names), path, ("AU i", "AU j"))


def draw_inter(prior: np.ndarray, learned: np.ndarray | None, aus: list[int], pair: tuple[int, int],
               path: str) -> str:
    i, j = aus.index(pair[0]), aus.index(pair[1])
    mats = [fsm_grid(prior[i, j])]
    titles = [f"prior K_inter AU{pair[0]}-AU{pair[1]}"]
    if learned is not None:
        mats.append(fsm_grid(np.asarray(learned)[i, j]))
        titles.append(f"learned S AU{pair[0]}-AU{pair[1]}")
    states = [f"{s}" for s in STATE_NAMES]
    return _panels(mats, titles, (states, states), path,
                   (f"(AU{pair[0]}, AU{pair[1]}) at t", f"(AU{pair[0]}, AU{pair[1]}) at t+1"))


def strongest_pair(intra: np.ndarray, aus: list[int]) -> tuple[int, int]:
    """The AU pair with the highest off-diagonal co-occurrence prior."""
    m = np.array(intra, dtype=float)
    np.fill_diagonal(m, -1)
    i, j = np.unravel_index(np.argmax(m), m.shape)
    return aus[min(i, j)], aus[max(i, j)]


def priors_report(config: Any, workdir: str, pair: tuple[int, int] | None = None) -> dict:
    """`auvmae priors`: priors of the fold's training split, saved and drawn.

    If `workdir` holds a fine-tuned checkpoint, the learned matrices of its
    predictions on the test split are drawn beside the priors.
    """
    from auvmae_jax import evaluation, finetune, input_pipeline, knowledge

    workdir = paths.resolve(workdir)
    paths.makedirs(workdir)
    builder = input_pipeline.load_builder(config.data)
    aus = finetune.aus_of(builder)
    train_split, test_split = finetune.splits(config, builder)
    priors = finetune.training_priors(input_pipeline.data_source(builder, train_split), aus, workdir)
    pair = pair or strongest_pair(priors["intra_prior"], aus)
    for a in pair:
        if a not in aus:
            from auvmae_jax.errors import UserError

            raise UserError(f"--pair: AU{a} is not one of the dataset's AUs {aus}")
    learned_intra = learned_inter = None
    config_file = paths.join(workdir, "config.json")
    trained = paths.exists(paths.join(workdir, "checkpoints")) and paths.exists(config_file)
    if trained and paths.read_json(config_file).get("task") != "finetune":
        log.info("%s holds no fine-tuned model: the priors are drawn alone", workdir)
        trained = False
    if trained:
        params = finetune.load_checkpoint_params(workdir)
        evaluator = evaluation.Evaluator(
            finetune.build_model(config, len(aus)), finetune.level_settings(config),
            input_pipeline.data_source(builder, test_split), finetune.sampler(config, train=False), aus,
            config.eval_batch_size, config.seed)
        with sharding.config_mesh(config):
            probs, _, valid = evaluator.predict(params)  # this process's clips
        # over the valid labels, as in training and as the priors (padding frames left out)
        learned_intra = np.asarray(knowledge.learned_intra(probs, valid))
        learned_inter = np.asarray(knowledge.learned_inter(probs, valid))
        paths.save_npy(paths.join(workdir, "priors", "learned_intra.npy"), learned_intra)
        paths.save_npy(paths.join(workdir, "priors", "learned_inter.npy"), learned_inter)
    out = {}
    if jax.process_index() == 0:
        fig_dir = os.path.join(workdir, "priors")
        out["intra"] = draw_intra(priors["intra_prior"], learned_intra, aus,
                                  os.path.join(fig_dir, "intra.png"))
        out["inter"] = draw_inter(priors["inter_prior"], learned_inter, aus, pair,
                                  os.path.join(fig_dir, f"inter_AU{pair[0]}_AU{pair[1]}.png"))
        for k, v in out.items():
            print(f"{k}: {v}")
    return out
