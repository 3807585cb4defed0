"""Seed 004's recipe as a PyTorch user writes it: eager mode, the data on the device, fused Adam.

The reference row of ``bench_cli`` beside ``flax_loop``: ``Linear(784, 50) -> BatchNorm1d
(Keras' momentum 0.99 and epsilon 1e-3) -> ReLU -> Linear(50, 10)``, Adam 1e-3 (``fused=True``
on CUDA), batch 128, softmax cross-entropy, the batch-scaled L2 of ``jaxreg train``'s default as
Adam's coupled ``weight_decay = 0.025 / 128`` on the two weight matrices (the gradient ``(0.025 /
128) w`` added before Adam, as in ``flax_loop``); the whole training set copied to the device
once, a ``torch.randperm`` per epoch on the device, the epoch's losses fetched once per epoch,
and the test accuracy at the end (``model.eval()``). Nothing from jaxreg or jax is imported.

Run as a module it prints one JSON line ``{"train_seconds", "test_accuracy", "epochs"}``::

    python -m benchmarks.torch_loop --dataset digits --epochs 10 [--data-dir DIR]

``train_seconds`` spans building the model, the device copy, the epochs and the test
evaluation, as ``jaxreg train``'s spans its ``fit`` call.
"""
from __future__ import annotations

import numpy as np
import torch

from benchmarks.loop_data import BATCH_SIZE, L2, LEARNING_RATE, SEED, main


def seed_mlp(features: int, device: torch.device | str) -> torch.nn.Sequential:
    """``Linear(features, 50) -> BatchNorm1d`` (Keras' momentum and epsilon) ``-> ReLU ->
    Linear(50, 10)`` on ``device``, initialized from torch's global generator."""
    return torch.nn.Sequential(
        torch.nn.Linear(features, 50), torch.nn.BatchNorm1d(50, eps=1e-3, momentum=0.01),
        torch.nn.ReLU(), torch.nn.Linear(50, 10),
    ).to(device)


def train_epochs(model: torch.nn.Module, opt: torch.optim.Optimizer, xt: torch.Tensor,
                 yt: torch.Tensor, epochs: int) -> None:
    """``epochs`` epochs of batches of 128 from a ``torch.randperm`` on ``xt``'s device, softmax
    cross-entropy; the epoch's mean loss is fetched once per epoch, as a user prints it."""
    steps = len(xt) // BATCH_SIZE
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), device=xt.device)
        losses = []
        for i in range(steps):
            idx = perm[i * BATCH_SIZE:(i + 1) * BATCH_SIZE]
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        torch.stack(losses).mean().item()


def train(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
          epochs: int) -> float:
    """Trains the recipe for ``epochs`` on CUDA if available (else CPU); the test accuracy."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(SEED)
    xt = torch.from_numpy(x.reshape(len(x), -1)).to(device)
    yt = torch.from_numpy(y).long().to(device)
    model = seed_mlp(xt.shape[1], device)
    weights = [model[0].weight, model[3].weight]
    others = [p for p in model.parameters() if all(p is not w for w in weights)]
    opt = torch.optim.Adam([{"params": weights, "weight_decay": L2 / BATCH_SIZE},
                            {"params": others, "weight_decay": 0.0}],
                           lr=LEARNING_RATE, fused=device.type == "cuda")
    train_epochs(model, opt, xt, yt, epochs)
    model.eval()
    with torch.no_grad():
        xs = torch.from_numpy(x_test.reshape(len(x_test), -1)).to(device)
        predicted = model(xs).argmax(-1).cpu().numpy()
    return float((predicted == y_test).mean())


if __name__ == "__main__":
    main(train, __doc__)
