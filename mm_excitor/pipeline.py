"""The model of a run and where its visual inputs come from: an online encoder, or a feature cache."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from .factory import ModelConfig, create_model
from .vision_language import VisionLanguageModel


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

    Compares every field of the cache's encoder identity that the config fixes (``vision.config_identity``): the
    architecture, the checkpoint file's sha256 or the random init's seed, and the token grid. The rest (the weights
    hash of the built encoder) is what an adapter trained from the cache records and checks when it is loaded.
    """
    from .feature_cache import FeatureCacheMismatch
    from .vision import config_identity

    absent = "<absent>"
    differences = [f"{k}: cache={identity.get(k, absent)!r}, config={v!r}"
                   for k, v in config_identity(config.vision).items() if identity.get(k, absent) != v]
    if differences:
        named = f" (model.vision.pretrained={config.vision.pretrained})" if config.vision.pretrained else ""
        raise FeatureCacheMismatch(f"the feature cache was made by another encoder than model.vision names{named}:"
                                   + "".join(f"\n  {line}" for line in differences))
