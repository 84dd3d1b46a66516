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
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import torch
import torch.nn.functional as F

from upgradebench import (
    TOKEN,
    VLM,
    ClassPrompts,
    FewShotTask,
    Method,
    Module,
    SGDRecipe,
    class_prompts,
    encode_prompts,
    fit_recipe,
    ranged,
    text_embedding,
)
from upgradebench.compat import check_text_width
from upgradebench.errors import UserError
from upgradebench.prompting import DEPTH_WHY, MAX_DEPTH, MAX_N_CTX, N_CTX_WHY, check_depth
from upgradebench.training import Recipe, plain_backward


@dataclass
class CoOpConfig(SGDRecipe):
    """CoOp's ``vit_b16`` recipe. ``epochs=None`` follows the shots (50/100/100/200/200; ImageNet 50)."""

    n_ctx: int = ranged(16, ge=1, le=MAX_N_CTX, why=N_CTX_WHY)
    ctx_init: str | None = None
    init_std: float = ranged(0.02, ge=0)
    depth: int = ranged(0, ge=0, le=MAX_DEPTH, why=DEPTH_WHY)


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

    spaces = {"ctx": (None, TOKEN)}


    ctx: torch.Tensor
    depth: int = 0

    def text_features(self, vlm: VLM, class_names: list[str]) -> torch.Tensor:
        """Class text features of ``vlm`` with this context."""
        check_text_width(vlm, self.ctx, "CoOp context")
        prompts = class_prompts(vlm, class_names, self.ctx.shape[0])
        return encode_prompts(vlm, prompts, self.ctx.to(vlm.device), self.depth)

    def logits(self, vlm: VLM, image_features: torch.Tensor, class_names: list[str]) -> torch.Tensor:
        return vlm.logits(image_features.to(vlm.device), self.text_features(vlm, class_names))


Loss = Callable[[torch.Tensor, torch.Tensor], Any]


class PromptRecipe(Recipe, Protocol):
    """What a context learner's config has: CoOp's recipe and the number of context vectors."""

    n_ctx: int


C = TypeVar("C", bound=PromptRecipe)
N = TypeVar("N", bound="torch.nn.Module | None")


@dataclass
class FitInputs(Generic[C]):
    """What ``fit`` received, as a context learner's first hooks see it."""

    source: VLM
    task: FewShotTask
    config: C
    seed: int


@dataclass
class FitState(FitInputs[C], Generic[C, N]):
    """A context learner's fit once its parts exist: the class prompts of the source, the context ``[N, D]`` (a
    parameter on the source's device while training; detached, on the CPU when :meth:`ContextLearner.module` runs),
    the network trained beside it (or None), and every trained parameter."""

    prompts: ClassPrompts
    ctx: torch.Tensor
    network: N
    params: list[torch.nn.Parameter]


class ContextLearner(Method[C], Generic[C, N]):
    """The prompt learners' shared fit: CoOp's learnable context ``[N, D]`` and class prompts, optionally a network
    trained beside the context (TCP's knowledge embedding, ContCoOp's attention, CoCoOp's meta-net), trained with
    CoOp's recipe (``fit_recipe``, with the :attr:`optimizer`). The members of the family (CoOp, KgCoOp, ProGrad,
    TCP, ContCoOp, CoCoOp) differ in their hooks, each of which takes one state object: :meth:`initial_context`
    and :meth:`network` (a :class:`FitInputs`), :meth:`loss`, :meth:`backward` (ProGrad) and :meth:`module`
    (a :class:`FitState`); every default is CoOp's. Generic in the config ``C`` (CoOp's recipe with ``n_ctx``;
    ``ctx_init``, ``init_std`` and ``depth`` are read when it has them) and the network ``N``.
    """

    module_class: ClassVar[type[Module]] = CoOpModule
    optimizer: ClassVar[str] = "sgd"
    adam_eps: ClassVar[float] = 1e-8  # Adam's epsilon when ``optimizer`` is "adam" (Dassl's: torch's default)

    def initial_context(self, fit: FitInputs[C]) -> torch.Tensor:
        """The context before training: CoOp's init from ``ctx_init`` / ``init_std`` (:func:`init_context`)."""
        config = fit.config
        return init_context(fit.source, config.n_ctx, getattr(config, "ctx_init", None),
                            config.init_std, fit.seed)  # type: ignore[attr-defined]  # a learner without it overrides this

    def network(self, fit: FitInputs[C]) -> N:
        """The network trained beside the context (on ``source.device``), or None (CoOp)."""
        return None  # type: ignore[return-value]  # N is None for a learner that keeps this default

    def loss(self, fit: FitState[C, N]) -> Loss:
        """The batch loss ``(image features, labels) -> loss`` of the current context and network. CoOp's:
        cross-entropy of the logits of the prompts with the context inserted at ``config.depth``."""
        source, prompts, ctx = fit.source, fit.prompts, fit.ctx
        depth = getattr(fit.config, "depth", 0)

        def loss_fn(feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(source.logits(feats, encode_prompts(source, prompts, ctx, depth)), labels)

        return loss_fn

    def backward(self, fit: FitState[C, N]) -> Callable[[Any], torch.Tensor]:
        """How what the loss returns becomes the gradients of ``fit.params``: plain ``loss.backward()`` by default."""
        return plain_backward

    def module(self, fit: FitState[C, N]) -> Module:
        """The artifact of the trained context and network: CoOp's context module by default."""
        return CoOpModule(fit.ctx, getattr(fit.config, "depth", 0))

    def fit(self, source: VLM, task: FewShotTask, config: C, seed: int) -> Module:
        inputs = FitInputs(source, task, config, seed)
        check_depth(source, getattr(config, "depth", 0))  # refused before anything trains
        ctx = torch.nn.Parameter(self.initial_context(inputs).to(source.device))
        network = self.network(inputs)
        prompts = class_prompts(source, task.class_names, config.n_ctx)
        params = [ctx, *(network.parameters() if network is not None else [])]
        state = FitState(source, task, config, seed, prompts, ctx, network, params)
        fit_recipe(task, params, self.loss(state), config, seed, optimizer=self.optimizer, adam_eps=self.adam_eps,
                   backward=self.backward(state))
        if network is not None:
            network.requires_grad_(False).cpu()
        return self.module(replace(state, ctx=ctx.detach().cpu()))


class CoOp(ContextLearner[CoOpConfig, None]):
    """Context Optimization (Zhou et al., IJCV 2022), reference KaiyangZhou/CoOp ff61507."""

    version = "1"
    description = "Learnable context vectors at the input of the text encoder (16, shared, class token at the end)."
    Config = CoOpConfig
