"""ScienceQA-style multiple-choice questions about shape scenes, and general-knowledge ones without any context.

Scene questions never contain their answer: it has to be read from the image (or, for text-only questions, from
a hint that describes the scene). Subjects, topics and grades are spread so that every column of the official
breakdown (NAT/SOC/LAN, TXT/IMG/NO, G1-6/G7-12) is populated.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from data.shapes_scene import PLACE, ShapesConfig, Scene, ShapeObject, article, canonical_caption

GRADES = tuple(f"grade{g}" for g in range(1, 13))
MAX_CHOICES = 5

# kind -> (subject, topic, category, skill, lecture)
_KINDS: dict[str, tuple[str, str, str, str, str]] = {
    "colour": ("natural science", "colours", "Identify colours", "Name the colour of a shape",
               "Every shape in the picture has one colour. Look at the shape to find it."),
    "size": ("natural science", "sizes", "Compare sizes", "Tell small shapes from large ones",
             "Shapes come in two sizes. A large shape covers more of the picture than a small one."),
    "count": ("natural science", "counting", "Count objects", "Count the shapes of one kind",
              "To count shapes, look at each shape once and add them up."),
    "position": ("social science", "spatial-relations", "Locate objects", "Say where a shape is",
                 "A picture has a left side, a middle and a right side."),
    "relation": ("social science", "spatial-relations", "Relative positions", "Find the neighbour of a shape",
                 "One thing is directly to the left of another when nothing lies between them on that side."),
    "describe": ("language science", "reading", "Match sentences to pictures",
                 "Choose the sentence that describes a picture",
                 "A sentence describes a picture when everything it says is true of the picture."),
    "geometry": ("natural science", "geometry", "Properties of shapes", "Know the sides and corners of shapes",
                 "Shapes are told apart by their sides and corners."),
    "colour mixing": ("natural science", "colours", "Mix colours", "Know which colours paints make when mixed",
                      "Mixing two paints makes a new colour."),
    "vocabulary": ("language science", "vocabulary", "Word meanings", "Tell what a word names",
                   "Some words name colours, some name shapes and some name actions."),
    "directions": ("social science", "geography", "Directions", "Know opposite directions",
                   "Left and right are opposite directions, and so are up and down."),
}

# General-knowledge questions (no image, no hint): the NO column of the breakdown.
_FACTS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("geometry", "How many sides does a triangle have?", "3", ("4", "5", "6", "2")),
    ("geometry", "How many sides does a square have?", "4", ("3", "5", "6", "2")),
    ("geometry", "Which shape has no corners?", "circle", ("square", "triangle", "star")),
    ("geometry", "Which shape has three sides?", "triangle", ("square", "circle", "star")),
    ("colour mixing", "Which colour do you get when you mix red and yellow paint?", "orange",
     ("green", "purple", "blue")),
    ("colour mixing", "Which colour do you get when you mix blue and yellow paint?", "green",
     ("orange", "purple", "red")),
    ("colour mixing", "Which colour do you get when you mix red and blue paint?", "purple",
     ("green", "orange", "yellow")),
    ("vocabulary", "Which word names a colour?", "yellow", ("table", "jump", "slowly", "circle")),
    ("vocabulary", "Which word names a shape?", "triangle", ("green", "run", "happy", "quickly")),
    ("vocabulary", "What is the plural of 'circle'?", "circles", ("circle", "circlees", "circlies")),
    ("directions", "Which direction is the opposite of left?", "right", ("up", "down", "left")),
    ("directions", "Which direction is the opposite of up?", "down", ("left", "right", "up")),
)


@dataclass(frozen=True)
class Question:
    """A question before its choices are drawn: the answer and every wrong option it may be paired with."""

    kind: str
    text: str
    answer: str
    distractors: tuple[str, ...]
    solution: str


class AnswerSlots:
    """Answer positions dealt from a shuffled deck per number of choices, so that the letters are balanced exactly
    (not only in expectation) and a model cannot win by always answering A."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._decks: dict[int, list[int]] = {}

    def next(self, num_choices: int) -> int:
        deck = self._decks.setdefault(num_choices, [])
        if not deck:
            deck.extend(range(num_choices))
            self._rng.shuffle(deck)
        return deck.pop()


def scene_question(scene: Scene, config: ShapesConfig, rng: random.Random) -> Question:
    """A question of a kind chosen uniformly among those the scene supports (counting always applies)."""
    builders: tuple[Callable[[Scene, ShapesConfig, random.Random], Question | None], ...] = (
        _colour, _size, _count, _position, _relation, _describe)
    options = [q for build in builders if (q := build(scene, config, rng)) is not None]
    return rng.choice(options)


def knowledge_question(rng: random.Random) -> Question:
    kind, text, answer, distractors = rng.choice(_FACTS)
    return Question(kind, text, answer, distractors, f"The answer is {answer}.")


def to_problem(question: Question, rng: random.Random, slots: AnswerSlots, *, hint: str, image: str | None,
               split: str) -> dict:
    """A ``problems.json`` record: 2..5 choices with the answer at a dealt position, and a random grade."""
    num_choices = rng.randint(2, min(MAX_CHOICES, len(question.distractors) + 1))
    choices = rng.sample(question.distractors, num_choices - 1)
    answer = slots.next(num_choices)
    choices.insert(answer, question.answer)
    subject, topic, category, skill, lecture = _KINDS[question.kind]
    return {"question": question.text, "choices": choices, "answer": answer, "hint": hint, "image": image,
            "task": "closed choice", "grade": rng.choice(GRADES), "subject": subject, "topic": topic,
            "category": category, "skill": skill, "lecture": lecture, "solution": question.solution,
            "split": split}


