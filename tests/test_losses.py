import jax.numpy as jnp
import numpy as np

from auvmae_jax import losses


def test_normalised_pixel_target_by_hand():
    # One 2x2x2 tubelet (t, h, w), 1 channel repeated with an offset per channel.
    vals = np.array([0.0, 0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 1.0])  # (t, h, w) order
    video = np.zeros((1, 2, 2, 2, 3))
    video[0, ..., 0] = vals.reshape(2, 2, 2)
    video[0, ..., 1] = 0.25  # constant channel: (x - mean) / (0 + 1e-6) = 0
    video[0, ..., 2] = 1 - vals.reshape(2, 2, 2)
    target = np.asarray(losses.mae_targets(jnp.asarray(video), tubelet=2, patch=2))
    assert target.shape == (1, 1, 24)
    t = target.reshape(8, 3)
    mean = 3.4 / 8
    std = np.sqrt(np.sum((vals - mean) ** 2) / 7)  # unbiased
    np.testing.assert_allclose(t[:, 0], (vals - mean) / (std + 1e-6), rtol=1e-5)
    np.testing.assert_allclose(t[:, 1], 0.0, atol=1e-6)
    np.testing.assert_allclose(t[:, 2], -(vals - mean) / (std + 1e-6), rtol=1e-5)
    # Order inside the tubelet is (t, h, w, c): value 2 of channel 0 is pixel (t=0, h=1, w=0).
    assert np.isclose(target[0, 0, 2 * 3], (0.2 - mean) / (std + 1e-6), rtol=1e-5)
    raw = np.asarray(losses.mae_targets(jnp.asarray(video), 2, 2, normalize=False))
    np.testing.assert_allclose(raw.reshape(8, 3)[:, 0], vals, rtol=1e-6)


def test_reconstruction_loss_is_plain_mean_over_masked_tokens():
    pred = jnp.asarray([[[1.0, 2.0], [0.0, 0.0]], [[0.0, 1.0], [3.0, 3.0]]])
    target = jnp.zeros_like(pred)
    # (1 + 4 + 0 + 0 + 0 + 1 + 9 + 9) / 8
    assert np.isclose(float(losses.reconstruction_loss(pred, target)), 24 / 8)


def test_imagenet_normalisation():
    frames = np.full((1, 1, 1, 1, 3), 255, np.uint8)
    x01, x = losses.normalize_frames(jnp.asarray(frames))
    np.testing.assert_allclose(np.asarray(x01).ravel(), 1.0)
    np.testing.assert_allclose(np.asarray(x).ravel(),
                               [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225], rtol=1e-6)


def test_weighted_bce_by_hand():
    logits = jnp.asarray([[[0.0, 2.0], [-1.0, 30.0]], [[0.5, 0.5], [0.0, 0.0]]])
    labels = jnp.asarray([[[1, 0], [0, 1]], [[1, 1], [0, 0]]])
    valid = jnp.asarray([[[1, 1], [1, 0]], [[0, 0], [1, 1]]])  # frame (1, 0) has no valid label
    w = jnp.asarray([0.5, 1.5])
    bce = lambda x, y: np.log1p(np.exp(-x)) if y else np.log1p(np.exp(x))  # noqa: E731
    frames = [0.5 * bce(0.0, 1) + 1.5 * bce(2.0, 0), 0.5 * bce(-1.0, 0),
              0.5 * bce(0.0, 0) + 1.5 * bce(0.0, 0)]
    expected = sum(frames) / 3
    assert np.isclose(float(losses.weighted_bce(logits, labels, valid, w)), expected, rtol=1e-6)
    # Stable for large logits: no inf/nan where log(sigmoid) would underflow.
    big = losses.weighted_bce(jnp.asarray([[500.0, -500.0]]), jnp.asarray([[0, 1]]), jnp.ones((1, 2)),
                              jnp.ones(2))
    assert np.isclose(float(big), 1000.0)
