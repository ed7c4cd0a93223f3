"""`aqr-exp doctor` on the installed stack, and on stacks with pieces missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aqr_exp import doctor
from aqr_exp.cli.main import app
from aqr_exp.paths import pinned_versions


def test_doctor_reports_a_working_stack() -> None:
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    pins = pinned_versions()
    for dist in ("mmcv", "mmengine", "mmdet", "mmdet3d", "nuscenes-devkit"):
        assert f"ok   {dist}" in result.output
        assert pins[dist] in result.output
    assert "compiled ops load" in result.output
    assert "ok   window kernel" in result.output and "-lane vectors" in result.output
    assert "The stack can train." in result.output


def test_plugin_modules_are_registered_in_mmdet3d() -> None:
    check = doctor.check_plugin()
    assert check.ok, check.detail
    import cmt_aqr

    assert str(len(cmt_aqr.__all__)) in check.detail


def test_unregistered_plugin_class_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import cmt_aqr

    monkeypatch.setattr(cmt_aqr, "__all__", [*cmt_aqr.__all__, "NotARegisteredThing"])
    check = doctor.check_plugin()
    assert not check.ok
    assert "NotARegisteredThing" in check.detail


def test_missing_mmcv_ops_are_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import mmcv._ext` raise ImportError,
    # exactly what mmcv-lite (no compiled ops) does.
    monkeypatch.setitem(sys.modules, "mmcv._ext", None)
    check = doctor.check_mmcv_ops()
    assert not check.ok
    assert "compiled ops do not load" in check.detail
    assert "MMCV_WITH_OPS=1" in check.fix


def test_missing_or_wrong_version_package_names_the_fix() -> None:
    missing = doctor.check_pinned("surely-not-installed-dist", "nope", {})
    assert not missing.ok and "not installed" in missing.detail and "make install" in missing.fix
    wrong = doctor.check_pinned("mmengine", "mmengine", {"mmengine": "0.0.1"})
    assert not wrong.ok and "pinned: 0.0.1" in wrong.detail


def test_doctor_exits_nonzero_when_the_stack_cannot_train() -> None:
    # A real process whose mmcv has no compiled ops: doctor must fail, not pass.
    code = (
        "import sys; sys.modules['mmcv._ext'] = None;"
        "from aqr_exp.cli.main import app; app(['doctor'])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL mmcv ops" in proc.stdout
    assert "cannot train" in proc.stderr


def test_doctor_fails_when_inductor_has_no_compiler(tmp_path: Path) -> None:
    """New AQR's CPU attention is compiled: a stack that cannot compile must not pass.
    Fresh inductor and extension caches, so both kernels are really built, with a compiler
    that fails."""
    env = {
        **os.environ,
        "CXX": "/bin/false",
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind"),
        "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"),
    }
    code = "from aqr_exp.cli.main import app; app(['doctor'])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL torch.compile" in proc.stdout
    assert "FAIL window kernel" in proc.stdout
    assert "attn_impl='dense'" in proc.stdout


def test_doctor_checks_what_a_full_scale_profile_needs(tmp_path: Path) -> None:
    nus = tmp_path / "nus"
    nus.mkdir()
    result = CliRunner().invoke(app, ["doctor", "--profile", "full", "--data-root", str(nus)])
    assert result.exit_code == 1
    out = result.stdout
    assert f"FAIL data (full)         {nus}: no nuscenes_infos_train.pkl" in out
    assert f"fix: `aqr-exp data prepare nuscenes --root {nus}`" in out
    assert f"FAIL pretrained weights  {nus / 'ckpts' / 'nuim_r50.pth'}" in out
    assert "junjie18/CMT" in out
    database = nus / "nuscenes_dbinfos_train.pkl"
    assert f"FAIL GT database         {database} (train_dataloader." in out
    assert "Profile full cannot train" in result.stderr
    names = ("nuscenes_infos_train.pkl", "nuscenes_infos_val.pkl", "ckpts/nuim_r50.pth",
             "nuscenes_dbinfos_train.pkl")  # fmt: skip
    for name in names:
        (nus / name).parent.mkdir(exist_ok=True)
        (nus / name).write_bytes(b"")
    result = CliRunner().invoke(app, ["doctor", "--profile", "full", "--data-root", str(nus)])
    assert result.exit_code == 0, result.output
    assert "ok   pretrained weights" in result.stdout and "Profile full can train." in result.stdout


def test_help_lists_the_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "doctor" in result.output and "sweep" in result.output
