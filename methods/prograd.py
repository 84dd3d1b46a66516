"""ProGrad (Zhu et al., ICCV 2023; BeierZhu/Prompt-align 1b76203, ``ProGrad.public/trainers/prograd.py`` and
``Dassl.ProGrad.pytorch/dassl/engine/trainer.py: prograd_backward_and_update``): prompt-aligned gradients.

CoOp's context (N = 16), initialised to zeros with its last k vectors set to the first k token embeddings of
the dataset template before the class name ("a photo of a" for ``"a photo of a {}."``), k its number of words.
Two losses per batch:
``L_ce`` (cross-entropy) and ``L_kl = T^2 * mean_i sum_c -softmax(z_zs / T)_c log softmax(z / T)_c`` against the
zero-shot logits ``z_zs`` of the source with the dataset template (T = 1). Per parameter, with ``g = grad L_ce``
and ``g_kl = grad L_kl``: if ``cos(g, g_kl) < 0``, ``g <- g - lambda (g . g_kl / ||g_kl||) g_kl / ||g_kl||``
(lambda = 1), else ``g`` is kept; the optimiser then steps with ``g``. Recipe: CoOp's (SGD 0.002, batch 32,
50 / 100 / 200 epochs by shots, cosine, 1 warm-up epoch at 1e-5), as in the reference's ``ProGrad/rn50*.yaml``.
Departures (docs/methods.md): the harness's dataset template is used for the init and the teacher (the
reference has its own template table); fp32. The artifact is CoOp's context, saved under the name ``prograd``
(CoOp's ``ContextLearner`` with ProGrad's init, loss and backward hooks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from upgradebench import VLM, SGDRecipe, UserError, encode_prompts, ranged, text_embedding, zeroshot_text_features
from upgradebench.prompting import MAX_N_CTX, N_CTX_WHY

from .coop import ContextLearner, FitInputs, FitState, Loss


@dataclass
class ProGradConfig(SGDRecipe):
    """ProGrad's defaults: N = 16 from the template's words (``ctx_init=None``), lambda = 1, T = 1; CoOp's recipe."""

    n_ctx: int = ranged(16, ge=1, le=MAX_N_CTX, why=N_CTX_WHY)
    ctx_init: str | None = None
    lambda_: float = ranged(1.0, ge=0, le=1)
    temperature: float = ranged(1.0, gt=0)


def template_context(vlm: VLM, n_ctx: int, words: str) -> torch.Tensor:
    """ProGrad's init: zeros ``[N, D]`` whose last ``n`` vectors are the first ``n`` token embeddings of ``words``,
    ``n`` counted in words as the reference does (``len(ctx_init.split(" "))``), not in tokens: for a phrase with
    punctuation ("a type of pet, a photo of a", 8 words, 9 tokens) the reference keeps the first 8 tokens."""
    ctx = torch.zeros(n_ctx, vlm.text_width)
    count = len(words.replace("_", " ").split())
    if count:
        if count > n_ctx:
            raise UserError(f"ProGrad's init {words!r} has {count} words but n_ctx is {n_ctx}.",
                            f"pass --config n_ctx={count} or a shorter --config ctx_init")
        emb = text_embedding(vlm, words.replace("_", " ")).float()[:count]
        ctx[n_ctx - len(emb):] = emb.cpu()
    return ctx


def project_gradient(grad: torch.Tensor, reference: torch.Tensor, lambda_: float = 1.0) -> torch.Tensor:
    """ProGrad's direction: ``grad`` minus ``lambda_`` times its projection on ``reference`` if they conflict."""
    unit = reference / torch.linalg.norm(reference)
    if torch.dot((grad / torch.linalg.norm(grad)).flatten(), unit.flatten()) < 0:
        return grad - lambda_ * torch.dot(grad.flatten(), unit.flatten()) * unit
    return grad


def prograd_backward(params: list[torch.nn.Parameter], lambda_: float) -> Callable[[Any], torch.Tensor]:
    """A ``backward`` for :func:`upgradebench.training.fit_epochs`: ``(L_ce, L_kl)`` -> projected ``grad L_ce``."""

    def backward(losses: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        ce, kl = losses
        kl_grads = torch.autograd.grad(kl, params, retain_graph=True)
        ce.backward()
        for p, g_kl in zip(params, kl_grads):
            if p.grad is None:
                raise RuntimeError("ProGrad: a context parameter has no gradient of the cross-entropy")
            p.grad = project_gradient(p.grad, g_kl, lambda_)
        return ce

    return backward


def prograd_losses(logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                   temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's ``ProGradLoss``: cross-entropy and the soft cross-entropy to the zero-shot teacher."""
    ce = F.cross_entropy(logits, labels)
    teacher = F.softmax(teacher_logits / temperature, dim=-1)
    kl = (-teacher * F.log_softmax(logits / temperature, dim=-1)).sum(1).mean() * temperature ** 2
    return ce, kl


class ProGrad(ContextLearner[ProGradConfig, None]):
    """Prompt-aligned Gradient (Zhu et al., 2023), reference BeierZhu/Prompt-align 1b76203."""

    version = "2"  # 2: the init phrase counted in words (the reference's rule), was tokens
    description = "CoOp context whose gradient never conflicts with the zero-shot prediction's (lambda = 1)."
    Config = ProGradConfig

    def initial_context(self, fit: FitInputs[ProGradConfig]) -> torch.Tensor:
        """Zeros whose last vectors are the template's words before the class name (or ``ctx_init``'s)."""
        config = fit.config
        words = config.ctx_init if config.ctx_init is not None else fit.task.template.split("{}")[0]
        return template_context(fit.source, config.n_ctx, words)

    def loss(self, fit: FitState[ProGradConfig, None]) -> Loss:
        """``(L_ce, L_kl)`` against the source's zero-shot logits with the dataset template."""
        source, task, config, prompts, ctx = fit.source, fit.task, fit.config, fit.prompts, fit.ctx
        zs = zeroshot_text_features(source, task.class_names, task.template)

        def loss_fn(feats: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            text = encode_prompts(source, prompts, ctx)
            return prograd_losses(source.logits(feats, text), source.logits(feats, zs), labels, config.temperature)

        return loss_fn

    def backward(self, fit: FitState[ProGradConfig, None]) -> Callable[[Any], torch.Tensor]:
        """``grad L_ce`` projected away from a conflict with ``grad L_kl`` (:func:`prograd_backward`)."""
        return prograd_backward(fit.params, fit.config.lambda_)
