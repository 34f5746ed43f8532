"""`predict`: AU probabilities per frame of a video file, CSV schema, faces, overlaps, bad files."""

import csv
import logging

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from auvmae_jax import cli, features, predict, video_io
from auvmae_jax.errors import UserError
from auvmae_jax.models import AUDetector, ViTConfig
from tests.conftest import mini_finetune_config
from tests.test_faces import face_video_frames

AUS = [1, 2, 4, 12, 25]


def save_finetuned_workdir(path, aus=AUS, seed=0) -> None:
    """A fine-tuning workdir as the trainer leaves it: config.json, orbax params, priors.json.

    The parameters are random (a fine-tuning run would only change their values);
    the head is scaled up so that probabilities spread over (0, 1).
    """
    from auvmae_jax import knowledge

    config = mini_finetune_config("unused")  # clip_length 8, 32x32, patch 8, video level
    config.data.image_size = 32
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(config.to_json_best_effort(indent=2))
    model = AUDetector(ViTConfig.from_config(config.model), len(aus))
    params = model.init(jax.random.key(seed), jnp.zeros((1, 8, 32, 32, 3)))["params"]
    params = jax.tree.map(np.asarray, nn_unbox(params))
    params["head"]["kernel"] = params["head"]["kernel"] * 100
    manager = ocp.CheckpointManager(path / "checkpoints", options=ocp.CheckpointManagerOptions(create=True))
    manager.save(6, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params, "step": 6})))
    manager.wait_until_finished()
    n = len(aus)
    knowledge.save_priors(str(path / "priors"), {"class_weights": np.ones(n), "intra_prior": np.eye(n),
                                                 "inter_prior": np.full((n, n, 16), 1 / 16)}, aus)


def nn_unbox(tree):
    import flax.linen as nn

    return nn.unbox(tree)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ft") / "finetune"
    save_finetuned_workdir(path)
    return str(path)


def read_csv(path):
    with open(path) as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


HEADER = ["frame", "timestamp", "success", "face_x", "face_y", "face_w", "face_h",
          "AU01", "AU02", "AU04", "AU12", "AU25"]


def test_synthetic_faces_video(workdir, tmp_path):
    frames, truth = face_video_frames(20, face=128, seed=5)
    video = tmp_path / "faces.mp4"
    video_io.write_video(video, frames, fps=25)
    ckpt = features.load_checkpoint(workdir)
    assert (ckpt.window, ckpt.image_size, ckpt.aus) == (8, 32, AUS)
    summary = predict.predict_video(ckpt, str(video), str(tmp_path / "aus.csv"),
                                    plot=str(tmp_path / "aus.png"), progress=False)
    header, rows = read_csv(tmp_path / "aus.csv")
    assert header == HEADER
    assert len(rows) == 20 == summary["frames"] and summary["detected"] >= 18
    assert [int(r[0]) for r in rows] == list(range(20))
    np.testing.assert_allclose([float(r[1]) for r in rows], np.arange(20) / 25, atol=1e-3)
    assert all(r[2] == "1" for r in rows)
    probs = np.array([[float(c) for c in r[7:]] for r in rows])
    assert probs.min() >= 0 and probs.max() <= 1 and probs.std() > 0.05
    for r, (x, y, w, h) in zip(rows, truth):  # the smoothed box follows the drifting face
        bx, by, bw, bh = (float(c) for c in r[3:7])
        assert abs(bx + bw / 2 - (x + w / 2)) < 0.15 * w and abs(by + bh / 2 - (y + h / 2)) < 0.2 * h
    # The model saw each frame's aligned face crop: the square of 1.25 x the box, eyes level,
    # at the model's 32 px; clips every half clip, overlaps averaged.
    from auvmae_jax import faces

    track = features.track_faces(str(video), faces.FaceDetector("opencv"), progress=False)
    assert all(b is not None for b in track.boxes) and len(track.angles) == 20
    crops = np.stack([faces.square_crop(f.rgb, box, 32, 1.25, angle) for f, box, angle
                      in zip(video_io.iter_frames(video), track.boxes, track.angles)])
    np.testing.assert_allclose(probs, _expected(ckpt, crops, features.clip_hop(None, ckpt)), atol=1e-4)
    from PIL import Image

    assert Image.open(tmp_path / "aus.png").size[0] > 500


