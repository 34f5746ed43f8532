"""paths: local and URL paths resolved alike; files round-trip through etils.epath."""

import os

import numpy as np

from auvmae_jax import paths


def test_resolve_keeps_urls_and_expands_local_paths(monkeypatch, tmp_path):
    assert paths.resolve("gs://bucket/run") == "gs://bucket/run"
    assert paths.join("gs://bucket/run", "priors", "a.npy") == "gs://bucket/run/priors/a.npy"
    monkeypatch.chdir(tmp_path)
    assert paths.resolve("w") == os.path.join(str(tmp_path), "w")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert paths.resolve("~/w") == os.path.join(str(tmp_path), "w")


def test_files_round_trip(tmp_path):
    d = str(tmp_path / "a" / "b")  # parents are created
    paths.write_json(paths.join(d, "m.json"), {"f1": [0.5, 1.0]})
    assert paths.read_json(paths.join(d, "m.json")) == {"f1": [0.5, 1.0]}
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    paths.save_npy(paths.join(d, "x.npy"), x)
    np.testing.assert_array_equal(np.load(os.path.join(d, "x.npy")), x)  # a plain .npy file
    np.testing.assert_array_equal(paths.load_npy(paths.join(d, "x.npy")), x)
    paths.write_text(paths.join(d, "t.md"), "| a |\n")
    assert open(os.path.join(d, "t.md")).read() == "| a |\n"
    assert paths.exists(d) and not paths.exists(paths.join(d, "missing"))
