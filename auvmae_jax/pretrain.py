"""Pre-training task: VideoMAE reconstruction of tube-masked clips (SPEC §1)."""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from PIL import Image

from auvmae_jax import augment, data_mixture, input_pipeline, losses, masking, trainer
from auvmae_jax.errors import UserError
from auvmae_jax.models import VideoMAE, ViTConfig

log = logging.getLogger("auvmae")


def pretrain_loss(params, batch: dict, rng: jax.Array, *, model: VideoMAE, mask_ratio: float,
                  norm_pix: bool, decoder_mask_ratio: float = 0.0) -> tuple[jax.Array, dict]:
    """Masked-tubelet MSE for a batch `{'frames': uint8 [B, T, H, W, 3], ('crop': [B, 4])}`
    (or repeated views, `augment.apply_crops`)."""
    mask_key, drop_key = jax.random.split(rng)
    frames = augment.apply_crops(batch)["frames"]
    x, visible, masked, queries, target = mae_inputs(frames, mask_key, model.cfg, mask_ratio, norm_pix,
                                                     decoder_mask_ratio)
    pred = model.apply({"params": params}, x, visible, masked, deterministic=False, queries=queries,
                       rngs={"dropout": drop_key})
    return losses.reconstruction_loss(pred, target), {}


def mae_inputs(frames: jax.Array, key: jax.Array, cfg: ViTConfig, mask_ratio: float, norm_pix: bool,
               decoder_mask_ratio: float = 0.0):
    """`[B, T, H, W, 3]` (0..255) -> (normalised frames, visible and masked positions, the
    token ids the decoder predicts, their targets): everything the model and the loss take
    besides the parameters.

    The decoder predicts every masked token (SPEC §1), or with `decoder_mask_ratio` > 0
    the tokens of a running-cell mask (VideoMAE V2's dual masking; some of them may have
    been visible to the encoder, as in V2): the loss is over those.
    """
    x01, x = losses.normalize_frames(frames, cfg.dtype)
    tt, hp, wp = grid = cfg.grid(*x.shape[1:4])
    visible, masked = masking.tube_mask(key, x.shape[0], hp * wp, mask_ratio)
    if decoder_mask_ratio > 0:
        queries = masking.decoder_queries(jax.random.fold_in(key, 1), x.shape[0], grid, decoder_mask_ratio)
    else:
        queries = masking.tube_token_ids(masked, tt, hp * wp)
    target = losses.mae_targets(x01, cfg.tubelet_size, cfg.patch_size, norm_pix, queries)
    return x, visible, masked, queries, target


