"""Cross-device statistics (axis_name) of jaxreg.nnx.BatchNorm and jaxreg.nn.BatchNorm without
a mask (the pmean path) and with one (the psum of counts and sums), on 8 simulated CPU devices.

As in test_sync.py, the devices live in a subprocess (tests/programs/nnx_sync.py); it
prints one JSON line of maximum differences against one device holding the whole batch.
"""
from __future__ import annotations

import json

import pytest

from tests.helpers import run_module


@pytest.fixture(scope="module")
def sync_result():
    return json.loads(run_module("tests.programs.nnx_sync").strip().splitlines()[-1])


@pytest.mark.parametrize("front", ["nnx", "linen"])
@pytest.mark.parametrize("cond", ["ordinary", "ill"])
@pytest.mark.parametrize("masked", ["unmasked", "masked"])
def test_synced_statistics_equal_whole_batch_on_one_device(sync_result, front, cond, masked):
    """|mean|/std = 1e3 ('ill'): the recomputation's collective runs inside the cond."""
    diffs = sync_result[f"{front}-{cond}-{masked}"]
    assert max(diffs.values()) < 1e-5, diffs
