"""jaxreg._validate: the one message format and the checks every layer uses."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg import _validate as v


def test_message_format():
    assert v.message("patience", "an integer >= 0", -1) == "`patience` must be an integer >= 0; got patience=-1"
    assert v.message("mode", "one of 'min', 'max'", "auto") == "`mode` must be one of 'min', 'max'; got mode='auto'"
    assert v.message("batch_size", "> 0", jnp.asarray(-2)) == "`batch_size` must be > 0; got batch_size=-2"


@pytest.mark.parametrize("check, good, bads", [
    (lambda x: v.check_real("a", x), [0, 0.5, np.float32(2)], [-1e-9, math.nan, math.inf]),
    (lambda x: v.check_real("a", x, positive=True), [1e-9, 3], [0, -1, math.nan]),
    (lambda x: v.check_int("a", x, 1), [1, 2.0, np.int64(5)], [0, 1.5, True, math.nan]),
    (lambda x: v.check_fraction("a", x), [0.5, 1e-9], [0, 1, math.nan, True, "0.5"]),
    (lambda x: v.check_fraction("a", x, closed=True), [0, 1, 0.5], [-0.1, 1.1, math.nan]),
    (lambda x: v.check_choice("a", x, ("x", "y")), ["x", "y"], ["z", None]),
    (lambda x: v.check_bool("a", x), [True, False], [1, "true", None]),
])
def test_checks_accept_good_and_name_the_bad(check, good, bads):
    for value in good:
        check(value)
    for value in bads:
        with pytest.raises(ValueError, match=r"^`a` must be .*; got a="):
            check(value)


def test_check_hyperparam_kinds():
    v.check_hyperparam("s", 0.1)
    v.check_hyperparam("s", lambda count: 0.1)
    with pytest.raises(TypeError, match="`s` must be a number, not a callable; got s="):
        v.check_hyperparam("s", lambda count: 0.1, schedule=False)
    with pytest.raises(TypeError, match="`s` must be a number or a schedule; got s='0.1'"):
        v.check_hyperparam("s", "0.1")
    with pytest.raises(ValueError, match=r"`s` must be finite and > 0; got s=0"):
        v.check_hyperparam("s", 0, positive=True)
