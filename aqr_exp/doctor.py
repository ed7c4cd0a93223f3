"""Checks that the installed stack can train the plugin, each with its fix."""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from aqr_exp import configs
from aqr_exp.data.check import INFO_SPLITS
from aqr_exp.paths import pinned_versions
from aqr_exp.plan import Target, plan_variants
from aqr_exp.spec import Spec

INSTALL_FIX = "run `make install` (scripts/install.sh) from the repository root"


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _distribution_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_python() -> Check:
    ok = sys.version_info >= (3, 10)
    return Check(
        "python",
        ok,
        platform.python_version(),
        "" if ok else "use Python >= 3.10 (create .venv with a newer python3)",
    )


def check_torch() -> Check:
    try:
        torch = importlib.import_module("torch")
    except ImportError as err:
        return Check("torch", False, f"not importable ({err})", INSTALL_FIX)
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        devices = f"CUDA {torch.version.cuda}: " + ", ".join(names)
    else:
        devices = "no CUDA device (CPU configs only)"
    return Check("torch", True, f"{torch.__version__}; {devices}")


def check_pinned(dist: str, module: str, pins: dict[str, str]) -> Check:
    """A package is importable and at the pinned version."""
    version = _distribution_version(dist)
    want = pins.get(dist)
    if version is None:
        return Check(dist, False, "not installed", INSTALL_FIX)
    try:
        importlib.import_module(module)
    except Exception as err:  # an import-time failure of any kind is the finding
        return Check(
            dist, False, f"{version} installed but `import {module}` fails: {err}", INSTALL_FIX
        )
    if want and version != want:
        return Check(dist, False, f"{version} (pinned: {want})", INSTALL_FIX)
    return Check(dist, True, version)


def check_mmcv_ops() -> Check:
    """mmcv's compiled ops: the `_ext` extension and the CPU kernels the demo uses."""
    try:
        ext = importlib.import_module("mmcv._ext")
    except Exception as err:  # a missing or ABI-broken extension both land here
        compiler = shutil.which("gcc") or shutil.which("cc")
        why = (
            "no C++ compiler found (apt-get install build-essential), then " if not compiler else ""
        )
        return Check(
            "mmcv ops",
            False,
            f"compiled ops do not load ({err}); mmcv-lite or a wheel built for another torch?",
            f"{why}{INSTALL_FIX} (it builds mmcv with MMCV_WITH_OPS=1)",
        )
    needed = ["hard_voxelize_forward", "nms_rotated"]
    missing = [name for name in needed if not hasattr(ext, name)]
    if missing:
        return Check("mmcv ops", False, f"built without {missing}", INSTALL_FIX)
    return Check("mmcv ops", True, "compiled ops load (voxelization, nms_rotated)")


def _first_line(err: Exception) -> str:
    """A compiler failure's first line (they run to pages), or its type if it has none."""
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def check_cpu_compile() -> Check:
    """New AQR's window attention on the CPU (`attn_impl` auto/window) is compiled by
    inductor, which needs a working C++ compiler: compile and run a small kernel."""
    torch = importlib.import_module("torch")
    try:
        kernel = torch.compile(lambda x: (x.exp() * 2).sum(dim=-1), dynamic=False)
        ok = bool(torch.allclose(kernel(torch.ones(3, 4)), torch.full((3,), 8 * torch.e)))
    except Exception as err:  # inductor's many failure types; report the reason
        return Check(
            "torch.compile",
            False,
            f"inductor cannot compile a CPU kernel: {_first_line(err)}",
            "install a C++ compiler and the Python headers (build-essential, python3-dev), "
            "or train new AQR with model.pts_bbox_head.aqr.attn_impl='dense'",
        )
    if not ok:
        return Check("torch.compile", False, "a compiled kernel computed a wrong result")
    return Check("torch.compile", True, "inductor compiles CPU kernels (new AQR's window)")


