"""CoOp (Zhou et al., 2022; KaiyangZhou/CoOp ``trainers/coop.py``): learnable context vectors.

16 context vectors shared across classes, initialised N(0, 0.02) (or from the embeddings of a phrase),
class token at the end; only the context is trained, with cross-entropy. Transplant: the same vectors
are spliced into the target's token embeddings of the class names and run through the target's text
encoder. ``depth > 0`` inserts the context at the input of block ``depth`` instead (paper Fig. 2d).
Logits use the logit scale of the model in use (100 for OpenAI CLIP), as the reference does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from upgradebench.compat import check_text_width
from upgradebench.errors import UserError
from upgradebench.method import Method, Module
from upgradebench.models import VLM
from upgradebench.prompting import class_prompts, encode_prompts, text_embedding
from upgradebench.training import SGDRecipe, fit_recipe, plain_backward


@dataclass
class CoOpConfig(SGDRecipe):
    """CoOp's ``vit_b16`` recipe. ``epochs=None`` follows the shots (50/100/100/200/200; ImageNet 50)."""

    n_ctx: int = 16
    ctx_init: str | None = None
    init_std: float = 0.02
    depth: int = 0


def init_context(vlm: VLM, n_ctx: int, ctx_init: str | None, init_std: float, seed: int) -> torch.Tensor:
    """CoOp's context init: the embeddings of ``ctx_init`` (its token count sets N) or N(0, init_std)."""
    if ctx_init:
        ctx = text_embedding(vlm, ctx_init)
        if len(ctx) != n_ctx:
            raise UserError(f"ctx_init {ctx_init!r} has {len(ctx)} tokens but n_ctx is {n_ctx}.",
                            f"pass --config n_ctx={len(ctx)}")
        return ctx.float()
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n_ctx, vlm.text_width, generator=generator) * init_std


@dataclass
class CoOpModule(Module):
    """Learned context ``[N, D]`` (+ the depth it is inserted at): the artifact of every context learner."""

    ctx: torch.Tensor
    depth: int = 0

    def text_features(self, vlm: VLM, class_names: list[str]) -> torch.Tensor:
        """Class text features of ``vlm`` with this context."""
        check_text_width(vlm, self.ctx, "CoOp context")
        prompts = class_prompts(vlm, class_names, self.ctx.shape[0])
        return encode_prompts(vlm, prompts, self.ctx.to(vlm.device), self.depth)

    @torch.no_grad()
    def logits(self, vlm: VLM, image_features: torch.Tensor, class_names: list[str]) -> torch.Tensor:
        return vlm.logits(image_features.to(vlm.device), self.text_features(vlm, class_names))


Loss = Callable[[torch.Tensor, torch.Tensor], Any]


class ContextLearner(Method):
    """CoOp's training of a context ``[N, D]`` shared by the classes; the family (CoOp, KgCoOp, ProGrad) differs
    in its initial context (:meth:`initial_context`), its loss (:meth:`loss`) and how a loss becomes a
    gradient (:meth:`backward`). The artifact is a :class:`CoOpModule`, saved under the method's own name.
    A config has ``n_ctx`` and CoOp's recipe (``SGDRecipe``); an optional ``depth`` inserts the context deeper.
    """

    module_class = CoOpModule

    def initial_context(self, source: VLM, task: Any, config: Any, seed: int) -> torch.Tensor:
        """The context before training: CoOp's init from ``ctx_init`` / ``init_std`` (:func:`init_context`)."""
        return init_context(source, config.n_ctx, config.ctx_init, config.init_std, seed)

    def loss(self, source: VLM, task: Any, config: Any, text: Callable[[], torch.Tensor]) -> Loss:
        """The batch loss ``(image features, labels) -> loss``; ``text()`` gives the prompted class text features
        of the current context. CoOp's: cross-entropy of the logits."""

        def loss_fn(feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(source.logits(feats, text()), labels)

        return loss_fn

    def backward(self, ctx: torch.nn.Parameter, config: Any) -> Callable[[Any], torch.Tensor]:
        """How the loss becomes the context's gradient: plain ``loss.backward()`` unless overridden."""
        return plain_backward

    def fit(self, source: VLM, task: Any, config: Any, seed: int) -> CoOpModule:
        ctx = torch.nn.Parameter(self.initial_context(source, task, config, seed).to(source.device))
        prompts = class_prompts(source, task.class_names, config.n_ctx)
        depth = getattr(config, "depth", 0)
        loss_fn = self.loss(source, task, config, lambda: encode_prompts(source, prompts, ctx, depth))
        fit_recipe(task, [ctx], loss_fn, config, seed, backward=self.backward(ctx, config))
        return CoOpModule(ctx.detach().cpu(), depth)


class CoOp(ContextLearner):
    """Context Optimization (Zhou et al., IJCV 2022), reference KaiyangZhou/CoOp ff61507."""

    version = "1"
    description = "Learnable context vectors at the input of the text encoder (16, shared, class token at the end)."
    Config = CoOpConfig
