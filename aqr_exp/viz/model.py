"""Build a config's model and val split, run one sample, and capture the AQR internals.

The internals are read with forward hooks on the unchanged plugin: a pre-hook on the
head (its SceneContext) and a hook on the AQR weight generator (the query cells, the
memory layout and the per-query weights it returns).
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from mmdet3d.registry import DATASETS, MODELS
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope
from mmengine.runner import load_state_dict
from torch import Tensor, nn

from aqr_exp.checkpoints import read_checkpoint
from aqr_exp.configs import read_config
from aqr_exp.errors import AqrError
from aqr_exp.files import check_input_file
from aqr_exp.viz import CONFIG_EXPECTED
from cmt_aqr.aqr.cells import MemoryLayout, QueryCells
from cmt_aqr.aqr.module import AdaptiveQueryRouting
from cmt_aqr.aqr.weights import Routing
from cmt_aqr.head import LayerOutputs, SceneContext

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    """A config's model (eval mode, CPU) and its val split."""

    config: Path
    model: nn.Module
    dataset: object
    class_names: list[str]

    @property
    def aqr(self) -> AdaptiveQueryRouting:
        return self.model.pts_bbox_head.aqr

    @property
    def pc_range(self) -> np.ndarray:
        return self.model.pts_bbox_head.pc_range.cpu().numpy()


@dataclass
class SampleRun:
    """One val sample through the model: what the pictures and statistics need."""

    index: int
    data: dict  # the pipeline's output (inputs + data sample) before collation
    ctx: SceneContext
    cells: QueryCells
    layout: MemoryLayout
    routing: Routing  # per query [1, Q]: weights, and window extents when adaptive
    outputs: LayerOutputs  # [L, 1, Q, ...]

    @property
    def lidar_w(self) -> Tensor:
        return self.routing.lidar_w

    @property
    def cam_w(self) -> Tensor:
        return self.routing.cam_w

    @property
    def gt(self) -> tuple[object, np.ndarray]:
        """Ground-truth boxes (LiDARInstance3DBoxes) and labels of the sample, without
        the ignored ones (label -1)."""
        ann = self.data["data_samples"].eval_ann_info
        labels = np.asarray(ann["gt_labels_3d"])
        keep = labels >= 0
        return ann["gt_bboxes_3d"][torch.from_numpy(keep)], labels[keep]


def load(config: Path, checkpoint: Path | None) -> Loaded:
    """Check the inputs first (nothing is built or written on bad input), then build."""
    check_input_file(config, "config", CONFIG_EXPECTED)
    weights = None if checkpoint is None else _state_dict(checkpoint)
    cfg = read_config(config)
    if cfg.model.get("pts_bbox_head", {}).get("aqr") is None:
        raise AqrError(
            f"{config} has no AQR (model.pts_bbox_head.aqr is not set: the baseline), so "
            "there are no modality weights or attention bias to show; pass the config "
            "of an old- or new-AQR variant"
        )
    init_default_scope(cfg.get("default_scope", "mmdet3d"))
    model = MODELS.build(cfg.model)
    model.init_weights()
    if weights is None:
        log.info("no --checkpoint: using the config's freshly initialized (untrained) weights")
    else:
        load_state_dict(model, weights, strict=False)
        log.info("loaded %s", checkpoint)
    model.eval()
    dataset = DATASETS.build(cfg.val_dataloader.dataset)
    return Loaded(config, model, dataset, list(cfg.metainfo.classes))


def _state_dict(path: Path) -> OrderedDict:
    """The weights of a checkpoint, read safely (`read_checkpoint`), as mmengine's
    load_checkpoint takes them: its state_dict, DDP's 'module.' prefix dropped."""
    checkpoint = read_checkpoint(path)
    state_dict = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state_dict, dict):
        raise AqrError(
            f"checkpoint {path}: not a loadable checkpoint: its state_dict is a "
            f"{type(state_dict).__name__}, not a dict of weights"
        )
    metadata = getattr(state_dict, "_metadata", OrderedDict())
    weights = OrderedDict(
        (re.sub(r"^module\.", "", key), value) for key, value in state_dict.items()
    )
    weights._metadata = metadata  # type: ignore[attr-defined]
    return weights


def check_sample(loaded: Loaded, index: int) -> None:
    size = len(loaded.dataset)
    if not 0 <= index < size:
        raise AqrError(
            f"--sample {index} is out of range: the val split of {loaded.config.name} "
            f"has {size} samples (0..{size - 1})"
        )


@torch.no_grad()
def run_sample(loaded: Loaded, index: int) -> SampleRun:
    """Forward one val sample (batch of one) and keep the AQR internals."""
    head = loaded.model.pts_bbox_head
    seen: dict[str, object] = {}

    def keep_context(_module: nn.Module, args: tuple) -> None:
        seen["ctx"] = args[2]

    def keep_weights(_module: nn.Module, args: tuple, output: Routing) -> None:
        seen["cells"], seen["layout"] = args[3], args[4]
        seen["routing"] = output

    data = loaded.dataset[index]
    hooks = [
        head.register_forward_pre_hook(keep_context),
        head.aqr.generator.register_forward_hook(keep_weights),
    ]
    try:
        batch = loaded.model.data_preprocessor(pseudo_collate([data]), False)
        outputs = loaded.model(**batch, mode="tensor")
    finally:
        for hook in hooks:
            hook.remove()
    return SampleRun(
        index,
        data,
        seen["ctx"],
        seen["cells"],
        seen["layout"],
        seen["routing"],
        outputs,
    )
