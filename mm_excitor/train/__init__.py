"""Training engine for Excitor models: recipe config, optimiser and schedule, exact resume, DDP/FSDP, reporting."""
from .batches import ResumableSamplerProtocol
from .config import RESUME_MUTABLE_KEYS, TrainConfig
from .distributed import DistInfo, cleanup_distributed, init_distributed
from .optim import build_optimizer, decays, lr_at, param_groups
from .recipe import ConfigError, dump_yaml, from_dict, load_config, parse_args, parse_overrides, to_dict, valid_keys
from .state import seed_everything
from .trainer import ResumeMismatchError, Trainer, TrainingInterrupted

__all__ = [
    "RESUME_MUTABLE_KEYS",
    "ConfigError",
    "DistInfo",
    "ResumableSamplerProtocol",
    "ResumeMismatchError",
    "TrainConfig",
    "Trainer",
    "TrainingInterrupted",
    "build_optimizer",
    "cleanup_distributed",
    "decays",
    "dump_yaml",
    "from_dict",
    "init_distributed",
    "load_config",
    "lr_at",
    "param_groups",
    "parse_args",
    "parse_overrides",
    "seed_everything",
    "to_dict",
    "valid_keys",
]
