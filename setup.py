"""Installs ascl_jax: adversarially robust contrastive learning (ASCL, ACL) in JAX/Flax."""

import setuptools

setuptools.setup(
    name="ascl_jax",
    version="0.1.0",
    description="JAX/Flax reimplementation of ASCL and ACL (adversarial contrastive learning).",
    packages=setuptools.find_packages(include=["ascl_jax", "ascl_jax.*"]),
    # C++ sources of ascl_jax.xla_cpu.kernels, compiled on first use (no build step at install)
    package_data={"ascl_jax.xla_cpu.kernels": ["*.cc", "*.h"]},
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2,<0.13",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.6,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "chex>=0.1.90,<0.2",
        "ml-collections>=1.0,<2",
        "absl-py>=2.1",
        "clu>=0.0.12",
        "tensorboard>=2.18",  # clu.metric_writers writes TensorBoard summaries through it
        "tensorflow-cpu>=2.18,<2.22",
        "tensorflow-datasets>=4.9.8,<4.10",
        "importlib_resources>=6.0",  # tfds 4.9.10 imports it without declaring it
        "numpy>=1.26",
        "scikit-learn>=1.4",  # ships the embedded default dataset (handwritten digits)
        "matplotlib>=3.8",
        "tqdm>=4.66",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "pytest-xdist>=3.5",
            "filelock>=3.12",  # the compilation cache's lock (tests/conftest.py)
            "ruff==0.17.6",  # pinned: its formatter's output is part of `make test`
            "nbclient>=0.10",  # tests/test_notebook.py and `make notebook` execute the example notebook
            "nbformat>=5.10",
            "ipykernel>=6.29",
            "gcsfs>=2024.2",  # tests/test_storage.py: gs:// workdirs against a local emulator
            "gcp-storage-emulator==2026.7.19",  # pinned: tests/gcs_emulator.py patches two of its handlers
            "s3fs>=2024.2",  # tests/test_storage.py: s3:// workdirs against a local emulator
            "moto[server]>=5.2,<6",  # its S3 server (ThreadedMotoServer) is that emulator
        ],
        # object-storage workdirs (ascl_jax.storage, docs/storage.md): fsspec's client per scheme
        "gcs": ["gcsfs>=2024.2"],
        "s3": ["s3fs>=2024.2"],
        # PyTorch weights in and out (ascl_jax.torchio, tests/test_torch_convert.py). A CPU-only wheel
        # suffices: `pip install --extra-index-url https://download.pytorch.org/whl/cpu '.[torch]'`
        # (the Makefile's install line) avoids the CUDA libraries of PyPI's default Linux wheel.
        "torch": ["torch>=2.4"],
        # The official AutoAttack (fra31/auto-attack, packaged as pyautoattack) for
        # scripts/crosscheck_autoattack.py and bench/autoattack_vs_official.py; not needed by the tests.
        "autoattack": ["torch>=2.4", "pyautoattack>=0.2"],
    },
)
