"""Warm start (`init_from` in a spec): the plan trains the parent first and starts its
children from the parent's final checkpoint; cycles and unknown parents are refused."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
import yaml
from fixtures.toy.helpers import TOY_SPEC, cli, make_toy_data, nothing_written, toy_importable
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

from aqr_exp import configs, execute, paths, registry
from aqr_exp.errors import AqrError
from aqr_exp.plan import Target, plan_sweep, plan_variants, resolve_sweep
from aqr_exp.spec import load_spec

DEMO = paths.PLUGIN_CONFIGS / "cmt_lc_pillar100_r18_128x64_1xb2-demo_synth-nus.py"


def _spec(tmp_path: Path, profile_init_from: str | None = None, **init_from: str) -> Path:
    """The toy spec with `init_from` set on the named variants (and on its profile)."""
    data = yaml.safe_load(TOY_SPEC.read_text())
    data["config_dir"] = str(TOY_SPEC.parent)
    data["profiles"]["toy"]["data_root"] = str(make_toy_data(tmp_path / "data"))
    if profile_init_from is not None:
        data["profiles"]["toy"]["init_from"] = profile_init_from
    for variant, parent in init_from.items():
        data["variants"].setdefault(variant, {"description": "a child"})["init_from"] = parent
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _target(tmp_path: Path) -> Target:
    return Target(results_root=tmp_path / "results", work_root=tmp_path / "work")


def test_a_child_plans_its_parent_first_and_loads_its_final_checkpoint(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, new_aqr="baseline"))
    plan = plan_variants(spec, ["new_aqr"], _target(tmp_path))
    parent, child = plan.runs
    assert (parent.variant, child.variant) == ("baseline", "new_aqr")
    assert child.parent is parent and parent.parent is None
    assert child.cfg.load_from == str(parent.work_dir / "epoch_3.pth")
    # the parent enters the child's id: another parent, another run
    cold = plan_variants(load_spec(_spec(tmp_path)), ["new_aqr"], _target(tmp_path))
    assert [run.variant for run in cold.runs] == ["new_aqr"]
    assert cold.runs[0].run_id != child.run_id and cold.runs[0].cfg.get("load_from") is None


def test_a_sweep_of_a_warm_started_variant_shares_one_parent_per_seed(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, new_aqr="baseline"))
    target = Target(results_root=tmp_path / "results", work_root=tmp_path / "work", seeds=(0, 1))
    plan = plan_sweep(spec, resolve_sweep(spec, "window_size", None, None), target)
    parents = [run for run in plan.runs if run.variant == "baseline"]
    children = [run for run in plan.runs if run.variant == "new_aqr"]
    assert len(parents) == 2 and len(children) == 4
    order = [run.run_id for run in plan.runs]
    for child in children:
        assert child.parent.seed == child.seed
        assert child.parent.run_id in {run.run_id for run in parents}
        assert order.index(child.parent.run_id) < order.index(child.run_id)


def test_children_wait_until_their_parent_is_done(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, new_aqr="baseline"))
    plan = plan_variants(spec, ["new_aqr"], _target(tmp_path))
    steps = execute.decide(plan)
    assert [step.action for step in steps] == ["start", "wait"]
    assert plan.runs[0].run_id in steps[1].note
    with pytest.raises(AqrError, match=r"final checkpoint .* is missing"):
        execute.prepare(plan, plan.runs[1], fresh=False)


def test_a_profile_init_from_warm_starts_every_other_variant(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, "slow"))
    plan = plan_sweep(spec, resolve_sweep(spec, "window_size", None, None), _target(tmp_path))
    start, *children = plan.runs
    assert start.variant == "slow" and start.parent is None
    assert [run.variant for run in children] == ["baseline", "new_aqr", "new_aqr"]
    assert {run.parent.run_id for run in children} == {start.run_id}
    assert {run.cfg.load_from for run in children} == {str(configs.final_checkpoint(start.cfg))}


def test_the_profile_start_point_and_its_own_parents_train_first(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, "slow", slow="nan"))
    plan = plan_variants(spec, ["baseline", "nan"], _target(tmp_path))
    by_variant = {run.variant: run for run in plan.runs}
    assert by_variant["nan"].parent is None
    assert by_variant["slow"].parent.run_id == by_variant["nan"].run_id
    assert by_variant["baseline"].parent.run_id == by_variant["slow"].run_id
    assert [run.variant for run in plan.runs] == ["nan", "slow", "baseline"]


def test_an_unknown_profile_start_point_is_refused(tmp_path: Path) -> None:
    path = _spec(tmp_path, "pretraned")
    with pytest.raises(AqrError, match=r"profiles\.toy\.init_from: unknown variant 'pretraned'"):
        load_spec(path)


@pytest.mark.parametrize(
    ("init_from", "message"),
    [
        ({"new_aqr": "baselin"}, "new_aqr.init_from: unknown variant 'baselin'"),
        ({"new_aqr": "new_aqr"}, "warm starts form a cycle: new_aqr → new_aqr"),
        ({"new_aqr": "slow", "slow": "new_aqr"}, "cycle: new_aqr → slow → new_aqr"),
    ],
)
def test_an_unknown_parent_or_a_cycle_is_refused(
    tmp_path: Path, init_from: dict[str, str], message: str
) -> None:
    path = _spec(tmp_path, **init_from)
    result = cli(
        "run", "new_aqr", "--spec", path,
        "--results-root", tmp_path / "results", "--work-root", tmp_path / "work",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert message in result.stderr and str(path) in result.stderr
    assert result.stderr.count("\n") == 1
    assert nothing_written(tmp_path)


def test_run_trains_the_parent_then_the_child_from_its_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toy_importable(monkeypatch)
    path = _spec(tmp_path, new_aqr="baseline")
    result = cli(
        "run", "new_aqr", "--spec", path,
        "--results-root", tmp_path / "results", "--work-root", tmp_path / "work",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    plan = plan_variants(load_spec(path), ["new_aqr"], _target(tmp_path))
    parent, child = plan.runs
    records = [registry.read(run.run_dir) for run in plan.runs]
    assert [r.status for r in records] == ["done", "done"]
    assert records[1].init_from == parent.run_id and records[0].init_from is None
    assert records[1].started >= records[0].finished
    log = (child.work_dir / "train.log").read_text()
    assert f"Load checkpoint from {parent.work_dir / 'epoch_3.pth'}" in log


def test_a_variant_starts_with_the_baseline_weights_except_its_aqr_modules(
    tmp_path: Path,
) -> None:
    """The real load path (mmengine's Runner with the plugin's demo configs)."""
    importlib.import_module("cmt_aqr")  # the configs' custom_imports
    init_default_scope("mmdet3d")
    parent_cfg = configs.load_config(DEMO)
    parent_cfg.work_dir = str(tmp_path / "parent")
    model = Runner.from_cfg(parent_cfg).model
    checkpoint = tmp_path / "parent.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {}}, checkpoint)

    child_cfg = Config.fromfile(str(DEMO.with_name("cmt-aqr-new_" + DEMO.name.split("_", 1)[1])))
    child_cfg.work_dir = str(tmp_path / "child")
    child_cfg.load_from = str(checkpoint)
    child_cfg.randomness = dict(seed=123)  # another init: only loading makes them equal
    runner = Runner.from_cfg(child_cfg)
    runner.load_or_resume()
    loaded = runner.model.state_dict()
    parent_state = model.state_dict()
    assert set(loaded) - set(parent_state) == {k for k in loaded if ".aqr." in k} != set()
    assert set(parent_state) <= set(loaded)
    for key, value in parent_state.items():
        assert torch.equal(loaded[key], value), key
