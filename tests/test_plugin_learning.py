"""The demo's CMT learns: trained from scratch through mmdet3d's tools/train.py, it
finds the objects of the frames it trained on, as scored by the real NuScenesMetric.

The devkit scores only the samples of its val split, so the model trains on the val
split's frames and is scored on the same frames: a test of learning (position
embeddings, matching, targets, losses, box decoding), not of generalization, which
docs/demo.md measures on held-out scenes. Measured (docs/demo.md): the demo's model
reaches mAP 0.14, NDS 0.27 here, with `loss_cls` at 0.34; an untrained one scores
mAP 0.0. With a position signal that localizes poorly (`pos_scale` 8, whose kernel
rings) it stays on the constant-prediction plateau (`loss_cls` 0.52, mAP 0.01); with a
broken matching (zero costs: queries paired with objects regardless of position) it
scores mAP 0.0005, NDS 0.03 (`loss_cls` 0.50).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.training import METRIC, train_py

from aqr_exp.paths import PLUGIN_CONFIGS

PRETRAIN = PLUGIN_CONFIGS / "cmt-pretrain_lc_pillar100_r18_128x64_1xb2-demo_synth-nus.py"
EPOCHS = 100  # 3 iterations each: the session's val scene has 6 frames, batch 2

# pos_scale 2: the demo's model at two sine periods over the map, where its attention is
# local at init and it leaves the constant-prediction plateau within this test's budget;
# the demo keeps 8, which scores the same on held-out scenes (docs/demo.md).
MEMORIZE = f"""\
_base_ = ['{PRETRAIN}']
model = dict(pts_bbox_head=dict(pos_scale=2.0))
max_epochs = {EPOCHS}
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=5e-5, begin=0,
         end=max_epochs, by_epoch=True, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=max_epochs)
train_dataloader = dict(num_workers=0, persistent_workers=False,
                        dataset=dict(ann_file='nuscenes_infos_val.pkl'))
val_dataloader = dict(num_workers=0, persistent_workers=False)
test_dataloader = val_dataloader
default_hooks = dict(logger=dict(type='LoggerHook', interval=30),
                     checkpoint=dict(interval=max_epochs))
randomness = dict(seed=0)
"""


@pytest.mark.slow
def test_demo_cmt_trained_from_scratch_detects_the_objects_it_trained_on(
    synth_root: Path, tmp_path: Path
) -> None:
    config = tmp_path / "memorize.py"
    config.write_text(MEMORIZE)
    lines = train_py(config, tmp_path / "work", synth_root, timeout=1500)
    train = [line for line in lines if "loss_cls" in line]
    (val,) = [line for line in lines if f"{METRIC}/mAP" in line]
    # Off the plateau where every query predicts the class prior (~0.55 after the
    # first epochs).
    plateau = min(line["loss_cls"] for line in train[:20])
    assert train[-1]["loss_cls"] < 0.8 * plateau, (plateau, train[-1]["loss_cls"])
    assert val[f"{METRIC}/mAP"] >= 0.07, val[f"{METRIC}/mAP"]
    assert val[f"{METRIC}/NDS"] >= 0.15, val[f"{METRIC}/NDS"]
