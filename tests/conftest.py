"""Shared test configuration.

float64 tests enable x64 locally with ``jax.enable_x64(True)`` (a context manager), never
globally, so float32 tests keep float32 semantics.
"""
import hypothesis
import jax
import pytest

hypothesis.settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
hypothesis.settings.load_profile("ci")


@pytest.fixture
def highest_precision():
    """Float32 matmuls at full precision on every backend (TF32 on GPU and bfloat16 passes on
    TPU are the defaults), for comparisons against float64 references: tests/helpers.py."""
    with jax.default_matmul_precision("highest"):
        yield
