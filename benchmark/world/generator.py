"""Procedural captioned images of the embedded world: one object on a simple background.

An image is a pure function of ``(seed, stream, index)``: its attributes and every continuous detail
(position, radius, tilt, colour jitter, texture phase, noise) are drawn from a NumPy generator seeded with
exactly those three values, so any image can be regenerated alone, in any order. ``stream`` names an
independent sequence (the training pool of the toy CLIPs, or one split of one toy dataset).

Objects have five attributes whose vocabulary is data (``vocab.json``): shape, colour, fill pattern,
size and background. Backgrounds are smooth pale tints (a study with noisy backgrounds learned shape only
to 18-23%). Four rendering styles exist: ``photo`` (the world itself, the pre-training pool's only style),
``sketch`` (a pencil-like double outline on paper, no colour or fill), ``clutter`` (the object on a
background cluttered with pale blobs) and ``night`` (the photo at dusk: dim, a blue cast, sensor noise).
``sketch`` and ``clutter`` render OOD test sets; ``night`` is the domain of a downstream task that toy-clip's
pool lacks. Captions name an attribute by its canonical name (the toy datasets' class name) only with the
vocabulary's ``name_share``, by a synonym otherwise.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

ATTRIBUTES = ("shape", "colour", "pattern", "size", "background")
STYLES = ("photo", "sketch", "clutter", "night")
IMAGE_SIZE = 64
GENERATOR_VERSION = 3
"""Bumped whenever this code's output for a given (seed, stream, index) changes (see :func:`generator_key`)."""
_SS = 2  # drawn at 2x and box-filtered down (in render): anti-aliased edges at little cost
_CANVAS = IMAGE_SIZE * _SS
_VOCAB_KEYS = {"shape": "shapes", "colour": "colours", "pattern": "patterns", "size": "sizes",
               "background": "backgrounds"}


@lru_cache(maxsize=1)
def vocab() -> dict[str, Any]:
    """The world's vocabulary (``vocab.json``)."""
    return json.loads(resources.files(__package__).joinpath("vocab.json").read_text())


@lru_cache(maxsize=1)
def generator_key() -> str:
    """Identity of the generator: its code version and its vocabulary. Part of every toy dataset's
    fingerprint and every toy model's build key, so editing ``vocab.json`` invalidates what depends on it."""
    blob = json.dumps({"version": GENERATOR_VERSION, "vocab": vocab()}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def values(attribute: str) -> list[dict[str, Any]]:
    """The vocabulary entries of ``attribute`` (one of :data:`ATTRIBUTES`), in label order."""
    return vocab()[_VOCAB_KEYS[attribute]]


def names(attribute: str) -> list[str]:
    """Canonical names of ``attribute``'s values, in label order."""
    return [v["name"] for v in values(attribute)]


def stream_id(stream: str) -> int:
    """A stable 63-bit integer for a stream name (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.sha256(stream.encode()).digest()[:8], "little") >> 1


@dataclass(frozen=True)
class Scene:
    """One image's attributes (indices into the vocabulary) and the seed of its continuous details."""

    shape: int
    colour: int
    pattern: int
    size: int
    background: int
    detail_seed: int

    def attribute(self, name: str) -> int:
        """The value index of attribute ``name``."""
        return int(getattr(self, name))


def sample_scene(seed: int, stream: str, index: int, fixed: Mapping[str, int] | None = None) -> Scene:
    """The scene of image ``index`` of ``stream``; attributes in ``fixed`` are set rather than drawn.

    Every attribute is drawn even when fixed, so fixing one attribute leaves the others' draws unchanged.
    """
    rng = np.random.default_rng([seed, stream_id(stream), index])
    drawn = {a: int(rng.integers(len(values(a)))) for a in ATTRIBUTES}
    drawn.update(fixed or {})
    return Scene(**drawn, detail_seed=int(rng.integers(2**63)))


# ---- geometry -----------------------------------------------------------------------------------------------
def _regular(n: int, start_deg: float, radius: float = 1.0) -> np.ndarray:
    angles = np.deg2rad(start_deg + 360.0 * np.arange(n) / n)
    return radius * np.stack([np.cos(angles), np.sin(angles)], 1)


def _star() -> np.ndarray:
    outer, inner = _regular(5, -90.0), _regular(5, -54.0, 0.42)
    return np.stack([outer, inner], 1).reshape(-1, 2)


def _cross(arm: float = 0.3) -> np.ndarray:
    a = arm
    return np.array([(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a),
                     (-1, -a), (-a, -a)], dtype=float)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    pts = np.stack([16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))], 1)
    pts -= (pts.max(0) + pts.min(0)) / 2
    return pts / np.abs(pts).max()


