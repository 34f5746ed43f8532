"""AU-pair knowledge (SPEC §2.1-2.3, paper eqs. 2-8): priors from labels, learned terms, losses.

Shapes: `F` frames, `N` AUs, `V` clips of `T` frames, `B` clips in a batch, 16 transition
states. Priors are counted on the host and returned as NumPy float32; the learned terms
and the losses are JAX, differentiable and usable inside `jit`.

Labels and validity (used by every prior): an entry is *valid* when its `valid` flag is
non-zero (all are, when `valid` is None) AND its label is exactly 0 or 1, so an unknown
code (BP4D's 9, or -1) is never counted even without a mask. Valid entries with label 1
are active.

Inter-frame states: `s = s0 + 2*s1 + 4*s2 + 8*s3` with `s0 = y_i(t)`, `s1 = y_j(t)`,
`s2 = y_i(t+1)`, `s3 = y_j(t+1)` (e.g. y_i(t)=1, y_j(t)=0, y_i(t+1)=1, y_j(t+1)=1 is
state 13). A pair (i, j) with no valid transition at all gets the uniform distribution
1/16 in the prior and in the learned matrix alike, so it adds nothing to the loss.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from auvmae_jax import paths

NUM_STATES = 16
RATE_FLOOR = 1e-6

# For state s, the per-AU 2-bit code (y(t) + 2*y(t+1)) of AU i and of AU j.
_STATES = np.arange(NUM_STATES)
_CODE_I = (_STATES & 1) + 2 * ((_STATES >> 2) & 1)
_CODE_J = ((_STATES >> 1) & 1) + 2 * ((_STATES >> 3) & 1)


# ----------------------------------------------------------------------------- host-side priors


def label_mask(labels, valid=None) -> tuple[np.ndarray, np.ndarray]:
    """(`y`, `m`) float64 arrays of `labels`' shape: y = 1 on valid active entries, m = validity.

    An entry is valid iff `valid` (default: all ones) is non-zero and the label is 0 or 1.
    """
    labels = np.asarray(labels)
    m = (labels == 0) | (labels == 1)
    if valid is not None:
        valid = np.asarray(valid)
        if valid.shape != labels.shape:
            raise ValueError(f"valid shape {valid.shape} != labels shape {labels.shape}")
        m &= valid != 0
    y = m & (labels == 1)
    return y.astype(np.float64), m.astype(np.float64)


def _frames(labels, valid) -> tuple[np.ndarray, np.ndarray]:
    """Flattened (`y`, `m`) `[F, N]` from `[..., N]` labels (or a list of `[T_v, N]` clips)."""
    if isinstance(labels, list | tuple):
        labels = np.concatenate([np.asarray(c) for c in labels], axis=0)
        valid = None if valid is None else np.concatenate([np.asarray(c) for c in valid], axis=0)
    y, m = label_mask(labels, valid)
    if y.ndim < 2:
        raise ValueError(f"labels must be [..., N], got shape {y.shape}")
    return y.reshape(-1, y.shape[-1]), m.reshape(-1, m.shape[-1])


def class_weights(labels, valid=None) -> np.ndarray:
    """Eq. 2 weights `[N]` from labels `[F, N]` (or `[V, T, N]`, or a list of `[T_v, N]`).

    `w_i = N * (1/r_i) / sum_j (1/r_j)`, with `r_i` the occurrence rate of AU i over its
    valid frames, clamped to >= 1e-6 (an AU never active, or never valid, gets r = 1e-6).
    """
    y, m = _frames(labels, valid)
    rate = np.maximum(y.sum(0) / np.maximum(m.sum(0), 1.0), RATE_FLOOR)
    inv = 1.0 / rate
    return (y.shape[1] * inv / inv.sum()).astype(np.float32)


def _intra_counts(y: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n11, n10 + n01 + n11) `[N, N]` over the frames where both labels of the pair are valid."""
    neg = m - y  # valid and inactive
    n11 = y.T @ y
    union = m.T @ m - neg.T @ neg  # both valid minus n00
    return n11, union


