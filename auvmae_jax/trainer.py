"""The one training loop, shared by pre-training and fine-tuning.

A task (pretrain.py, finetune.py) supplies the model, its loss and its data; this
module owns everything else: mesh and sharded initialisation, the optimizer, the
jitted step (with gradient accumulation), checkpoints that resume exactly (state,
optimizer, step and data position), metrics, progress and preemption.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from etils import epath

from auvmae_jax import distributed, metric_writers, paths, sharding
from auvmae_jax.errors import Preempted, UserError

log = logging.getLogger("auvmae")

PyTree = Any
LossFn = Callable[[PyTree, dict, jax.Array], tuple[jax.Array, dict]]


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: PyTree
    opt_state: PyTree


@dataclasses.dataclass
class Task:
    """What the loop needs from a task.

    `init_inputs`: example inputs for `model.init` (shapes only matter).
    `loss_fn(params, batch, rng) -> (loss, metrics)`: batch of global arrays.
    `train_data`: infinite iterable of per-process batches (a grain IterDataset).
    `evaluate(state, step, writer)`: optional periodic evaluation.
    `init_params(params) -> params`: optional, e.g. loading a pre-trained encoder.
    `lr_multipliers(params) -> tree of floats`: optional per-parameter lr scale.
    """

    model: nn.Module
    init_inputs: tuple
    loss_fn: LossFn
    train_data: Any
    steps_per_epoch: int
    evaluate: Callable[[TrainState, int, metric_writers.MetricWriter], dict] | None = None
    init_params: Callable[[PyTree], PyTree] | None = None
    lr_multipliers: Callable[[PyTree], PyTree] | None = None


# ---------------------------------------------------------------------------- optimizer


def decay_mask(params: PyTree) -> PyTree:
    """Weight decay on every weight matrix (Dense `kernel`s and the attention's `qkv_kernel`
    and `proj_kernel`), as VideoMAE's: not on biases (q/v biases included), norms or the
    mask token."""
    def decayed(path, _) -> bool:
        name = str(getattr(path[-1], "key", ""))
        return name == "kernel" or name.endswith("_kernel")

    return jax.tree_util.tree_map_with_path(decayed, params)


def learning_rate_schedule(opt: Any, batch_size: int, num_steps: int, steps_per_epoch: int):
    """Linear warm-up then cosine decay; peak `base_lr * batch_size / 256`."""
    peak = opt.base_lr * batch_size / 256
    warmup = int(opt.warmup_epochs * steps_per_epoch) if opt.warmup_steps < 0 else opt.warmup_steps
    warmup = min(warmup, max(num_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=opt.warmup_init_lr, peak_value=peak, warmup_steps=warmup,
        decay_steps=max(num_steps, warmup + 1), end_value=opt.min_lr)


def make_optimizer(opt: Any, schedule, lr_multipliers: PyTree | None = None):
    """AdamW (VideoMAE recipe) with global-norm clipping and optional per-param lr scale."""
    parts = []
    if opt.grad_clip and opt.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(opt.grad_clip))
    parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                             weight_decay=opt.weight_decay, mask=decay_mask))
    if lr_multipliers is not None:
        parts.append(_scale_by_tree(lr_multipliers))
    return optax.chain(*parts)


def _scale_by_tree(multipliers: PyTree) -> optax.GradientTransformation:
    def update(updates, state, params=None):
        return jax.tree.map(lambda u, m: u * m, updates, multipliers), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


# ---------------------------------------------------------------------------- step


def train_step(state: TrainState, batch: dict, *, loss_fn: LossFn, tx, base_key: jax.Array,
               accum_steps: int, batch_spec) -> tuple[TrainState, dict]:
    """One optimizer update; the batch may be split into `accum_steps` micro-batches."""
    rng = jax.random.fold_in(base_key, state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum_steps == 1:
        (loss, aux), grads = grad_fn(state.params, batch, rng)
    else:
        # [B, ...] -> [k, B/k, ...] keeping each device's rows local.
        micro = jax.tree.map(
            lambda x: x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1),
            batch)

        def body(carry, inputs):
            i, mb = inputs
            if batch_spec is not None:
                mb = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, batch_spec), mb)
            (loss_i, aux_i), grads_i = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
            return jax.tree.map(jnp.add, carry, (loss_i, aux_i, grads_i)), None

        (loss_shape, aux_shape), grad_shape = jax.eval_shape(
            grad_fn, state.params, jax.tree.map(lambda x: x[0], micro), rng)
        zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (loss_shape, aux_shape, grad_shape))
        (loss, aux, grads), _ = jax.lax.scan(body, zero, (jnp.arange(accum_steps), micro))
        loss, aux, grads = jax.tree.map(lambda x: x / accum_steps, (loss, aux, grads))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads),
               "param_norm": optax.tree.norm(params)}
    return TrainState(state.step + 1, params, opt_state), metrics


# ---------------------------------------------------------------------------- workdir


def prepare_workdir(workdir: str, config: Any) -> str:
    """Create `workdir` and check it is writable; a new one gets the config (process 0).

    A workdir with a `config.json` keeps it until `save_config` (after the checkpoint was
    restored): a command that does not fit the checkpoint must not overwrite the record of
    what wrote it. A URL (`gs://bucket/run`) is kept as it is: orbax and `etils.epath`
    write there.
    """
    workdir = paths.resolve(workdir)
    try:
        path = epath.Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        if jax.process_index() == 0:
            if (path / "config.json").exists():
                probe = path / f".write_check_{os.getpid()}"
                probe.write_text("")
                probe.unlink()
            else:
                save_config(workdir, config)
    except OSError as e:
        raise UserError(f"workdir {workdir} is not writable: {e.strerror or e}") from e
    return workdir


LOCK_FILE = ".auvmae_lock"


def _process_start(pid: int) -> str | None:
    """When process `pid` started, in clock ticks since boot (Linux); None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _running_here(pid: int, start: str | None) -> bool:
    """Whether process `pid` of this machine still runs (and is the one that started at
    `start`, where known: a reused pid is not it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _process_start(pid)
    return start is None or now is None or now == start


@contextlib.contextmanager
def workdir_lock(workdir: str):
    """`workdir/.auvmae_lock` while a run trains there (process 0): a second run started on
    the same workdir from this machine stops with one line instead of overwriting the first
    one's checkpoints. A lock left by a run that died (its process gone) or written on
    another machine (a relaunch after preemption) is taken over."""
    if jax.process_index() != 0:
        yield
        return
    path = epath.Path(workdir) / LOCK_FILE
    host, pid = socket.gethostname(), os.getpid()
    try:
        held = json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):
        held = None
    if (held and held.get("host") == host and held.get("pid") != pid
            and _running_here(int(held.get("pid", 0)), held.get("start"))):
        raise UserError(f"workdir {workdir} is in use by process {held['pid']} on this machine, running "
                        f"since {held.get('since', '?')} ({path}): two runs would overwrite each other's "
                        "checkpoints; wait for it, stop it, or use another workdir")
    mine = {"host": host, "pid": pid, "start": _process_start(pid),
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    path.write_text(json.dumps(mine))
    try:
        yield
    finally:
        try:
            if json.loads(path.read_text()) == mine:
                path.unlink()
        except (OSError, ValueError):
            pass


def save_config(workdir: str, config: Any) -> None:
    """`workdir/config.json`: the config of the run (process 0)."""
    if jax.process_index() == 0:
        (epath.Path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))


def checkpoint_manager(workdir: str, config: Any) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True)
    return ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), options=options,
                                 item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                "data": DataPositions()})


class DataPositions(ocp.CheckpointHandler):
    """Each process's data-iterator position, in its own `process_{i}-of-{n}.json`.

    A process restores its own. Saved by another number of processes, the lowest
    one's position is taken by all (each then goes as many batches into its new
    shard: the same share of the epoch).
    """

    def save(self, directory: epath.Path, args: DataPositionsSave):
        (directory / _position_file()).write_text(json.dumps(args.state))

    def restore(self, directory: epath.Path, args: DataPositionsRestore | None = None):
        own = directory / _position_file()
        if own.exists():
            return json.loads(own.read_text())
        saved = sorted((tuple(map(int, m.groups())), p) for p in directory.iterdir()
                       if (m := re.fullmatch(r"process_(\d+)-of-(\d+)\.json", p.name)))
        if not saved:
            return None
        (index, count), path = saved[0]
        log.warning("%s was saved by %d processes: every process resumes its data at process %d's position",
                    directory, count, index)
        return json.loads(path.read_text())

    def metadata(self, directory: epath.Path):
        return None

    def finalize(self, directory: epath.Path):
        pass

    def close(self):
        pass


def _position_file() -> str:
    return f"process_{jax.process_index()}-of-{jax.process_count()}.json"


@ocp.args.register_with_handler(DataPositions, for_save=True)
@dataclasses.dataclass
class DataPositionsSave(ocp.args.CheckpointArgs):
    state: Any


@ocp.args.register_with_handler(DataPositions, for_restore=True)
@dataclasses.dataclass
class DataPositionsRestore(ocp.args.CheckpointArgs):
    pass


# ---------------------------------------------------------------------------- loop


class _Preemption:
    """SIGTERM -> save a checkpoint at the next step and stop cleanly.

    One process: a Python SIGTERM handler sets `requested`. Several processes: JAX's
    preemption service (started by `jax.distributed`) catches SIGTERM on any of them
    and all agree on the step to stop at (`CheckpointManager.reached_preemption`), so
    no handler is installed over it.
    """

    def __init__(self, manager: ocp.CheckpointManager):
        self.requested = False
        self._manager = manager
        self._previous = None

    def __enter__(self):
        if jax.process_count() > 1:
            return self
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def stop_at(self, step: int) -> bool:
        """True at the step where every process saves and stops (a host-local check)."""
        if not self.requested and jax.process_count() > 1 and self._manager.reached_preemption(step):
            log.warning("preemption: all processes stop at step %d after saving", step)
            self.requested = True
        return self.requested

    def _handle(self, signum, frame):
        log.warning("SIGTERM: saving a checkpoint and stopping")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _boxed_init_fn(task: Task, tx) -> Callable[[jax.Array], TrainState]:
    """rng -> initial train state, parameters still boxed with their logical axis names."""

    def boxed_init(rng):
        variables = task.model.init({"params": rng, "dropout": rng}, *task.init_inputs)
        params = variables["params"]
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

    return boxed_init


def state_shardings(task: Task, tx, mesh, rules) -> tuple[TrainState, Any]:
    """(the train state's shapes, boxed with their logical axis names; its mesh shardings),
    from shapes only: nothing is initialised or placed on a device."""
    abstract = jax.eval_shape(_boxed_init_fn(task, tx), jax.random.key(0))
    return abstract, sharding.logical_shardings(abstract, mesh, rules)


def init_state(task: Task, tx, mesh, rules, seed: int,
               load_initial: bool = True) -> tuple[TrainState, Any]:
    """Sharded initialisation: shapes -> logical specs -> mesh shardings -> jitted init.

    With `load_initial`, `task.init_params` then replaces parameters (e.g. with a
    pre-trained encoder), placed on the same shardings.
    """

    boxed_init = _boxed_init_fn(task, tx)
    _, shardings = state_shardings(task, tx, mesh, rules)
    state = jax.jit(lambda r: nn.meta.unbox(boxed_init(r)), out_shardings=shardings)(jax.random.key(seed))
    if load_initial and task.init_params is not None:
        params = jax.device_put(task.init_params(state.params), shardings.params)
        opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
        state = TrainState(state.step, params, opt_state)
    return state, shardings


def run(config: Any, workdir: str, make_task: Callable[[str], Task],
        hooks: tuple = ()) -> tuple[TrainState, list[dict]]:
    """Train the task that `make_task(workdir)` builds, resuming from `workdir`.

    Runs to `config.num_train_steps` (or `num_epochs`). Returns the final state and
    the logged metrics (`[{'step': s, ...}]`). `hooks(step, state)` run after every
    step (tests use them to interrupt a run). A SIGTERM saves a checkpoint at the next
    step and raises `Preempted` (carrying the state and metrics so far), so that no
    caller goes on as if the run had finished.
    """
    distributed.initialize()  # several processes: join them before any backend starts
    workdir = prepare_workdir(workdir, config)  # fail early, before any data is read
    with workdir_lock(workdir):
        return _train(config, workdir, make_task, hooks)


def _train(config: Any, workdir: str, make_task: Callable[[str], Task],
           hooks: tuple) -> tuple[TrainState, list[dict]]:
    mesh = sharding.make_mesh(config.mesh)
    rules = sharding.rules_from_config(config.logical_axis_rules)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    check_batch(config, sharding.batch_axes(batch_sharding), jax.process_count())
    task = make_task(workdir)
    num_steps = total_steps(config, task.steps_per_epoch)
    distributed.log_topology(mesh)
    log.info("%d steps of global batch %d (%d per process)", num_steps, config.batch_size,
             config.batch_size // jax.process_count())
    history: list[dict] = []
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        schedule = learning_rate_schedule(config.optimizer, config.batch_size, num_steps,
                                          task.steps_per_epoch)
        multipliers = None
        if task.lr_multipliers is not None:
            shapes = jax.eval_shape(lambda: nn.meta.unbox(task.model.init(
                {"params": jax.random.key(0), "dropout": jax.random.key(0)}, *task.init_inputs)))
            multipliers = task.lr_multipliers(shapes["params"])
        tx = make_optimizer(config.optimizer, schedule, multipliers)
        manager = checkpoint_manager(workdir, config)
        resuming = manager.latest_step() is not None
        state, state_shardings = init_state(task, tx, mesh, rules, config.seed, load_initial=not resuming)
        data_iter = iter(task.train_data)
        state = _restore(manager, state, data_iter)
        save_config(workdir, config)  # the checkpoint fits: this config is the run's now
        first = int(state.step)
        if first >= num_steps:
            log.info("%s: finished already (step %d of %d); nothing to train", workdir, first, num_steps)
            manager.close()
            return state, history
        writer = metric_writers.create_writer(os.path.join(workdir, "tensorboard"))
        step_fn = jax.jit(
            lambda s, b: train_step(s, b, loss_fn=task.loss_fn, tx=tx,
                                    base_key=jax.random.key(config.seed + 1),
                                    accum_steps=config.grad_accum_steps,
                                    batch_spec=batch_sharding.spec),
            in_shardings=(state_shardings, batch_sharding),
            out_shardings=(state_shardings, sharding.replicated(mesh)),
            donate_argnums=(0,))
        if first == 0 and jax.process_index() == 0:
            writer.write_hparams(_flat(config.to_dict()))
        progress = metric_writers.ProgressReporter(num_steps, first)
        stopped_at = None
        pending: list[dict] = []
        data_state = None
        prefetch = _device_prefetch(data_iter, batch_sharding, config.prefetch_to_device)
        try:
            with _Preemption(manager) as preempt:
                for step in range(first + 1, num_steps + 1):
                    batch, data_state = next(prefetch)
                    state, metrics = step_fn(state, batch)
                    pending.append(metrics)
                    stop = preempt.stop_at(step)  # decided before the step's save
                    last = stop or step == num_steps
                    save = last or step % config.checkpoint_every == 0
                    if save or step % config.log_every == 0:
                        summary = _summarise(pending, step, manager, workdir)
                        pending = []
                        summary["learning_rate"] = float(schedule(step - 1))
                        summary.update(progress(step))
                        writer.write_scalars(step, summary)
                        history.append({"step": step, **summary})
                    if task.evaluate is not None and not stop and (last or step % config.eval_every == 0):
                        task.evaluate(state, step, writer)
                        progress.restart(step)  # steps/s and the ETA count training steps only
                    if save:
                        with _saving(manager, step):
                            manager.save(step, args=ocp.args.Composite(
                                state=ocp.args.StandardSave(state), data=DataPositionsSave(data_state)))
                    for hook in hooks:
                        hook(step, state)
                    if stop:
                        stopped_at = step
                        break
        finally:
            with _saving(manager, manager.latest_step()):
                manager.wait_until_finished()
            writer.flush()
    log.info("checkpoints: %s", os.path.join(workdir, "checkpoints"))
    if stopped_at is not None and stopped_at < num_steps:
        raise Preempted(f"stopped on SIGTERM at step {stopped_at} of {num_steps} after saving a checkpoint "
                        f"in {workdir}; run the same command again to continue", state, history)
    return state, history


def check_batch(config: Any, batch_axes: dict[str, int], processes: int = 1) -> None:
    """The clips of a step (`batch_size / data.repeats`: a clip's views stay together) must
    split evenly over the batch's shards (`batch_axes`: mesh axis -> size) and the
    micro-batches of gradient accumulation, and every process (each reads clips of its
    own) must hold shards of its own."""
    shards = int(np.prod(list(batch_axes.values())))
    names = " x ".join(batch_axes) or "none"
    if shards % processes:
        raise UserError(
            f"the mesh's batch axes ({names} = {shards}) do not span the {processes} processes: each "
            f"process reads clips of its own, so {names} must be a multiple of the process count")
    views, accum = config.get("data", {}).get("repeats", 1), config.grad_accum_steps
    parts = shards * accum
    if config.batch_size % (views * parts):
        raise UserError(
            f"batch_size {config.batch_size} does not split into {shards} batch shards x {accum} "
            f"micro-batches of whole clips ({views} views each): use a multiple of {views * parts}")


def total_steps(config: Any, steps_per_epoch: int) -> int:
    if config.num_train_steps > 0:
        return int(config.num_train_steps)
    return int(config.num_epochs * steps_per_epoch)


def _tree_shapes(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
    """`{path: shape}` of a pytree's leaves, paths as plain names (dict keys, attributes and
    indices alike), so that a train state and orbax's metadata of its checkpoint compare."""
    def name(key) -> str:
        return str(next((getattr(key, a) for a in ("key", "name", "idx") if hasattr(key, a)), key))

    return {tuple(map(name, path)): tuple(getattr(leaf, "shape", ()))
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _misfit(saved: dict, wanted: dict) -> str:
    """The first difference between two `_tree_shapes`, in words."""
    for path in sorted(set(saved) | set(wanted)):
        if saved.get(path) != wanted.get(path):
            where = "/".join(path)
            if path not in saved:
                return f"{where} is not in it"
            if path not in wanted:
                return f"it has {where}, which this config's train state lacks"
            return f"{where} is {saved[path]} there, {wanted[path]} here"
    return ""


def damaged_checkpoint(manager: ocp.CheckpointManager, step: int, error: BaseException) -> UserError:
    earlier = [s for s in manager.all_steps() if s < step]
    then = (f"fall back on step {max(earlier)}, the checkpoint before it" if earlier
            else "start afresh (there is no earlier checkpoint)")
    reason = " ".join(str(error).split())[:200] or type(error).__name__
    return UserError(f"checkpoint {manager.directory}/{step} cannot be read ({reason}): it is damaged, as "
                     f"by a crash or a full disk while it was written; delete that directory to {then}")


@contextlib.contextmanager
def _saving(manager: ocp.CheckpointManager, step: int | None):
    """A checkpoint save (or the wait for one) that fails becomes one line: where, why, and
    the last checkpoint that is complete (a relaunch resumes from it)."""
    try:
        yield
    except (OSError, ValueError, RuntimeError) as e:
        text = " ".join(str(e).split())
        reason = "no space left on device" if "No space left" in text else text[:200]
        done = [s for s in manager.all_steps() if step is None or s < step]
        last = f"step {max(done)}" if done else "none"
        raise UserError(f"cannot save checkpoint {step} in {manager.directory}: {reason}; the last complete "
                        f"checkpoint: {last} (the same command resumes from it once this is fixed)") from None


def _restore(manager: ocp.CheckpointManager, state: TrainState, data_iter) -> TrainState:
    step = manager.latest_step()
    if step is None:
        return state
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    try:  # first the saved tree's names and shapes: another config's, or unreadable?
        saved = _tree_shapes(manager.item_metadata(step)["state"])
    except Exception as e:  # noqa: BLE001 - orbax words a missing or cut file many ways
        raise damaged_checkpoint(manager, step, e) from None
    wanted = _tree_shapes(abstract)
    if saved != wanted:
        raise UserError(
            f"checkpoint {manager.directory}/{step} does not fit this config's model and optimizer "
            f"({_misfit(saved, wanted)}); the workdir's config.json holds the config that "
            "wrote it: resume with that one, or use another workdir")
    try:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=DataPositionsRestore()))
    except Exception as e:  # noqa: BLE001 - the tree fits: its files are missing, cut or unreadable
        raise damaged_checkpoint(manager, step, e) from None
    if restored.data is not None:
        data_iter.set_state(restored.data)
    else:
        log.warning("%s: no data position saved at step %d; the data start from the beginning",
                    manager.directory, step)
    log.info("resumed from %s at step %d", manager.directory, step)
    return restored.state


def _device_prefetch(data_iter, batch_sharding, size: int) -> Iterator[tuple[dict, Any]]:
    """Global device batches, `size` ahead; each with the data state after it (for checkpoints)."""
    import collections

    queue: collections.deque = collections.deque()

    def push():
        host = next(data_iter)
        batch = sharding.host_batch_to_global(host, batch_sharding)
        queue.append((batch, data_iter.get_state()))
        return host, batch

    distributed.log_data_shard(*push())
    for _ in range(max(size, 1) - 1):
        push()
    while True:
        yield queue.popleft()
        push()


def _summarise(pending: list[dict], step: int, manager, workdir: str) -> dict:
    """Mean of the metrics since the last report; a clear error on a non-finite loss."""
    values = jax.device_get(pending)
    summary = {k: float(np.mean([v[k] for v in values])) for k in values[0]}
    if not np.isfinite(summary["loss"]):
        last = manager.latest_step()
        where = f"step {last} in {manager.directory}" if last is not None else "none saved yet"
        raise UserError(f"non-finite loss ({summary['loss']}) at step {step} of {workdir}; "
                        f"last good checkpoint: {where}. Lower the learning rate or check the data.")
    return summary


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out
