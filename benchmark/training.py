"""The training recipe shared by the prompt methods (CoOp ``vit_b16.yaml`` + Dassl defaults), as helpers.

SGD (lr 0.002, momentum 0.9, weight decay 5e-4), cosine schedule stepped per epoch, 1 warm-up epoch at a
constant 1e-5, batch 32, epochs by shots (50 / 100 / 100 / 200 / 200 for 1 / 2 / 4 / 8 / 16; ImageNet 50).
Options of the same loop: Dassl's Adam instead of SGD (TCP) and a ``backward`` hook that turns what the loss
function returns into gradients (ProGrad's projected gradient).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .config import ranged
from .features import progress_bar
from .task import FewShotTask


class Recipe(Protocol):
    """What :func:`fit_recipe` reads of a config: the fields of :class:`SGDRecipe` (a config may declare its own)."""

    epochs: int | None
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    warmup_epochs: int
    warmup_lr: float


@dataclass
class SGDRecipe:
    """CoOp's optimiser recipe as config fields; method configs inherit it. ``epochs=None`` follows the shots."""

    epochs: int | None = ranged(None, ge=1)
    batch_size: int = ranged(32, ge=1)
    lr: float = ranged(0.002, gt=0)
    momentum: float = ranged(0.9, ge=0, le=1)
    weight_decay: float = ranged(5e-4, ge=0)
    warmup_epochs: int = ranged(1, ge=0)
    warmup_lr: float = ranged(1e-5, ge=0)


def coop_epochs(shots: int, dataset: str = "") -> int:
    """CoOp's number of epochs for K shots (ImageNet: 50)."""
    if dataset == "imagenet":
        return 50
    return 50 if shots <= 1 else 100 if shots <= 4 else 200


def warmup_cosine(optimizer: torch.optim.Optimizer, epochs: int, warmup_epochs: int = 1,
                  warmup_lr: float = 1e-5) -> torch.optim.lr_scheduler.LambdaLR:
    """Dassl's ConstantWarmupScheduler around CosineAnnealingLR(T_max=epochs), stepped once per epoch.

    Epochs ``< warmup_epochs`` run at ``warmup_lr``; epoch ``e`` after that at ``base * (1 + cos(pi e / T)) / 2``.
    """
    bases = [g["lr"] for g in optimizer.param_groups]

    def factor(i: int) -> Callable[[int], float]:
        def f(epoch: int) -> float:
            if epoch < warmup_epochs:
                return warmup_lr / bases[i]
            return 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        return f

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor(i) for i in range(len(bases))])


def sgd(params: Iterable[torch.nn.Parameter], lr: float = 0.002, momentum: float = 0.9,
        weight_decay: float = 5e-4) -> torch.optim.SGD:
    """CoOp's optimizer."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def dassl_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float, momentum: float = 0.9,
                    weight_decay: float = 5e-4, adam_eps: float = 1e-8) -> torch.optim.Optimizer:
    """Dassl's ``OPTIM.NAME``: ``"sgd"`` (CoOp's) or ``"adam"`` (betas 0.9 / 0.999, L2 weight decay; TCP's).

    ``adam_eps`` is Adam's epsilon: Dassl leaves torch's 1e-8, TCP's README patches 1e-3 into Dassl.
    """
    if name == "sgd":
        return sgd(params, lr, momentum, weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, eps=adam_eps)
    raise ValueError(f"unknown optimizer {name!r} (sgd or adam)")


def plain_backward(loss: torch.Tensor) -> torch.Tensor:
    """The default backward of :func:`fit_epochs`: gradients of one scalar loss, which is also what is logged."""
    loss.backward()
    return loss


def minibatches(n: int, batch_size: int, generator: torch.Generator, drop_last: bool = True) -> Iterator[torch.Tensor]:
    """Shuffled index batches. With ``drop_last`` (Dassl's train loader) the last partial batch is dropped when
    there is at least one full batch; without it (CLIP-LoRA's loader) every item is in one batch of each epoch."""
    order = torch.randperm(n, generator=generator)
    stop = (n // batch_size) * batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


def fit_epochs(
    task: FewShotTask,
    params: list[torch.nn.Parameter],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], Any],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    warmup_epochs: int = 1,
    warmup_lr: float = 1e-5,
    optimizer: str = "sgd",
    adam_eps: float = 1e-8,
    backward: Callable[[Any], torch.Tensor] = plain_backward,
) -> list[float]:
    """Run CoOp's recipe: per epoch, one augmented view per image, shuffled batches, ``loss_fn(feats, labels)``.

    ``backward`` turns what ``loss_fn`` returns into gradients of ``params`` and returns the loss to log
    (ProGrad returns two losses and projects one gradient on the other). Returns the mean loss of each epoch.
    """
    device = task.source.device
    optim = dassl_optimizer(optimizer, params, lr, momentum, weight_decay, adam_eps)
    scheduler = warmup_cosine(optim, epochs, warmup_epochs, warmup_lr)
    generator = torch.Generator().manual_seed(seed)
    labels = task.train_labels
    history = []
    with progress_bar() as bar:
        shown = bar.add_task(f"fitting on {task.dataset.name} ({epochs} epochs)", total=epochs)
        for epoch in range(epochs):
            feats = task.epoch_features(epoch, generator)
            total, count = 0.0, 0
            for idx in minibatches(len(labels), batch_size, generator):
                optim.zero_grad(set_to_none=True)
                loss = backward(loss_fn(feats[idx].to(device), labels[idx].to(device)))
                optim.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
            scheduler.step()
            history.append(total / max(count, 1))
            bar.advance(shown)
    return history


def fit_recipe(task: FewShotTask, params: list[torch.nn.Parameter],
               loss_fn: Callable[[torch.Tensor, torch.Tensor], Any],
               recipe: Recipe, seed: int, optimizer: str = "sgd", adam_eps: float = 1e-8,
               backward: Callable[[Any], torch.Tensor] = plain_backward) -> list[float]:
    """:func:`fit_epochs` with the fields of ``recipe`` (epochs by shots when ``recipe.epochs`` is None)."""
    return fit_epochs(task, params, loss_fn, epochs=recipe.epochs or coop_epochs(task.shots, task.dataset.name),
                      batch_size=recipe.batch_size, lr=recipe.lr, seed=seed, momentum=recipe.momentum,
                      weight_decay=recipe.weight_decay, warmup_epochs=recipe.warmup_epochs,
                      warmup_lr=recipe.warmup_lr, optimizer=optimizer, adam_eps=adam_eps,
                      backward=backward)
