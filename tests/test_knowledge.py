"""AU-pair knowledge against values worked out by hand (SPEC §2.1-2.3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from auvmae_jax import knowledge as kn

# 6 frames, 3 AUs; AU2 is never active; frame 5 has AU0 unknown (BP4D code 9).
LABELS = np.array([
    [1, 1, 0],
    [1, 0, 0],
    [0, 1, 0],
    [0, 0, 0],
    [1, 1, 0],
    [9, 1, 0],
])
VALID = np.array([[1, 1, 1]] * 5 + [[0, 1, 1]])

# Inter-frame clips of 2 AUs (i = AU0, j = AU1), of different lengths.
CLIP_A = np.array([[1, 0], [1, 1], [0, 1]])
CLIP_B = np.array([[0, 0], [1, 0]])
CLIP_C = np.array([[1, 9], [1, 0], [0, 0]])  # AU1 unknown at t0


def onehots(entries):
    """{state: prob} -> [16]."""
    out = np.zeros(16)
    for s, p in entries.items():
        out[s] = p
    return out


def test_class_weights_by_hand():
    # Rates 1/2 and 1/4: 1/r = 2, 4, sum 6 -> w = 2*2/6, 2*4/6.
    labels = np.array([[1, 1], [0, 0], [1, 0], [0, 0]])
    np.testing.assert_allclose(kn.class_weights(labels), [2 / 3, 4 / 3], rtol=1e-6)
    # [V, T, N] is flattened.
    np.testing.assert_allclose(kn.class_weights(labels.reshape(2, 2, 2)), [2 / 3, 4 / 3], rtol=1e-6)


def test_class_weights_unknown_and_never_active():
    # AU0: 3 active of 5 valid (r = 3/5), AU1: 4 of 6 (2/3), AU2: never -> clamped 1e-6.
    inv = np.array([5 / 3, 3 / 2, 1e6])
    expected = 3 * inv / (5 / 3 + 3 / 2 + 1e6)
    w = kn.class_weights(LABELS, VALID)
    assert w.dtype == np.float32
    np.testing.assert_allclose(w, expected, rtol=1e-5)
    # Without a mask, code 9 is unknown by itself; a valid=0 over a "1" is ignored as well.
    np.testing.assert_allclose(kn.class_weights(LABELS), expected, rtol=1e-5)
    ones = np.where(LABELS == 9, 1, LABELS)
    np.testing.assert_allclose(kn.class_weights(ones, VALID), expected, rtol=1e-5)


def test_intra_prior_by_hand():
    # Pair (0,1) over frames 0-4 (frame 5 has AU0 unknown): n11 = 2 (f0, f4), n10 = 1 (f1),
    # n01 = 1 (f2) -> 2/4. Counting frame 5 would give 3/5 (as active) or 2/5 (as 0).
    expected = np.array([[1.0, 0.5, 0.0],
                         [0.5, 1.0, 0.0],
                         [0.0, 0.0, 0.0]])  # never-active AU2: row, column and diagonal 0
    k = kn.intra_prior(LABELS, VALID)
    assert k.dtype == np.float32 and k.shape == (3, 3)
    np.testing.assert_allclose(k, expected, atol=1e-7)
    ones = np.where(LABELS == 9, 1, LABELS)
    np.testing.assert_allclose(kn.intra_prior(ones, VALID), expected, atol=1e-7)
    np.testing.assert_allclose(kn.intra_prior(LABELS), expected, atol=1e-7)


def test_intra_prior_asymmetric_support():
    # AU0 active on f0, f1; AU1 active on f1, f2, AU1 unknown on f0.
    labels = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    valid = np.array([[1, 0], [1, 1], [1, 1], [1, 1]])
    # Both valid on f1-f3: n11 = 1 (f1), n10 = 0, n01 = 1 (f2) -> 1/2.
    np.testing.assert_allclose(kn.intra_prior(labels, valid), [[1, 0.5], [0.5, 1]], atol=1e-7)
    # All valid: n11 = 1, n10 = 1 (f0), n01 = 1 -> 1/3.
    np.testing.assert_allclose(kn.intra_prior(labels), [[1, 1 / 3], [1 / 3, 1]], atol=1e-7)


def test_inter_state_bit_convention():
    # y_i(t)=1, y_j(t)=0, y_i(t+1)=1, y_j(t+1)=1 -> s = 1 + 4 + 8 = 13.
    k = kn.inter_prior([np.array([[1, 0], [1, 1]])])
    np.testing.assert_allclose(k[0, 1], onehots({13: 1.0}))
    # Swapped roles (i = AU1, j = AU0): y_i(t)=0, y_j(t)=1, y_i(t+1)=1, y_j(t+1)=1 -> 2+4+8.
    np.testing.assert_allclose(k[1, 0], onehots({14: 1.0}))
    s = kn.learned_inter(jnp.asarray([[[1.0, 0.0], [1.0, 1.0]]]))
    np.testing.assert_allclose(s[0, 1], onehots({13: 1.0}), atol=1e-7)


def test_inter_prior_list_of_clips_by_hand():
    k = kn.inter_prior([CLIP_A, CLIP_B])
    assert k.shape == (2, 2, 16) and k.dtype == np.float32
    # (0,1): A 10->11 = 1+4+8 = 13, A 11->01 = 1+2+8 = 11, B 00->10 = 4. The boundary
    # A(t2)=01 -> B(t0)=00 would be state 2: never counted.
    np.testing.assert_allclose(k[0, 1], onehots({13: 1 / 3, 11: 1 / 3, 4: 1 / 3}), atol=1e-7)
    # (1,0): 0,1,1,1 -> 14; 1,1,1,0 -> 7; 0,0,0,1 -> 8.
    np.testing.assert_allclose(k[1, 0], onehots({14: 1 / 3, 7: 1 / 3, 8: 1 / 3}), atol=1e-7)
    # (0,0): 1111 -> 15; 1,1,0,0 -> 3; 0,0,1,1 -> 12.
    np.testing.assert_allclose(k[0, 0], onehots({15: 1 / 3, 3: 1 / 3, 12: 1 / 3}), atol=1e-7)
    # (1,1): 0,0,1,1 -> 12; 15; B 0000 -> 0.
    np.testing.assert_allclose(k[1, 1], onehots({12: 1 / 3, 15: 1 / 3, 0: 1 / 3}), atol=1e-7)
    np.testing.assert_allclose(k.sum(-1), np.ones((2, 2)), rtol=1e-6)


def test_inter_prior_clip_boundary_in_array_form():
    clips = np.stack([CLIP_A[:2], CLIP_B])  # [V=2, T=2, N=2]
    k = kn.inter_prior(clips)
    np.testing.assert_allclose(k[0, 1], onehots({13: 0.5, 4: 0.5}), atol=1e-7)
    # One long clip would add the boundary transition 11 -> 00 = 1 + 2 = state 3.
    joined = kn.inter_prior(clips.reshape(4, 2))
    np.testing.assert_allclose(joined[0, 1], onehots({13: 1 / 3, 3: 1 / 3, 4: 1 / 3}), atol=1e-7)


def test_inter_prior_unknown_labels():
    k = kn.inter_prior([CLIP_A, CLIP_B, CLIP_C])
    # C: t0 -> t1 has y_j(t0) unknown (skipped for pairs with AU1); t1 -> t2: 1,0,0,0 -> 1.
    np.testing.assert_allclose(k[0, 1], onehots({13: .25, 11: .25, 4: .25, 1: .25}), atol=1e-7)
    # (0,0) keeps both C transitions: 1111 -> 15, 1100 -> 3.
    np.testing.assert_allclose(k[0, 0], onehots({15: .4, 3: .4, 12: .2}), atol=1e-7)
    # (1,1): 12, 15, 0, and C's 0000 -> 0.
    np.testing.assert_allclose(k[1, 1], onehots({0: .5, 12: .25, 15: .25}), atol=1e-7)
    # The same through an explicit mask: the 9 replaced by 1 and marked invalid.
    c1 = np.where(CLIP_C == 9, 1, CLIP_C)
    valid = [np.ones_like(CLIP_A), np.ones_like(CLIP_B), (CLIP_C != 9).astype(int)]
    np.testing.assert_allclose(kn.inter_prior([CLIP_A, CLIP_B, c1], valid), k, atol=1e-7)


def test_inter_prior_never_active_and_never_valid():
    a = np.array([[1, 0, 0], [0, 0, 0], [1, 0, 0]])
    valid = np.array([[1, 1, 0], [1, 1, 0], [1, 1, 0]])  # AU2 never valid
    k = kn.inter_prior([a], [valid])
    # AU1 never active: (0,1) 1,0,0,0 -> 1; 0,0,1,0 -> 4. (1,1) all state 0.
    np.testing.assert_allclose(k[0, 1], onehots({1: 0.5, 4: 0.5}), atol=1e-7)
    np.testing.assert_allclose(k[1, 1], onehots({0: 1.0}), atol=1e-7)
    # No valid transition for any pair with AU2: uniform 1/16 (documented choice).
    for i in range(3):
        np.testing.assert_allclose(k[i, 2], np.full(16, 1 / 16), atol=1e-7)
        np.testing.assert_allclose(k[2, i], np.full(16, 1 / 16), atol=1e-7)
    # A clip of a single frame has no transition at all.
    np.testing.assert_allclose(kn.inter_prior([a[:1]]), np.full((3, 3, 16), 1 / 16), atol=1e-7)


def test_learned_intra_soft_by_hand():
    p = jnp.asarray([[0.9, 0.2], [0.7, 0.6]])  # hard [[1, 0], [1, 1]]
    # P^T P = [[2, 1], [1, 1]], (1-P)^T (1-P) = [[0, 0], [0, 1]], M = 2 -> [[2, 2], [2, 1]].
    np.testing.assert_allclose(kn.learned_intra(p), [[1.0, 0.5], [0.5, 1.0]], atol=1e-6)
    np.testing.assert_allclose(kn.learned_intra(p.reshape(1, 2, 2)), [[1, .5], [.5, 1]], atol=1e-6)
    # p exactly 0.5 is not active ([p > 0.5]); all inactive -> C = 0 (denominator max(., 1)).
    np.testing.assert_allclose(kn.learned_intra(jnp.full((3, 2), 0.5)), np.zeros((2, 2)))


def test_learned_intra_of_hard_labels_equals_prior():
    y = np.where(LABELS == 9, 1, LABELS).astype(np.float32)
    np.testing.assert_allclose(kn.learned_intra(jnp.asarray(y), jnp.asarray(VALID)),
                               kn.intra_prior(LABELS, VALID), atol=1e-6)
    full = y[:5]
    np.testing.assert_allclose(kn.learned_intra(jnp.asarray(full)), kn.intra_prior(full), atol=1e-6)


def test_learned_inter_by_hand():
    p = jnp.asarray([[[0.8, 0.3], [0.6, 0.1]]])  # [B=1, T=2, N=2]
    s = np.asarray(kn.learned_inter(p))
    # s=13 (bits 1,0,1,1): p_0(t) (1-p_1(t)) p_0(t+1) p_1(t+1) = .8*.7*.6*.1.
    assert s[0, 1, 13] == pytest.approx(0.0336, abs=1e-7)
    # s=0: .2*.7*.4*.9.
    assert s[0, 1, 0] == pytest.approx(0.0504, abs=1e-7)
    # (i=1, j=0), s=13: p_1(t) (1-p_0(t)) p_1(t+1) p_0(t+1) = .3*.2*.1*.6.
    assert s[1, 0, 13] == pytest.approx(0.0036, abs=1e-7)
    # (0,0), s=15: .8*.8*.6*.6; s=5 (bits 1,0,1,0) = .8*.2*.6*.4.
    assert s[0, 0, 15] == pytest.approx(0.2304, abs=1e-7)
    assert s[0, 0, 5] == pytest.approx(0.0384, abs=1e-7)
    np.testing.assert_allclose(s.sum(-1), np.ones((2, 2)), rtol=1e-6)


def test_learned_inter_mean_over_clips_and_time_and_mask():
    # Two clips, T=3: hard values, so S is a frequency. Pair (0,1) states:
    # clip 0: 10 -> 11 = 13, 11 -> 01 = 11; clip 1: 00 -> 10 = 4, 10 -> 10 = 5.
    p = jnp.asarray([[[1., 0.], [1., 1.], [0., 1.]], [[0., 0.], [1., 0.], [1., 0.]]])
    np.testing.assert_allclose(kn.learned_inter(p)[0, 1], onehots({13: .25, 11: .25, 4: .25, 5: .25}),
                               atol=1e-7)
    # AU1 invalid at clip 1, t=2: its transition 1 -> 2 drops for pairs with AU1 only.
    valid = jnp.ones((2, 3, 2)).at[1, 2, 1].set(0)
    s = kn.learned_inter(p, valid)
    np.testing.assert_allclose(s[0, 1], onehots({13: 1 / 3, 11: 1 / 3, 4: 1 / 3}), atol=1e-7)
    # (0,0) depends on AU0 only: 1111 -> 15, 1100 -> 3, 0011 -> 12, 1111 -> 15.
    np.testing.assert_allclose(s[0, 0], onehots({15: .5, 3: .25, 12: .25}), atol=1e-7)
    # AU1 never valid -> uniform 1/16 for its pairs, as the prior.
    s = kn.learned_inter(p, jnp.ones((2, 3, 2)).at[:, :, 1].set(0))
    np.testing.assert_allclose(s[1, 1], np.full(16, 1 / 16), atol=1e-7)
    np.testing.assert_allclose(s.sum(-1), np.ones((2, 2)), rtol=1e-6)


def test_learned_inter_of_hard_labels_equals_prior_under_jit():
    clips = [CLIP_A, CLIP_B[[0, 1, 1]], CLIP_C]  # three clips of T=3
    arr = np.stack(clips)
    valid = (arr != 9).astype(np.float32)
    hard = np.where(arr == 9, 0, arr).astype(np.float32)
    s = jax.jit(kn.learned_inter)(jnp.asarray(hard), jnp.asarray(valid))
    np.testing.assert_allclose(s, kn.inter_prior(arr), atol=1e-6)
    np.testing.assert_allclose(s, kn.inter_prior(clips), atol=1e-6)


def test_losses_by_hand():
    k = np.array([[1.0, 0.0], [0.0, 1.0]])
    c = jnp.asarray([[0.7, 0.4], [0.0, 1.0]])  # differences 0.3 and 0.4
    assert float(kn.intra_loss(k, c)) == pytest.approx(0.5, abs=1e-6)
    assert float(kn.intra_loss(k, c, kind="mse")) == pytest.approx(0.25 / 4, abs=1e-7)
    ki = np.full((1, 1, 16), 1 / 16)
    si = ki.copy()
    si[0, 0, 0] += 0.3
    si[0, 0, 1] -= 0.4
    assert float(kn.inter_loss(ki, si)) == pytest.approx(0.5, abs=1e-6)
    assert float(kn.inter_loss(ki, si, kind="mse")) == pytest.approx(0.25 / 16, abs=1e-7)
    with pytest.raises(ValueError, match="kind"):
        kn.intra_loss(k, c, kind="l1")
    # Equal arguments: loss 0 and a zero (not NaN) gradient.
    g = jax.grad(lambda x: kn.intra_loss(k, x))(jnp.asarray(k))
    np.testing.assert_array_equal(g, np.zeros((2, 2)))


def test_gradients_through_sigmoid_are_finite_and_nonzero():
    logits = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 3))
    k_intra = kn.intra_prior(LABELS, VALID)
    k_inter = kn.inter_prior([CLIP_A[:, [0, 1, 0]], CLIP_B[:, [0, 1, 1]]])

    for kind in ("fro", "mse"):
        g_intra = jax.grad(lambda z, kind=kind: kn.intra_loss(k_intra, kn.learned_intra(jax.nn.sigmoid(z)),
                                                              kind))(logits)
        g_inter = jax.jit(jax.grad(lambda z, kind=kind: kn.inter_loss(
            k_inter, kn.learned_inter(jax.nn.sigmoid(z)), kind)))(logits)
        for g in (g_intra, g_inter):
            assert g.shape == logits.shape
            assert np.all(np.isfinite(g)) and np.any(np.abs(g) > 0)


def test_straight_through_gradient_is_the_soft_formulas_at_the_hard_decisions():
    # One AU, 3 frames, p = (0.9, 0.2, 0.7): forward on P = [p > 0.5] = (1, 0, 1), so
    # C = sum P^2 / (M - sum (1-P)^2) = 2 / (3 - 1) = 1. Backward as if P were p (dP/dp = 1):
    # dC/dP_m = 2 P_m / den - num * 2 (1 - P_m) / den^2 = P_m - (1 - P_m) = 2 P_m - 1 -> (1, -1, 1).
    # With K = 0.5: L = |K - C| (fro) or (K - C)^2 (mse), dL/dC = 1 either way.
    p = jnp.asarray([[0.9], [0.2], [0.7]])
    z = jnp.log(p / (1 - p))
    for kind in ("fro", "mse"):
        g = jax.grad(lambda p, kind=kind: kn.intra_loss(np.array([[0.5]]), kn.learned_intra(p), kind))(p)
        np.testing.assert_allclose(g, [[1.0], [-1.0], [1.0]], rtol=1e-6)
        # Through the sigmoid: times p (1 - p).
        gz = jax.grad(lambda z, kind=kind: kn.intra_loss(np.array([[0.5]]),
                                                         kn.learned_intra(jax.nn.sigmoid(z)), kind))(z)
        np.testing.assert_allclose(gz, np.array([[1.0], [-1.0], [1.0]]) * p * (1 - p), rtol=1e-5)
    # Several AUs: the gradient of the soft formula C(P) (written here in NumPy terms) at P = hard.
    logits = jax.random.normal(jax.random.PRNGKey(0), (10, 3)) * 2
    k_intra = jnp.asarray(kn.intra_prior(LABELS, VALID))

    def soft(q):
        return (q.T @ q) / jnp.maximum(q.shape[0] - (1 - q).T @ (1 - q), 1.0)

    hard = (jax.nn.sigmoid(logits) > 0.5).astype(jnp.float32)
    g_soft = jax.grad(lambda q: kn.intra_loss(k_intra, soft(q)))(hard)
    g_st = jax.grad(lambda z: kn.intra_loss(k_intra, kn.learned_intra(jax.nn.sigmoid(z))))(logits)
    s = jax.nn.sigmoid(logits)
    np.testing.assert_allclose(g_st, g_soft * s * (1 - s), rtol=1e-5, atol=1e-7)
    assert np.abs(g_st).min() > 0


def test_inter_gradient_is_the_soft_products():
    # S[0, 0, s] over one transition of one AU, p(t) = a, p(t+1) = b, is D0(a) D1(a) D2(b) D3(b):
    # s = 15: a^2 b^2; s = 0: (1-a)^2 (1-b)^2; s = 5 (bits 1, 0, 1, 0): a (1-a) b (1-b).
    a, b = 0.8, 0.3
    p = jnp.asarray([[[a], [b]]])
    cases = {15: [2 * a * b**2, 2 * a**2 * b],
             0: [-2 * (1 - a) * (1 - b)**2, -2 * (1 - a)**2 * (1 - b)],
             5: [(1 - 2 * a) * b * (1 - b), a * (1 - a) * (1 - 2 * b)]}
    for state, want in cases.items():
        g = jax.grad(lambda p, s=state: kn.learned_inter(p)[0, 0, s])(p)
        np.testing.assert_allclose(np.asarray(g).ravel(), want, rtol=1e-5)


def test_compute_save_load_priors(tmp_path):
    frames = np.concatenate([CLIP_A, CLIP_B, CLIP_C])
    pri = kn.compute_priors(frames, clip_lengths=[3, 2, 3])
    np.testing.assert_allclose(pri["inter_prior"], kn.inter_prior([CLIP_A, CLIP_B, CLIP_C]))
    np.testing.assert_allclose(pri["intra_prior"], kn.intra_prior(frames))
    np.testing.assert_allclose(pri["class_weights"], kn.class_weights(frames))
    c = pri["counts"]
    assert c["num_frames"] == 8 and c["num_clips"] == 3
    assert c["valid_frames"] == [8, 7] and c["positive_frames"] == [5, 2]
    # AU0 & AU1 both valid on 7 frames; n00 = 2 (B t0, C t2) -> 5 with at least one active.
    assert c["intra_pair_frames"] == [[5, 5], [5, 2]]
    assert c["inter_pair_transitions"] == [[5, 4], [4, 4]]
    kn.save_priors(str(tmp_path / "p"), pri, [1, 2])
    back = kn.load_priors(str(tmp_path / "p"))
    for name in ("class_weights", "intra_prior", "inter_prior"):
        np.testing.assert_array_equal(back[name], pri[name])
        assert back[name].dtype == np.float32
    assert back["aus"] == [1, 2] and back["counts"] == c
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "class_weights.npy", "inter_prior.npy", "intra_prior.npy", "priors.json"]
    # Array and list forms agree.
    lst = kn.compute_priors([CLIP_A, CLIP_B, CLIP_C])
    np.testing.assert_allclose(lst["inter_prior"], pri["inter_prior"])
    assert lst["counts"] == c
