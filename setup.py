"""auvmae-jax: AU-vMAE (video masked autoencoder + AU-pair knowledge) in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="auvmae-jax",
    version="0.1.0",
    description="AU-vMAE: VideoMAE pre-training and knowledge-guided facial action unit detection in JAX",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["auvmae_jax*", "configs*", "data_builders*"]),
    install_requires=[
        "jax>=0.10,<0.12",
        "flax>=0.12,<0.13",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "tensorflow-datasets>=4.9.9",
        "importlib_resources",  # tfds imports it without declaring it
        "array_record",
        "grain>=0.2.12",
        "numpy",
        "ml-collections>=1.0",
        "absl-py",
        "pillow",
        "av",
        "tensorboardX",
        "matplotlib",
        "opencv-python-headless>=4.8,<5",  # face detection; OpenCV 5 ships no Haar cascades
        "safetensors",
        "tqdm",
        "etils[epath]",  # workdir paths, gs:// included (orbax needs it too)
        "filelock",  # jax's compilation cache with a size limit locks it
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist",  # the suite runs on every core (-n auto)
                 "ruff", "torch==2.13.0", "transformers",
                 "apache-beam>=2.60",  # the face-video builder's DirectRunner test (~2 min to install)
                 "gcsfs", "gcp-storage-emulator"],  # gs:// data dirs against a local GCS emulator
        "beam": ["apache-beam>=2.60"],
        "gcs": ["gcsfs", "google-cloud-storage"],  # gs:// data, workdirs and TensorBoard logs
        "bench": ["torch", "transformers"],  # benchmarks/bench_hf.py: PyTorch VideoMAE side by side
    },
    entry_points={"console_scripts": ["auvmae=auvmae_jax.cli:entry_point"]},
)