def intra_prior(labels, valid=None) -> np.ndarray:
    """Eq. 3, `K_intra` `[N, N]` from labels `[F, N]` (or `[V, T, N]`, or a list of clips).

    `K[i, j] = n11 / (n10 + n01 + n11)` counted over the frames where both labels are valid;
    0 where the pair is never active there. Hence the diagonal is 1 for an AU active on
    at least one valid frame and 0 for an AU that is never active.
    """
    n11, union = _intra_counts(*_frames(labels, valid))
    return np.where(union > 0, n11 / np.maximum(union, 1.0), 0.0).astype(np.float32)


def _as_clips(clips, valid) -> list[tuple[np.ndarray, np.ndarray]]:
    """A list of (`y`, `m`) `[T_v, N]` per clip from `[V, T, N]`, `[T, N]` or a list of `[T_v, N]`."""
    if isinstance(clips, list | tuple):
        if valid is not None and len(valid) != len(clips):
            raise ValueError(f"{len(valid)} valid masks for {len(clips)} clips")
        return [label_mask(c, None if valid is None else valid[k]) for k, c in enumerate(clips)]
    y, m = label_mask(clips, valid)
    if y.ndim == 2:
        return [(y, m)]
    if y.ndim != 3:
        raise ValueError(f"clips must be [V, T, N], [T, N] or a list of [T_v, N]; got {y.shape}")
    return list(zip(y, m))


def _inter_counts(clips, valid) -> np.ndarray:
    """Transition counts `[N, N, 16]` over consecutive frames inside each clip (never across)."""
    pairs = _as_clips(clips, valid)
    n = pairs[0][0].shape[-1]
    cnt4 = np.zeros((n, n, 4, 4))
    for y, m in pairs:
        if y.shape[0] < 2:
            continue
        both = m[:-1] * m[1:]  # [T-1, N]: the AU is valid at t and t+1
        code = (y[:-1] + 2 * y[1:]).astype(np.int64)  # [T-1, N], y(t) + 2*y(t+1)
        u = np.eye(4)[code] * both[..., None]  # [T-1, N, 4]
        cnt4 += np.einsum("tia,tjb->ijab", u, u)
    return cnt4[:, :, _CODE_I, _CODE_J]


def _normalise_states(counts: np.ndarray) -> np.ndarray:
    total = counts.sum(-1, keepdims=True)
    out = np.where(total > 0, counts / np.maximum(total, 1.0), 1.0 / NUM_STATES)
    return out.astype(np.float32)


def inter_prior(clips, valid=None) -> np.ndarray:
    """Eqs. 6-7 prior `K_inter` `[N, N, 16]` from clips `[V, T, N]` or a list of `[T_v, N]`.

    `K[i, j, s]` = frequency of state s over all transitions t -> t+1 inside a clip where
    the four labels y_i(t), y_j(t), y_i(t+1), y_j(t+1) are valid. `valid` has the shape of
    `clips` (a list of masks for a list of clips). Each `K[i, j, :]` sums to 1; a pair with
    no valid transition gets the uniform 1/16. A single `[T, N]` array is one clip.
    """
    return _normalise_states(_inter_counts(clips, valid))


