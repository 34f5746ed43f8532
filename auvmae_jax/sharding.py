"""Device mesh from the config, and logical-axis -> mesh-axis mapping.

The model names only logical axes (`batch`, `embed`, `mlp`, `heads`, ...); the
config's `logical_axis_rules` maps them to the mesh axes `data`, `fsdp`, `tensor`.
Changing the parallelism is a config change.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from auvmae_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# Default rules: batch over data+fsdp, weights' embed dim over fsdp (ZeRO-3 style),
# MLP hidden and attention heads over tensor. Activations keep embed unsharded.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("dec_embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("patch", None),
    ("norm", None),
    ("length", None),
    ("act_embed", None),
    ("classes", None),
)


def mesh_shape(dims: dict[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolve `{'data': -1, 'fsdp': 2, 'tensor': 1}` (one -1 = the rest) to a shape."""
    unknown = set(dims) - set(MESH_AXES)
    if unknown:
        raise UserError(f"config.mesh: unknown axes {sorted(unknown)}; the mesh axes are {MESH_AXES}")
    shape = [int(dims.get(a, 1)) for a in MESH_AXES]
    free = [i for i, d in enumerate(shape) if d == -1]
    if len(free) > 1:
        raise UserError(f"config.mesh {dims}: at most one axis may be -1")
    fixed = math.prod(d for d in shape if d != -1)
    if free:
        if num_devices % fixed:
            raise UserError(f"config.mesh {dims} does not divide {num_devices} devices")
        shape[free[0]] = num_devices // fixed
    if math.prod(shape) != num_devices:
        raise UserError(f"config.mesh {dims} needs {math.prod(shape)} devices, {num_devices} available")
    return tuple(shape)


def make_mesh(dims: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with axes (data, fsdp, tensor) over `devices` (default: all), Auto axis types."""
    if devices is None:  # all of them, laid out by jax for the device topology
        shape = mesh_shape(dict(dims), jax.device_count())
        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    shape = mesh_shape(dict(dims), len(devices))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def rules_from_config(rules: Any) -> tuple[tuple[str, Any], ...]:
    """Config rules (lists from the config file) -> tuple form flax expects."""
    out = []
    for name, axes in rules:
        out.append((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes))
    return tuple(out)


@contextlib.contextmanager
def config_mesh(config: Any) -> Iterator[Mesh]:
    """`config.mesh` and `config.logical_axis_rules` in effect for what runs inside."""
    mesh = make_mesh(config.mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules_from_config(config.logical_axis_rules)):
        yield mesh


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules) -> Any:
    """NamedShardings for a tree of (possibly `nn.Partitioned`-boxed) abstract values."""
    specs = nn.get_partition_spec(abstract_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
    """Sharding of a batch's leading axis (`batch` logical axis)."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch",), rules))


def batch_axes(sharding: NamedSharding) -> dict[str, int]:
    """The mesh axes that split a batch's leading axis, with their sizes."""
    axes = sharding.spec[0] if len(sharding.spec) else None
    axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
    return {a: int(sharding.mesh.shape[a]) for a in axes}


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def host_batch_to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Each process's slice of the batch -> global arrays sharded along the batch axis."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
