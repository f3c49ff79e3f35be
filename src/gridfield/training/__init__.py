"""The training core shared by every task: one loop (:func:`train`), its options (:class:`TrainConfig`),
schedules driven by one definition of progress, hooks, resume and data-parallel runs under torchrun."""

from gridfield.training.config import (
    Nested,
    TrainConfig,
    check_options,
    check_train_config,
    config_dict,
    finite,
    resume_key,
    train_defaults,
)
from gridfield.training.hooks import Hook, call_hooks
from gridfield.training.loop import DivergedError, TrainResult, TrainTask, train
from gridfield.training.resume import state_path_for
from gridfield.training.runtime import make_optimizer, resolve_device, seed_everything
from gridfield.training.schedule import cosine, exponential, multistep, progress

__all__ = ["DivergedError", "Hook", "Nested", "TrainConfig", "TrainResult", "TrainTask", "call_hooks",
           "check_options", "check_train_config", "config_dict", "cosine", "exponential", "finite",
           "make_optimizer", "multistep", "progress", "resume_key", "resolve_device", "seed_everything",
           "state_path_for", "train", "train_defaults"]
