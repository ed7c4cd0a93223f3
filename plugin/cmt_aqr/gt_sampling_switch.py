"""CMT's "15e + 5e": GT-sampling for the first epochs, the last ones on real scenes only."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mmdet3d.registry import HOOKS
from mmengine.hooks import Hook

from cmt_aqr.object_sample import CmtUnifiedObjectSample


def _datasets(dataset: Any) -> Iterator[Any]:
    """The datasets that own a pipeline, through wrappers (CBGS, repeat, concat)."""
    if hasattr(dataset, "pipeline"):
        yield dataset
    for inner in getattr(dataset, "datasets", None) or [getattr(dataset, "dataset", None)]:
        if inner is not None:
            yield from _datasets(inner)


@HOOKS.register_module()
class CmtObjectSampleSwitchHook(Hook):
    """Removes every `CmtUnifiedObjectSample` from the training pipeline when epoch
    `switch_epoch` + 1 starts (CMT: GT-sampling for epochs 1-15 of 20, switch_epoch=15)."""

    def __init__(self, switch_epoch: int) -> None:
        self.switch_epoch = switch_epoch
        self._switched = False

    def before_train_epoch(self, runner: Any) -> None:
        if self._switched or runner.epoch < self.switch_epoch:
            return
        loader = runner.train_dataloader
        removed = 0
        for dataset in _datasets(loader.dataset):
            transforms = dataset.pipeline.transforms
            kept = [t for t in transforms if not isinstance(t, CmtUnifiedObjectSample)]
            removed += len(transforms) - len(kept)
            transforms[:] = kept
        if not removed:
            raise ValueError(
                "CmtObjectSampleSwitchHook: the training pipeline has no "
                "CmtUnifiedObjectSample to switch off"
            )
        if getattr(loader, "persistent_workers", False):
            loader._iterator = None  # the workers hold the old pipeline: start new ones
        self._switched = True
        runner.logger.info(
            f"GT-sampling off from epoch {runner.epoch + 1} on (CmtObjectSampleSwitchHook)"
        )
