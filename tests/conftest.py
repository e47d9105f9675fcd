"""Test-wide set-up: eight CPU devices, so sharded code paths run on one machine.

The device count must be fixed before JAX creates its backend, hence here, at import.
Single-device tests are unaffected: unsharded arrays live on device 0.
"""
import jax

jax.config.update("jax_num_cpu_devices", 8)