def test_a_video_stored_sideways_with_a_display_rotation_is_read_upright(workdir, tmp_path):
    import av

    if not hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        pytest.skip("this PyAV cannot write a display rotation")
    from tests.test_video_io import _write_rotated

    # A phone's portrait video: the frames stored turned a quarter clockwise, and the container
    # telling players to turn them back (90 degrees counter-clockwise).
    frames, truth = face_video_frames(12, face=128, seed=5)
    _write_rotated(tmp_path / "upright.mp4", list(frames), 0)
    _write_rotated(tmp_path / "sideways.mp4", [np.rot90(f, -1) for f in frames], 90)
    ckpt = features.load_checkpoint(workdir)
    out = {}
    for name in ("upright", "sideways"):
        summary = predict.predict_video(ckpt, str(tmp_path / f"{name}.mp4"), str(tmp_path / f"{name}.csv"),
                                        progress=False)
        assert summary["detected"] >= 11, (name, summary)
        out[name] = np.array([[float(c) for c in r[3:]] for r in read_csv(tmp_path / f"{name}.csv")[1]])
    np.testing.assert_allclose(out["sideways"][:, :4], out["upright"][:, :4], atol=2)  # face boxes
    np.testing.assert_allclose(out["sideways"][:, 4:], out["upright"][:, 4:], atol=0.05)  # AU probabilities


def _expected(ckpt, frames, hop):
    """Per-frame probabilities computed directly: model on each window, overlaps averaged."""
    model = AUDetector(ckpt.vit, len(ckpt.aus))
    n, w = len(frames), ckpt.window
    total, count = np.zeros((n, len(ckpt.aus))), np.zeros(n)
    for start in features.window_starts(n, w, hop):
        clip = jnp.asarray(frames[start:start + w][None].astype(np.float32) / 255.0)
        x = (clip - jnp.array([0.485, 0.456, 0.406])) / jnp.array([0.229, 0.224, 0.225])
        total[start:start + w] += np.asarray(jax.nn.sigmoid(model.apply({"params": ckpt.params}, x)))[0]
        count[start:start + w] += 1
    return total / count[:, None]


def test_no_detect_probabilities_are_clip_averages(workdir, tmp_path):
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 255, (18, 4, 4, 3), dtype=np.uint8), 8, axis=1).repeat(8, axis=2)
    video = tmp_path / "crops.mp4"
    video_io.write_video(video, frames, fps=10)
    decoded = np.stack([f.rgb for f in video_io.iter_frames(video)])  # what the model sees
    ckpt = features.load_checkpoint(workdir)
    predict.predict_video(ckpt, str(video), str(tmp_path / "a.csv"), detect=False, hop=3, batch_size=2,
                          progress=False)
    _, rows = read_csv(tmp_path / "a.csv")
    assert len(rows) == 18 and all(r[2] == "1" for r in rows)
    assert [float(c) for c in rows[0][3:7]] == [0.0, 0.0, 32.0, 32.0]  # the whole frame
    got = np.array([[float(c) for c in r[7:]] for r in rows])
    # starts 0, 3, 6, 9 and 10 (the last clip ends at the last frame): frame 9 is in three clips
    np.testing.assert_allclose(got, _expected(ckpt, decoded, hop=3), atol=1e-4)


def test_video_without_a_face_writes_empty_rows_and_warns(workdir, tmp_path, caplog):
    frames = np.full((12, 96, 128, 3), 110, np.uint8)
    video = tmp_path / "wall.mp4"
    video_io.write_video(video, frames, fps=12)
    with caplog.at_level(logging.WARNING, logger="auvmae"):
        summary = predict.predict_video(features.load_checkpoint(workdir), str(video),
                                        str(tmp_path / "w.csv"), plot=str(tmp_path / "w.png"), progress=False)
    header, rows = read_csv(tmp_path / "w.csv")
    assert header == HEADER and len(rows) == 12 and summary["clips"] == 0
    assert all(r[2] == "0" and r[3:] == [""] * 9 for r in rows)
    assert "no face found" in caplog.text and (tmp_path / "w.png").exists()


