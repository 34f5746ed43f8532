"""Fine-tuning task: knowledge-guided multi-level AU detection (SPEC §2).

Model: the pre-trained encoder + a per-frame head. Loss: weighted BCE (eq. 2) +
l_intra * ||K_intra - C||_F + l_inter * ||K_inter - S||_F (eq. 9), with the priors
computed once from the training split. Data: labelled clips at one of three
input levels (video, frame, patch).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from auvmae_jax import augment, evaluation, input_pipeline, knowledge, losses, masking, paths, trainer
from auvmae_jax.errors import UserError
from auvmae_jax.models import AUDetector, ViTConfig

log = logging.getLogger("auvmae")

LEVELS = ("video", "frame", "patch")


@dataclasses.dataclass(frozen=True)
class Level:
    """What the model sees at one input level of a `clip_length`-frame clip."""

    name: str
    num_frames: int  # frames fed to the encoder
    temporal_stride: int
    mask_ratio: float  # tube mask on the encoder's input (patch level)


def level_settings(config: Any) -> Level:
    """The input level chosen by `config.level`, from `clip_length` and the level knobs."""
    if config.level not in LEVELS:
        raise UserError(f"config.level {config.level!r} is not one of {LEVELS}")
    stride = config.frame_stride if config.level == "frame" else 1
    if config.clip_length % stride:
        raise UserError(f"clip_length {config.clip_length} is not divisible by frame_stride {stride}")
    ratio = config.patch_mask_ratio if config.level == "patch" else 0.0
    return Level(config.level, config.clip_length // stride, stride, ratio)


def build_model(config: Any, num_classes: int) -> AUDetector:
    level = level_settings(config)
    return AUDetector(ViTConfig.from_config(config.model), num_classes, level.temporal_stride)


def sampler(config: Any, train: bool) -> input_pipeline.ClipSampler:
    level = level_settings(config)
    return input_pipeline.ClipSampler(
        num_frames=level.num_frames, temporal_stride=level.temporal_stride,
        image_size=config.data.image_size, train=train, crop_scale=tuple(config.data.crop_scale),
        crop_ratio=tuple(config.data.crop_ratio), flip=config.data.flip, with_labels=True,
        repeats=config.data.get("repeats", 1))


def visible_positions(key: jax.Array, batch: int, model: AUDetector, video_shape, ratio: float):
    """Tube-masked spatial positions for patch level, None for video and frame levels."""
    if ratio <= 0:
        return None
    _, hp, wp = model.cfg.grid(*video_shape[1:4])
    return masking.tube_mask(key, batch, hp * wp, ratio)[0]


def finetune_loss(params, batch: dict, rng: jax.Array, *, model: AUDetector, level: Level,
                  priors: dict, lambdas: tuple[float, float, float], kind: str) -> tuple[jax.Array, dict]:
    """Eq. 9 on a batch `{'frames': uint8 [B,T',H,W,3], 'labels', 'valid': uint8 [B,T,N],
    ('crop': [B, 4])}` (or repeated views, `augment.apply_crops`)."""
    mask_key, drop_key = jax.random.split(rng)
    batch = augment.apply_crops(batch)
    _, x = losses.normalize_frames(batch["frames"], model.cfg.dtype)
    visible = visible_positions(mask_key, x.shape[0], model, x.shape, level.mask_ratio)
    logits = model.apply({"params": params}, x, visible, deterministic=False, rngs={"dropout": drop_key})
    valid = batch["valid"].astype(jnp.float32)
    l_cls = losses.weighted_bce(logits, batch["labels"], valid, priors["class_weights"])
    probs = jax.nn.sigmoid(logits)
    # C and S over the valid labels only, as their priors (SPEC §2: every loss ignores invalid
    # entries; a clip's padding frames, valid = 0, repeat its last frame and would count again).
    l_intra = knowledge.intra_loss(priors["intra_prior"], knowledge.learned_intra(probs, valid), kind)
    l_inter = knowledge.inter_loss(priors["inter_prior"], knowledge.learned_inter(probs, valid), kind)
    w_cls, w_intra, w_inter = lambdas
    total = w_cls * l_cls + w_intra * l_intra + w_inter * l_inter
    return total, {"loss_cls": l_cls, "loss_intra": l_intra, "loss_inter": l_inter}


# ---------------------------------------------------------------------------- data and priors


def splits(config: Any, builder) -> tuple[str, str]:
    """(train split, test split) of `config.fold`: fold k tests on part k (DATA.md)."""
    if config.fold not in (1, 2, 3):
        raise UserError(f"config.fold must be 1, 2 or 3, got {config.fold}")
    available = set(builder.info.splits)
    train_parts = [f"part{k}" for k in (1, 2, 3) if k != config.fold]
    if config.data.train_aug:
        train_parts += [f"{p}_aug" for p in train_parts if f"{p}_aug" in available]
    return "+".join(p for p in train_parts if p in available), f"part{config.fold}"


def training_priors(source, aus: list[int], workdir: str) -> dict:
    """Class weights and AU-pair priors of the training clips, saved under `workdir/priors`."""
    labels = clip_labels(source)
    priors = knowledge.compute_priors(labels[:, 0], labels[:, 1])
    if jax.process_index() == 0:
        knowledge.save_priors(os.path.join(workdir, "priors"), priors, aus)
    return priors


def clip_labels(source) -> np.ndarray:
    """uint8 `[clips, 2, T, N]`: every record's `labels` and `valid`, in record order.

    Each process reads its strided share of the records (whole records: the frames come
    along) and the processes exchange the labels, a few MB, so no process reads all.
    """
    n, procs, me = len(source), jax.process_count(), jax.process_index()
    shape = np.shape(source[0]["labels"])  # one clip length per dataset (DATA.md)
    mine = np.zeros((-(-n // procs), 2, *shape), np.uint8)
    for row, i in enumerate(range(me, n, procs)):
        record = source[i]
        for k, key in enumerate(("labels", "valid")):
            value = np.asarray(record[key])
            if value.shape != shape:
                raise UserError(f"clip {i} of the training split has {key} of shape {value.shape}, "
                                f"clip 0 {shape}: rebuild the data with one clip_length")
            mine[row, k] = value
    if procs == 1:
        return mine
    every = np.asarray(multihost_utils.process_allgather(mine))  # [procs, rows, 2, T, N]
    return np.stack([every[i % procs, i // procs] for i in range(n)])


def aus_of(builder) -> list[int]:
    aus = builder.info.metadata and builder.info.metadata.get("aus")
    if not aus:
        raise UserError(f"dataset {builder.data_dir} has no metadata['aus']: not an AU dataset")
    return [int(a) for a in aus]


# ---------------------------------------------------------------------------- initialisation


def load_checkpoint_params(path: str) -> dict:
    """Parameters of the latest checkpoint under `path` (a workdir or its checkpoints dir)."""
    path = paths.resolve(path)
    ckpt_dir = paths.join(path, "checkpoints") if paths.exists(paths.join(path, "checkpoints")) else path
    if not paths.exists(ckpt_dir):
        raise UserError(f"checkpoint {path}: no such directory")
    manager = ocp.CheckpointManager(ckpt_dir, item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                                                             "data": trainer.DataPositions()})
    step = manager.latest_step()
    if step is None:
        raise UserError(f"checkpoint {path}: no checkpoint in {ckpt_dir} (has its training saved one?)")
    # The parameters alone, as whole host arrays in every process, however many devices and
    # processes wrote them (a restore as saved would give arrays sharded over those devices).
    try:
        saved = manager.item_metadata(step)["state"]["params"]
        item = {"params": jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), saved)}
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=item, restore_args=as_numpy, partial_restore=True)))
    except Exception as e:  # noqa: BLE001 - orbax words a missing or cut file many ways
        raise trainer.damaged_checkpoint(manager, step, e) from None
    return restored.state["params"]


def _source_settings(path: str) -> dict:
    """`model` and `data` of the config.json beside an init checkpoint (workdir or converted dir)."""
    cfg_path = paths.join(path, "config.json")
    if not paths.exists(cfg_path):
        return {}
    cfg = paths.read_json(cfg_path)
    return {"model": cfg.get("model") or {}, "data": cfg.get("data") or {}, "task": cfg.get("task")}


def encoder_initialiser(path: str, model_cfg: ViTConfig | None = None, num_frames: int | None = None,
                        image_size: int | None = None):
    """`init_params` that replaces the encoder with the one in `path` (decoder dropped).

    `path` is a pre-training workdir or a directory written by `auvmae convert`.
    Given the fine-tuning model's config and clip shape, it warns where the source
    used another layer-norm epsilon, or another clip shape: the fixed sin-cos
    position table is then recomputed for the new token count (as VideoMAE does
    for fixed tables), so positions mean something else than in pre-training.
    """
    source = _source_settings(path)

    def hint() -> str:
        m = source.get("model", {})
        if "final_norm" not in m:
            return ""
        eps = m.get("layer_norm_eps")
        return (f" ({path}/config.json has final_norm={m['final_norm']}, layer_norm_eps={eps}: pass "
                f"--config.model.final_norm={m['final_norm']} --config.model.layer_norm_eps={eps})")

    def init(params: dict) -> dict:
        loaded = load_checkpoint_params(path)
        if "encoder" not in loaded:
            raise UserError(f"init checkpoint {path}: no 'encoder' parameters")
        enc = dict(loaded["encoder"])
        depth = [sum(k.startswith("block") for k in e) for e in (enc, params["encoder"])]
        if depth[0] != depth[1]:
            raise UserError(f"init checkpoint {path}: its encoder has {depth[0]} blocks, the config's "
                            f"{depth[1]} (check model.preset)")
        dropped = sorted(set(enc) - set(params["encoder"]))
        for k in dropped:
            enc.pop(k)
        missing = sorted(set(params["encoder"]) - set(enc))
        if missing:
            raise UserError(f"init checkpoint {path}: encoder lacks {missing}{hint()}")
        want = jax.tree.map(np.shape, params["encoder"])
        got = jax.tree.map(np.shape, enc)
        if want != got:
            bad = [k for k in want if want[k] != got.get(k)]
            raise UserError(f"init checkpoint {path}: encoder shapes differ from the config in {bad[:3]} "
                            "(check model.preset, patch_size, tubelet_size, heads)")
        _warn_differences(path, source, model_cfg, num_frames, image_size)
        log.info("encoder initialised from %s%s", path,
                 f"; dropped {dropped} and the decoder" if dropped else "; decoder dropped")
        return {**params, "encoder": enc}

    return init


def _warn_differences(path: str, source: dict, model_cfg: ViTConfig | None, num_frames: int | None,
                      image_size: int | None) -> None:
    m, d = source.get("model", {}), source.get("data", {})
    if model_cfg is not None and m.get("layer_norm_eps") not in (None, model_cfg.layer_norm_eps):
        log.warning("init checkpoint %s used layer_norm_eps=%s, the fine-tuning model uses %s "
                    "(--config.model.layer_norm_eps)", path, m["layer_norm_eps"], model_cfg.layer_norm_eps)
    src_t, src_s = d.get("num_frames"), d.get("image_size")
    if (num_frames and src_t and num_frames != src_t) or (image_size and src_s and image_size != src_s):
        log.warning("init checkpoint %s was trained on %s frames of %s px, fine-tuning uses %s frames of "
                    "%s px: the fixed sin-cos position table is recomputed for the new token count",
                    path, src_t, src_s, num_frames, image_size)
    if d.get("input_norm") == "unit":
        log.warning("init checkpoint %s expects [0, 1] pixels (MARLIN); fine-tuning feeds "
                    "ImageNet-normalised frames", path)


def layer_decay_multipliers(decay: float, depth: int):
    """VideoMAE's layer-wise lr decay: `decay ** (depth + 1 - layer_id)` per parameter."""

    def multipliers(params: dict) -> dict:
        def layer_id(path) -> int:
            keys = [getattr(k, "key", "") for k in path]
            if keys[0] != "encoder":
                return depth + 1
            if keys[1] == "patch_embed":
                return 0
            if keys[1].startswith("block"):
                return int(keys[1][len("block"):]) + 1
            return depth + 1

        return jax.tree_util.tree_map_with_path(
            lambda path, _: float(decay ** (depth + 1 - layer_id(path))), params)

    return multipliers


