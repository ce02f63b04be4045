"""Test set-up: 8 simulated CPU devices, before JAX starts a backend."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
from ascl_jax.xla_cpu import flags as xla_flags  # noqa: E402

xla_flags.tune_cpu_flags()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", False)
