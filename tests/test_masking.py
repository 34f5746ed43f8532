import jax
import numpy as np

from auvmae_jax import masking


def test_tube_mask_exact_counts_sorted_disjoint():
    vis, msk = masking.tube_mask(jax.random.key(0), 16, 196, 0.9)
    vis, msk = np.asarray(vis), np.asarray(msk)
    assert vis.shape == (16, 20) and msk.shape == (16, 176)  # round(0.9 * 196) = 176 masked
    for v, m in zip(vis, msk):
        assert (np.diff(v) > 0).all() and (np.diff(m) > 0).all()
        np.testing.assert_array_equal(np.sort(np.concatenate([v, m])), np.arange(196))
    assert masking.num_masked(196, 0.5) == 98


def test_same_spatial_mask_at_every_temporal_index():
    _, msk = masking.tube_mask(jax.random.key(3), 4, 16, 0.75)
    mask = np.asarray(masking.token_mask(msk, 5, 16)).reshape(4, 5, 16)
    assert (mask == mask[:, :1]).all()
    assert (mask.sum(-1) == 12).all()
    ids = np.asarray(masking.tube_token_ids(msk, 5, 16))
    np.testing.assert_array_equal(np.flatnonzero(mask[0].reshape(-1)), ids[0])


def test_clips_and_steps_draw_different_masks():
    _, a = masking.tube_mask(jax.random.key(0), 8, 196, 0.9)
    a = np.asarray(a)
    assert len({tuple(r) for r in a}) == 8
    _, b = masking.tube_mask(jax.random.key(1), 8, 196, 0.9)
    assert not np.array_equal(a, np.asarray(b))
    _, c = masking.tube_mask(jax.random.key(0), 8, 196, 0.9)
    np.testing.assert_array_equal(a, np.asarray(c))
