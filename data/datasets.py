"""torch Datasets that yield the item dicts of docs/interfaces.md for captioning and ScienceQA.

Images are opened in ``__getitem__`` (so DataLoader workers decode them), converted to RGB, and passed through
``image_transform``; or visual tokens are looked up in ``visual_features`` by image key. Bad images follow
``on_bad_image``:

- ``"error"`` (default): a missing image fails at construction (a fast existence check over all files), a corrupt
  one in ``__getitem__``; the ImageError names the image file and the record.
- ``"skip"``: missing images (and missing feature keys) are dropped at construction, listed in ``dataset.skipped``
  and logged with their count; a corrupt image found later makes ``__getitem__`` log it and return None, which the
  collator drops and counts in ``batch["stats"]["skipped"]``. Nothing is skipped silently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from torch.utils.data import Dataset

from data.coco import CaptionImage, CaptionSample
from data.errors import ImageError
from data.instruct import Conversation
from data.paraphrases import InstructionParaphrases
from data.prompts import SCIENCEQA_FORMATS, CaptionTemplate, caption_example
from data.scienceqa import ScienceQAProblem, build_example, problem_meta
from data.shapes_json import ShapesJsonExample, shapes_json_example
from mm_excitor.images import ImageReadError, open_rgb

log = logging.getLogger(__name__)

OnBadImage = Literal["error", "skip"]
ImageTransform = Callable[[Image.Image], torch.Tensor]


@dataclass(frozen=True)
class SkippedItem:
    """One item left out under ``on_bad_image="skip"``."""

    record: str
    image: str
    reason: str


def load_rgb(path: str | Path, record: str) -> Image.Image:
    """The image as RGB (mm_excitor.vision.open_rgb); errors name the file and the record that refers to it."""
    try:
        return open_rgb(path)
    except ImageReadError as error:
        raise ImageError(path, record, str(error)) from None


class _VisualDataset(Dataset):
    """Shared image/feature handling: exactly one of image_transform / visual_features, and the skip policy."""

    def __init__(self, image_transform: ImageTransform | None, visual_features: Mapping[str, torch.Tensor] | None,
                 on_bad_image: OnBadImage) -> None:
        if (image_transform is None) == (visual_features is None):
            raise ValueError("give exactly one of image_transform and visual_features")
        if on_bad_image not in ("error", "skip"):
            raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
        self.image_transform = image_transform
        self.visual_features = visual_features
        self.on_bad_image = on_bad_image
        self.skipped: list[SkippedItem] = []
        self._blank: dict[str, torch.Tensor] | None = None

    def _check(self, record: str, path: Path | None, key: str | None) -> bool:
        """Up-front check of one image reference; True if usable. Raises or records per the policy."""
        if key is None:
            return True
        if self.visual_features is not None:
            ok, what, reason = key in self.visual_features, key, "no entry in visual_features"
        else:
            ok, what, reason = path is not None and path.is_file(), str(path), "image file not found"
        if ok:
            return True
        if self.on_bad_image == "error":
            raise ImageError(what, record, reason + " (on_bad_image='skip' drops such items and reports them)")
        self.skipped.append(SkippedItem(record, what, reason))
        return False

    def _report_skipped(self, what: str) -> None:
        if self.skipped:
            shown = "; ".join(f"{s.record}: {s.image}" for s in self.skipped[:5])
            more = f" (and {len(self.skipped) - 5} more)" if len(self.skipped) > 5 else ""
            log.warning("%s: skipped %d item(s) whose image is missing: %s%s", what, len(self.skipped), shown, more)

    def _visual(self, record: str, path: Path | None, key: str | None) -> dict | None:
        """``{"image": ...}`` or ``{"visual_tokens": ...}``, nothing for a text-only item (the collator fills in
        `blank()`), None if the image is skipped."""
        if key is None:
            return {}
        if self.visual_features is not None:
            return {"visual_tokens": self.visual_features[key]}
        try:
            image = load_rgb(path, record)
        except ImageError as e:
            if self.on_bad_image == "error":
                raise
            log.warning("skipping %s (on_bad_image='skip')", e)
            return None
        return {"image": self.image_transform(image)}

    def blank(self) -> dict[str, torch.Tensor]:
        """The zero input of a row without an image: ``{"image": zeros}`` (the transform's output shape, learned
        once from a black image) or ``{"visual_tokens": zeros}`` (the cache's token shape)."""
        if self._blank is None:
            if self.visual_features is not None:
                first = next(iter(self.visual_features.values()), None)
                if first is None:
                    raise ValueError("visual_features is empty: no shape for the zero tokens of a text-only item")
                self._blank = {"visual_tokens": torch.zeros_like(first)}
            else:
                self._blank = {"image": torch.zeros_like(self.image_transform(Image.new("RGB", (224, 224))))}
        return self._blank


class CaptionTrainDataset(_VisualDataset):
    """Caption training: one item per caption, ``prompt``/``target`` from the caption template."""

    def __init__(self, samples: Sequence[CaptionSample], *, image_transform: ImageTransform | None = None,
                 visual_features: Mapping[str, torch.Tensor] | None = None, on_bad_image: OnBadImage = "error",
                 template: CaptionTemplate = CaptionTemplate()) -> None:
        super().__init__(image_transform, visual_features, on_bad_image)
        self.template = template
        ok: dict[str, bool] = {}
        kept = []
        for i, s in enumerate(samples):
            if s.image_key not in ok:
                ok[s.image_key] = self._check(f"caption sample {i} (image id {s.image_id})", s.image_path,
                                              s.image_key)
            if ok[s.image_key]:
                kept.append(s)
        self.samples = kept
        self._report_skipped("caption training set")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict | None:
        s = self.samples[index]
        visual = self._visual(f"caption sample {index} (image id {s.image_id})", s.image_path, s.image_key)
        if visual is None:
            return None
        prompt, target = caption_example(s.caption, self.template)
        return {"prompt": prompt, "target": target, **visual, "has_image": True,
                "meta": {"image_id": s.image_id, "image_key": s.image_key}}


class CaptionEvalDataset(_VisualDataset):
    """Caption evaluation: one item per image, with its references and COCO id in ``meta``."""

    def __init__(self, images: Sequence[CaptionImage], *, image_transform: ImageTransform | None = None,
                 visual_features: Mapping[str, torch.Tensor] | None = None, on_bad_image: OnBadImage = "error",
                 template: CaptionTemplate = CaptionTemplate()) -> None:
        super().__init__(image_transform, visual_features, on_bad_image)
        self.template = template
        self.images = [im for im in images if self._check(f"image id {im.image_id}", im.image_path, im.image_key)]
        self._report_skipped("caption evaluation set (its scores then cover fewer images)")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict | None:
        im = self.images[index]
        visual = self._visual(f"image id {im.image_id}", im.image_path, im.image_key)
        if visual is None:
            return None
        return {"prompt": self.template.prompt, **visual, "has_image": True,
                "meta": {"image_id": im.image_id, "image_key": im.image_key, "references": list(im.references)}}


class ScienceQADataset(_VisualDataset):
    """ScienceQA items in prompt format ``fmt``; text-only questions get ``has_image=False`` and no image.
    ``target`` is always present (the trainer uses it; the evaluator may ignore it)."""

    def __init__(self, problems: Sequence[ScienceQAProblem], *, fmt: str = "QCM-A",
                 image_transform: ImageTransform | None = None,
                 visual_features: Mapping[str, torch.Tensor] | None = None,
                 on_bad_image: OnBadImage = "error") -> None:
        super().__init__(image_transform, visual_features, on_bad_image)
        self.fmt = fmt
        if fmt not in SCIENCEQA_FORMATS:  # fail now, not in a worker
            raise ValueError(f"unknown ScienceQA prompt format {fmt!r}; choose one of {', '.join(SCIENCEQA_FORMATS)}")
        self.problems = [p for p in problems if self._check(f"pid {p.pid}", p.image_path, p.image_key)]
        self._report_skipped("ScienceQA set")

    def __len__(self) -> int:
        return len(self.problems)

    def __getitem__(self, index: int) -> dict | None:
        p = self.problems[index]
        visual = self._visual(f"pid {p.pid}", p.image_path, p.image_key)
        if visual is None:
            return None
        prompt, target = build_example(p, self.fmt)
        return {"prompt": prompt, "target": target, **visual, "has_image": p.has_image, "meta": problem_meta(p)}


class ShapesJsonDataset(_VisualDataset):
    """The format-following task: one item per image, the instruction prompt and the JSON answer as target
    (always present; the evaluator ignores it). `meta` holds the truth the scorer compares with."""

    def __init__(self, examples: Sequence[ShapesJsonExample], *, instruction: str,
                 image_transform: ImageTransform | None = None,
                 visual_features: Mapping[str, torch.Tensor] | None = None,
                 on_bad_image: OnBadImage = "error") -> None:
        super().__init__(image_transform, visual_features, on_bad_image)
        self.instruction = instruction
        self.examples = [e for e in examples if self._check(f"image id {e.image_id}", e.image_path, e.image_key)]
        self._report_skipped("shapes_json set")

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict | None:
        e = self.examples[index]
        visual = self._visual(f"image id {e.image_id}", e.image_path, e.image_key)
        if visual is None:
            return None
        prompt, target = shapes_json_example(self.instruction, e.colour, e.shape)
        return {"prompt": prompt, "target": target, **visual, "has_image": True,
                "meta": {"image_id": e.image_id, "image_key": e.image_key, "colour": e.colour, "shape": e.shape}}


class InstructDataset(_VisualDataset):
    """Conversations (data.instruct): one item per conversation, `messages` for data.chat, the image when it has
    one (`has_image` False for a text-only record). `prompt` is the last user turn, `meta["reference"]` its answer:
    what a generation record and its scorer show."""

    def __init__(self, conversations: Sequence[Conversation], *, image_transform: ImageTransform | None = None,
                 visual_features: Mapping[str, torch.Tensor] | None = None,
                 on_bad_image: OnBadImage = "error") -> None:
        super().__init__(image_transform, visual_features, on_bad_image)
        self.conversations = [c for c in conversations if self._check(c.source, c.image, c.image_key)]
        self._report_skipped("instruction set")

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, index: int) -> dict | None:
        c = self.conversations[index]
        visual = self._visual(c.source, c.image, c.image_key)
        if visual is None:
            return None
        messages = [dict(m) for m in c.messages]
        return {"messages": messages, "prompt": messages[-2]["content"], **visual, "has_image": c.image is not None,
                "meta": {"id": c.id, "image_key": c.image_key, "reference": messages[-1]["content"]}}