def test_frames_without_a_face_get_success_0(workdir, tmp_path):
    frames, _ = face_video_frames(24, face=128, seed=6)
    frames[10:22] = 96  # the face leaves for 12 frames: longer than the gap the smoother fills
    video = tmp_path / "gap.mp4"
    video_io.write_video(video, frames, fps=25)
    predict.predict_video(features.load_checkpoint(workdir), str(video), str(tmp_path / "g.csv"),
                          progress=False)
    _, rows = read_csv(tmp_path / "g.csv")
    success = [r[2] for r in rows]
    assert len(rows) == 24 and set(success[:8]) == {"1"} and set(success[12:20]) == {"0"}
    assert all(r[7:] == [""] * 5 for r in rows if r[2] == "0")
    assert all(r[7] != "" for r in rows if r[2] == "1")


def test_truncated_and_unreadable_files(workdir, tmp_path):
    frames, _ = face_video_frames(30, face=128, seed=7)
    full = tmp_path / "full.avi"
    video_io.write_video(full, frames, fps=25, codec="mpeg4")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size * 8 // 10])
    decodable = len(list(video_io.iter_frames(cut)))
    assert 8 < decodable < 30  # more than a clip: the model runs
    ckpt = features.load_checkpoint(workdir)
    summary = predict.predict_video(ckpt, str(cut), str(tmp_path / "c.csv"), progress=False)
    _, rows = read_csv(tmp_path / "c.csv")
    assert len(rows) == decodable == summary["frames"]
    bad = tmp_path / "clip.mov"
    bad.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(UserError, match=r"clip\.mov: cannot be read as a video"):
        predict.predict_video(ckpt, str(bad), str(tmp_path / "b.csv"), progress=False)


