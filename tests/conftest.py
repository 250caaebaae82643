"""Test-session setup: one persistent JAX compilation cache for the whole run, shared by the
pytest workers and by the processes they start (training drivers, notebook kernels), so a
program the suite builds again and again (the same small training step, the same kernel in
interpret mode) compiles once. Programs that compile in under a second are not stored.
Set JAX_COMPILATION_CACHE_DIR to use another directory."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "lla-tests-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
