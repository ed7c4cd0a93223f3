"""Experiment specs: the default spec loads; bad files fail with file and key/line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.toy.helpers import TOY_DIR, TOY_SPEC, cli, nothing_written, toy_args
from typer.testing import Result

from aqr_exp import paths, safe_yaml
from aqr_exp.errors import AqrError
from aqr_exp.spec import load_spec


def test_default_spec_names_the_study_of_the_seed_report() -> None:
    spec = load_spec(paths.BUNDLED_SPEC)
    assert spec.study == "aqr_cmt"
    assert list(spec.variants) == [
        "pretrained",
        "baseline",
        "old_aqr",
        "new_aqr",
        "new_aqr_adaptive",
    ]
    assert spec.sweeps["window_size"].values == (5, 8, 10, 15)
    assert spec.sweeps["bias_scale"].values == (0.5, 1.0, 2.0)
    assert {s.variant for s in spec.sweeps.values()} == {"new_aqr"}
    demo = spec.profile(None)
    assert demo.name == "demo" and demo.data_root == paths.default_data_root()
    assert demo.synth is not None and demo.config.is_file()
    # the demo fine-tunes every variant from its pretrained CMT; full scale trains from scratch
    assert demo.init_from == "pretrained"
    assert spec.variant_config(spec.variant("pretrained"), demo).is_file()
    assert all(p.init_from is None for p in spec.profiles.values() if p.name != "demo")
    for name in ("old_aqr", "new_aqr", "new_aqr_adaptive"):
        for profile in spec.profiles.values():
            assert spec.variant_config(spec.variant(name), profile).is_file()


def test_relative_paths_are_relative_to_the_spec_file() -> None:
    spec = load_spec(TOY_SPEC)
    profile = spec.profile("toy")
    assert profile.config == TOY_SPEC.parent / "toy_config.py"
    assert profile.data_root == TOY_SPEC.parent / "data-missing"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "study: x\nprofiles:\n  demo: {config: a.py\nseeds: [0]\n")
    result = cli("sweep", "window_size", "--spec", path, "--results-root", tmp_path / "results",
                 "--work-root", tmp_path / "work")  # fmt: skip
    assert result.exit_code == 2
    assert f"{path}:4:" in result.stderr and "malformed YAML" in result.stderr
    assert result.stderr.count("\n") == 1
    assert nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "study: x\nprofile: demo\nprofils: {}\n",
            "profils: unknown key; did you mean 'profiles'?",
        ),
        ("study: x\nprofiles: {a: {config: a.py}}\n", "profiles.a.data_root: required"),
        (
            "study: x\nprofiles: {a: {config: a.py, data_root: d}}\nvariants: {baseline: {}}\n"
            "seeds: [0, zero]\n",
            "seeds: expected a non-empty list of integers",
        ),
        (
            "study: x\nprofiles: {a: {config: a.py, data_root: d}}\nvariants: {baseline: {}}\n"
            "sweeps: {w: {variant: new_aqr, key: a.b, values: [1]}}\n",
            "unknown variant 'new_aqr'",
        ),
        (
            "study: x\nprofiles: {a: {config: a.py, data_root: d}}\nvariants: {baseline: {}}\n"
            "launcher: {max_concurrent: 0}\n",
            "launcher.max_concurrent: must be >= 1",
        ),
        (
            "study: x\nprofiles: {a: {config: a.py, data_root: d}}\nvariants: {baseline: {}}\n"
            "seeds: [0, -1]\n",
            "seeds: seed -1 is out of range: seeds are integers from 0 to 4294967295",
        ),
        (
            "study: x\nprofiles: {a: {config: a.py, data_root: d}}\n"
            "variants: {baseline: {}, p: {profiles: [demo]}}\n",
            "variants.p.profiles: unknown profile 'demo'",
        ),
        (
            "study: x\nprofiles: {a: {config: a.py, data_root: d}}\n"
            "variants: {baseline: {profiles: [a]}}\n",
            "variants.baseline.profiles: the baseline exists at every profile",
        ),
        (
            "study: x\nprofiles: {a: {config: a.py, data_root: d, init_from: p}, "
            "b: {config: b.py, data_root: d}}\nvariants: {baseline: {}, p: {profiles: [b]}}\n",
            "profiles.a.init_from: variant 'p' is not at this profile",
        ),
        (
            'study: x\nprofiles: {"a\\nb": {config: a.py, data_root: d}}\n',
            "profiles.'a\\nb': use letters, digits, - and _ only",
        ),
    ],
)
def test_bad_spec_fields_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(AqrError, match=r"spec\.yaml") as err:
        load_spec(_write(tmp_path, text))
    assert message in str(err.value)


def test_missing_spec_file(tmp_path: Path) -> None:
    result = cli("plan", "--spec", tmp_path / "nope.yaml", "--results-root", tmp_path / "results")
    assert result.exit_code == 2
    assert "spec file not found" in result.stderr


def _toy_spec(tmp_path: Path, old: str = "", new: str = "") -> Path:
    """The toy spec in tmp_path (its config dir made absolute), `old` replaced by `new`."""
    text = TOY_SPEC.read_text().replace("config_dir: .", f"config_dir: {json.dumps(str(TOY_DIR))}")
    assert old in text
    return _write(tmp_path, text.replace(old, new))


def _refused(result: Result, *parts: str) -> None:
    """Exit 2 with one line on stderr that names every part."""
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert all(part in result.stderr for part in parts), (parts, result.stderr)


@pytest.mark.parametrize("command", [["run", "baseline", "--dry-run"], ["plan"]])
@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seeds_out_of_range_are_refused_at_plan_time(
    tmp_path: Path, command: list[str], seed: int
) -> None:
    result = cli(*command, f"--seeds=0,{seed}", *toy_args(tmp_path))
    _refused(result, f"--seeds: seed {seed} is out of range", "from 0 to 4294967295")
    assert nothing_written(tmp_path)
    assert cli("plan", f"--seeds={2**32 - 1}", *toy_args(tmp_path)).exit_code == 0


def _alias_bomb(levels: int = 8, width: int = 9) -> str:
    """A flow list whose every level repeats the one below through aliases: 9**9 strings."""
    text = "&a0 [" + ", ".join(['"x"'] * width) + "]"
    for level in range(1, levels + 1):
        text = f"&a{level} [" + ", ".join([text] + [f"*a{level - 1}"] * (width - 1)) + "]"
    return text


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["alias bomb", "too large"])
def test_yaml_bombs_are_refused_naming_the_file(tmp_path: Path, kind: str) -> None:
    """A spec that would hang planning (billion laughs) or is huge fails fast, as bad input."""
    if kind == "alias bomb":
        path = _toy_spec(tmp_path, "model.step_time: 0.4", f"model.step_time: {_alias_bomb()}")
        assert path.stat().st_size < 2000
        expected = f"{path}:21: variants.slow.overrides.model.step_time"
        message = f"expands to more than {safe_yaml.MAX_NODES} nodes through its aliases"
    else:
        padding = "#" * 80 + "\n"
        path = _toy_spec(tmp_path, "seeds: [0]", "seeds: [0]\n" + padding * 13_000)
        expected, message = f"{path}: larger than", f"{safe_yaml.MAX_BYTES} bytes"
    result = cli("run", "slow", "--dry-run", *toy_args(tmp_path)[2:], "--spec", path)
    _refused(result, expected, message)
    assert nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "  crash:\n",
            "  baseline:\n    description: again\n  crash:\n",
            "duplicate key 'baseline' in variants (lines 12 and 26)",
        ),
        ("seeds: [0]\n", "seeds: [0]\nstudy: other\n", "duplicate key 'study' at the top level"),
    ],
)
def test_duplicate_keys_are_refused_with_both_lines(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    path = _toy_spec(tmp_path, old, new)
    result = cli("run", "baseline", "--dry-run", *toy_args(tmp_path)[2:], "--spec", path)
    _refused(result, f"{path}:", message)
    assert nothing_written(tmp_path)


def test_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    """`<<: *base` then the same key is YAML's way to override, not a duplicate."""
    path = _toy_spec(
        tmp_path,
        "      model.step_time: 0.4\n",
        "      <<: &slow {model.step_time: 0.4}\n      model.step_time: 0.5\n",
    )
    assert load_spec(path).variants["slow"].overrides == {"model.step_time": 0.5}
