"""What both task entry points share: the model (online encoder or feature cache) and its visual inputs."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from .factory import ModelConfig, create_model
from .multimodal import MultimodalExcitor


def build_model(
    config: ModelConfig, feature_cache: str | None = None, device: str | torch.device = "cpu"
) -> tuple[MultimodalExcitor, Callable | None, Mapping[str, torch.Tensor] | None]:
    """(model, image_transform, visual_features): with a feature cache no encoder is built and the cache's
    encoder identity becomes the model's (so adapters record what really made the features)."""
    if feature_cache is None:
        model = create_model(config, device=device)
        return model, model.vision.preprocess, None
    from .feature_cache import FeatureCache

    cache = FeatureCache(Path(feature_cache))
    model = create_model(config, vision_identity=cache.identity, device=device)
    return model, None, cache