def check_window_kernel() -> Check:
    """AQR's window attentions on the CPU (the weight generator of old and new AQR, new
    AQR's window bias) run through C++ kernels built for this machine on first use (about
    30 s, once): build or load them here, not mid-training."""
    try:
        window_attention = importlib.import_module("cmt_aqr.aqr.window_attention")
        lanes = window_attention.window_kernel().lanes
    except Exception as err:  # compiler and linker failures come in many types; say why
        return Check(
            "window kernel",
            False,
            f"the window attentions' C++ kernels do not build: {_first_line(err)}",
            "install a C++ compiler with OpenMP and the Python headers (build-essential, "
            "python3-dev): AQR (old and new) needs them on the CPU, the CMT baseline does not",
        )
    return Check("window kernel", True, f"AQR's C++ window kernels load ({lanes}-lane vectors)")


def check_plugin() -> Check:
    """Every class the plugin exports is found in mmdet3d's registries."""
    try:
        plugin = importlib.import_module("cmt_aqr")
        registry = importlib.import_module("mmdet3d.registry")
    except Exception as err:  # the plugin must import cleanly; say why it does not
        return Check("plugin", False, f"`import cmt_aqr` fails: {err}", INSTALL_FIX)
    registries = [
        registry.MODELS,
        registry.TRANSFORMS,
        registry.TASK_UTILS,
        registry.HOOKS,
        registry.METRICS,
        registry.WEIGHT_INITIALIZERS,
    ]
    missing = [
        name for name in plugin.__all__ if not any(reg.get(name) is not None for reg in registries)
    ]
    if missing:
        return Check(
            "plugin",
            False,
            f"not registered in mmdet3d: {', '.join(missing)}",
            "every class in cmt_aqr.__all__ must carry an mmdet3d registry decorator",
        )
    return Check("plugin", True, f"{len(plugin.__all__)} modules registered in mmdet3d")


def run_checks() -> list[Check]:
    pins = pinned_versions()
    checks = [check_python(), check_torch()]
    for dist, module in [
        ("mmcv", "mmcv"),
        ("mmengine", "mmengine"),
        ("mmdet", "mmdet"),
        ("mmdet3d", "mmdet3d"),
        ("nuscenes-devkit", "nuscenes"),
    ]:
        checks.append(check_pinned(dist, module, pins))
    checks.append(check_mmcv_ops())
    checks.append(check_cpu_compile())
    checks.append(check_window_kernel())
    checks.append(check_plugin())
    return checks


def check_profile(spec: Spec, profile: str | None, data_root: Path | None) -> list[Check]:
    """What a profile's runs need besides the stack: its data root with the info files,
    the pretrained weights its configs start from (runs with `load_from` need none) and
    the GT-sampling database."""
    names = [variant.name for variant in spec.variants_at(spec.profile(profile))]
    target = Target(profile=profile, data_root=data_root, check_data=False)
    plan = plan_variants(spec, names, target)
    root, name = plan.data_root, f"data ({plan.profile.name})"
    prepare = f"`aqr-exp data prepare nuscenes --root {root}`"
    if not root.is_dir():
        checks = [
            Check(name, True, f"{root} absent: generated on the first run")
            if plan.generate_data or plan.profile.synth is not None
            else Check(
                name,
                False,
                f"{root} does not exist",
                f"put nuScenes (or CMT's info files) there, or pass --data-root; then {prepare}",
            )
        ]
    else:
        infos = [f"nuscenes_infos_{split}.pkl" for split in INFO_SPLITS]
        missing = [info for info in infos if not (root / info).is_file()]
        checks = [
            Check(name, not missing, f"{root}: no {', '.join(missing)}", prepare)
            if missing
            else Check(name, True, f"{root} with {', '.join(infos)}")
        ]
    where = importlib.import_module("cmt_aqr.pretrained").WHERE_USERS_GET_THEM
    for label, files, fix in (
        ("pretrained weights", configs.pretrained_files, where),
        ("GT database", configs.gt_database_files, prepare),
    ):
        needed = {path: key for run in plan.runs for key, path in files(run.cfg)}
        for path, key in sorted(needed.items()):
            found = Path(path).is_file()
            detail = f"{path} ({key})" + ("" if found else ": missing")
            checks.append(Check(label, found, detail, fix))
    return checks


def can_train(checks: list[Check]) -> bool:
    return all(check.ok for check in checks if check.required)
