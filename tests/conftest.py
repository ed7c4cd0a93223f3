"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from aqr_exp.data.synth import SynthSpec, generate

# Small, but every scene still has all ten classes (the generator guarantees it), so the one
# val scene exercises every class of the nuScenes metric.
SMALL_SYNTH = SynthSpec(train_scenes=2, val_scenes=1, samples_per_scene=6, seed=0)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic nuScenes-format data root, generated once per test session.

    Read-only for the tests: copy it before changing anything in it."""
    root = tmp_path_factory.mktemp("synth") / "synth-nus"
    generate(SMALL_SYNTH, root)
    return root
