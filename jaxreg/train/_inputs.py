"""``check_fit_inputs``: every argument of :func:`jaxreg.train.fit` checked before any work.

A bad argument is one error naming it and its value (:func:`jaxreg._validate.message`), raised
before a state is initialized, a program compiled or an epoch trained: not a ZeroDivisionError
from the batch arithmetic, a KeyError after the first epoch, or a NaN loss from a label the
model has no output for. The model is checked by tracing ``model.init_with_output(key,
x[:1], train=False)`` with :func:`jax.eval_shape` (no computation, no compilation).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxreg._validate import check_int, check_seed, message, require
from jaxreg.train import nnx_bridge
from jaxreg.train.optimizer import RunOptimizer, check_optimizer_kwargs

HISTORY_KEYS = ("loss", "accuracy", "learning_rate", "l2_strength", "l1_strength",
                "skipped_steps", "epoch_seconds", "batch_size")
"""The per-epoch history keys of ``fit`` (``accuracy`` for integer targets); each metric
also has a ``val_`` twin with validation data. ``monitor`` must be one of them."""


def _array(name: str, value: Any) -> np.ndarray:
    """``value`` as a numpy array with a leading example axis, or TypeError naming ``name``."""
    shown = f"a {type(value).__name__}" + (f" with keys {list(value)}" if isinstance(value, Mapping)
                                          else "")
    array = None
    if not isinstance(value, Mapping):
        try:
            array = np.asarray(value)
            shown = f"{array.dtype} array of shape {array.shape}"
        except ValueError:  # a ragged list or tuple: a pytree of several arrays
            pass
    if array is None or array.ndim == 0 or array.dtype == object:
        raise TypeError(f"`{name}` must be one array with a leading example axis (fit does not "
                        f"take dict or pytree inputs: concatenate the features into one array, "
                        f"or split them inside the model); got {name}={shown}")
    require(array.dtype.kind in "biuf", name, "a numeric (bool, integer or float) array", shown,
            TypeError)
    return array


def _pair(name: str, value: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` arrays of ``value``, an ``(x, y)`` pair of as many inputs as targets."""
    require(isinstance(value, (tuple, list)) and len(value) == 2, name, "an (x, y) pair",
            type(value).__name__, TypeError)
    x, y = _array(f"{name}[0]", value[0]), _array(f"{name}[1]", value[1])
    require(len(x) == len(y), name, "as many targets as inputs",
            f"{len(x)} inputs and {len(y)} targets")
    require(len(x) > 0, name, "non-empty", "0 examples")
    return x, y


