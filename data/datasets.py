"""The torch Dataset every task's datasets share (`VisualDataset`: the item dicts of docs/interfaces.md with their
image or visual tokens), and the views every task gets (`ImageBlind`, `ParaphrasedDataset`).

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

import abc
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from PIL import Image
from torch.utils.data import Dataset

from data.errors import ImageError
from data.paraphrases import InstructionParaphrases
from mm_excitor.images import ImageReadError, open_rgb

log = logging.getLogger(__name__)

OnBadImage = Literal["error", "skip"]
ImageTransform = Callable[[Image.Image], torch.Tensor]
ImageRef = tuple[str, Path | None, str | None]


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


class VisualDataset(Dataset, abc.ABC):
    """One item per record: the task's fields (`item(record)`: prompt, target or messages, has_image, meta) with the
    record's image through `image_transform`, or its visual tokens looked up in `visual_features` by image key
    (exactly one of the two), under the bad-image policy above. A task's dataset is a subclass that says what an
    item is (`item`) and, for records that are not COCO-style, where the image is (`image`)."""

    set_name: ClassVar[str] = "dataset"
    """How the skipped-images warning names the set."""

    def __init__(self, records: Sequence[Any], *, image_transform: ImageTransform | None = None,
                 visual_features: Mapping[str, torch.Tensor] | None = None, on_bad_image: OnBadImage = "error") -> None:
        if (image_transform is None) == (visual_features is None):
            raise ValueError("give exactly one of image_transform and visual_features")
        if on_bad_image not in ("error", "skip"):
            raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
        self.image_transform = image_transform
        self.visual_features = visual_features
        self.on_bad_image = on_bad_image
        self.skipped: list[SkippedItem] = []
        self._blank: dict[str, torch.Tensor] | None = None
        usable: dict[str | None, bool] = {}  # one check per image, however many records share it
        kept = []
        for record in records:
            name, path, key = self.image(record)
            if key not in usable:
                usable[key] = self._check(name, path, key)
            if usable[key]:
                kept.append(record)
        self.records = kept
        self._report_skipped()

    def image(self, record: Any) -> ImageRef:
        """(how errors name the record, its image file, its key in `visual_features`; key None for a text-only
        record). By default a COCO-style record's `image_id`, `image_path` and `image_key`."""
        return f"image id {record.image_id}", record.image_path, record.image_key

    @abc.abstractmethod
    def item(self, record: Any) -> dict[str, Any]:
        """The item of `record` without its visual input (docs/interfaces.md)."""

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict | None:
        record = self.records[index]
        visual = self._visual(*self.image(record))
        if visual is None:
            return None
        return {**self.item(record), **visual}

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

    def _report_skipped(self) -> None:
        if self.skipped:
            shown = "; ".join(f"{s.record}: {s.image}" for s in self.skipped[:5])
            more = f" (and {len(self.skipped) - 5} more)" if len(self.skipped) > 5 else ""
            log.warning("%s: skipped %d item(s) whose image is missing: %s%s", self.set_name, len(self.skipped), shown,
                        more)

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


class ItemView(Dataset, abc.ABC):
    """The items of `dataset`, each changed by `view` (an item skipped as unreadable stays None)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict | None:
        item = self.dataset[index]
        return None if item is None else self.view(item)

    @abc.abstractmethod
    def view(self, item: dict) -> dict:
        """The changed item."""


class ImageBlind(ItemView):
    """The same items with the image removed (``has_image`` False): the control that shows what the image adds.

    The model then sees its learnable prompts only, exactly as for a text-only question.
    """

    def view(self, item: dict) -> dict:
        return {**{k: v for k, v in item.items() if k not in ("image", "visual_tokens")}, "has_image": False}


class ParaphrasedDataset(ItemView):
    """The same items with the task's canonical instruction in each prompt replaced by its paraphrase for the item
    (`paraphrases.choose(meta[id_key], split)`): "train" paraphrases for training, the disjoint "eval" ones to
    evaluate under phrasings never trained on. A prompt without the canonical text is an error, not a no-op."""

    def __init__(self, dataset: Dataset, paraphrases: InstructionParaphrases, split: str, id_key: str,
                 seed: int = 0) -> None:
        super().__init__(dataset)
        self.paraphrases = paraphrases
        self.split = split
        self.id_key = id_key
        self.seed = seed
        first = dataset[0] if len(dataset) else None
        if first is not None:  # a set that does not fit the task fails here, not in a DataLoader worker mid-run
            self[0]

    def view(self, item: dict) -> dict:
        canonical = self.paraphrases.canonical
        if canonical not in item["prompt"]:
            raise ValueError(f"paraphrase set {self.paraphrases.name!r}: the prompt {item['prompt']!r} (meta "
                             f"{item.get('meta')}) does not contain its canonical instruction {canonical!r}")
        text = self.paraphrases.choose(item["meta"][self.id_key], self.split, self.seed)
        return {**item, "prompt": item["prompt"].replace(canonical, text, 1)}
