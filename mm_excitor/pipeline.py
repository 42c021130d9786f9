"""The model of a run and where its visual inputs come from: an online encoder, or a feature cache."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from .factory import ModelConfig, create_model
from .multimodal import VisionLanguageModel


def build_model(
    config: ModelConfig, feature_cache: str | None = None, device: str | torch.device = "cpu"
) -> tuple[VisionLanguageModel, Callable | None, Mapping[str, torch.Tensor] | None]:
    """(model, image_transform, visual_features): with a feature cache no encoder is built and the cache's
    encoder identity becomes the model's (so adapters record what really made the features)."""
    if feature_cache is None:
        model = create_model(config, device=device)
        return model, model.vision.preprocess, None
    from .feature_cache import FeatureCache

    cache = FeatureCache(Path(feature_cache))
    check_cache_matches_config(cache.identity, config)
    model = create_model(config, vision_identity=cache.identity, device=device)
    return model, None, cache


def check_cache_matches_config(identity: dict, config: ModelConfig) -> None:
    """Refuse a cache made by another encoder than the config names, without building that encoder.

    (The cache's own weights hash is what the adapter records; this catches a config/cache mix-up early.)
    """
    wanted = {
        "model_name": config.vision.model_name,
        "pretrained": Path(config.vision.pretrained).name if config.vision.pretrained else None,
        "token_grid": config.vision.token_grid,
    }
    differences = [f"{k}: cache={identity.get(k)!r}, config={v!r}" for k, v in wanted.items() if identity.get(k) != v]
    if differences:
        raise ValueError("the feature cache was made by another encoder than model.vision names:\n  "
                         + "\n  ".join(differences))
