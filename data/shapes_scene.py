"""Scenes of coloured shapes: the generator's config, scene sampling, rendering and captions.

Everything here is a pure function of the config and a ``random.Random``; the writer (``data.shapes``) seeds one
per item from ``(seed, stream, index)``, so any item can be re-derived without replaying the others.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

# Well-separated colours (pairwise RGB distance >= 80), so that even crude image features tell them apart.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 50, 180),
    "orange": (250, 130, 10),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES = ("small", "large")
POSITIONS = ("left", "middle", "right")
BACKGROUND = (240, 240, 240)
# Radius of a shape's bounding circle as a fraction of the image side: three large shapes fit side by side in
# the three columns of the image with a gap, so left/middle/right and "left of" are never ambiguous.
RADIUS = {"small": 0.07, "large": 0.125}
PLACE = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
_NUMBER = {1: "one", 2: "two", 3: "three"}
Difficulty = Literal["simple", "compositional"]


@dataclass(frozen=True)
class ShapesConfig:
    """What to generate. ``difficulty="simple"`` draws exactly one object in the middle ("a small red circle"), a
    task a tiny model with a random-init image encoder can learn; a single entry in ``sizes`` drops the size word
    from the text ("a red circle"). ``num_questions`` defaults to ``num_images``."""

    num_images: int = 1000
    seed: int = 0
    image_size: int = 64
    captions_per_image: int = 3
    num_questions: int | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    difficulty: Difficulty = "compositional"
    max_objects: int = 3
    colours: tuple[str, ...] = tuple(PALETTE)
    shapes: tuple[str, ...] = SHAPES
    sizes: tuple[str, ...] = SIZES
    background_noise: int = 0
    text_only_fraction: float = 0.2
    image_hint_fraction: float = 0.15
    no_context_fraction: float = 0.1

    def __post_init__(self) -> None:
        def check(ok: bool, problem: str) -> None:
            if not ok:
                raise ValueError(f"ShapesConfig: {problem}")

        check(self.num_images >= 0 and self.question_count >= 0, "counts must be >= 0")
        check(self.image_size >= 32, "image_size must be >= 32 (smaller shapes are unreadable)")
        check(1 <= self.captions_per_image <= 5, "captions_per_image must be in 1..5 (five templates per scene)")
        check(min(self.val_fraction, self.test_fraction) >= 0 and self.val_fraction + self.test_fraction < 1,
              "val_fraction and test_fraction must be >= 0 and leave a training split")
        check(self.difficulty in ("simple", "compositional"), "difficulty must be 'simple' or 'compositional'")
        check(1 <= self.max_objects <= len(POSITIONS), f"max_objects must be in 1..{len(POSITIONS)}")
        for name, value, known in (("colours", self.colours, PALETTE), ("shapes", self.shapes, SHAPES),
                                   ("sizes", self.sizes, SIZES)):
            check(bool(value) and len(set(value)) == len(value) and set(value) <= set(known),
                  f"{name} must be distinct values among {', '.join(known)}, got {value!r}")
        check(0 <= self.background_noise <= 30, "background_noise must be in 0..30 (grey levels)")
        fractions = (self.text_only_fraction, self.image_hint_fraction, self.no_context_fraction)
        check(min(fractions) >= 0 and sum(fractions) <= 1, "question context fractions must be >= 0, sum <= 1")

    @property
    def question_count(self) -> int:
        return self.num_images if self.num_questions is None else self.num_questions

    @property
    def mention_size(self) -> bool:
        """Size words appear in the text only when there is more than one size to tell apart."""
        return len(self.sizes) > 1


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    colour: str
    size: str
    position: str  # left | middle | right: the image column the object sits in
    x: float
    y: float


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]  # left to right
    noise_seed: int


def item_rng(seed: int, stream: str, index: int) -> random.Random:
    """The generator of one item; string seeds are hashed with SHA-512, so this is stable across runs."""
    return random.Random(f"{seed}/{stream}/{index}")


def sample_scene(config: ShapesConfig, rng: random.Random) -> Scene:
    """1..max_objects objects, one per image column (two objects: left and right), jittered inside the column."""
    if config.difficulty == "simple":
        columns = [1]
    else:
        count = rng.randint(1, config.max_objects)
        columns = [rng.randrange(3)] if count == 1 else [0, 2] if count == 2 else [0, 1, 2]
    side = config.image_size
    objects = []
    for column in columns:
        size = rng.choice(config.sizes)
        radius = RADIUS[size] * side
        jitter = max(0.0, side / 6 - radius - 1.5)  # keeps a gap of >= 3 px between neighbouring columns
        x = (column + 0.5) * side / 3 + rng.uniform(-jitter, jitter)
        y = rng.uniform(radius + 1, side - radius - 1)
        objects.append(ShapeObject(rng.choice(config.shapes), rng.choice(config.colours), size,
                                   POSITIONS[column], x, y))
    return Scene(tuple(objects), rng.getrandbits(32))


def render_scene(scene: Scene, config: ShapesConfig) -> Image.Image:
    """An RGB image: flat shapes (no anti-aliasing) on a light grey, optionally noisy, background."""
    side = config.image_size
    if config.background_noise:
        noise = np.frombuffer(random.Random(scene.noise_seed).randbytes(side * side), np.uint8)
        offset = noise.astype(np.int16).reshape(side, side, 1) % (2 * config.background_noise + 1)
        pixels = np.asarray(BACKGROUND, np.int16) + offset - config.background_noise
        image = Image.fromarray(pixels.astype(np.uint8))
    else:
        image = Image.new("RGB", (side, side), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw(draw, obj, RADIUS[obj.size] * side)
    return image


def _draw(draw: ImageDraw.ImageDraw, obj: ShapeObject, r: float) -> None:
    """Every shape stays inside the box of half-side ``r`` around its centre (the column layout relies on it)."""
    x, y, fill = obj.x, obj.y, PALETTE[obj.colour]
    if obj.shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif obj.shape == "square":
        h = 0.8 * r
        draw.rectangle([x - h, y - h, x + h, y + h], fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(x, y - r), (x + r, y + 0.8 * r), (x - r, y + 0.8 * r)], fill=fill)
    else:  # five-pointed star
        points = []
        for i in range(10):
            rr, angle = (r if i % 2 == 0 else 0.45 * r), -math.pi / 2 + i * math.pi / 5
            points.append((x + rr * math.cos(angle), y + rr * math.sin(angle)))
        draw.polygon(points, fill=fill)


# ---------------------------------------------------------------------------------------------------------- text


def noun_phrase(count: int, obj: ShapeObject, mention_size: bool) -> str:
    """'a small red circle', 'an orange star', 'two large blue squares'."""
    words = [obj.size] if mention_size else []
    words += [obj.colour, obj.shape + ("s" if count > 1 else "")]
    return " ".join([_NUMBER[count] if count > 1 else article(words[0]), *words])


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# Five templates per scene structure; the first is the canonical caption, always the first of an image's captions.
_ONE_OBJECT = ("{a}", "there is {a}", "a picture of {a}", "{a} {place}", "an image with {a}")
_ONE_GROUP = ("{a}", "there are {a}", "a picture of {a}", "{a} side by side", "an image with {a}")
_TWO_GROUPS = ("{a} left of {b}", "{b} to the right of {a}", "there {be} {a} and {b}",
               "{a} on the left and {b} on the right", "{a} to the left of {b}")
_THREE_GROUPS = ("{a}, {b} and {c} from left to right", "{b} between {a} and {c}",
                 "{a} on the left, {b} in the middle and {c} on the right", "{c}, {b} and {a} from right to left",
                 "there {be} {a}, {b} and {c}")


def caption_scene(scene: Scene, config: ShapesConfig, rng: random.Random) -> list[str]:
    """``captions_per_image`` distinct paraphrases: the canonical one, then others in random order."""
    templates = _templates(scene)
    chosen = [templates[0], *rng.sample(templates[1:], config.captions_per_image - 1)]
    return [_fill(t, scene, config.mention_size) for t in chosen]


def canonical_caption(scene: Scene, mention_size: bool) -> str:
    """The caption that names every object from left to right ('two small red circles left of a blue square')."""
    return _fill(_templates(scene)[0], scene, mention_size)


def describe_scene(scene: Scene, mention_size: bool) -> str:
    """A sentence that states every object and its place: the text context of questions without an image."""
    parts = [f"{noun_phrase(1, o, mention_size)} {PLACE[o.position]}" for o in scene.objects]
    return f"The picture shows {_join(parts)}."


def count_phrase(count: int, noun: str) -> str:
    """'one shape', 'three shapes' (words, not digits: hints must not spell out numeric answers)."""
    return f"{_NUMBER.get(count, str(count))} {noun}{'' if count == 1 else 's'}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _groups(scene: Scene) -> list[tuple[ShapeObject, int]]:
    """Runs of identical neighbours, left to right: (first object of the run, run length)."""
    runs = itertools.groupby(scene.objects, key=lambda o: (o.size, o.colour, o.shape))
    return [(objs[0], len(objs)) for objs in (list(run) for _, run in runs)]


def _templates(scene: Scene) -> tuple[str, ...]:
    groups = _groups(scene)
    if len(groups) == 1:
        return _ONE_OBJECT if groups[0][1] == 1 else _ONE_GROUP
    return _TWO_GROUPS if len(groups) == 2 else _THREE_GROUPS


def _fill(template: str, scene: Scene, mention_size: bool) -> str:
    groups = _groups(scene)
    phrases = [noun_phrase(count, obj, mention_size) for obj, count in groups]
    return template.format(**dict(zip("abc", phrases)), place=PLACE[groups[0][0].position],
                           be="is" if groups[0][1] == 1 else "are")
