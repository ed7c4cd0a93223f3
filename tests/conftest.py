"""Shared fixtures."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from aqr_exp.data.prepare import prepare_nuscenes
from aqr_exp.data.synth import SynthSpec, generate

# Small, but every scene still has all ten classes (the generator guarantees it), so the one
# val scene exercises every class of the nuScenes metric.
SMALL_SYNTH = SynthSpec(train_scenes=2, val_scenes=1, samples_per_scene=6, seed=0)


@pytest.fixture(autouse=True)
def _seeded_random_state() -> None:
    """Every test starts from the same global random state, so what a test draws without a
    generator of its own is the same on every run and every machine's CI."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic nuScenes-format data root, generated once per test session.

    Read-only for the tests: copy it before changing anything in it."""
    root = tmp_path_factory.mktemp("synth") / "synth-nus"
    generate(SMALL_SYNTH, root)
    return root


@pytest.fixture(scope="session")
def synth_root_with_gt_database(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`synth_root` plus the GT-sampling database `aqr-exp data prepare` writes (the data
    linked, the info files copied). Read-only for the tests."""
    root = tmp_path_factory.mktemp("synth-db") / "synth-nus"
    root.mkdir()
    for item in synth_root.iterdir():
        if item.is_dir():
            (root / item.name).symlink_to(item, target_is_directory=True)
        else:
            (root / item.name).write_bytes(item.read_bytes())
    prepare_nuscenes(root)
    return root
