"""Reading image files the one way every part of the pipeline reads them (datasets, the feature cache)."""
from __future__ import annotations

from pathlib import Path

from PIL import Image


class ImageReadError(ValueError):
    """An image file that is missing or that PIL cannot decode."""


def open_rgb(path: str | Path) -> Image.Image:
    """Open an image fully and convert it to RGB (COCO has grayscale and CMYK files), as every reader of images
    here does before the encoder's preprocessing."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise ImageReadError("image file not found") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ImageReadError(f"cannot read image: {error}") from error
