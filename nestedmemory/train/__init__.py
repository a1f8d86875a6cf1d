"""Training: the configuration (presets + YAML + flags), the loop (progress, metrics, loss curve, evaluation,
sample), checkpoints (atomic, resumable bit for bit), DDP / FSDP2 under ``torchrun``, and the model loading,
evaluation and sampling that ``nestedmemory eval`` / ``generate`` use."""

from .config import (
                     DEFAULT_PRESET,
                     DEFAULT_SIZE,
                     TRAIN_SIZES,
                     DataConfig,
                     ModelConfig,
                     OptimConfig,
                     SampleConfig,
                     TNTConfig,
                     TrainConfig,
                     model_config,
)
from .errors import CheckpointError, UserError
from .loop import train

__all__ = ["DEFAULT_PRESET", "DEFAULT_SIZE", "TRAIN_SIZES", "CheckpointError", "DataConfig", "ModelConfig",
           "OptimConfig", "SampleConfig", "TNTConfig", "TrainConfig", "UserError", "model_config", "train"]