def compute_priors(clips, valid=None, clip_lengths: Sequence[int] | None = None) -> dict:
    """All three priors plus the counts behind them.

    `clips`: `[V, T, N]`, a list of `[T_v, N]`, or `[F, N]` frames split into consecutive
    clips by `clip_lengths` (summing to F; without it, `[F, N]` is one clip). `valid` has
    the same layout. Returns `{"class_weights": [N], "intra_prior": [N, N], "inter_prior":
    [N, N, 16], "counts": {...}}`, the counts being JSON-ready (ints and lists).
    """
    if clip_lengths is not None:
        clips = np.asarray(clips)
        if clips.ndim != 2 or int(np.sum(clip_lengths)) != clips.shape[0]:
            raise ValueError(f"clip_lengths sum {int(np.sum(clip_lengths))} != frames of {clips.shape}")
        cuts = np.cumsum(clip_lengths)[:-1]
        clips = np.split(clips, cuts)
        valid = None if valid is None else np.split(np.asarray(valid), cuts)
    y, m = _frames(clips, valid)
    n11, union = _intra_counts(y, m)
    trans = _inter_counts(clips, valid)
    num_clips = len(clips) if isinstance(clips, list | tuple) else (1 if np.ndim(clips) == 2 else len(clips))
    counts = {
        "num_frames": int(y.shape[0]),
        "num_clips": int(num_clips),
        "valid_frames": m.sum(0).astype(int).tolist(),
        "positive_frames": y.sum(0).astype(int).tolist(),
        "intra_pair_frames": union.astype(int).tolist(),  # frames with >= 1 of the pair active
        "inter_pair_transitions": trans.sum(-1).astype(int).tolist(),
    }
    return {
        "class_weights": class_weights(clips, valid),
        "intra_prior": np.where(union > 0, n11 / np.maximum(union, 1.0), 0.0).astype(np.float32),
        "inter_prior": _normalise_states(trans),
        "counts": counts,
    }


_PRIOR_FILES = ("class_weights", "intra_prior", "inter_prior")


def save_priors(directory: str, priors: dict, aus: Sequence) -> None:
    """Write `class_weights.npy`, `intra_prior.npy`, `inter_prior.npy` and `priors.json`.

    `priors.json` holds the AU names, the array shapes and `priors["counts"]` (if any).
    """
    for name in _PRIOR_FILES:
        paths.save_npy(paths.join(directory, f"{name}.npy"), np.asarray(priors[name], np.float32))
    meta = {
        "aus": [a if isinstance(a, str) else int(a) for a in aus],
        "shapes": {name: list(np.shape(priors[name])) for name in _PRIOR_FILES},
        "counts": priors.get("counts", {}),
    }
    paths.write_json(paths.join(directory, "priors.json"), meta, indent=1)


def load_priors(directory: str) -> dict:
    """Inverse of `save_priors`: the three float32 arrays plus `aus` and `counts`."""
    meta = paths.read_json(paths.join(directory, "priors.json"))
    out = {name: paths.load_npy(paths.join(directory, f"{name}.npy")) for name in _PRIOR_FILES}
    for name in _PRIOR_FILES:
        if list(out[name].shape) != meta["shapes"][name]:
            raise ValueError(f"{directory}/{name}.npy has shape {out[name].shape}, "
                             f"priors.json says {meta['shapes'][name]}")
    out["aus"] = meta["aus"]
    out["counts"] = meta.get("counts", {})
    return out


# ----------------------------------------------------------------------------- learned terms (JAX)


