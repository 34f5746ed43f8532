"""Streaming video decode with PyAV: frame counts, timestamps, truncated and unreadable files."""

import logging

import numpy as np
import pytest

from auvmae_jax import video_io
from auvmae_jax.errors import UserError


def _frames(n: int, h: int = 48, w: int = 64) -> list[np.ndarray]:
    """Frames whose mean brightness encodes their index (robust to lossy coding)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        f = np.full((h, w, 3), 10 + 6 * i, np.uint8)
        f[:, : w // 2] = rng.integers(0, 255, (h, w // 2, 3), dtype=np.uint8)  # texture: bigger file
        out.append(f)
    return out


@pytest.mark.parametrize("ext,codec", [("mp4", "libx264"), ("avi", "mpeg4"), ("mov", "libx265")])
def test_decodes_every_frame_with_timestamps(tmp_path, ext, codec):
    path = tmp_path / f"v.{ext}"
    assert video_io.write_video(path, _frames(30), fps=15, codec=codec) == 30
    info = video_io.probe(path)
    assert (info.fps, info.num_frames, info.width, info.height) == (15.0, 30, 64, 48)
    frames = list(video_io.iter_frames(path))
    assert [f.index for f in frames] == list(range(30))
    np.testing.assert_allclose([f.timestamp for f in frames], np.arange(30) / 15, atol=1e-6)
    assert frames[7].rgb.shape == (48, 64, 3) and frames[7].rgb.dtype == np.uint8
    # the flat right half keeps its level through the codec (mpeg4 within 4): order is right
    levels = [f.rgb[:, 40:].mean() for f in frames]
    np.testing.assert_allclose(levels, 10 + 6 * np.arange(30), atol=4.5)  # a shift by one is 6


def _write_rotated(path, frames, degrees: int):
    """A video whose container says: show these frames turned `degrees` counter-clockwise."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10"}
        stream.set_display_rotation(degrees)
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())


@pytest.mark.parametrize("degrees,corner", [(0, (0, 0)), (90, (1, 0)), (-90, (0, 1)), (180, (1, 1)),
                                            (80, (1, 0))])
def test_frames_come_upright_as_the_display_rotation_says(tmp_path, caplog, degrees, corner):
    import av

    if not hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        pytest.skip("this PyAV cannot write a display rotation")
    # Stored landscape, 48 x 64, bright in its top-left 16 x 16 corner (a phone's portrait video,
    # say, stored sideways with a rotation for the player).
    rgb = np.full((48, 64, 3), 30, np.uint8)
    rgb[:16, :16] = 220
    path = tmp_path / f"rot{degrees}.mp4"
    _write_rotated(path, [rgb] * 3, degrees)
    quarter = round(degrees / 90) % 2 == 1
    size = (48, 64) if quarter else (64, 48)  # (width, height) as shown
    info = video_io.probe(path)
    assert (info.width, info.height, info.num_frames) == (*size, 3)
    frames = list(video_io.iter_frames(path))
    assert len(frames) == 3 and frames[0].rgb.shape == (size[1], size[0], 3)
    # Turned counter-clockwise by 90: the top-left corner goes to the bottom-left; by -90 to
    # the top-right; by 180 to the bottom-right.
    img = frames[0].rgb.astype(float)
    rows = slice(img.shape[0] - 16, None) if corner[0] else slice(0, 16)
    cols = slice(img.shape[1] - 16, None) if corner[1] else slice(0, 16)
    assert img[rows, cols].mean() > 200
    bright = img.mean(-1) > 125
    assert abs(int(bright.sum()) - 256) < 40  # nowhere else
    tilted = [r.getMessage() for r in caplog.records if "display rotation" in r.getMessage()]
    said = f"video {path}: display rotation of 80 degrees, rounded to 90"
    assert tilted == ([said] if degrees == 80 else [])


def test_decoding_is_streamed(tmp_path, monkeypatch):
    path = tmp_path / "v.mp4"
    video_io.write_video(path, _frames(10), fps=10)
    decoded, opened = [], []

    class Counting:
        """PyAV's container, counting the frames its decoder hands out."""

        def __init__(self, container):
            self._container, self.closed = container, False

        def __getattr__(self, name):
            return getattr(self._container, name)

        def decode(self, *args, **kwargs):
            for frame in self._container.decode(*args, **kwargs):
                decoded.append(frame.pts)
                yield frame

        def close(self):
            self.closed = True
            self._container.close()

    real_open = video_io.av.open

    def counting_open(*args, **kwargs):
        opened.append(Counting(real_open(*args, **kwargs)))
        return opened[-1]

    monkeypatch.setattr(video_io.av, "open", counting_open)
    it = video_io.iter_frames(path)
    first = next(it)
    assert first.index == 0 and len(decoded) == 1  # one frame decoded when the first is yielded
    assert next(it).index == 1 and len(decoded) == 2
    it.close()  # stopping early closes the file without decoding the rest
    assert opened[0].closed and len(decoded) == 2


