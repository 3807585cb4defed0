"""The tests' side of the matmul-precision policy (docs/conventions.md, "Matmul precision").

Float32 matmuls and convolutions follow ``jax_default_matmul_precision``: exact float32 on CPU,
TF32 on GPU and bfloat16 passes on TPU by default. Tests comparing computations with matmuls
against a reference either pin ``"highest"`` (the ``highest_precision`` fixture of
``conftest.py``) or take their tolerance from :func:`matmul_tolerance`.
"""
import jax

#: The relative rounding of a matmul operand at the default precision, per backend: float32's
#: unit roundoff, TF32's (10 explicit mantissa bits), bfloat16's (7).
DEFAULT_ROUNDOFF = {"cpu": 2.0**-24, "gpu": 2.0**-11, "tpu": 2.0**-8}


def matmul_tolerance(tol: float) -> float:
    """``tol``, a float32 tolerance at full precision, raised to 16 roundoffs of this backend's
    default precision unless the precision is pinned to ``"highest"``/``"float32"``."""
    if jax.config.jax_default_matmul_precision in ("highest", "float32"):  # type: ignore[attr-defined]
        return tol
    return max(tol, 16 * DEFAULT_ROUNDOFF.get(jax.default_backend(), 2.0**-8))
