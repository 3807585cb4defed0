"""A sweep on 8 simulated CPU devices: 3 settings padded to one chunk of 8, and the same sweep
on a user's mesh with Explicit axes; saves the parameters and test losses to an ``.npz``.

Run by tests/train/test_sweep.py as ``python -m tests.programs.sweep SETTINGS KW OUT`` (the
settings and keyword arguments as JSON) with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (tests/helpers.py's ``run_module``).
"""
from __future__ import annotations

import json
import sys
from typing import Any

import jax
import numpy as np

from jaxreg.data import load
from jaxreg.models import SeedMLP
from jaxreg.train.sweep import sweep


def leaves_of(results: Any) -> list[np.ndarray]:
    return [np.asarray(a) for res in results
            for a in jax.tree.leaves((res.params, res.model_state))]


def main(settings: list[dict[str, Any]], kw: dict[str, Any], out: str) -> None:
    assert jax.local_device_count() == 8
    # 3 settings padded to 8
    r = sweep(SeedMLP(hidden=16), load("digits"), settings, **kw)
    assert r.groups[0]["chunk_size"] == 8, r.groups
    leaves = leaves_of(r.results)
    # a user's mesh with Explicit axes (jax.make_mesh's default) gives the same results
    explicit = sweep(SeedMLP(hidden=16), load("digits"), settings,
                     mesh=jax.make_mesh((8,), ("sweep",)), **kw)
    for a, b in zip(leaves, leaves_of(explicit.results), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    np.savez(out, *leaves, test=[res.final["test_loss"] for res in r.results])


if __name__ == "__main__":
    main(json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3])
