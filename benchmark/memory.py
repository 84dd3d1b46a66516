"""Memory of training through the frozen text encoder: the model of its peak, and the chunking that bounds it.

Prompt methods backpropagate through the frozen text encoder to their context. With frozen weights a linear
layer keeps nothing of its input for backward, so what one block of a CLIP text transformer keeps per token
(fp32, measured with autograd's saved-tensor hooks in ``benchmarks/memory.py``) is

    ln_1 input D + packed q,k,v 3D + attention output D + attention log-sum-exp H + ln_2 input D
    + the MLP's activation: QuickGELU ``x * sigmoid(1.702 x)`` keeps its input and its sigmoid (2 M), GELU 1 M
    + two LayerNorm statistics each (4)

floats, i.e. ``6 D + k M + H + 4`` with width D, heads H, MLP width M and k = 2 (QuickGELU) or 1 (GELU).
A text-encoder call on ``rows`` prompts of ``length`` tokens keeps ``rows * length * layers`` times that.

CoCoOp encodes ``images x classes`` prompts per step and ContCoOp ``classes`` prompts, so at ViT-L/14 a batch
can outgrow a GPU. :func:`encode_text_bounded` runs the prompts of one step in calls of at most
:func:`rows_per_call` rows: when a step has more, each call is activation-checkpointed (forward without
keeping activations, recomputed in backward one call at a time), which gives the same logits and
gradients (up to float rounding of the different call shapes) at the cost of one more forward. The rows
per call follow from the architecture, the prompt length and the fixed :data:`TEXT_ACTIVATION_BUDGET`,
never from the device, so a run's numbers do not depend on the machine it runs on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from .errors import UserError
from .models.vlm import VLM

# Activations one training text-encoder call may keep (bytes). At ViT-L/14 (fp32) with 17-token prompts this is
# 1220 rows, so ImageNet's 1000 classes at CoCoOp's batch 1 take one call; the peak of any step then stays near
# 13 GiB (docs/memory.md), within a 24 GB GPU.
TEXT_ACTIVATION_BUDGET = 10 * 2**30
FLOAT_BYTES = 4  # methods train in fp32


@dataclass(frozen=True)
class TextShape:
    """The sizes of a text transformer that its training memory depends on."""

    width: int
    layers: int
    heads: int
    mlp_width: int
    activation_saves: int  # tensors of MLP width kept by the activation: 2 for QuickGELU, 1 for GELU

    @classmethod
    def of(cls, vlm: VLM) -> TextShape:
        """The text tower of ``vlm`` (an unknown activation counts as QuickGELU, the larger)."""
        block: Any = vlm.text_modules["block_0"]  # open_clip's block: nn.Module types attn, mlp as Tensor | Module
        act = getattr(block.mlp, "gelu", None)
        saves = 1 if isinstance(act, torch.nn.GELU) else 2
        return cls(vlm.text_width, vlm.num_text_layers, block.attn.num_heads, block.mlp.c_fc.out_features, saves)

    def saved_floats_per_token_layer(self) -> int:
        """Floats one block keeps for backward per token (module docstring)."""
        return 6 * self.width + self.activation_saves * self.mlp_width + self.heads + 4

    def saved_bytes(self, rows: int, length: int) -> int:
        """Activations kept for backward by one training call on ``rows`` prompts of ``length`` tokens."""
        return rows * length * self.layers * self.saved_floats_per_token_layer() * FLOAT_BYTES

    def transient_bytes(self, rows: int, length: int) -> int:
        """The largest short-lived tensors of a call: the prompt embeddings and their gradient, the hidden state
        and the MLP's gradients of the block being differentiated."""
        return rows * length * (4 * self.width + 3 * self.mlp_width) * FLOAT_BYTES


def model_bytes(vlm: VLM) -> int:
    """Bytes of all the weights of ``vlm`` (both towers stay on the device)."""
    return sum(p.numel() * p.element_size() for p in vlm.model.parameters())


def saved_activation_bytes(vlm: VLM, rows: int, length: int) -> int:
    """Measured: bytes of the distinct non-parameter storages autograd keeps for one unchunked training call
    through the text encoder (what :meth:`TextShape.saved_bytes` models)."""
    params = {p.untyped_storage().data_ptr() for p in vlm.model.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            kept[s.data_ptr()] = s.nbytes()
        return t

    embeds = torch.randn(rows, length, vlm.text_width, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        vlm.encode_text_embeddings(embeds, torch.full((rows,), length - 1))
    return sum(kept.values())


def rows_per_call(shape: TextShape, length: int, budget: int = TEXT_ACTIVATION_BUDGET) -> int:
    """Prompts per training text-encoder call whose kept activations fit in ``budget`` (at least 1)."""
    return max(1, budget // shape.saved_bytes(1, length))


def training_peak_bytes(shape: TextShape, weights: int, rows: int, length: int, chunked: bool = True,
                        budget: int = TEXT_ACTIVATION_BUDGET) -> int:
    """Modelled peak of one training step over ``rows`` prompts: weights, kept activations of the largest call
    (all rows when not ``chunked``), transients, and with chunking the inputs kept for the recomputation."""
    per_call = min(rows, rows_per_call(shape, length, budget)) if chunked else rows
    kept_inputs = rows * length * shape.width * FLOAT_BYTES if per_call < rows else 0
    return weights + shape.saved_bytes(per_call, length) + shape.transient_bytes(per_call, length) + kept_inputs


def check_fits(vlm: VLM, rows: int, length: int, what: str) -> None:
    """Fail early on CUDA when the modelled peak of a training step exceeds the device's memory."""
    if vlm.device.type != "cuda":
        return
    shape = TextShape.of(vlm)
    need = training_peak_bytes(shape, model_bytes(vlm), rows, length)
    total = torch.cuda.get_device_properties(vlm.device).total_memory
    if need > total:
        raise UserError(
            f"{what} on {vlm.name!r} needs about {need / 2**30:.1f} GiB of GPU memory per step "
            f"({rows} prompts of {length} tokens), the GPU has {total / 2**30:.1f} GiB.",
            "use a GPU with more memory (the text encoder's calls are already chunked to "
            f"{TEXT_ACTIVATION_BUDGET / 2**30:.0f} GiB of activations)",
        )


def encode_text_bounded(vlm: VLM, embeds: torch.Tensor, eot_index: torch.Tensor,
                        max_rows: int | None = None) -> torch.Tensor:
    """``vlm.encode_text_embeddings`` whose training calls keep at most :func:`rows_per_call` rows of activations.

    Without gradients, or with few enough rows, this is one plain call. ``max_rows`` overrides the rows per
    call (tests compare chunked with unchunked on a tiny model).
    """
    rows = embeds.shape[0]
    if max_rows is None:
        max_rows = rows_per_call(TextShape.of(vlm), int(eot_index.max()) + 1)
    if rows <= max_rows or not torch.is_grad_enabled():
        return vlm.encode_text_embeddings(embeds, eot_index)
    return torch.cat([checkpoint(vlm.encode_text_embeddings, e, t, use_reentrant=False)
                      for e, t in zip(embeds.split(max_rows), eot_index.split(max_rows))])
