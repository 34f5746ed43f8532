import jax
import numpy as np
import pytest

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


def test_running_cell_tables_by_hand():
    # One temporal index of a 2x2 grid at ratio 0.5: the cell's places are the positions.
    # V2's cell [1, 1, 0, 0] (1 = dropped) is read from its pointer, which starts one past
    # the phase: phase 0 keeps places 1, 2; phase 1 places 0, 1; 2: 0, 3; 3: 2, 3.
    np.testing.assert_array_equal(masking.running_cell_tokens((1, 2, 2), 0.5),
                                  [[1, 2], [0, 1], [0, 3], [2, 3]])
    # The cell runs in time: phase 0 at t = 1 is phase 1 at t = 0 (token ids 4 places on).
    two = masking.running_cell_tokens((2, 2, 2), 0.5)
    np.testing.assert_array_equal(two[0], [1, 2, 4 + 0, 4 + 1])
    # 0.25 drops one place of each cell, 0.75 keeps one.
    np.testing.assert_array_equal(masking.running_cell_tokens((1, 2, 2), 0.25)[0], [0, 1, 2])
    np.testing.assert_array_equal(masking.running_cell_tokens((1, 2, 2), 0.75)[0], [2])


def test_running_cell_keeps_half_of_every_frame_and_every_position_in_turn():
    table = masking.running_cell_tokens((8, 14, 14), 0.5)
    assert table.shape == (4, 8 * 98) and table.dtype == np.int32
    for row in table:
        keep = np.zeros(8 * 196, bool)
        keep[row] = True
        keep = keep.reshape(8, 14, 14)
        assert (np.diff(row) > 0).all()
        assert (keep.sum((1, 2)) == 98).all()
        # Each 2x2 cell keeps 2 of its 4 places at each temporal index ...
        cells = keep.reshape(8, 7, 2, 7, 2).sum((2, 4))
        assert (cells == 2).all()
        # ... and over 4 consecutive ones every position is kept twice.
        assert (keep[:4].sum(0) == 2).all() and (keep[4:].sum(0) == 2).all()
    assert len({tuple(r) for r in table}) == 4


def test_decoder_queries_draw_a_phase_per_clip_and_bad_settings_fail():
    grid = (4, 14, 14)
    table = masking.running_cell_tokens(grid, 0.5)
    q = np.asarray(masking.decoder_queries(jax.random.key(0), 64, grid, 0.5))
    assert q.shape == (64, 4 * 98)
    phases = [int(np.flatnonzero((table == r).all(1))[0]) for r in q]  # each row is a table row
    assert set(phases) == {0, 1, 2, 3}
    for ratio in (0.3, 1.0):
        with pytest.raises(ValueError, match="ratio 0.25, 0.5 or 0.75, got"):
            masking.running_cell_tokens(grid, ratio)
    with pytest.raises(ValueError, match="an even grid of patches, got 7x7"):
        masking.running_cell_tokens((4, 7, 7), 0.5)
