"""Plans: a spec plus a selection (variants or a sweep) → the list of runs.

Building a plan loads and edits configs and checks every input (keys, types,
AQR windows, data root) but writes nothing: `--dry-run` and `aqr-exp plan`
show exactly this object. A run's id is derived from its content, so planning
the same thing twice finds the same runs in the registry.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmengine.config import Config

from aqr_exp import configs, paths, trackers
from aqr_exp.errors import AqrError, did_you_mean
from aqr_exp.registry import RUNS_DIR
from aqr_exp.spec import Profile, Spec, Sweep, Variant


@dataclass(frozen=True)
class SweepPoint:
    param: str
    key: str
    value: Any

    def as_dict(self) -> dict[str, Any]:
        return {"param": self.param, "key": self.key, "value": self.value}


@dataclass
class Run:
    """One training: a variant (+ sweep value) at one seed, with its resolved config."""

    run_id: str
    study: str
    variant: str
    sweep: SweepPoint | None
    overrides: dict[str, Any]
    seed: int
    config_name: str  # the source config file of the variant
    cfg: Config = field(repr=False)
    data_root: Path
    run_dir: Path  # results/<study>/runs/<run_id>/
    work_dir: Path  # work_dirs/<study>/<run_id>/
    parent: Run | None = None  # warm start: trains from this run's final checkpoint
    trackers: dict[str, str] = field(default_factory=dict)  # tracker → the study's place

    @property
    def label(self) -> str:
        if self.sweep is None:
            return self.variant
        return f"{self.variant} {self.sweep.param}={self.sweep.value}"


@dataclass(frozen=True)
class Target:
    """Where and at which scale a plan runs (spec defaults, CLI overrides)."""

    results_root: Path = field(default_factory=paths.results_root)
    work_root: Path = field(default_factory=paths.work_root)
    profile: str | None = None
    data_root: Path | None = None
    seeds: tuple[int, ...] | None = None
    trackers: tuple[str, ...] | None = None  # None: the spec's
    check_data: bool = True  # False: configs only (e.g. written for another machine)


@dataclass
class Plan:
    spec: Spec
    study: str
    profile: Profile
    data_root: Path
    generate_data: bool  # synthetic data that does not exist yet
    runs: list[Run]
    baseline: Run  # the reference every diff is taken against
    title: str
    study_dir: Path  # results/<study>/


def study_name(spec: Spec, profile: Profile) -> str:
    """Runs of different scales never share a directory (nor a comparison)."""
    return f"{spec.study}-{profile.name}"


def _display_path(path: Path) -> str:
    """Project-relative when inside it, so run ids survive moving the project."""
    try:
        return str(path.resolve().relative_to(paths.project_root()))
    except ValueError:
        return str(path.resolve())


def make_run_id(
    variant: str,
    sweep: SweepPoint | None,
    overrides: Mapping[str, Any],
    seed: int,
    config_hash: str,
    data_root: Path,
    init_from: str | None = None,
) -> str:
    """`<variant>[-<param>=<value>]-s<seed>-<hash of the content>`."""
    content = {
        "variant": variant,
        "overrides": dict(sorted(overrides.items())),
        "seed": seed,
        "config": config_hash,
        "data_root": _display_path(data_root),
    }
    if init_from is not None:
        content["init_from"] = init_from
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=repr).encode()).hexdigest()
    slug = variant if sweep is None else f"{variant}-{sweep.param}={sweep.value}"
    slug = re.sub(r"[^A-Za-z0-9._=+-]+", "_", f"{slug}-s{seed}")[:80]
    return f"{slug}-{digest[:8]}"


def with_parents(runs: Sequence[Run]) -> list[Run]:
    """Each run once, every warm-start parent before its children."""
    ordered: dict[str, Run] = {}

    def add(run: Run) -> None:
        if run.parent is not None:
            add(run.parent)
        ordered.setdefault(run.run_id, run)

    for run in runs:
        add(run)
    return list(ordered.values())


def _check_printable(flag: str, path: Path) -> None:
    """Run and work dirs end up in sbatch scripts and logs, where a newline starts a new line."""
    if not str(path).isprintable():
        raise AqrError(f"{flag} {str(path)!r} has a control character (a newline?); use another")


class _Builder:
    """Loads each variant's config once and derives the runs from it."""

    def __init__(self, spec: Spec, target: Target) -> None:
        _check_printable("--results-root", target.results_root)
        _check_printable("--work-root", target.work_root)
        self.spec, self.target = spec, target
        self.profile = spec.profile(target.profile)
        self.study = study_name(spec, self.profile)
        self.seeds = target.seeds or spec.seeds
        self.trackers = spec.trackers if target.trackers is None else target.trackers
        trackers.check_installed(self.trackers)
        self.data_root, self.generate_data = self._data_root()
        self._loaded: dict[str, tuple[Config, str]] = {}

    def _data_root(self) -> tuple[Path, bool]:
        root = (self.target.data_root or self.profile.data_root).expanduser().resolve()
        if root.is_dir() or not self.target.check_data:
            return root, False
        if self.target.data_root is None and self.profile.synth is not None:
            return root, True
        hint = (
            " (omit --data-root to use the default synthetic data, which is generated when absent)"
            if self.profile.synth is not None
            else f" (profile {self.profile.name!r} of {self.spec.path.name} expects its data there)"
        )
        raise AqrError(f"data root {root} does not exist{hint}")

    def variant_config(self, variant: Variant) -> tuple[Config, str]:
        """The variant's config with its own overrides, and the source file's hash."""
        if variant.name not in self._loaded:
            path = self.spec.variant_config(variant, self.profile)
            if not path.is_file():
                raise AqrError(
                    f"variant {variant.name!r} needs the config {path.name}, "
                    f"which is not in {path.parent}"
                )
            cfg = configs.load_config(path)
            # The data root enters the run id on its own: hash the config without it,
            # so e.g. the demo config's $AQR_DATA_ROOT default does not change ids.
            rootless = configs.clone(cfg)
            configs.set_data_root(rootless, "<data_root>")
            source_hash = configs.config_hash(rootless)
            configs.apply_overrides(
                cfg, variant.overrides, f"variant {variant.name!r} of {self.spec.path.name}"
            )
            self._loaded[variant.name] = (cfg, source_hash)
        return self._loaded[variant.name]

    def run(self, variant: Variant, seed: int, sweep: SweepPoint | None = None) -> Run:
        self.spec.variant_at(variant.name, self.profile)
        base_cfg, source_hash = self.variant_config(variant)
        cfg = configs.clone(base_cfg)
        overrides = dict(variant.overrides)
        if sweep is not None:
            configs.apply_overrides(cfg, {sweep.key: sweep.value}, f"sweep {sweep.param!r}")
            overrides[sweep.key] = configs.get_key(cfg, sweep.key)
        where = f"variant {variant.name}" if sweep is None else f"sweep {sweep.param}={sweep.value}"
        configs.check_aqr_windows(cfg, where)
        parent = None
        init_from = self.spec.init_from(variant, self.profile)
        if init_from is not None:
            parent = self.run(self.spec.variant(init_from), seed)
        run_id = make_run_id(
            variant.name, sweep, overrides, seed, source_hash, self.data_root,
            init_from=parent.run_id if parent else None,
        )  # fmt: skip
        work_dir = self.target.work_root.resolve() / self.study / run_id
        configs.set_data_root(cfg, self.data_root)
        configs.set_seed(cfg, seed)
        if self.spec.checkpoint_interval is not None:
            configs.set_checkpoint_interval(cfg, self.spec.checkpoint_interval)
        cfg.work_dir = str(work_dir)
        configs.keep_predictions(cfg)
        tags = {"study": self.study, "variant": variant.name, "seed": seed}
        if sweep is not None:
            tags[sweep.param] = sweep.value
        group = variant.name if sweep is None else f"{variant.name}-{sweep.param}={sweep.value}"
        configs.set_vis_backends(
            cfg,
            trackers.vis_backends(
                self.trackers, self.target.work_root.resolve(), self.study, run_id, group, tags
            ),
        )
        if parent is not None:
            cfg.load_from = str(configs.final_checkpoint(parent.cfg))
        if cfg.get("load_from"):
            configs.drop_pretrained_inits(cfg)
        return Run(
            run_id=run_id,
            study=self.study,
            variant=variant.name,
            sweep=sweep,
            overrides=overrides,
            seed=seed,
            config_name=Path(cfg.filename).name,
            cfg=cfg,
            data_root=self.data_root,
            run_dir=self.target.results_root.resolve() / self.study / RUNS_DIR / run_id,
            work_dir=work_dir,
            parent=parent,
            trackers=trackers.study_places(
                self.trackers, self.target.work_root.resolve(), self.study
            ),
        )

    def plan(self, runs: list[Run], title: str) -> Plan:
        baseline = self.run(self.spec.variant(self.spec.baseline), self.seeds[0])
        unique = with_parents(runs)
        for run in unique if self.target.check_data else []:
            configs.check_input_files(run.cfg, f"variant {run.variant}")
        return Plan(
            spec=self.spec,
            study=self.study,
            profile=self.profile,
            data_root=self.data_root,
            generate_data=self.generate_data,
            runs=unique,
            baseline=baseline,
            title=title,
            study_dir=self.target.results_root.resolve() / self.study,
        )


