"""Opening image files of real datasets: safe references, decoding to RGB, and cheap verification."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from PIL import Image

from ..errors import UserError

# What PIL raises for files that are not images, are truncated, or are absurdly large.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def is_safe_ref(ref: str) -> bool:
    """Whether ``ref`` is a relative path that stays inside the folder it is joined to."""
    path = PurePosixPath(ref)
    return bool(ref) and not path.is_absolute() and ".." not in path.parts


def open_rgb(path: Path, fix: str | None = None) -> Image.Image:
    """Decode the image at ``path`` fully and return it in RGB.

    Decoding happens here (not lazily in a transform) so that a corrupt or truncated file is reported
    with its path as a :class:`UserError` carrying ``fix``.
    """
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"Image {path} does not exist.", fix) from None
    except _DECODE_ERRORS as exc:
        raise UserError(f"Image {path} is unreadable ({exc}).", fix) from None


def image_problem(path: Path) -> str | None:
    """Why the image at ``path`` cannot be used (``"absent"`` or the decoder's error), or ``None``.

    JPEGs are decoded in draft mode (DCT scaling, several times faster) which still reads every byte,
    so truncation is caught.
    """
    try:
        with Image.open(path) as image:
            image.draft("RGB", (64, 64))
            image.load()
    except FileNotFoundError:
        return "absent"
    except _DECODE_ERRORS as exc:
        return str(exc) or type(exc).__name__
    return None
