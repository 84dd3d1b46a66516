"""Checks that a module fitted on one model fits another: the widths a plug-in artifact depends on.

A module may be plugged into any model whose text-embedding or image-feature width matches the source's;
anything else is a user error with the names of both sides, not a shape error from deep inside torch.
"""

from __future__ import annotations

import torch

from .errors import UserError
from .models.vlm import VLM


def check_text_width(vlm: VLM, ctx: torch.Tensor, what: str) -> None:
    """A context trained on one text width cannot enter a tower of another width."""
    if ctx.shape[-1] != vlm.text_width:
        raise UserError(f"{what} has width {ctx.shape[-1]} but {vlm.name}'s text tower has width {vlm.text_width}.",
                        "source and target must share the text-embedding width")


def check_image_width(vlm: VLM, width: int, features: torch.Tensor, what: str) -> None:
    """A module fitted on image features of one width cannot read another model's features of another width."""
    if features.shape[-1] != width:
        raise UserError(f"{what} was fitted on {width}-d image features but {vlm.name} gives "
                        f"{features.shape[-1]}-d ones.", "source and target must share the image-feature width")