def plan_variants(spec: Spec, names: Sequence[str], target: Target) -> Plan:
    """Each named variant at each seed (the baseline too when named)."""
    builder = _Builder(spec, target)
    variants = [spec.variant(name) for name in names]
    runs = [builder.run(variant, seed) for variant in variants for seed in builder.seeds]
    return builder.plan(runs, f"variants {', '.join(names)}")


def resolve_sweep(
    spec: Spec, name: str, values: Sequence[Any] | None, variant: str | None
) -> Sweep:
    """A named sweep of the spec, or any dotted config key with explicit values."""
    if name in spec.sweeps:
        sweep = spec.sweeps[name]
        return Sweep(
            name=sweep.name,
            variant=variant or sweep.variant,
            key=sweep.key,
            values=tuple(values) if values else sweep.values,
            description=sweep.description,
        )
    if "." not in name:
        hint = did_you_mean(name, list(spec.sweeps))
        raise AqrError(
            f"unknown sweep {name!r}: {hint}named sweeps in {spec.path.name}: "
            f"{', '.join(spec.sweeps) or 'none'}; or sweep a dotted config key with --values"
        )
    if not values:
        raise AqrError(f"sweeping the config key {name!r} needs --values, e.g. --values 1,2,3")
    return Sweep(
        name=name.rsplit(".", 1)[-1],
        variant=variant or spec.baseline,
        key=name,
        values=tuple(values),
    )