@jax.jit
def learned_intra(probs: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """Eq. 4, learned co-occurrence `C` `[N, N]` from probabilities `[M, N]` or `[B, T, N]`.

    `P = [p > 0.5] - stop_gradient(p) + p` (straight-through: forward hard, gradient 1),
    `C = (P^T P) / max(M - (1-P)^T (1-P), 1)`. With `valid` (probs' shape, 0/1), P and
    1 - P are masked and M becomes the number of frames where both labels are valid, so
    hard 0/1 inputs give exactly `intra_prior` of the same labels and mask.
    """
    p = jnp.asarray(probs, jnp.float32)
    p = p.reshape(-1, p.shape[-1])
    hard = (p > 0.5).astype(jnp.float32)
    pos = hard - jax.lax.stop_gradient(p) + p
    neg = 1.0 - pos
    if valid is None:
        both = jnp.float32(p.shape[0])
    else:
        m = jnp.asarray(valid, jnp.float32).reshape(p.shape)
        pos, neg = pos * m, neg * m
        both = m.T @ m
    return (pos.T @ pos) / jnp.maximum(both - neg.T @ neg, 1.0)


def _state_product(xi_t, xj_t, xi_n, xj_n, s):
    """`D_0(x_i(t)) D_1(x_j(t)) D_2(x_i(t+1)) D_3(x_j(t+1))` for state `s`, elementwise."""
    def d(x, k):
        bit = ((s >> k) & 1).astype(x.dtype)
        return bit * x + (1.0 - bit) * (1.0 - x)  # x if s_k == 1 else 1 - x

    return d(xi_t, 0) * d(xj_t, 1) * d(xi_n, 2) * d(xj_n, 3)


@jax.jit
def learned_inter(probs: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """Eq. 7, learned transition matrix `S` `[N, N, 16]` from probabilities `[B, T, N]`.

    `S[i, j, s]` = mean over clips b and t < T-1 of
    `D_0(p_i(t)) D_1(p_j(t)) D_2(p_i(t+1)) D_3(p_j(t+1))`, `D_k(x) = x if bit k of s is
    1 else 1 - x`; vmapped over i, j and s. With `valid` `[B, T, N]`, a transition counts
    for (i, j) only where the four labels are valid (the mean is over those); a pair with
    none (or T = 1) gets 1/16, as in `inter_prior`. Each `S[i, j, :]` sums to 1.
    `[T, N]` is one clip.
    """
    p = jnp.asarray(probs, jnp.float32)
    if p.ndim == 2:
        p = p[None]
        valid = None if valid is None else jnp.asarray(valid)[None]
    n = p.shape[-1]
    x_t = p[:, :-1].reshape(-1, n)  # [B*(T-1), N]
    x_n = p[:, 1:].reshape(-1, n)
    if valid is None:
        w = jnp.ones_like(x_t)
    else:
        v = jnp.asarray(valid, jnp.float32)
        w = (v[:, :-1] * v[:, 1:]).reshape(-1, n)  # AU valid at t and t+1

    def entry(i, j, s):
        weight = w[:, i] * w[:, j]
        prod = _state_product(x_t[:, i], x_t[:, j], x_n[:, i], x_n[:, j], s)
        total = jnp.sum(weight)
        mean = jnp.sum(weight * prod) / jnp.where(total > 0, total, 1.0)
        return jnp.where(total > 0, mean, 1.0 / NUM_STATES)

    idx = jnp.arange(n)
    states = jnp.arange(NUM_STATES)
    over_s = jax.vmap(entry, in_axes=(None, None, 0))
    over_j = jax.vmap(over_s, in_axes=(None, 0, None))
    over_i = jax.vmap(over_j, in_axes=(0, None, None))
    return over_i(idx, idx, states)


# ----------------------------------------------------------------------------- losses


@functools.partial(jax.jit, static_argnames="kind")
def _distance(prior, learned, kind: str) -> jax.Array:
    diff = jnp.asarray(prior, jnp.float32) - jnp.asarray(learned, jnp.float32)
    sq = jnp.sum(jnp.square(diff))
    if kind == "fro":
        # sqrt with a zero (not NaN) gradient where prior == learned exactly.
        pos = sq > 0
        return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)
    if kind == "mse":
        return sq / diff.size
    raise ValueError(f"unknown knowledge loss kind {kind!r}: expected 'fro' or 'mse'")


def intra_loss(prior, learned, kind: str = "fro") -> jax.Array:
    """Eq. 5: `||K_intra - C||_F` over the `[N, N]` entries (`kind='fro'`) or their mean square."""
    return _distance(prior, learned, kind)


def inter_loss(prior, learned, kind: str = "fro") -> jax.Array:
    """Eq. 8: `||K_inter - S||_F` over all `[N, N, 16]` entries (`kind='fro'`) or their mean square."""
    return _distance(prior, learned, kind)
