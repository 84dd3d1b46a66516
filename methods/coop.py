"""CoOp (Zhou et al., 2022; KaiyangZhou/CoOp ``trainers/coop.py``): learnable context vectors.

16 context vectors shared across classes, initialised N(0, 0.02) (or from the embeddings of a phrase),
class token at the end; only the context is trained, with cross-entropy. Transplant: the same vectors
are spliced into the target's token embeddings of the class names and run through the target's text
encoder. ``depth > 0`` inserts the context at the input of block ``depth`` instead (paper Fig. 2d).
Logits use the logit scale of the model in use (100 for OpenAI CLIP), as the reference does.
:class:`ContextLearner` is CoOp's fit with hooks, the base of the whole prompt-learning family (KgCoOp, ProGrad,
TCP, ContCoOp, CoCoOp differ in their initial context, network beside it, loss, backward and module).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from upgradebench.compat import check_text_width
from upgradebench.errors import UserError
from upgradebench.method import Method, Module
from upgradebench.models import VLM
from upgradebench.prompting import ClassPrompts, class_prompts, encode_prompts, text_embedding
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
    """The prompt learners' shared fit: CoOp's learnable context ``[N, D]`` and class prompts, optionally a network
    trained beside the context (TCP's knowledge embedding, ContCoOp's attention, CoCoOp's meta-net), trained with
    CoOp's recipe (``fit_recipe``, with the :attr:`optimizer`). The members of the family (CoOp, KgCoOp, ProGrad,
    TCP, ContCoOp, CoCoOp) differ in their hooks: :meth:`initial_context`, :meth:`network`, :meth:`loss`,
    :meth:`backward` (ProGrad) and :meth:`module`; every default is CoOp's. A config has ``n_ctx`` and
    CoOp's recipe (``SGDRecipe``); ``ctx_init`` and ``depth`` are read when it has them.
    """

    module_class = CoOpModule
    optimizer: ClassVar[str] = "sgd"
    adam_eps: ClassVar[float] = 1e-8  # Adam's epsilon when ``optimizer`` is "adam" (Dassl's: torch's default)

    def initial_context(self, source: VLM, task: Any, config: Any, seed: int) -> torch.Tensor:
        """The context before training: CoOp's init from ``ctx_init`` / ``init_std`` (:func:`init_context`)."""
        return init_context(source, config.n_ctx, getattr(config, "ctx_init", None), config.init_std, seed)

    def network(self, source: VLM, task: Any, config: Any, seed: int) -> torch.nn.Module | None:
        """The network trained beside the context (on ``source.device``), or None (CoOp)."""
        return None

    def loss(self, source: VLM, task: Any, config: Any, prompts: ClassPrompts, ctx: torch.Tensor,
             network: torch.nn.Module | None) -> Loss:
        """The batch loss ``(image features, labels) -> loss`` of the current ``ctx`` and ``network``. CoOp's:
        cross-entropy of the logits of the prompts with the context inserted at ``config.depth``."""
        depth = getattr(config, "depth", 0)

        def loss_fn(feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(source.logits(feats, encode_prompts(source, prompts, ctx, depth)), labels)

        return loss_fn

    def backward(self, params: list[torch.nn.Parameter], config: Any) -> Callable[[Any], torch.Tensor]:
        """How what the loss returns becomes the gradients of ``params``: plain ``loss.backward()`` by default."""
        return plain_backward

    def module(self, source: VLM, task: Any, config: Any, ctx: torch.Tensor, network: torch.nn.Module | None) -> Module:
        """The artifact of the trained (detached, CPU) context and network: CoOp's context module by default."""
        return CoOpModule(ctx, getattr(config, "depth", 0))

    def fit(self, source: VLM, task: Any, config: Any, seed: int) -> Module:
        ctx = torch.nn.Parameter(self.initial_context(source, task, config, seed).to(source.device))
        network = self.network(source, task, config, seed)
        prompts = class_prompts(source, task.class_names, config.n_ctx)
        params = [ctx, *(network.parameters() if network is not None else [])]
        loss_fn = self.loss(source, task, config, prompts, ctx, network)
        fit_recipe(task, params, loss_fn, config, seed, optimizer=self.optimizer, adam_eps=self.adam_eps,
                   backward=self.backward(params, config))
        if network is not None:
            network.requires_grad_(False).cpu()
        return self.module(source, task, config, ctx.detach().cpu(), network)


class CoOp(ContextLearner):
    """Context Optimization (Zhou et al., IJCV 2022), reference KaiyangZhou/CoOp ff61507."""

    version = "1"
    description = "Learnable context vectors at the input of the text encoder (16, shared, class token at the end)."
    Config = CoOpConfig