class ImageBlind(Dataset):
    """The same items with the image removed (``has_image`` False): the control that shows what the image adds.

    The model then sees its learnable prompts only, exactly as for a text-only question.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict | None:
        item = self.dataset[index]
        if item is None:
            return None
        return {**{k: v for k, v in item.items() if k not in ("image", "visual_tokens")}, "has_image": False}


class ParaphrasedDataset(Dataset):
    """The same items with the task's canonical instruction in each prompt replaced by its paraphrase for the item
    (`paraphrases.choose(meta[id_key], split)`): "train" paraphrases for training, the disjoint "eval" ones to
    evaluate under phrasings never trained on. A prompt without the canonical text is an error, not a no-op."""

    def __init__(self, dataset: Dataset, paraphrases: InstructionParaphrases, split: str, id_key: str,
                 seed: int = 0) -> None:
        self.dataset = dataset
        self.paraphrases = paraphrases
        self.split = split
        self.id_key = id_key
        self.seed = seed
        first = dataset[0] if len(dataset) else None
        if first is not None:  # a set that does not fit the task fails here, not in a DataLoader worker mid-run
            self[0]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict | None:
        item = self.dataset[index]
        if item is None:
            return None
        canonical = self.paraphrases.canonical
        if canonical not in item["prompt"]:
            raise ValueError(f"paraphrase set {self.paraphrases.name!r}: the prompt {item['prompt']!r} (meta "
                             f"{item.get('meta')}) does not contain its canonical instruction {canonical!r}")
        text = self.paraphrases.choose(item["meta"][self.id_key], self.split, self.seed)
        return {**item, "prompt": item["prompt"].replace(canonical, text, 1)}
