"""mmengine hooks the project's training entry adds to every run."""

from __future__ import annotations

import math

from mmengine.hooks import Hook

from aqr_exp.launch.base import NONFINITE_MARK


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss: continuing would only train on garbage."""


class NonFiniteLossHook(Hook):
    """Stop at the first NaN/inf loss, naming the iteration and the bad loss terms.

    It reads the values mmengine's RuntimeInfoHook (priority VERY_HIGH) has
    just put into the message hub as Python floats, so it adds no GPU sync of
    its own; running above CheckpointHook (VERY_LOW) keeps the broken weights
    out of any checkpoint.
    """

    priority = "ABOVE_NORMAL"

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not outputs:
            return
        hub = runner.message_hub
        values = {key: hub.get_scalar(f"train/{key}").current() for key in outputs if "loss" in key}
        bad = {key: value for key, value in values.items() if not math.isfinite(value)}
        if not bad:
            return
        terms = ", ".join(f"{key}={value}" for key, value in bad.items())
        raise NonFiniteLossError(
            f"{NONFINITE_MARK} at iteration {runner.iter + 1} (epoch {runner.epoch + 1}): {terms}. "
            "Training stopped; the checkpoints in the work dir are from before this iteration. "
            "Lower the learning rate, check the data, or clip gradients."
        )