@lru_cache(maxsize=1)
def _outlines() -> dict[str, np.ndarray]:
    """Unit outlines (image coordinates, y down) of the polygonal shapes; circle and crescent are drawn."""
    return {
        "square": _regular(4, 45.0, 1.0) * 0.98,
        "triangle": _regular(3, -90.0) + np.array([0.0, 0.2]),  # centred on its bounding box, not its centroid
        "diamond": np.array([(0, -1), (0.62, 0), (0, 1), (-0.62, 0)], dtype=float),
        "star": _star(),
        "cross": _cross(),
        "heart": _heart(),
    }


def _shape_mask(shape: str, cx: float, cy: float, r: float, tilt_deg: float) -> Image.Image:
    """The filled shape as an 8-bit mask on the supersampled canvas."""
    mask = Image.new("L", (_CANVAS, _CANVAS), 0)
    draw = ImageDraw.Draw(mask)
    if shape in ("circle", "crescent"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        if shape == "crescent":  # a bite out of the disc, towards the upper right (tilted)
            t = np.deg2rad(tilt_deg - 35.0)
            bx, by, br = cx + 0.5 * r * np.cos(t), cy + 0.5 * r * np.sin(t), 0.82 * r
            draw.ellipse((bx - br, by - br, bx + br, by + br), fill=0)
        return mask
    t = np.deg2rad(tilt_deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    pts = _outlines()[shape] @ rot.T * r + np.array([cx, cy])
    draw.polygon([tuple(p) for p in pts], fill=255)
    return mask


def _erode(mask: np.ndarray, width: int) -> np.ndarray:
    """Binary erosion by a (2 width + 1)-square, as shifted ANDs (a rank filter is ten times slower)."""
    out = mask.copy()
    for axis in (0, 1):
        src = out.copy()
        for d in range(1, width + 1):
            lo = [slice(None)] * 2
            hi = [slice(None)] * 2
            lo[axis], hi[axis] = slice(d, None), slice(None, -d)
            out[tuple(lo)] &= src[tuple(hi)]
            out[tuple(hi)] &= src[tuple(lo)]
            edge = [slice(None)] * 2
            edge[axis] = slice(0, d)
            out[tuple(edge)] = False
            edge[axis] = slice(-d, None)
            out[tuple(edge)] = False
    return out


def _ring(mask: Image.Image, width: int) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` canvas pixels of its edge."""
    inside = np.asarray(mask) > 127
    return inside & ~_erode(inside, width)


_AXIS = np.arange(_CANVAS, dtype=np.float32) + 0.5  # pixel centres along x (columns) and y (rows)


def _texture(pattern: str, rng: np.random.Generator) -> np.ndarray:
    """Where a filled object shows its main colour (True) rather than its second shade."""
    x, y = _AXIS[None, :], _AXIS[:, None]
    if pattern == "striped":
        a = np.deg2rad(45.0 * rng.integers(4) + rng.uniform(-10, 10))
        u = x * np.cos(a) + y * np.sin(a) + rng.uniform(0, 12)
        return (u % 12.0) < 6.0
    if pattern == "dotted":
        u, v = (x + rng.uniform(0, 14)) % 14.0 - 7.0, (y + rng.uniform(0, 14)) % 14.0 - 7.0
        return (u * u + v * v) < 4.2**2
    if pattern == "checkered":
        p = rng.uniform(0, 20, size=2)
        return ((np.floor((x + p[0]) / 10.0) + np.floor((y + p[1]) / 10.0)) % 2) == 0
    return np.ones((_CANVAS, _CANVAS), dtype=bool)


def _second_shade(rgb: np.ndarray) -> np.ndarray:
    """The other shade of a patterned fill: lighter for dark colours, darker for light ones."""
    luma = rgb @ np.array([0.299, 0.587, 0.114]) / 255.0
    return rgb * 0.35 + 255.0 * 0.65 if luma < 0.5 else rgb * 0.45


def _background(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """A pale tint with a gentle linear gradient."""
    base = np.array(values("background")[scene.background]["rgb"], dtype=np.float32) + rng.normal(0, 5, 3)
    a = rng.uniform(0, 2 * np.pi)
    ramp = (_AXIS[None, :] * np.cos(a) + _AXIS[:, None] * np.sin(a)) * np.float32(rng.uniform(-20, 20) / _CANVAS)
    return ramp[..., None] + base


def _clutter(rng: np.random.Generator) -> np.ndarray:
    """An unusual background: a pale tint cluttered with blobs (rectangles, ellipses) of random pale colours.

    Saturated or solid unusual colours drop every toy model to chance; pale clutter keeps the task hard
    (distractor shapes behind the object) but measurable.
    """
    canvas = Image.new("RGB", (_CANVAS, _CANVAS), tuple(int(c) for c in rng.integers(200, 245, 3)))
    draw = ImageDraw.Draw(canvas)
    for _ in range(8):
        x0, y0 = rng.uniform(-20, _CANVAS, 2)
        w, h = rng.uniform(16, 56, 2)
        colour = tuple(int(c) for c in rng.integers(120, 230, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)((x0, y0, x0 + w, y0 + h), fill=colour)
    return np.asarray(canvas, dtype=np.float32)


def render(scene: Scene, style: str = "photo") -> np.ndarray:
    """The ``IMAGE_SIZE`` x ``IMAGE_SIZE`` RGB image (uint8 array) of ``scene`` in rendering ``style``."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
    rng = np.random.default_rng(scene.detail_seed)
    lo, hi = values("size")[scene.size]["radius"]
    r = rng.uniform(lo, hi) * _SS
    margin = r + 2 * _SS
    cx, cy = rng.uniform(margin, _CANVAS - margin, 2)
    tilt = rng.uniform(-12.0, 12.0)
    shape = names("shape")[scene.shape]
    mask_img = _shape_mask(shape, cx, cy, r, tilt)
    jitter = rng.normal(0, 10, 3)
    fill = np.clip(np.array(values("colour")[scene.colour]["rgb"], dtype=np.float32) + jitter, 0, 255)
    pattern = names("pattern")[scene.pattern]
    texture = _texture(pattern, rng)  # drawn in every style: the random stream must not depend on it

    if style == "sketch":
        paper = np.float32(rng.uniform(236, 250))
        img = np.full((_CANVAS, _CANVAS, 3), paper, dtype=np.float32) + rng.normal(0, 2, 3)
        # a pencil line drawn twice, the second stroke slightly off, as a quick sketch would be
        second = _shape_mask(shape, cx + rng.uniform(-2, 2), cy + rng.uniform(-2, 2), r * rng.uniform(0.96, 1.04),
                             tilt + rng.uniform(-4, 4))
        lines = _ring(mask_img, 2) | _ring(second, 1)
        img[lines] = rng.uniform(30, 80)
    else:
        img = _clutter(rng) if style == "clutter" else _background(scene, rng)
        img = np.ascontiguousarray(img, dtype=np.float32)
        if pattern == "outlined":
            img[_ring(mask_img, 2 * _SS)] = fill  # a 2-pixel outline
        else:
            inside = np.asarray(mask_img) > 127
            shade = _second_shade(fill)
            img[inside & texture] = fill
            img[inside & ~texture] = shade
    if style == "night":  # the scene at dusk: dim, low contrast, a blue cast and sensor noise
        img = img * np.float32(rng.uniform(0.3, 0.4)) + np.array([10.0, 14.0, 32.0], dtype=np.float32)
        img += rng.normal(0, 6, img.shape[:2])[..., None].astype(np.float32)
    small = (img[0::2, 0::2] + img[1::2, 0::2] + img[0::2, 1::2] + img[1::2, 1::2]) * 0.25  # _SS == 2
    small += rng.normal(0, 2.5, small.shape)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def render_image(scene: Scene, style: str = "photo") -> Image.Image:
    """:func:`render` as a PIL image."""
    return Image.fromarray(render(scene, style), "RGB")


def render_many(seed: int, stream: str, indices: Sequence[int], style: str = "photo") -> np.ndarray:
    """Images ``indices`` of ``stream`` as one ``[N, H, W, 3]`` uint8 array (each as :func:`render` alone)."""
    out = np.empty((len(indices), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for row, index in enumerate(indices):
        out[row] = render(sample_scene(seed, stream, int(index)), style)
    return out


# ---- captions -----------------------------------------------------------------------------------------------
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption_words(attribute: str) -> list[str]:
    """Every word captions use for ``attribute``'s values: canonical names and synonyms."""
    return [w for v in values(attribute) for w in (v["name"], *v["synonyms"])]


def _word(entry: Mapping[str, Any], name_share: float, rng: np.random.Generator) -> str:
    """The canonical name with probability ``name_share`` (always, without synonyms), else a synonym."""
    synonyms = entry["synonyms"]
    if not synonyms or rng.random() < name_share:
        return entry["name"]
    return synonyms[int(rng.integers(len(synonyms)))]


def caption(scene: Scene) -> str:
    """A templated caption of ``scene``: synonyms, dropped attributes and varied word order.

    The choices are drawn from the scene's own seed, so the caption is as reproducible as the image.
    """
    spec = vocab()["captions"]
    rng = np.random.default_rng([scene.detail_seed, 1])
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    kept = {a: rng.random() < spec["keep"][a] for a in ATTRIBUTES}
    word = {a: _word(values(a)[scene.attribute(a)], spec["name_share"][a], rng) for a in ATTRIBUTES}
    pattern_entry = values("pattern")[scene.pattern]

    if kept["pattern"] and rng.random() < spec["texture_probability"]:
        return spec["texture_sentence"].format(pattern=word["pattern"])

    noun = word["shape"] if kept["shape"] else pick(spec["object_words"])
    colour_clause = kept["colour"] and rng.random() < spec["colour_as_clause"]
    pattern_with = kept["pattern"] and rng.random() < spec["pattern_as_with"]
    adjectives = [word["size"]] if kept["size"] else []
    inner = [a for a in ("colour", "pattern") if kept[a] and not (a == "colour" and colour_clause)
             and not (a == "pattern" and pattern_with)]
    if len(inner) == 2 and rng.random() < spec["swap_colour_pattern"]:
        inner.reverse()
    adjectives += [word[a] for a in inner]
    phrase = " ".join([*adjectives, noun])
    if colour_clause:
        phrase += f" that is {word['colour']}"
    if pattern_with:
        phrase += f" with {pattern_entry['with']}"
    phrase = f"{_article(phrase)} {phrase}"
    sentence = pick(spec["sentences"]).format(np=phrase)
    if kept["background"]:
        sentence = sentence[:-1] + pick(spec["background_phrases"]).format(bg=word["background"]) + "."
    return sentence