# ------------------------------------------------------------------------------------------------ scene questions


def _referent(scene: Scene, obj: ShapeObject, config: ShapesConfig, exclude: str = "") -> str | None:
    """The shortest description ('circle', 'red circle', 'small red circle') that picks out ``obj`` alone,
    without the attribute asked about; None when there is none."""
    for attrs in (("shape",), ("colour", "shape"), ("size", "shape"), ("size", "colour", "shape")):
        if exclude in attrs or ("size" in attrs and not config.mention_size):
            continue
        same = [o for o in scene.objects if all(getattr(o, a) == getattr(obj, a) for a in attrs)]
        if len(same) == 1:
            return " ".join(getattr(obj, a) for a in attrs)
    return None


def _pick_referent(scene: Scene, config: ShapesConfig, rng: random.Random,
                   exclude: str = "") -> tuple[ShapeObject, str] | None:
    found = [(o, ref) for o in scene.objects if (ref := _referent(scene, o, config, exclude)) is not None]
    return rng.choice(found) if found else None


def _colour(scene: Scene, config: ShapesConfig, rng: random.Random) -> Question | None:
    found = _pick_referent(scene, config, rng, exclude="colour")
    if found is None or len(config.colours) < 2:
        return None
    obj, ref = found
    others = tuple(c for c in config.colours if c != obj.colour)
    return Question("colour", f"What colour is the {ref}?", obj.colour, others, f"The {ref} is {obj.colour}.")


def _size(scene: Scene, config: ShapesConfig, rng: random.Random) -> Question | None:
    found = _pick_referent(scene, config, rng, exclude="size")
    if found is None or not config.mention_size:
        return None
    obj, ref = found
    others = tuple(s for s in config.sizes if s != obj.size)
    return Question("size", f"What size is the {ref}?", obj.size, others, f"The {ref} is {obj.size}.")


def _count(scene: Scene, config: ShapesConfig, rng: random.Random) -> Question:
    """The answer is drawn uniformly from the counts the scene offers, so that "0" or "1" does not dominate, and
    the wrong options are the other counts a scene of this config can have (a one-object scene: "0" or "1"), so
    that no option is wrong on its face."""
    counts = {shape: sum(o.shape == shape for o in scene.objects) for shape in config.shapes}
    n = rng.choice(sorted(set(counts.values())))
    shape = rng.choice([s for s, k in counts.items() if k == n])
    most = 1 if config.difficulty == "simple" else config.max_objects
    others = tuple(str(k) for k in range(most + 1) if k != n)
    noun = shape if n == 1 else shape + "s"
    return Question("count", f"How many {shape}s are in the picture?", str(n), others,
                    f"There {'is' if n == 1 else 'are'} {n} {noun} in the picture.")


def _position(scene: Scene, config: ShapesConfig, rng: random.Random) -> Question | None:
    found = _pick_referent(scene, config, rng)
    if found is None or config.difficulty == "simple":  # one object, always in the middle: nothing to learn
        return None
    obj, ref = found
    others = tuple(p for k, p in PLACE.items() if k != obj.position)
    return Question("position", f"Where is the {ref} in the picture?", PLACE[obj.position], others,
                    f"The {ref} is {PLACE[obj.position]} of the picture.")


def _relation(scene: Scene, config: ShapesConfig, rng: random.Random) -> Question | None:
    pairs = [(scene.objects[i], scene.objects[i + side], direction)
             for i in range(len(scene.objects))
             for side, direction in ((-1, "left"), (1, "right"))
             if 0 <= i + side < len(scene.objects)]
    found = [(obj, ref, neighbour, direction) for obj, neighbour, direction in pairs
             if (ref := _referent(scene, obj, config)) is not None]
    if not found or len(config.shapes) < 2:
        return None
    obj, ref, neighbour, direction = rng.choice(found)
    others = tuple(s for s in config.shapes if s != neighbour.shape)
    return Question("relation", f"Which shape is directly to the {direction} of the {ref}?", neighbour.shape,
                    others, f"The shape directly to the {direction} of the {ref} is "
                    f"{article(neighbour.shape)} {neighbour.shape}.")


def _describe(scene: Scene, config: ShapesConfig, rng: random.Random) -> Question | None:
    """Wrong sentences recolour and/or reshape one object, with colours and shapes from a grid of up to 3 x 3
    around the true ones. Every option is then a cell of the same grid and none is the "centre" that the others
    vary around (as the answer is when each wrong sentence changes one attribute: the option sharing the most
    words with the others), so only the picture tells them apart."""
    index = rng.randrange(len(scene.objects))
    obj = scene.objects[index]
    colours = [obj.colour, *rng.sample([c for c in config.colours if c != obj.colour], min(2, len(config.colours) - 1))]
    shapes = [obj.shape, *rng.sample([s for s in config.shapes if s != obj.shape], min(2, len(config.shapes) - 1))]
    answer = canonical_caption(scene, config.mention_size)
    wrong: dict[str, None] = {}
    for colour in colours:
        for shape in shapes:
            variant = ShapeObject(shape, colour, obj.size, obj.position, obj.x, obj.y)
            changed = Scene(scene.objects[:index] + (variant,) + scene.objects[index + 1:], scene.noise_seed)
            wrong[canonical_caption(changed, config.mention_size)] = None
    wrong.pop(answer, None)
    if not wrong:
        return None
    return Question("describe", "Which sentence describes the picture?", answer, tuple(wrong),
                    f"The picture shows {answer}.")