def _check_sweep_key(builder: _Builder, sweep: Sweep) -> None:
    cfg, _ = builder.variant_config(builder.spec.variant(sweep.variant))
    if configs.has_key(cfg, sweep.key):
        return
    elsewhere = [
        variant.name
        for variant in builder.spec.variants_at(builder.profile)
        if variant.name != sweep.variant
        and configs.has_key(builder.variant_config(variant)[0], sweep.key)
    ]
    if elsewhere:
        raise AqrError(
            f"config key {sweep.key!r} is not in variant {sweep.variant!r} but is in "
            f"{', '.join(elsewhere)}: add --variant {elsewhere[0]}"
        )
    raise configs.unknown_key_error(sweep.key, cfg, f"variant {sweep.variant!r}")


def plan_sweep(spec: Spec, sweep: Sweep, target: Target) -> Plan:
    """The baseline plus the sweep's variant at each value, at each seed."""
    builder = _Builder(spec, target)
    _check_sweep_key(builder, sweep)
    variant = spec.variant(sweep.variant)
    runs = [builder.run(spec.variant(spec.baseline), seed) for seed in builder.seeds]
    for value in sweep.values:
        point = SweepPoint(param=sweep.name, key=sweep.key, value=value)
        runs += [builder.run(variant, seed, point) for seed in builder.seeds]
    return builder.plan(runs, f"sweep {sweep.name} ({sweep.key} of {sweep.variant})")


def plan_study(spec: Spec, target: Target) -> Plan:
    """Everything the spec defines: every variant and every named sweep."""
    builder = _Builder(spec, target)
    runs = [
        builder.run(variant, seed)
        for variant in spec.variants_at(builder.profile)
        for seed in builder.seeds
    ]
    for sweep in spec.sweeps.values():
        _check_sweep_key(builder, sweep)
        variant = spec.variant(sweep.variant)
        for value in sweep.values:
            point = SweepPoint(param=sweep.name, key=sweep.key, value=value)
            runs += [builder.run(variant, seed, point) for seed in builder.seeds]
    return builder.plan(runs, f"the whole study {spec.study}")