def _splits(data: Any, validation_data: Any, test: bool
            ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The named ``(x, y)`` arrays of a run: ``data`` (training), ``validation_data``,
    ``data`` test split (when ``test`` and ``data`` is a dataset)."""
    if isinstance(data, (tuple, list)):
        splits = {"data": _pair("data", data)}
    else:
        for attr in ("x_train", "y_train", "x_test", "y_test"):
            require(hasattr(data, attr), "data", "a jaxreg.data.Dataset or an (x, y) pair",
                    type(data).__name__, TypeError)
        splits = {"data": _pair("data", (data.x_train, data.y_train))}
        if test:
            splits["data test split"] = _pair("data test split", (data.x_test, data.y_test))
    if validation_data is not None:
        splits["validation_data"] = _pair("validation_data", validation_data)
    x, y = splits["data"]
    for name, (xs, ys) in splits.items():
        require(xs.shape[1:] == x.shape[1:] and ys.shape[1:] == y.shape[1:], name,
                f"examples shaped as the training data's: inputs {x.shape[1:]}, targets "
                f"{y.shape[1:]}", f"inputs {xs.shape[1:]}, targets {ys.shape[1:]}")
    return splits


def _outputs(model: Any, x: np.ndarray) -> jax.ShapeDtypeStruct:
    """The shape of ``model``'s outputs on ``x[:1]`` in inference mode, traced, not computed."""
    try:
        return jax.eval_shape(lambda key, xb: model.init_with_output(key, xb, train=False)[0],
                              jax.eval_shape(jax.random.key, 0), x[:1])
    except TypeError as e:
        if "train" not in str(e):
            raise
        raise TypeError(message(
            "model", "a linen module whose __call__ takes a `train` keyword argument (fit calls "
            "model.apply(variables, x, train=True) to train and train=False to evaluate): add "
            "`train: bool` to its __call__", type(model).__name__)) from e


def check_fit_inputs(
    model: Any,
    optimizer: Any,
    data: Any,
    *,
    epochs: Any,
    batch_size: Any,
    seed: Any,
    validation_split: Any,
    validation_data: Any,
    test: bool,
    monitor: Any,
    accumulate: Any,
    unroll: Any,
    loss_fn: Any,
) -> None:
    """Raises TypeError/ValueError naming the first bad argument of :func:`jaxreg.train.fit`.

    Checked: ``optimizer`` a :class:`RunOptimizer`, an optax transformation or a dict of
    :func:`jaxreg.train.make_optimizer`'s (and its optax constructor's) keywords; ``epochs``,
    ``batch_size``, ``accumulate``, ``unroll`` integers >= 1; ``seed`` in ``[0, 2**32)``;
    ``validation_split`` 0 or in (0, 1), not with ``validation_data``, leaving at least one
    validation example and ``batch_size`` training ones; ``data``, ``validation_data`` and the
    test split numeric arrays (no dicts or pytrees) with as many targets as inputs, non-empty,
    every split shaped as the training data; ``monitor`` a history key; ``model`` callable with
    ``train=``; with the default loss, integer labels in ``[0, K)`` for the model's ``K``
    outputs (and the dataset's ``num_classes``), other targets as many per example as the
    outputs; with a
    plateau in ``optimizer`` monitoring a ``val_*`` metric, validation data.
    """
    require(isinstance(optimizer, (Mapping, RunOptimizer))
            or (hasattr(optimizer, "init") and hasattr(optimizer, "update")), "optimizer",
            "a RunOptimizer, an optax GradientTransformation or make_optimizer's keyword "
            "arguments (a dict)", optimizer, TypeError)
    if isinstance(optimizer, Mapping):
        check_optimizer_kwargs(optimizer)
    for name, value in (("epochs", epochs), ("batch_size", batch_size),
                        ("accumulate", accumulate), ("unroll", unroll)):
        check_int(name, value, 1, exact=True)
    check_seed("seed", seed)
    require(isinstance(validation_split, numbers.Real) and not isinstance(validation_split, bool),
            "validation_split", "a number: 0 (none) or in (0, 1)", validation_split, TypeError)
    require(validation_split == 0 or 0 < validation_split < 1, "validation_split",
            "0 (none) or in (0, 1)", validation_split)
    require(validation_split == 0 or validation_data is None, "validation_split",
            "0 when validation_data is given (pass one of them)", validation_split)
    keys = HISTORY_KEYS + tuple(f"val_{k}" for k in ("loss", "accuracy"))
    require(monitor in keys, "monitor", "a key of the history: " + ", ".join(keys), monitor)
    plateau = (optimizer.get("plateau") if isinstance(optimizer, Mapping)
               else getattr(optimizer, "plateau", None))
    require(plateau is None or not monitor.startswith("val_") or validation_split > 0
            or validation_data is not None, "validation_split",
            f"> 0, or validation_data given: the plateau monitors {monitor!r}", validation_split)

    splits = _splits(data, validation_data, test)
    x, y = splits["data"]
    n_val = round(len(x) * validation_split)  # as fit's split: the last n_val examples
    require(validation_split == 0 or n_val > 0, "validation_split",
            f"large enough to hold out at least 1 of the {len(x)} training examples",
            validation_split)
    require(len(x) - n_val >= batch_size, "batch_size",
            f"at most the {len(x) - n_val} training examples"
            + (f" left by validation_split={validation_split}" if n_val else ""), batch_size)

    model = nnx_bridge.wrap(model)  # an nnx.Module is checked as the engine will call it
    require(hasattr(model, "init_with_output"), "model", "a flax linen or NNX module",
            type(model).__name__, TypeError)
    outputs = _outputs(model, x)
    if loss_fn is None and np.issubdtype(y.dtype, np.integer):  # default loss: cross-entropy
        num_classes = outputs.shape[-1] if outputs.ndim else 1
        known = getattr(data, "num_classes", None)
        if known is not None:
            num_classes = min(num_classes, known)
        for name, (_, labels) in splits.items():
            low, high = int(labels.min()), int(labels.max())
            require(0 <= low and high < num_classes, f"{name} labels",
                    f"in [0, {num_classes}) (the model's outputs and the dataset's classes)",
                    f"labels in [{low}, {high}]")
    elif loss_fn is None:  # default loss: squared error, targets shaped as the outputs
        require(math.prod(y.shape[1:]) == math.prod(outputs.shape[1:]), "data targets",
                f"as many values per example as the model's outputs {outputs.shape[1:]} for the "
                f"default squared-error loss (integer labels: classification), or a loss_fn "
                f"given", f"{y.dtype} targets of shape {y.shape[1:]}")
