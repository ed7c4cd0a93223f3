"""Where things live: a project folder is the current directory (or --root /
$AQR_EXP_ROOT); the bundled plugin and example spec come from the installation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fixtures.toy.helpers import TOY_SPEC, cli, make_toy_data, toy_importable

from aqr_exp import paths
from aqr_exp.launch.slurm import directives
from aqr_exp.plan import Target
from aqr_exp.spec import SlurmSettings, load_spec


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder as the cwd; $AQR_EXP_ROOT unset (and restored whatever --root sets)."""
    folder = tmp_path / "project"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setenv(paths.ROOT_ENV, "")
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_defaults_follow_the_current_directory(project: Path) -> None:
    assert paths.project_root() == project.resolve()
    target = Target()
    assert target.results_root == project.resolve() / "results"
    assert target.work_root == project.resolve() / "work_dirs"
    assert paths.default_spec() == paths.BUNDLED_SPEC  # no spec of its own yet
    demo = load_spec().profile("demo")
    assert demo.data_root == project.resolve() / "data" / "synth-nus"
    assert demo.config.parent == paths.PLUGIN_CONFIGS  # configs come with the package
    assert f"#SBATCH --chdir={project.resolve()}" in directives(SlurmSettings(), "n", "o")


def test_init_writes_the_starter_spec_once(project: Path) -> None:
    made = cli("init")
    assert made.exit_code == 0, made.output
    spec = project / "experiments" / "aqr_cmt.yaml"
    assert spec.read_text() == paths.BUNDLED_SPEC.read_text()
    assert paths.default_spec() == spec.resolve()
    spec.write_text(spec.read_text().replace("seeds: [0]", "seeds: [0, 1]"))
    before = _files(project)
    again = cli("init")
    assert again.exit_code == 2
    assert again.stderr.strip().splitlines() == [
        f"error: {spec.resolve()} already exists (edit it, or pass --force to replace it)"
    ]
    assert _files(project) == before
    assert load_spec().seeds == (0, 1)  # the project's own spec is the default now
    assert cli("init", "--force").exit_code == 0
    assert load_spec().seeds == (0,)


def test_dry_run_plans_into_the_project_and_writes_nothing(project: Path) -> None:
    result = cli("sweep", "window_size", "--dry-run")
    assert result.exit_code == 0, result.output
    root = project.resolve()
    assert f"registry  {root / 'results' / 'aqr_cmt-demo' / 'runs'}" in result.stdout
    assert f"work dirs {root / 'work_dirs' / 'aqr_cmt-demo'}" in result.stdout
    assert f"data      {root / 'data' / 'synth-nus'}" in result.stdout
    assert _files(project) == {}


def test_root_option_and_environment_variable_pick_the_project(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    by_option = cli("--root", other, "sweep", "window_size", "--dry-run")
    assert by_option.exit_code == 0, by_option.output
    assert f"registry  {other.resolve() / 'results'}" in by_option.stdout
    monkeypatch.setenv(paths.ROOT_ENV, str(other))
    by_env = cli("init")
    assert by_env.exit_code == 0, by_env.output
    assert (other / "experiments" / "aqr_cmt.yaml").is_file()
    assert _files(project) == {}


def test_a_missing_root_is_one_line_and_writes_nothing(project: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = cli("--root", missing, "init")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --root {missing}: does not exist (give an existing project folder)"
    ]
    assert not missing.exists() and _files(project) == {}


def test_a_run_writes_its_record_and_work_dir_under_the_project(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toy_importable(monkeypatch)
    data = make_toy_data(project / "toy-data")
    result = cli("run", "baseline", "--spec", TOY_SPEC, "--data-root", data)
    assert result.exit_code == 0, result.output
    records = list((project / "results").glob("toy-toy/runs/*/run.yaml"))
    assert len(records) == 1
    assert (project / "work_dirs" / "toy-toy" / records[0].parent.name).is_dir()
    assert os.environ[paths.ROOT_ENV] == ""
