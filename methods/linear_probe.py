"""Linear probe (CLIP / CoOp ``lpclip/``): L2-regularised logistic regression on source image features.

Reference: features are the unnormalised image features of the source model (test transform); sklearn's
``LogisticRegression(C, lbfgs, max_iter=1000)``; C searched on the validation shots over
``[1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]`` and refined by 8 steps of log-space bisection. Departure: the
logistic regression is solved with torch's L-BFGS (same objective ``C * sum(CE) + ||W||^2 / 2``, intercept
unpenalised) instead of sklearn, so it runs on the GPU and needs no extra dependency. On a target model
the probe is applied to the target's image features, as the paper measures (it collapses to ~chance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from upgradebench import COVECTOR, JOINT, VLM, FewShotTask, Method, Module, UserError, ranged


@dataclass
class LinearProbeConfig:
    """C grid and bisection steps of CoOp's lpclip; ``max_iter`` of L-BFGS."""

    c_grid: list[float] = ranged(gt=0, default_factory=lambda: [1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6])
    search_steps: int = ranged(8, ge=1)
    max_iter: int = ranged(1000, ge=1)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, classes: int, c: float, max_iter: int = 1000):
    """Minimise ``C * sum_i CE(W x_i + b, y_i) + ||W||^2 / 2`` with L-BFGS (float64); returns ``(W, b)``."""
    x, y = x.double(), y.long()
    w = torch.zeros(classes, x.shape[1], dtype=torch.float64, device=x.device, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=1e-7, tolerance_change=1e-10,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        # divided by C * n to keep the scale sane for L-BFGS; same minimiser as sklearn's objective
        loss = F.cross_entropy(x @ w.T + b, y) + (w * w).sum() / (2 * c * len(y))
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _accuracy(w, b, x, y) -> float:
    return float(((x.double() @ w.T + b).argmax(1) == y).float().mean())


def search_c(x, y, xv, yv, classes: int, config: LinearProbeConfig) -> float:
    """lpclip's search: best C of the grid on the validation shots, then log-space bisection around it."""
    def acc(c: float) -> float:
        w, b = fit_logistic(x, y, classes, c, config.max_iter)
        return _accuracy(w, b, xv, yv)

    scores = [acc(c) for c in config.c_grid]
    peak = config.c_grid[max(range(len(scores)), key=scores.__getitem__)]
    left, right, best = math.log10(peak) - 1, math.log10(peak) + 1, peak
    for _ in range(config.search_steps):
        acc_left, acc_right = acc(10 ** left), acc(10 ** right)
        if acc_left < acc_right:
            best, left = 10 ** right, 0.5 * (left + right)
        else:
            best, right = 10 ** left, 0.5 * (left + right)
    return best


@dataclass
class LinearProbeModule(Module):
    """``logits = W f + b`` on the image features of whichever model it is plugged into; ``C`` the chosen
    inverse regularisation strength."""

    spaces = {"weight": (None, JOINT + COVECTOR), "bias": (None,)}


    weight: torch.Tensor
    bias: torch.Tensor
    C: float  # noqa: N815 (the name it has always been saved under in module.json)

    def logits(self, vlm: VLM, image_features: torch.Tensor, class_names: list[str]) -> torch.Tensor:
        if image_features.shape[1] != self.weight.shape[1] or len(class_names) != self.weight.shape[0]:
            raise UserError(
                f"linear probe of {self.weight.shape[0]} classes x {self.weight.shape[1]} features cannot be applied "
                f"to {vlm.name} ({image_features.shape[1]} features, {len(class_names)} classes).")
        x = image_features.double().to(self.weight.device)
        return (x @ self.weight.T + self.bias).float()


class LinearProbe(Method[LinearProbeConfig]):
    """Linear probe of CLIP (Radford et al., 2021), following CoOp's ``lpclip`` (C searched on validation shots)."""

    version = "1"
    description = "Logistic regression on source image features; C searched on the validation shots."
    Config = LinearProbeConfig
    module_class = LinearProbeModule
    uses_train_views = False

    def fit(self, source: VLM, task: FewShotTask, config: LinearProbeConfig, seed: int) -> LinearProbeModule:
        x, y = task.train_plain_features(), task.train_labels
        classes = len(task.class_names)
        if len(task.val_labels):
            c = search_c(x, y, task.val_features(), task.val_labels, classes, config)
        else:
            c = 1.0
        w, b = fit_logistic(x, y, classes, c, config.max_iter)
        return LinearProbeModule(w, b, c)
