"""fit (and make_optimizer, sweep seeds) refuse bad arguments with one error naming the
argument and its value, before any work: no state, no compilation, no checkpoint directory."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxreg.data import Dataset
from jaxreg.train import fit, make_optimizer, sweep
from jaxreg.train.sweep import expand


class Tiny(nn.Module):
    outputs: int = 3

    @nn.compact
    def __call__(self, x, train: bool):
        return nn.Dense(self.outputs)(x.reshape(len(x), -1))


class NoTrainArgument(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(x)


def arrays(n=64, labels=3):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 4)).astype(np.float32), (np.arange(n) % labels).astype(np.int32)


def refused(error, match, tmp_path, *, model=None, data=None, optimizer=None, **kwargs):
    """``fit`` raises ``error`` matching ``match``, and did no work: no checkpoint directory."""
    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(error, match=match):
        fit(model or Tiny(), optimizer or dict(name="sgd", learning_rate=0.1),
            arrays() if data is None else data, epochs=kwargs.pop("epochs", 1),
            batch_size=kwargs.pop("batch_size", 16), progress=False,
            checkpoint_dir=str(checkpoints), **kwargs)
    assert not checkpoints.exists()


def test_x_and_y_of_different_lengths(tmp_path):
    x, y = arrays()
    refused(ValueError, r"`data` must be as many targets as inputs; got data='64 inputs and 63 "
            r"targets'", tmp_path, data=(x, y[:-1]))


@pytest.mark.parametrize("epochs, error", [(-1, ValueError), (0, ValueError), (1.5, TypeError)])
def test_epochs_below_one_or_not_an_integer(tmp_path, epochs, error):
    refused(error, rf"`epochs` must be an integer >= 1; got epochs={epochs}", tmp_path,
            epochs=epochs)


@pytest.mark.parametrize("batch_size, error", [(0, ValueError), (-1, ValueError),
                                               (16.0, TypeError), ("16", TypeError)])
def test_bad_batch_size(tmp_path, batch_size, error):
    refused(error, rf"`batch_size` must be an integer >= 1; got batch_size={batch_size!r}",
            tmp_path, batch_size=batch_size)


def test_batch_size_larger_than_the_training_examples_left(tmp_path):
    refused(ValueError, r"`batch_size` must be at most the 58 training examples left by "
            r"validation_split=0.1; got batch_size=60", tmp_path, batch_size=60,
            validation_split=0.1)


@pytest.mark.parametrize("seed", [-1, 2**32, 2**64])
def test_seeds_outside_32_bits(tmp_path, seed):
    refused(ValueError, rf"`seed` must be an integer in \[0, 4294967295\]; got seed={seed}",
            tmp_path, seed=seed)


def test_largest_seed_trains_and_differs_from_seed_0():
    x, y = arrays()
    params = [fit(Tiny(), dict(name="sgd", learning_rate=0.1), (x, y), epochs=1, batch_size=16,
                  seed=s, progress=False).state.params for s in (0, 2**32 - 1)]
    assert not np.allclose(params[0]["Dense_0"]["kernel"], params[1]["Dense_0"]["kernel"])


@pytest.mark.parametrize("split", [-0.1, 1.0, 1.5, float("nan")])
def test_validation_split_outside_0_to_1(tmp_path, split):
    refused(ValueError, r"`validation_split` must be 0 \(none\) or in \(0, 1\)", tmp_path,
            validation_split=split)


def test_validation_split_that_rounds_to_no_example(tmp_path):
    refused(ValueError, r"`validation_split` must be large enough to hold out at least 1 of the "
            r"64 training examples; got validation_split=0.001", tmp_path, validation_split=0.001)


def test_validation_split_with_validation_data(tmp_path):
    refused(ValueError, r"`validation_split` must be 0 when validation_data is given", tmp_path,
            validation_split=0.1, validation_data=arrays(8))


def test_validation_data_of_another_shape(tmp_path):
    _, y = arrays(8)
    refused(ValueError, r"`validation_data` must be examples shaped as the training data's: "
            r"inputs \(4,\), targets \(\); got validation_data='inputs \(5,\)", tmp_path,
            validation_data=(np.zeros((8, 5), np.float32), y))


def test_monitor_typo_refused_before_the_first_epoch(tmp_path):
    refused(ValueError, r"`monitor` must be a key of the history: loss, accuracy, .*val_loss, "
            r"val_accuracy; got monitor='val_acc'", tmp_path, monitor="val_acc",
            optimizer=dict(name="sgd", learning_rate=0.1, plateau=dict(patience=1)),
            validation_split=0.25)


def test_plateau_on_val_loss_without_validation_data(tmp_path):
    refused(ValueError, r"`validation_split` must be > 0, or validation_data given: the plateau "
            r"monitors 'val_loss'; got validation_split=0.0", tmp_path,
            optimizer=dict(name="sgd", learning_rate=0.1, plateau=dict(patience=1)))


def test_dict_inputs_name_the_fix(tmp_path):
    x, y = arrays()
    refused(TypeError, r"`data\[0\]` must be one array with a leading example axis \(fit does "
            r"not take dict or pytree inputs: concatenate .*got data\[0\]=a dict with keys "
            r"\['a', 'b'\]", tmp_path, data=({"a": x, "b": x}, y))


def test_ragged_tuple_inputs_name_the_fix(tmp_path):
    x, y = arrays()
    refused(TypeError, r"`data\[0\]` must be one array .*pytree", tmp_path,
            data=((x, x[:, :2]), y))


def test_model_without_train_argument_names_the_fix(tmp_path):
    refused(TypeError, r"`model` must be a linen module whose __call__ takes a `train` keyword "
            r"argument .* add `train: bool` to its __call__; got model='NoTrainArgument'",
            tmp_path, model=NoTrainArgument())


@pytest.mark.parametrize("bad", [3, -1])
def test_labels_outside_the_models_outputs(tmp_path, bad):
    x, y = arrays()
    y[5] = bad
    refused(ValueError, rf"`data labels` must be in \[0, 3\) .*; got data labels='labels in "
            rf"\[{min(bad, 0)}, {max(bad, 2)}\]'", tmp_path, data=(x, y))


def dataset(x_test, y_test, num_classes=3):
    x, y = arrays(labels=num_classes)
    return Dataset("tiny", x, y, x_test, y_test, num_classes=num_classes, source="test",
                   task="classification")


def test_dataset_test_split_of_another_shape(tmp_path):
    refused(ValueError, r"`data test split` must be examples shaped as the training data's",
            tmp_path, data=dataset(np.zeros((4, 3), np.float32), np.zeros(4, np.int32)))


def test_empty_test_split(tmp_path):
    refused(ValueError, r"`data test split` must be non-empty", tmp_path,
            data=dataset(np.zeros((0, 4), np.float32), np.zeros(0, np.int32)))


def test_test_labels_beyond_the_datasets_classes(tmp_path):
    # the model has 3 outputs; the dataset says 2 classes, and its test split has a 2
    refused(ValueError, r"`data test split labels` must be in \[0, 2\)", tmp_path,
            model=Tiny(outputs=3), data=dataset(np.zeros((4, 4), np.float32),
                                                 np.array([0, 1, 2, 0], np.int32), num_classes=2))


def test_test_false_skips_the_test_split_checks():
    data = dataset(np.zeros((0, 4), np.float32), np.zeros(0, np.int32))
    result = fit(Tiny(), dict(name="sgd", learning_rate=0.1), data, epochs=1, batch_size=16,
                 test=False, progress=False)
    assert result.test is None and len(result.history["loss"]) == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(learning_rate=-1e-3), r"`learning_rate` must be finite and > 0; got learning_rate=-0.0"),
    (dict(learning_rate=0.0), r"`learning_rate` must be finite and > 0"),
    (dict(l2=-1.0), r"`l2` must be finite and >= 0; got l2=-1.0"),
    (dict(l1=float("nan")), r"`l1` must be finite and >= 0"),
])
def test_make_optimizer_refuses_a_learning_rate_that_ascends_and_negative_penalties(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_optimizer("sgd", **{"learning_rate": 0.1, **kwargs})


def test_sweep_seeds_are_32_bit_like_fit():
    x, y = arrays()
    seed = 2**31 + 5  # beyond int32
    with pytest.raises(ValueError, match=r"`seed` must be an integer in \[0, 4294967295\]; "
                                         r"got seed=4294967296"):
        expand({"l2": [0.0]}, seeds=[2**32])
    swept = sweep(Tiny(), (x, y), {"learning_rate": [0.1]}, seeds=[seed], data_seed=seed,
                  optimizer="sgd", epochs=1, batch_size=16, progress=False)
    fitted = fit(Tiny(), dict(name="sgd", learning_rate=0.1), (x, y), epochs=1, batch_size=16,
                 seed=seed, progress=False)
    np.testing.assert_allclose(swept.results[0].params["Dense_0"]["kernel"],
                               jax.device_get(fitted.state.params["Dense_0"]["kernel"]),
                               rtol=1e-5, atol=1e-6)


# --- each bad argument is one line naming it, not an error from deep inside -----------------------

def test_no_optimizer_is_named(tmp_path):
    with pytest.raises(TypeError, match="^`optimizer` must be a RunOptimizer, an optax "
                                        "GradientTransformation or .*; got optimizer=None$"):
        fit(Tiny(), None, arrays(), epochs=1, batch_size=16, progress=False)


def test_float_targets_not_shaped_as_the_outputs_are_named(tmp_path):
    x, y = arrays()
    refused(ValueError, r"`data targets` must be as many values per example as the model's "
            r"outputs \(3,\) for the default squared-error loss", tmp_path,
            data=(x, y.astype(np.float64)))


def test_string_inputs_are_named(tmp_path):
    x, y = arrays()
    refused(TypeError, r"`data\[0\]` must be a numeric \(bool, integer or float\) array; got "
            r"data\[0\]='<U\d+ array of shape \(64, 4\)'", tmp_path, data=(x.astype(str), y))


@pytest.mark.parametrize("optimizer, key", [(dict(name="adam", momentum=0.9), "momentum"),
                                            (dict(name="sgd", learning_rat=0.1), "learning_rat")])
def test_unknown_optimizer_keys_are_named(tmp_path, optimizer, key):
    refused(TypeError, rf"^`{key}` must be a keyword argument of make_optimizer or optax\.",
            tmp_path, optimizer=optimizer)
    with pytest.raises(TypeError, match=rf"^`{key}` must be a keyword argument"):
        make_optimizer(**optimizer)


def test_momentum_takes_sgds_keywords():
    """The check accepts the optax constructor's keywords: "momentum" is optax.sgd's."""
    import optax

    params, grads = {"kernel": np.ones(2, np.float32)}, {"kernel": np.array([1.0, 2.0], np.float32)}
    tx = make_optimizer("momentum", 0.1, momentum=0.8, nesterov=True).tx
    reference = optax.sgd(0.1, momentum=0.8, nesterov=True)
    state, ref_state = tx.init(params), reference.init(params)
    for _ in range(2):
        updates, state = tx.update(grads, state, params)
        expected, ref_state = reference.update(grads, ref_state, params)
        np.testing.assert_allclose(updates["kernel"], expected["kernel"], rtol=1e-6)


def test_max_consecutive_skips_below_one_is_named(tmp_path):
    refused(ValueError, "^`max_consecutive_skips` must be an integer >= 1; got "
            "max_consecutive_skips=0$", tmp_path, max_consecutive_skips=0)
