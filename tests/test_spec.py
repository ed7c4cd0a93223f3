"""Experiment specs: the default spec loads; bad files fail with file and key/line."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.toy.helpers import TOY_SPEC, cli, nothing_written

from aqr_exp import paths
from aqr_exp.errors import AqrError
from aqr_exp.spec import DEFAULT_SPEC, load_spec


def test_default_spec_names_the_study_of_the_seed_report() -> None:
    spec = load_spec(DEFAULT_SPEC)
    assert spec.study == "aqr_cmt"
    assert list(spec.variants) == ["baseline", "old_aqr", "new_aqr"]
    assert spec.sweeps["window_size"].values == (5, 8, 10, 15)
    assert spec.sweeps["bias_scale"].values == (0.5, 1.0, 2.0)
    assert {s.variant for s in spec.sweeps.values()} == {"new_aqr"}
    demo = spec.profile(None)
    assert demo.name == "demo" and demo.data_root == paths.DEFAULT_DATA_ROOT
    assert demo.synth is not None and demo.config.is_file()
    for name in ("old_aqr", "new_aqr"):
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
