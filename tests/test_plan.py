"""Plans and dry runs: the runs a command would start, their config diffs, and
one clear message (exit 2, nothing written) for each kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.toy.helpers import TOY_SPEC, cli, make_toy_data, nothing_written, toy_args

from aqr_exp import configs, paths
from aqr_exp.errors import AqrError
from aqr_exp.plan import Target, plan_sweep, plan_variants, resolve_sweep
from aqr_exp.spec import load_spec

AQR = "model.pts_bbox_head.aqr"


def _roots(tmp_path: Path) -> list[object]:
    return ["--results-root", tmp_path / "results", "--work-root", tmp_path / "work"]


def test_dry_run_of_the_main_job_lists_runs_and_diffs_and_writes_nothing(tmp_path: Path) -> None:
    data_existed = paths.default_data_root().exists()
    result = cli("sweep", "window_size", "--dry-run", *_roots(tmp_path))
    assert result.exit_code == 0, result.output
    out = result.stdout
    table = out.split("Config diff")[0]
    prefixes = ("pretrained-", "baseline-", "new_aqr-")
    run_lines = [line for line in table.splitlines() if line.startswith(prefixes)]
    assert [line.split()[0].rsplit("-", 1)[0] for line in run_lines] == [
        "pretrained-s0",
        "baseline-s0",
        "new_aqr-window_size=5-s0",
        "new_aqr-window_size=8-s0",
        "new_aqr-window_size=10-s0",
        "new_aqr-window_size=15-s0",
    ]
    # the pretrained CMT first; every compared run waits to fine-tune from it
    assert " start " in run_lines[0]
    assert all(" wait " in line for line in run_lines[1:])
    assert "6 of 6 runs would start." in out
    diff = out.split("Config diff")[1]
    for size in (5, 8, 10, 15):
        assert f"{AQR}.window_size: — → {size}" in diff
    assert f"{AQR}.type: — → 'new'" in diff
    assert "identical" in diff.split("new_aqr-")[0]  # the baseline against itself
    assert "Dry run: nothing was started or written." in out
    assert nothing_written(tmp_path)
    assert paths.default_data_root().exists() == data_existed
    if not data_existed:
        assert "(absent: generated first)" in out


def test_plan_of_the_whole_study_has_every_variant_and_sweep_value(tmp_path: Path) -> None:
    result = cli("plan", *_roots(tmp_path))
    assert result.exit_code == 0, result.output
    # pretrained, baseline, old_aqr, new_aqr, new_aqr_adaptive, 4 window sizes, 3 scales
    assert "12 of 12 runs would start." in result.stdout
    assert f"{AQR}.type: — → 'old'" in result.stdout
    assert f"{AQR}.window_mode: — → 'adaptive'" in result.stdout
    assert f"{AQR}.bias_scale: — → 0.5" in result.stdout
    assert nothing_written(tmp_path)


def test_run_ids_are_stable_and_content_derived(tmp_path: Path) -> None:
    spec = load_spec(TOY_SPEC)
    target = Target(tmp_path / "r", tmp_path / "w", data_root=make_toy_data(tmp_path / "d"))
    sweep = resolve_sweep(spec, "window_size", None, None)
    first = [run.run_id for run in plan_sweep(spec, sweep, target).runs]
    assert first == [run.run_id for run in plan_sweep(spec, sweep, target).runs]
    other_seed = Target(
        target.results_root, target.work_root, data_root=target.data_root, seeds=(1,)
    )
    assert set(first).isdisjoint(run.run_id for run in plan_sweep(spec, sweep, other_seed).runs)
    assert len(set(first)) == 3


def test_the_resolved_config_follows_the_data_root(tmp_path: Path) -> None:
    spec = load_spec(TOY_SPEC)
    data = make_toy_data(tmp_path / "d")
    plan = plan_sweep(spec, resolve_sweep(spec, "window_size", [2], None), Target(data_root=data))
    cfg = plan.runs[1].cfg
    root = f"{data}/"
    assert cfg.data_root == root
    assert cfg.train_dataloader.dataset.data_root == root
    assert cfg.val_dataloader.dataset.data_root == root
    assert cfg.val_evaluator.data_root == root
    assert cfg.val_evaluator.ann_file == root + "ann.json"
    assert cfg.randomness.seed == 0
    assert configs.get_key(cfg, f"{AQR}.window_size") == 2


def test_set_data_root_moves_every_derived_path_of_a_real_config(tmp_path: Path) -> None:
    cfg = configs.load_config(paths.PLUGIN_CONFIGS / load_spec().profile("demo").config.name)
    old = cfg.data_root
    configs.set_data_root(cfg, tmp_path)
    flat = repr(cfg.to_dict())
    assert old not in flat
    assert cfg.val_evaluator.ann_file == f"{tmp_path}/nuscenes_infos_val.pkl"
    assert cfg.train_dataloader.dataset.data_root == f"{tmp_path}/"


def test_config_diff_expands_a_dict_that_replaces_none() -> None:
    base = configs.Config(dict(model=dict(head=dict(aqr=None, dims=8)), lr=0.1))
    other = configs.Config(dict(model=dict(head=dict(aqr=dict(type="new"), dims=8)), lr=0.2))
    assert configs.config_diff(base, other) == [
        ("model.head.aqr.type", configs.MISSING, "new"),
        ("lr", 0.1, 0.2),
    ]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("5", 5),
        ("0.5", 0.5),
        ("true", True),
        ("null", None),
        ("gaussian", "gaussian"),
        ("[1,2]", [1, 2]),
    ],
)
def test_values_parse_like_yaml_scalars(text: str, value: object) -> None:
    assert configs.parse_value(text) == value


def test_values_split_outside_brackets() -> None:
    assert configs.split_values("5, 8,[1,2]") == ["5", "8", "[1,2]"]


# ------------------------------------------------------------ bad input: exit 2, nothing written


def _bad(tmp_path: Path, *args: object) -> str:
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert nothing_written(tmp_path)
    return result.stderr


def test_unknown_sweep_name_suggests_the_closest(tmp_path: Path) -> None:
    message = _bad(tmp_path, "sweep", "windw_size", *_roots(tmp_path))
    assert "unknown sweep 'windw_size'" in message and "did you mean 'window_size'?" in message


def test_unknown_config_key_suggests_the_closest(tmp_path: Path) -> None:
    args = ["sweep", f"{AQR}.windowsize", "--values", "3", "--variant", "new_aqr"]
    message = _bad(tmp_path, *args, *toy_args(tmp_path))
    assert f"unknown config key '{AQR}.windowsize'" in message
    assert f"did you mean '{AQR}.window_size'?" in message


def test_config_key_of_another_variant_names_it(tmp_path: Path) -> None:
    data = make_toy_data(tmp_path / "d")
    result = cli("sweep", f"{AQR}.window_size", "--values", "3", *toy_args(tmp_path, data)[:-4],
                 *_roots(tmp_path))  # fmt: skip
    assert result.exit_code == 2
    assert "add --variant new_aqr" in result.stderr
    assert nothing_written(tmp_path)


def test_a_value_of_the_wrong_type(tmp_path: Path) -> None:
    message = _bad(tmp_path, "sweep", "window_size", "--values", "5,abc", *_roots(tmp_path))
    assert f"{AQR}.window_size takes an integer (the config has 8); got 'abc', a string" in message


def test_a_float_for_an_integer_key(tmp_path: Path) -> None:
    message = _bad(tmp_path, "sweep", "window_size", "--values", "5.5", *_roots(tmp_path))
    assert "window_size takes an integer (the config has 8); got 5.5, a number" in message


def test_window_size_not_positive(tmp_path: Path) -> None:
    message = _bad(tmp_path, "sweep", "window_size", "--values", "8,0", *_roots(tmp_path))
    assert f"{AQR}.window_size must be a positive integer, got 0" in message


def test_window_size_larger_than_the_feature_map(tmp_path: Path) -> None:
    message = _bad(tmp_path, "sweep", "window_size", "--values", "65", *_roots(tmp_path))
    assert "window_size=65 is larger than the BEV feature map (64x64 cells)" in message


def test_adaptive_window_bounds_out_of_order(tmp_path: Path) -> None:
    args = ["sweep", f"{AQR}.window_max", "--values", "2", "--variant", "new_aqr_adaptive"]
    message = _bad(tmp_path, *args, *_roots(tmp_path))
    assert f"{AQR}.window_min=3.0 exceeds {AQR}.window_max=2" in message


def test_missing_data_root(tmp_path: Path) -> None:
    message = _bad(
        tmp_path, "sweep", "window_size", "--data-root", tmp_path / "nowhere", *_roots(tmp_path)
    )
    assert f"data root {tmp_path / 'nowhere'} does not exist" in message


def test_missing_data_root_of_a_real_data_profile(tmp_path: Path) -> None:
    message = _bad(tmp_path, "run", "baseline", "--profile", "full", *_roots(tmp_path))
    assert "does not exist" in message and "profile 'full'" in message


def test_a_demo_only_variant_is_not_part_of_a_full_scale_study(tmp_path: Path) -> None:
    """The demo's `pretrained` stands in for CMT's trained checkpoint: at full scale a
    study loads that checkpoint instead, and there is no config for it."""
    listed = cli("variants", "--profile", "full")
    assert listed.exit_code == 0, listed.output
    assert "baseline:" in listed.stdout and "pretrained:" not in listed.stdout
    assert "pretrained:" in cli("variants").stdout
    (tmp_path / "nus").mkdir()
    message = _bad(tmp_path, "run", "pretrained", "--profile", "full",
                   "--data-root", tmp_path / "nus", *_roots(tmp_path))  # fmt: skip
    assert "variant 'pretrained' of aqr_cmt.yaml exists only at the profiles demo" in message


def test_full_scale_runs_need_cmts_pretrained_backbone_unless_they_load_a_checkpoint(
    tmp_path: Path,
) -> None:
    nus = tmp_path / "nus"
    nus.mkdir()
    args = ["run", "baseline", "--dry-run", "--profile", "full", "--data-root", nus]
    message = _bad(tmp_path, *args, *_roots(tmp_path))
    weights = nus / "ckpts" / "nuim_r50.pth"
    assert f"missing: {weights} (model.img_backbone.init_cfg.checkpoint) (variant baseline)" in (
        message
    )
    weights.parent.mkdir()
    weights.write_bytes(b"")
    message = _bad(tmp_path, *args, *_roots(tmp_path))
    database = nus / "nuscenes_dbinfos_train.pkl"
    assert f"trains with GT-sampling, whose database {database}" in message
    assert f"build it with `aqr-exp data prepare nuscenes --root {nus}/`" in message
    database.write_bytes(b"")
    assert cli(*args, *_roots(tmp_path)).exit_code == 0
    weights.unlink()
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        paths.BUNDLED_SPEC.read_text().replace(
            "  new_aqr:\n",
            "  finetune:\n    overrides: {load_from: /ckpts/epoch_20.pth}\n  new_aqr:\n",
        )
    )
    target = Target(tmp_path / "results", tmp_path / "work", profile="full", data_root=nus)
    (run,) = plan_variants(load_spec(spec), ["finetune"], target).runs
    assert run.cfg.load_from == "/ckpts/epoch_20.pth"
    assert run.cfg.model.img_backbone.init_cfg is None


def test_unknown_launcher(tmp_path: Path) -> None:
    message = _bad(tmp_path, "sweep", "window_size", "--launcher", "lokal", *_roots(tmp_path))
    assert "unknown launcher 'lokal': did you mean 'local'?" in message


def test_unknown_variant(tmp_path: Path) -> None:
    message = _bad(tmp_path, "run", "new_aq", *_roots(tmp_path))
    assert "unknown variant 'new_aq'" in message and "did you mean 'new_aqr'?" in message


def test_unknown_profile(tmp_path: Path) -> None:
    message = _bad(tmp_path, "sweep", "window_size", "--profile", "dem", *_roots(tmp_path))
    assert "did you mean 'demo'?" in message


def test_apply_overrides_rejects_a_bool_for_a_number() -> None:
    cfg = configs.Config(dict(lr=0.1))
    with pytest.raises(AqrError, match="lr takes a number"):
        configs.apply_overrides(cfg, {"lr": True}, "test")


def _spec_with_variant(tmp_path: Path, aqr_override: str) -> Path:
    """The bundled spec plus one variant overriding the AQR block with a mapping."""
    spec = tmp_path / "spec.yaml"
    text = paths.BUNDLED_SPEC.read_text().replace(
        "  new_aqr:\n",
        "  typo:\n    config_prefix: cmt-aqr-new\n"
        f"    overrides:\n      model.pts_bbox_head.aqr: {aqr_override}\n  new_aqr:\n",
    )
    spec.write_text(text.replace("data_root: ../data/nuscenes", "data_root: /nus"))
    return spec


def test_a_typo_inside_a_mapping_override_fails_at_plan_time(tmp_path: Path) -> None:
    spec = _spec_with_variant(tmp_path, "{type: new, windw_size: 8}")
    message = _bad(tmp_path, "run", "typo", "--dry-run", "--spec", spec, *_roots(tmp_path))
    assert "model.pts_bbox_head.aqr: unknown key 'windw_size'; did you mean 'window_size'?" in (
        message
    )
    wrong_type = _spec_with_variant(tmp_path, "{type: new, window_size: big}")
    message = _bad(tmp_path, "run", "typo", "--spec", wrong_type, *_roots(tmp_path))
    assert "model.pts_bbox_head.aqr.window_size takes an integer" in message


def test_a_mapping_override_of_known_keys_replaces_the_block(tmp_path: Path) -> None:
    spec = _spec_with_variant(tmp_path, "{type: new, window_size: 3, bias_scale: 1}")
    result = cli("run", "typo", "--dry-run", "--spec", spec, *_roots(tmp_path))
    assert result.exit_code == 0, result.output
    assert "model.pts_bbox_head.aqr.window_size: — → 3" in result.stdout
    assert nothing_written(tmp_path)
