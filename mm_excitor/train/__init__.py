"""Training engine for any adapter method: recipe config, optimiser and schedule, exact resume, DDP/FSDP, reporting."""
from .batches import Batch, ResumableSamplerProtocol
from .checkpoints import CheckpointWriteError
from .config import TrainConfig
from .distributed import DistInfo, cleanup_distributed, init_distributed
from .optim import build_optimizer, decays, lr_at, param_groups
from .resume import FREE_TRAIN_KEYS, ResumeMismatchError
from .signals import TrainingInterrupted
from .state import seed_everything
from .trainer import NonFiniteStepsError, Trainer

__all__ = [
    "FREE_TRAIN_KEYS",
    "NonFiniteStepsError",
    "Batch",
    "CheckpointWriteError",
    "DistInfo",
    "ResumableSamplerProtocol",
    "ResumeMismatchError",
    "TrainConfig",
    "Trainer",
    "TrainingInterrupted",
    "build_optimizer",
    "cleanup_distributed",
    "decays",
    "init_distributed",
    "lr_at",
    "param_groups",
    "seed_everything",
]
