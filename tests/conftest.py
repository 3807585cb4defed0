"""Shared test configuration.

float64 tests enable x64 locally with ``jax.enable_x64(True)`` (a context manager), never
globally, so float32 tests keep float32 semantics.
"""
import hypothesis

hypothesis.settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
hypothesis.settings.load_profile("ci")