def unpatchify(tokens: np.ndarray, grid: tuple[int, int, int], tubelet: int, patch: int) -> np.ndarray:
    """`[B, L, kt*p*p*3]` -> `[B, T, H, W, 3]` (inverse of `models.patchify`)."""
    tt, hp, wp = grid
    b = tokens.shape[0]
    x = tokens.reshape(b, tt, hp, wp, tubelet, patch, patch, 3).transpose(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(b, tt * tubelet, hp * patch, wp * patch, 3)


def reconstruct(model: VideoMAE, params, frames: np.ndarray, key: jax.Array, mask_ratio: float,
                norm_pix: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """(masked frames, reconstructed frames) in [0, 1] `[B, T, H, W, 3]`, and the loss."""
    cfg = model.cfg
    x01, x = losses.normalize_frames(jnp.asarray(frames), cfg.dtype)
    tt, hp, wp = grid = cfg.grid(*x.shape[1:4])
    visible, masked = masking.tube_mask(key, x.shape[0], hp * wp, mask_ratio)
    pred = model.apply({"params": params}, x, visible, masked).astype(jnp.float32)
    ids = masking.tube_token_ids(masked, tt, hp * wp)
    tokens = losses.mae_targets(x01, cfg.tubelet_size, cfg.patch_size, normalize=False)
    raw = masking.gather_tokens(tokens, ids)
    target = losses.normalize_tubelets(raw) if norm_pix else raw
    loss = float(losses.reconstruction_loss(pred, target))
    if norm_pix:  # back to pixels with each tubelet's own per-channel mean and std
        mean, std = losses.tubelet_stats(raw)
        pred = (pred.reshape(*raw.shape[:2], -1, 3) * (std + 1e-6) + mean).reshape(raw.shape)
    rows = jnp.arange(tokens.shape[0])[:, None]
    masked_tokens = tokens.at[rows, ids].set(0.5)
    recon_tokens = tokens.at[rows, ids].set(jnp.clip(pred, 0.0, 1.0))
    to_video = functools.partial(unpatchify, grid=grid, tubelet=cfg.tubelet_size, patch=cfg.patch_size)
    return to_video(np.asarray(masked_tokens)), to_video(np.asarray(recon_tokens)), loss


def picture(frames: np.ndarray, masked: np.ndarray, recon: np.ndarray, num_shown: int = 4) -> np.ndarray:
    """uint8 grid: per clip, rows original | masked | reconstructed over `num_shown` frames."""
    t = frames.shape[1]
    shown = np.linspace(0, t - 1, min(num_shown, t)).round().astype(int)
    blocks = []
    for clip in range(frames.shape[0]):
        rows = [np.concatenate(list(v[clip, shown]), axis=1)
                for v in (frames / 255.0, masked, recon)]
        blocks.append(np.concatenate(rows, axis=0))
    pad = np.ones((2, blocks[0].shape[1], 3))
    grid = np.concatenate([x for b in blocks for x in (b, pad)][:-1], axis=0)
    return (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)


class ReconstructionPictures:
    """Periodic held-out reconstruction loss and pictures (TensorBoard + PNG files)."""

    def __init__(self, model: VideoMAE, frames: np.ndarray, config: Any, workdir: str):
        self.model, self.frames, self.config = model, frames, config
        self.outdir = os.path.join(workdir, "reconstructions")

    def __call__(self, state: trainer.TrainState, step: int, writer) -> dict:
        key = jax.random.key(self.config.seed + 2)  # the same masks at every evaluation
        # A few clips need not divide over the batch shards: no activation constraints here.
        with nn.logical_axis_rules(()):
            masked, recon, loss = reconstruct(self.model, state.params, self.frames, key,
                                              self.config.mask_ratio, self.config.norm_pix_loss)
        image = picture(self.frames, masked, recon)
        writer.write_scalars(step, {"eval_loss": loss})
        writer.write_images(step, {"reconstruction": image})
        if jax.process_index() == 0:  # epath: local paths and gs:// alike
            outdir = epath.Path(self.outdir)
            outdir.mkdir(parents=True, exist_ok=True)
            with (outdir / f"step_{step:07d}.png").open("wb") as f:
                Image.fromarray(image).save(f, format="PNG")
        return {"eval_loss": loss}


def training_source(data_config: Any):
    """`data.mixture` (weighted built datasets, e.g. the five face-video corpora) or one split."""
    if data_config.get("mixture"):
        return data_mixture.load_mixture(data_config.mixture, data_config.data_dir, data_config.mixture_split)
    return input_pipeline.data_source(input_pipeline.load_builder(data_config), data_config.train_split)


def make_task(config: Any, workdir: str) -> trainer.Task:
    model = VideoMAE(ViTConfig.from_config(config.model))  # a bad model config fails before any data work
    source = training_source(config.data)
    data = input_pipeline.make_dataset(
        source, input_pipeline.sampler_from_config(config.data, train=True),
        batch_size=config.batch_size, seed=config.seed, worker_count=config.data.worker_count,
        read_threads=config.data.read_threads)
    eval_sampler = input_pipeline.sampler_from_config(config.data, train=False)
    n = min(config.num_images, len(source))
    # Evenly spaced clips: different subjects and videos in the picture.
    shown = np.stack([eval_sampler(source[int(i)])["frames"]
                      for i in np.linspace(0, len(source) - 1, n).round()])
    t, s = config.data.num_frames, config.data.image_size
    grid = model.cfg.grid(t, s)
    n_mask = masking.num_masked(grid[1] * grid[2], config.mask_ratio)
    init_inputs = (jnp.zeros((1, t, s, s, 3), jnp.float32),
                   jnp.zeros((1, grid[1] * grid[2] - n_mask), jnp.int32),
                   jnp.zeros((1, n_mask), jnp.int32))
    decoder_mask_ratio = config.get("decoder_mask_ratio", 0.0)  # configs written before it: off
    if decoder_mask_ratio > 0:  # a bad ratio or grid fails here, before any step
        try:
            predicted = masking.running_cell_tokens(grid, decoder_mask_ratio).shape[1]
        except ValueError as e:
            raise UserError(f"config.decoder_mask_ratio = {decoder_mask_ratio} (0: off): {e}") from e
        log.info("decoder masking (running cell %g): the decoder predicts %d tokens per clip instead of "
                 "the %d masked ones", decoder_mask_ratio, predicted, grid[0] * n_mask)
    loss_fn = functools.partial(pretrain_loss, model=model, mask_ratio=config.mask_ratio,
                                norm_pix=config.norm_pix_loss, decoder_mask_ratio=decoder_mask_ratio)
    return trainer.Task(
        model=model, init_inputs=init_inputs, loss_fn=loss_fn, train_data=data,
        steps_per_epoch=max(len(source) * config.data.repeats // config.batch_size, 1),  # views
        evaluate=ReconstructionPictures(model, shown, config, workdir))


def train(config: Any, workdir: str, hooks: tuple = ()):
    """Pre-train as `config` says; resumes from `workdir` if it holds checkpoints.

    Returns the final state and the logged metrics (see `trainer.run`).
    """
    return trainer.run(config, workdir, functools.partial(make_task, config), hooks)