def test_cli_predict_and_its_errors(workdir, tmp_path, capsys):
    frames, _ = face_video_frames(10, face=128, seed=8)
    video = tmp_path / "v.mp4"
    video_io.write_video(video, frames, fps=25)
    out = tmp_path / "out.csv"
    assert cli.main(["auvmae", "predict", f"--checkpoint={workdir}", f"--video={video}", f"--output={out}",
                     "--no-detect"]) == 0
    _, rows = read_csv(out)
    assert len(rows) == 10 and [float(c) for c in rows[0][3:7]] == [40.0, 0.0, 240.0, 240.0]
    assert cli.main(["auvmae", "predict", f"--checkpoint={workdir}", f"--video={tmp_path / 'none.mp4'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "none.mp4: no such file" in err
    assert cli.main(["auvmae", "predict", f"--checkpoint={tmp_path}", f"--video={video}"]) == 1
    assert "no config.json" in capsys.readouterr().err


def test_hop_longer_than_the_clip_is_a_one_line_error(workdir, tmp_path, capsys):
    # With 8-frame clips, --hop=100 would run clips at 0 and 12 of 20 frames only: frames 8-11 lost.
    rng = np.random.default_rng(1)
    frames = np.repeat(rng.integers(0, 255, (20, 4, 4, 3), dtype=np.uint8), 8, axis=1).repeat(8, axis=2)
    video = tmp_path / "crops.mp4"
    video_io.write_video(video, frames, fps=10)
    out = tmp_path / "a.csv"
    assert cli.main(["auvmae", "predict", f"--checkpoint={workdir}", f"--video={video}", f"--output={out}",
                     "--no-detect", "--hop=100"]) == 1
    err = capsys.readouterr().err
    assert err == (f"auvmae predict: error: --hop=100: longer than the 8-frame clip of {workdir}, so the "
                   "frames between clips would get no output; use --hop=8 or less\n")
    assert not out.exists()
    # A hop of one clip: starts 0, 8 and 12 (ending at the last frame); every frame predicted.
    ckpt = features.load_checkpoint(workdir)
    summary = predict.predict_video(ckpt, str(video), str(out), detect=False, hop=8, progress=False)
    _, rows = read_csv(out)
    assert summary["clips"] == 3 and summary["faces"] == 20 and all(r[2] == "1" for r in rows)
    decoded = np.stack([f.rgb for f in video_io.iter_frames(video)])
    got = np.array([[float(c) for c in r[7:]] for r in rows])
    np.testing.assert_allclose(got, _expected(ckpt, decoded, hop=8), atol=1e-4)


def test_npy_frames_are_for_features_only(workdir, tmp_path, capsys):
    np.save(tmp_path / "frames.npy", np.zeros((8, 32, 32, 3), np.uint8))
    npy = tmp_path / "frames.npy"
    assert cli.main(["auvmae", "predict", f"--checkpoint={workdir}", f"--video={npy}"]) == 1
    assert capsys.readouterr().err == (
        f"auvmae predict: error: video {npy}: predict reads video files (mp4, avi, mov, "
        "mkv, ...); .npy frames are taken by `auvmae features` only\n")
    assert not (tmp_path / "frames_aus.csv").exists()


def test_cli_default_output_and_one_summary(workdir, tmp_path, capsys, caplog):
    frames, _ = face_video_frames(10, face=128, seed=8)
    video = tmp_path / "talk.mp4"
    video_io.write_video(video, frames, fps=25)
    with caplog.at_level(logging.INFO, logger="auvmae"):
        rc = cli.main(["auvmae", "predict", f"--checkpoint={workdir}", f"--video={video}", "--no-detect"])
    assert rc == 0
    _, rows = read_csv(tmp_path / "talk_aus.csv")  # the default: VIDEO_aus.csv beside the video
    assert len(rows) == 10
    out = capsys.readouterr().out
    # 10 frames, 8-frame clips every 4: starts 0 and 2 (the last ends at the last frame).
    assert out == f"{video}: 10 frames, 10 with a face, 2 clips -> {tmp_path / 'talk_aus.csv'}\n"
    assert not [m for m in caplog.messages if "with a face" in m]  # not logged a second time


def test_truncated_file_warns_once_on_its_own_line(workdir, tmp_path, capsys):
    # Two passes read the file (faces, then crops); the warning comes once, not glued to the bar.
    import re
    import sys

    frames, _ = face_video_frames(30, face=128, seed=7)
    full = tmp_path / "full.avi"
    video_io.write_video(full, frames, fps=25, codec="mpeg4")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size * 8 // 10])
    handler = logging.StreamHandler(sys.stderr)  # the console handler of `auvmae` (cli.setup_logging)
    logging.root.addHandler(handler)
    try:
        predict.predict_video(features.load_checkpoint(workdir), str(cut), str(tmp_path / "c.csv"),
                              progress=True)
    finally:
        logging.root.removeHandler(handler)
    err = capsys.readouterr().err
    pieces = re.split(r"[\r\n]", err)  # what a terminal shows: tqdm redraws after \r
    warnings = [p for p in pieces if "cut.avi" in p]
    assert len(warnings) == 1 and warnings[0].startswith(f"video {cut}: ") and "truncated" in warnings[0]
    assert "finding faces: 100%" not in err and "frame/s]" in err  # the bar was drawn (and stopped early)


def test_plot_cells_sit_at_the_frames_times(tmp_path, monkeypatch):
    # Variable frame rate: each frame's cell spans halfway to its neighbours.
    np.testing.assert_allclose(predict.time_edges(np.array([0.0, 0.25, 0.35, 1.0])),
                               [-0.125, 0.125, 0.3, 0.675, 1.325])
    np.testing.assert_allclose(predict.time_edges(np.array([2.0])), [1.98, 2.02])
    import matplotlib.figure

    meshes = []
    original = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        meshes.extend(c for c in fig.axes[0].collections if hasattr(c, "get_coordinates"))  # the heat map
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    probs = np.array([[0.1, 0.9], [np.nan, np.nan], [0.7, 0.2], [0.3, 0.6]])
    predict.plot_probabilities(str(tmp_path / "p.png"), np.array([0.0, 0.25, 0.35, 1.0]), probs, [1, 12])
    (mesh,) = meshes
    np.testing.assert_allclose(mesh.get_coordinates()[0, :, 0], [-0.125, 0.125, 0.3, 0.675, 1.325])
    np.testing.assert_allclose(mesh.get_array().reshape(2, 4).filled(-1),
                               [[0.1, -1, 0.7, 0.3], [0.9, -1, 0.2, 0.6]])  # AU x frame; no face: blank
    assert (tmp_path / "p.png").stat().st_size > 1000
