"""Test-wide set-up: eight CPU devices, and XLA's CPU backend at optimisation level 0.

The device count must be fixed before JAX creates its backend, hence here, at import, so
that sharded code paths run on one machine. Single-device tests are unaffected:
unsharded arrays live on device 0.

The suite checks values, not speed, and most of its time is XLA compiling small programs:
at LLVM optimisation level 0 the suite runs about a third faster on 2 CPU cores, and the
programs compute the same operations. ``XLA_FLAGS`` is set in the environment, so the
``train.py`` / ``eval.py`` subprocesses of the tests inherit it; a flag already given there
wins. The benchmarks and normal runs compile at XLA's default level.
"""
import os

_FLAG = "--xla_backend_optimization_level"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}=0".strip()

import jax  # noqa: E402  (after XLA_FLAGS: the backend reads them when it starts)

jax.config.update("jax_num_cpu_devices", 8)