# ---------------------------------------------------------------------------- the task


def make_task(config: Any, workdir: str) -> trainer.Task:
    level_settings(config)  # a bad level or model config fails before any data work
    ViTConfig.from_config(config.model)
    builder = input_pipeline.load_builder(config.data)
    aus = aus_of(builder)
    train_split, test_split = splits(config, builder)
    train_source = input_pipeline.data_source(builder, train_split)
    test_source = input_pipeline.data_source(builder, test_split)
    level = level_settings(config)
    log.info("fine-tuning on %s (%d clips), testing on %s (%d clips); level %s; AUs %s",
             train_split, len(train_source), test_split, len(test_source), level.name, aus)
    priors = training_priors(train_source, aus, workdir)
    priors = {k: jnp.asarray(priors[k]) for k in ("class_weights", "intra_prior", "inter_prior")}
    model = build_model(config, len(aus))
    data = input_pipeline.make_dataset(train_source, sampler(config, train=True),
                                       batch_size=config.batch_size, seed=config.seed,
                                       worker_count=config.data.worker_count,
                                       read_threads=config.data.read_threads)
    s = config.data.image_size
    init_inputs = (jnp.zeros((1, level.num_frames, s, s, 3), jnp.float32),)
    if level.mask_ratio > 0:
        _, hp, wp = model.cfg.grid(level.num_frames, s)
        init_inputs += (jnp.zeros((1, hp * wp - masking.num_masked(hp * wp, level.mask_ratio)), jnp.int32),)
    loss_fn = functools.partial(
        finetune_loss, model=model, level=level, priors=priors,
        lambdas=(config.loss.l_cls, config.loss.l_intra, config.loss.l_inter), kind=config.loss.kind)
    evaluator = evaluation.Evaluator(model, level, test_source, sampler(config, train=False), aus,
                                     config.eval_batch_size, seed=config.seed)
    return trainer.Task(
        model=model, init_inputs=init_inputs, loss_fn=loss_fn, train_data=data,
        steps_per_epoch=max(len(train_source) * config.data.repeats // config.batch_size, 1),
        evaluate=evaluator.periodic,
        init_params=(encoder_initialiser(config.init_from, model.cfg, level.num_frames, s)
                     if config.init_from else None),
        lr_multipliers=layer_decay_multipliers(config.optimizer.layer_decay, model.cfg.depth)
        if config.optimizer.layer_decay < 1 else None)


# The encoder's shape: what an `init_from` checkpoint fixes (the rest of `config.model`, such
# as dtype, remat, drop_path or the norms, stays the fine-tuning config's).
ARCHITECTURE = ("width", "depth", "heads", "mlp_ratio", "patch_size", "tubelet_size")


def adopt_architecture(config: Any) -> dict:
    """Set `config.model`'s ARCHITECTURE to that of the `init_from` checkpoint where they differ
    (a pre-training workdir's or a converted model's config.json); returns what changed.

    Fine-tuning from a checkpoint can only take its encoder as it is, so a mini pre-training
    fine-tunes as mini and a converted model of any width as that width, without the user
    repeating them; the change is logged and recorded in the workdir's config.json.
    """
    source = _source_settings(config.init_from).get("model") if config.init_from else None
    if not source:
        return {}
    known = {f.name for f in dataclasses.fields(ViTConfig)} | {"preset"}
    theirs = ViTConfig.from_config({k: v for k, v in source.items() if k in known})
    mine = ViTConfig.from_config(config.model)
    changed = {k: getattr(theirs, k) for k in ARCHITECTURE if getattr(theirs, k) != getattr(mine, k)}
    if changed:
        log.warning("model %s: from init checkpoint %s (the config said %s)", changed, config.init_from,
                    {k: getattr(mine, k) for k in changed})
        with config.unlocked():
            config.model.update(changed)
    return changed


def train(config: Any, workdir: str, hooks: tuple = ()):
    """Fine-tune as `config` says, resuming from `workdir`; evaluation is `evaluation.py`'s.

    Returns the final state and the logged metrics (see `trainer.run`).
    """
    adopt_architecture(config)
    return trainer.run(config, workdir, functools.partial(make_task, config), hooks)
