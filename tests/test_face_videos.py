"""The face-video builder: each corpus's layout, clips, robustness, local workers and Beam."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from auvmae_jax.input_pipeline import decode_jpeg
from data_builders.face_videos import CORPORA, FaceVideos, FaceVideosConfig, face_videos
from data_builders.report import BuildReport
from tests import dataset_replicas as R

CONFIG = dict(image_size=32, clip_length=8)
VOX = {("id00012", "21Uxsk56VDQ", "00001"): 12, ("id00012", "21Uxsk56VDQ", "00002"): 5,
       ("id00099", "Zx_9", "00001"): 9}


def write_corpora(root):
    """Every corpus in its own folder; VoxCeleb2 with a corrupt video and an odd folder."""
    for i, ((speaker, yt, n), frames) in enumerate(VOX.items()):
        part = "test" if speaker == "id00099" else "dev"
        R.write_video(os.path.join(root, "voxceleb2", part, "mp4", speaker, yt, f"{n}.mp4"),
                      R.face_frames(i, frames))
    R.write_corrupt(os.path.join(root, "voxceleb2", "dev", "mp4", "id00012", "21Uxsk56VDQ", "00003.mp4"))
    os.makedirs(os.path.join(root, "voxceleb2", "dev", "mp4", "tmp_extract"))
    R.write_video(os.path.join(root, "CelebV-HQ", "35666", "-0AbC_d_0.mp4"), R.face_frames(5, 6))
    with open(os.path.join(root, "CelebV-HQ", "celebvhq_info.json"), "w") as f:
        f.write("{}")
    ff = os.path.join(root, "FaceForensics++", "original_sequences", "youtube")
    R.write_video(os.path.join(ff, "c23", "videos", "000.mp4"), R.face_frames(6, 6))
    R.write_video(os.path.join(ff, "c40", "videos", "001.mp4"), R.face_frames(7, 6))
    R.write_jpegs(os.path.join(root, "vfhq", "Clip+G0DGRma_p48+P0+C0+F11208-11383"),
                  R.face_frames(8, 6), range(6), pad=8)
    with open(os.path.join(root, "vfhq", "Clip+G0DGRma_p48+P0+C0+F11208-11383.txt"), "w") as f:
        f.write("meta\n")
    for view in ("front", "left_30"):
        R.write_video(os.path.join(root, "MEAD", "M003", "video", view, "angry", "level_1", "001.mp4"),
                      R.face_frames(9, 6))
    os.makedirs(os.path.join(root, "MEAD", "audio"))
    for tar in ("W009.tar", os.path.join("M003", "video", "down.tar")):  # as shipped, not extracted
        with open(os.path.join(root, "MEAD", tar), "wb") as f:
            f.write(b"\0" * 512)


@pytest.fixture(scope="module")
def manual(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("corpora"))
    write_corpora(root)
    return root


def _build(manual, data_dir, beam=False, workers=1, **config):
    builder = FaceVideos(config=FaceVideosConfig(**{**CONFIG, **config}), data_dir=data_dir,
                         file_format="array_record")
    builder.num_workers = workers
    options = None
    if beam:
        from apache_beam.options.pipeline_options import PipelineOptions

        options = PipelineOptions(["--runner=DirectRunner", "--direct_num_workers=1"])
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual, try_download_gcs=False, beam_options=options))
    return builder


def _examples(builder):
    src = builder.as_data_source("train")
    return sorted((src[i] for i in range(len(src))), key=lambda e: (e["video"], e["start_frame"]))


@pytest.fixture(scope="module")
def vox(manual, tmp_path_factory):
    return _build(manual, str(tmp_path_factory.mktemp("tfds")), workers=2)


def test_each_corpus_layout(manual):
    found = {}
    for corpus in CORPORA:
        report = BuildReport()
        items = face_videos.list_videos(manual, FaceVideosConfig(corpus=corpus), report)
        found[corpus] = sorted((it.subject, it.video) for it in items)
    assert found["voxceleb2"] == [("id00012", f"id00012_21Uxsk56VDQ_0000{n}") for n in (1, 2, 3)] + [
        ("id00099", "id00099_Zx_9_00001")]
    assert found["celebv_hq"] == [("-0AbC_d", "-0AbC_d_0")]
    assert found["faceforensics"] == [("000", "ffpp_000")]
    assert found["vfhq"] == [("G0DGRma_p48", "Clip+G0DGRma_p48+P0+C0+F11208-11383")]
    assert found["mead"] == [("M003", "M003_front_angry_level_1_001")]
    other = face_videos.list_videos(manual, FaceVideosConfig(corpus="faceforensics", compression="c40"),
                                    BuildReport())
    assert [it.video for it in other] == ["ffpp_001"]
    assert FaceVideosConfig(corpus="mead", view="left_30").name == "mead_left_30"


def test_mead_archives_are_reported_not_skipped_silently(manual):
    report = BuildReport()
    items = face_videos.list_videos(manual, FaceVideosConfig(corpus="mead"), report)
    assert [it.video for it in items] == ["M003_front_angry_level_1_001"]
    archives = [(os.path.relpath(p.path, manual), p.reason) for p in report.problems
                if p.path.endswith(".tar")]
    assert archives == [
        (os.path.join("MEAD", "W009.tar"),
         "an archive, not read: extract it here (e.g. tar xf W009.tar) to build the videos in it: skipped"),
        (os.path.join("MEAD", "M003", "video", "down.tar"),
         "an archive, not read: extract it here (e.g. tar xf down.tar) to build the videos in it: skipped")]
    assert report.notes == [f"mead: 1 video(s) of 1 subject(s) under {os.path.join(manual, 'MEAD')}"]


def test_clips_cover_each_video_and_end_at_its_end(vox):
    examples = _examples(vox)
    starts = {(e["video"].decode(), int(e["start_frame"])) for e in examples}
    # 12 frames: clips at 1 and 5 (the last one ends at frame 12); 5 frames: padded; 9 frames: 1, 2.
    assert starts == {("id00012_21Uxsk56VDQ_00001", 1), ("id00012_21Uxsk56VDQ_00001", 5),
                      ("id00012_21Uxsk56VDQ_00002", 1), ("id00099_Zx_9_00001", 1), ("id00099_Zx_9_00001", 2)}
    short = next(e for e in examples if e["video"] == b"id00012_21Uxsk56VDQ_00002")
    assert len(short["frames"]) == 8 and short["frames"][4:].tolist() == [short["frames"][4]] * 4
    assert np.asarray(decode_jpeg(short["frames"][0])).shape == (32, 32, 3)
    assert set(vox.info.splits) == {"train"}


def test_corrupt_video_and_odd_folder_are_reported(vox):
    problems = {os.path.basename(p.path): p.reason for p in vox.report.problems}
    assert problems["00003.mp4"] == "skipped: has no video stream"
    assert "not a speaker folder" in problems["tmp_extract"]
    assert vox.report.counts["videos_built"] == 3 and vox.report.counts["videos_skipped"] == 1


def test_vfhq_frame_folders(manual, tmp_path):
    builder = _build(manual, str(tmp_path), corpus="vfhq", clip_length=4)
    assert [int(e["start_frame"]) for e in _examples(builder)] == [0, 2]  # frames named 0-5


def test_beam_direct_runner_writes_the_same_clips(manual, vox, tmp_path):
    pytest.importorskip("apache_beam")
    beam = _build(manual, str(tmp_path), beam=True)
    local, remote = _examples(vox), _examples(beam)
    assert len(remote) == len(local) == 5
    for a, b in zip(local, remote):
        assert a["video"] == b["video"] and a["start_frame"] == b["start_frame"]
        np.testing.assert_array_equal(a["frames"], b["frames"])
    # The workers' reports reach the summary: the same problems and counts as the local build.
    assert sorted(map(str, beam.report.problems)) == sorted(map(str, vox.report.problems))
    assert beam.report.counts == vox.report.counts
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".auvmae_reports")]