def test_truncated_file_yields_the_frames_that_decode(tmp_path, caplog):
    full = tmp_path / "v.avi"
    video_io.write_video(full, _frames(40), fps=20, codec="mpeg4")
    data = full.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 6 // 10])
    with caplog.at_level(logging.WARNING, logger="auvmae"):
        frames = list(video_io.iter_frames(cut))
    assert 5 < len(frames) < 40
    assert [f.index for f in frames] == list(range(len(frames)))
    assert "truncated" in caplog.text and "cut.avi" in caplog.text
    # One warning per pass, not "decoding stopped" and "fewer frames than announced" both;
    # warn=False (a second pass over a file already reported) says nothing and yields the same frames.
    assert len([r for r in caplog.records if "cut.avi" in r.getMessage()]) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="auvmae"):
        again = list(video_io.iter_frames(cut, warn=False))
    assert len(again) == len(frames) and caplog.records == []


def test_unreadable_files_are_one_line_user_errors(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    with pytest.raises(UserError, match=r"notes\.mp4: cannot be read as a video") as e:
        list(video_io.iter_frames(text))
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="no such file"):
        video_io.probe(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(UserError, match=r"empty\.mp4: is an empty file"):
        video_io.probe(tmp_path / "empty.mp4")
    # an mp4 cut before its index (moov atom) cannot be opened at all
    full = tmp_path / "v.mp4"
    video_io.write_video(full, _frames(20), fps=10)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[:-2000])
    with pytest.raises(UserError, match=r"cut\.mp4"):
        list(video_io.iter_frames(cut))


def test_a_name_with_a_colon_is_a_file_not_a_protocol(tmp_path, monkeypatch):
    # FFmpeg reads `NAME:` at the start of a path as a protocol (`file:`, `http:`, ...).
    monkeypatch.chdir(tmp_path)
    assert video_io.write_video("2024-01-05T10:30:00.mp4", _frames(6), fps=10) == 6
    assert video_io.probe("2024-01-05T10:30:00.mp4").num_frames == 6
    assert len(list(video_io.iter_frames("2024-01-05T10:30:00.mp4"))) == 6


def _write_stream(container, frames, sar=None):
    import av

    stream = container.add_stream("libx264", rate=10)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = "yuv420p"
    if sar is not None:
        stream.codec_context.sample_aspect_ratio = sar
    return stream, [av.VideoFrame.from_ndarray(f, format="rgb24") for f in frames]


def test_non_square_pixels_come_as_a_player_shows_them(tmp_path):
    import fractions

    import av

    # 96 x 48 shown at 16:9 stored as 64 x 48 pixels 3:2 wide (anamorphic, as DV and HDV store it):
    # a disc of the same width and height on the screen is an ellipse in the stored pixels.
    yy, xx = np.mgrid[:48, :64]
    disc = ((xx - 32) * 1.5) ** 2 + (yy - 24) ** 2 < 18 ** 2
    rgb = np.repeat(np.where(disc, 220, 30).astype(np.uint8)[..., None], 3, axis=-1)
    path = tmp_path / "anamorphic.mp4"
    with av.open(str(path), mode="w") as container:
        stream, frames = _write_stream(container, [rgb] * 3, sar=fractions.Fraction(3, 2))
        for f in frames:
            container.mux(stream.encode(f))
        container.mux(stream.encode())
    info = video_io.probe(path)
    assert (info.width, info.height) == (96, 48)
    img = next(video_io.iter_frames(path)).rgb
    assert img.shape == (48, 96, 3)
    bright = img.mean(-1) > 125
    rows, cols = np.nonzero(bright)
    # The disc is round again: as wide as it is high (36 px).
    assert abs((cols.max() - cols.min()) - (rows.max() - rows.min())) <= 2
    assert 34 <= rows.max() - rows.min() <= 37


def test_of_several_video_streams_the_largest_is_read(tmp_path, caplog):
    import av

    small = np.full((24, 32, 3), 40, np.uint8)
    large = np.full((48, 64, 3), 200, np.uint8)
    path = tmp_path / "two.mkv"
    with av.open(str(path), mode="w") as container:
        first, a = _write_stream(container, [small] * 4)
        second, b = _write_stream(container, [large] * 5)
        for fa, fb in zip(a, b):
            container.mux(first.encode(fa))
            container.mux(second.encode(fb))
        container.mux(second.encode(b[-1]))
        container.mux(first.encode())
        container.mux(second.encode())
    info = video_io.probe(path)
    assert (info.width, info.height, info.num_frames) in {(64, 48, 5), (64, 48, 0)}
    with caplog.at_level(logging.INFO, logger="auvmae"):
        frames = list(video_io.iter_frames(path))
    assert len(frames) == 5 and frames[0].rgb.shape == (48, 64, 3) and frames[0].rgb.mean() > 150
    assert [r.getMessage() for r in caplog.records] == [
        f"video {path}: 2 video streams; reading stream 1 (64x48), the largest"]
