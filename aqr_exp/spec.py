"""Experiment specs (experiments/*.yaml): what a study compares, at which scale.

A spec names variants, sweeps and seeds once; a profile picks the scale (the
base config file and data root: `demo` = CPU demo on synthetic data, `full` =
nuScenes). Everything is checked when the file is read, so a typo fails in a
second with the file and key, not after an hour of training.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from aqr_exp import paths, safe_yaml
from aqr_exp import trackers as trackers_module
from aqr_exp.errors import AqrError, did_you_mean, unknown

MAX_SEED = 2**32 - 1  # numpy (and so mmengine's set_random_seed) takes 32-bit unsigned seeds


@dataclass(frozen=True)
class Profile:
    """The scale of a study: the baseline config file and where the data is."""

    name: str
    config: Path
    data_root: Path
    # SynthSpec fields: the data is synthetic and generated when data_root is absent.
    synth: Mapping[str, Any] | None
    # Warm start at this scale: every variant without its own `init_from` (and not this
    # variant or its parents) starts from this variant's final checkpoint.
    init_from: str | None = None


@dataclass(frozen=True)
class Variant:
    """A model variant: another config of the same family and/or config overrides."""

    name: str
    description: str
    # `cmt-aqr-new` → the file `cmt-aqr-new_<profile config name after "cmt_">`
    config_prefix: str | None
    overrides: Mapping[str, Any]
    # Warm start: train from the final checkpoint of this variant's run (same seed).
    init_from: str | None = None
    # The profiles this variant exists at (None: every one), e.g. the demo's stand-in for
    # CMT's trained checkpoint, which full-scale studies load instead.
    profiles: tuple[str, ...] | None = None

    def exists_at(self, profile: Profile) -> bool:
        return self.profiles is None or profile.name in self.profiles


@dataclass(frozen=True)
class Sweep:
    """One config key of one variant, trained at each value (the baseline beside it)."""

    name: str
    variant: str
    key: str
    values: tuple[Any, ...]
    description: str = ""


@dataclass(frozen=True)
class SlurmSettings:
    """What a Slurm job of one run asks for (`#SBATCH` directives); None = the cluster's default."""

    partition: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0  # one task (training process) per GPU; 0 = one CPU task
    cpus_per_task: int | None = None
    mem: str | None = None  # per node, Slurm's syntax: 64G, 500M
    time: str | None = None  # Slurm's syntax: 30, 4:00:00, 2-00:00:00
    account: str | None = None
    qos: str | None = None
    extra_args: tuple[str, ...] = ()  # more sbatch options, e.g. --constraint=a100
    array: bool = True  # a sweep goes in as one job array
    max_running: int | None = None  # the array's %N throttle
    requeue_before_s: int = 300  # with `time`: requeue this long before the limit


# Slurm's time formats: minutes, min:sec, h:min:sec, days-h, days-h:min, days-h:min:sec.
_SLURM_TIME = re.compile(r"\d+-\d{1,2}(:\d{1,2}){0,2}|\d+(:\d{1,2}){0,2}|UNLIMITED|INFINITE")
_SLURM_MEM = re.compile(r"\d+[KMGT]?")
# What may reach a #SBATCH line: every value is checked whole (fullmatch), so no newline
# (which would end the line and start a shell command) and no quote gets through.
_SLURM_NAME = re.compile(r"[A-Za-z0-9_.,:+-]+")
_SLURM_NAME_ALLOWED = "use letters, digits and _ . , : + - only"
_SBATCH_OPTION = re.compile(r"--[A-Za-z][A-Za-z0-9-]*(=[A-Za-z0-9_.,:+=@%/&|*!\[\]-]+)?")
_SBATCH_OPTION_ALLOWED = (
    "use --name or --name=value, the value of letters, digits and _ . , : + = @ % / & | * ! [ ] - "
    "only (e.g. --constraint=a100)"
)


def _fits(pattern: re.Pattern[str], value: str | None) -> bool:
    return value is None or pattern.fullmatch(value) is not None


def slurm_problem(settings: SlurmSettings) -> tuple[str, str] | None:
    """The first invalid field of Slurm settings, as (field, what is allowed), or None."""
    checks = [
        ("nodes", settings.nodes >= 1, f"must be >= 1, got {settings.nodes}"),
        (
            "gpus_per_node",
            settings.gpus_per_node >= 0,
            f"must be >= 0, got {settings.gpus_per_node}",
        ),
        (
            "cpus_per_task",
            settings.cpus_per_task is None or settings.cpus_per_task >= 1,
            f"must be >= 1, got {settings.cpus_per_task}",
        ),
        (
            "mem",
            _fits(_SLURM_MEM, settings.mem),
            f"Slurm memory like 64G or 500M (a number with K, M, G or T), got {settings.mem!r}",
        ),
        (
            "time",
            _fits(_SLURM_TIME, settings.time),
            "Slurm time like 30 (minutes), 4:00:00 or 2-00:00:00, got " + repr(settings.time),
        ),
        *(
            (
                name,
                _fits(_SLURM_NAME, value),
                f"{value!r} is not a Slurm name: {_SLURM_NAME_ALLOWED}",
            )
            for name, value in [
                ("partition", settings.partition),
                ("account", settings.account),
                ("qos", settings.qos),
            ]
        ),
        (
            "nodes",
            settings.nodes == 1 or settings.gpus_per_node >= 1,
            f"{settings.nodes} nodes need gpus_per_node >= 1 (multi-node runs are data-parallel "
            "over GPUs)",
        ),
        *(
            (
                "extra_args",
                _fits(_SBATCH_OPTION, arg),
                f"{arg!r} is not an sbatch option: {_SBATCH_OPTION_ALLOWED}",
            )
            for arg in settings.extra_args
        ),
        (
            "max_running",
            settings.max_running is None or settings.max_running >= 1,
            f"must be >= 1, got {settings.max_running}",
        ),
        (
            "requeue_before_s",
            settings.requeue_before_s >= 0,
            f"must be >= 0 seconds, got {settings.requeue_before_s}",
        ),
    ]
    return next(((name, message) for name, ok, message in checks if not ok), None)


@dataclass(frozen=True)
class LauncherSettings:
    type: str = "local"
    max_concurrent: int = 1
    gpus_per_run: int | None = None  # None: 1 when GPUs are visible, else CPU
    slurm: SlurmSettings = field(default_factory=SlurmSettings)


@dataclass(frozen=True)
class Spec:
    path: Path
    study: str
    description: str
    profiles: Mapping[str, Profile]
    default_profile: str
    baseline: str
    variants: Mapping[str, Variant]
    sweeps: Mapping[str, Sweep]
    seeds: tuple[int, ...]
    checkpoint_interval: int | None
    launcher: LauncherSettings
    trackers: tuple[str, ...] = trackers_module.DEFAULT

    def profile(self, name: str | None) -> Profile:
        name = name or self.default_profile
        if name not in self.profiles:
            raise unknown("profile", name, list(self.profiles), self.path.name)
        return self.profiles[name]

    def variant(self, name: str) -> Variant:
        if name not in self.variants:
            raise unknown("variant", name, list(self.variants), self.path.name)
        return self.variants[name]

    def variants_at(self, profile: Profile) -> list[Variant]:
        """The variants a study at this profile's scale has."""
        return [variant for variant in self.variants.values() if variant.exists_at(profile)]

    def variant_at(self, name: str, profile: Profile) -> Variant:
        variant = self.variant(name)
        if not variant.exists_at(profile):
            raise AqrError(
                f"variant {name!r} of {self.path.name} exists only at the profiles "
                f"{', '.join(variant.profiles or ())}, not at {profile.name!r}"
            )
        return variant

    def init_from(self, variant: Variant, profile: Profile) -> str | None:
        """The variant a run of `variant` warm-starts from at this profile's scale."""
        if variant.init_from is not None or profile.init_from is None:
            return variant.init_from
        root: str | None = profile.init_from
        while root is not None:  # the profile's start point and its own parents train first
            if root == variant.name:
                return None
            root = self.variants[root].init_from
        return profile.init_from

    def variant_config(self, variant: Variant, profile: Profile) -> Path:
        """The config file of a variant at a profile's scale."""
        if variant.config_prefix is None:
            return profile.config
        _, _, suffix = profile.config.name.partition("_")
        return profile.config.with_name(f"{variant.config_prefix}_{suffix}")


class _Reader:
    """Typed access to one YAML mapping, naming the file and key in every error."""

    def __init__(self, data: Any, where: str, path: Path) -> None:
        if not isinstance(data, Mapping):
            raise AqrError(f"{path}: {where or 'the file'} must be a mapping, got {data!r}")
        self.data, self.where, self.path = data, where, path

    def error(self, key: str, message: str) -> AqrError:
        return AqrError(f"{self.path}: {self._place(key)}: {message}")

    def _place(self, key: str) -> str:
        """The dotted path to a key; a key with a newline or the like as its repr (one line)."""
        text = key if key.isprintable() else repr(key)
        return f"{self.where}.{text}" if self.where else text

    def only(self, *allowed: str) -> _Reader:
        for key in self.data:
            if key not in allowed:
                hint = did_you_mean(str(key), allowed).rstrip()
                known = ", ".join(allowed)
                raise self.error(
                    str(key), f"unknown key{'; ' + hint if hint else ''} (allowed: {known})"
                )
        return self

    def get(
        self, key: str, kind: type | tuple[type, ...], default: Any = ..., nullable: bool = False
    ) -> Any:
        if key not in self.data:
            if default is ...:
                raise self.error(key, "required")
            return default
        value = self.data[key]
        if value is None and nullable:
            return None
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
            raise self.error(key, f"expected {_kind_name(kind)}, got {value!r}")
        return value

    def sub(self, key: str) -> _Reader:
        return _Reader(self.data.get(key) or {}, self._place(key), self.path)

    def positive(self, key: str, default: Any, nullable: bool = False) -> Any:
        value = self.get(key, int, default, nullable=nullable)
        if value is not None and value < (0 if key == "gpus_per_run" else 1):
            raise self.error(
                key, f"must be {'>= 0' if key == 'gpus_per_run' else '>= 1'}, got {value}"
            )
        return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        int: "an integer",
        float: "a number",
    }
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


def _read_yaml(path: Path) -> Any:
    if path.is_dir():
        raise AqrError(f"spec {path} is a directory; expected an experiment spec file (.yaml)")
    if not path.is_file():
        raise AqrError(f"spec file not found: {path}")
    return safe_yaml.load(path)


_DIR_NAME_RULE = "use letters, digits, - and _ only (a directory and Slurm job name)"


def _is_dir_name(name: str) -> bool:
    """Study and profile names make the study's directory and its Slurm job names."""
    return name.replace("-", "").replace("_", "").isalnum()


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _profiles(reader: _Reader, config_dir: Path, spec_dir: Path) -> dict[str, Profile]:
    profiles = {}
    for name in reader.data:
        if not _is_dir_name(str(name)):
            raise reader.error(str(name), f"{_DIR_NAME_RULE} for a profile name, got {name!r}")
        entry = reader.sub(str(name)).only("config", "data_root", "synth", "init_from")
        synth = entry.get("synth", dict, None, nullable=True)
        data_root = entry.get("data_root", str, None, nullable=True)
        if data_root is None and synth is None:
            raise entry.error(
                "data_root", "required (only a synthetic profile, with `synth`, has a default)"
            )
        profiles[str(name)] = Profile(
            name=str(name),
            config=config_dir / entry.get("config", str),
            data_root=paths.default_data_root()
            if data_root is None
            else _resolve(spec_dir, data_root),
            synth=synth,
            init_from=entry.get("init_from", str, None, nullable=True),
        )
    if not profiles:
        raise reader.error("", "at least one profile is required")
    return profiles


def _overrides(reader: _Reader) -> dict[str, Any]:
    for key in reader.data:
        if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
            raise reader.error(
                str(key), "override keys are dotted config keys like model.pts_bbox_head.aqr"
            )
    return dict(reader.data)


def _variants(reader: _Reader) -> dict[str, Variant]:
    variants = {}
    for name in reader.data:
        entry = reader.sub(str(name)).only(
            "description", "config_prefix", "overrides", "init_from", "profiles"
        )
        profiles = entry.get("profiles", list, None, nullable=True)
        if profiles is not None and not (profiles and all(isinstance(p, str) for p in profiles)):
            raise entry.error("profiles", f"a non-empty list of profile names, got {profiles!r}")
        variants[str(name)] = Variant(
            name=str(name),
            description=entry.get("description", str, ""),
            config_prefix=entry.get("config_prefix", str, None, nullable=True),
            overrides=_overrides(entry.sub("overrides")),
            init_from=entry.get("init_from", str, None, nullable=True),
            profiles=None if profiles is None else tuple(profiles),
        )
    for name, variant in variants.items():
        _check_init_chain(reader.sub(name), variant, variants)
    return variants


def _check_init_chain(reader: _Reader, variant: Variant, variants: Mapping[str, Variant]) -> None:
    """`init_from` names another variant, and following it never comes back."""
    if variant.init_from is None:
        return
    if variant.init_from not in variants:
        raise reader.error("init_from", str(unknown("variant", variant.init_from, list(variants))))
    chain = [variant.name]
    parent: str | None = variant.init_from
    while parent is not None:
        if parent in chain:
            cycle = " → ".join([*chain, parent])
            raise reader.error("init_from", f"warm starts form a cycle: {cycle}")
        chain.append(parent)
        parent = variants[parent].init_from


def _sweeps(reader: _Reader, variants: Mapping[str, Variant]) -> dict[str, Sweep]:
    sweeps = {}
    for name in reader.data:
        entry = reader.sub(str(name)).only("description", "variant", "key", "values")
        if "." in str(name):
            raise entry.error("", "a sweep name has no dots (dotted names are config keys)")
        variant = entry.get("variant", str)
        if variant not in variants:
            raise entry.error("variant", str(unknown("variant", variant, list(variants))))
        values = entry.get("values", list)
        if not values:
            raise entry.error("values", "give at least one value")
        sweeps[str(name)] = Sweep(
            name=str(name),
            variant=variant,
            key=entry.get("key", str),
            values=tuple(values),
            description=entry.get("description", str, ""),
        )
    return sweeps


def seeds_problem(seeds: Sequence[int]) -> str | None:
    """Why these seeds cannot all train (out of numpy's range, repeated), or None."""
    bad = next((seed for seed in seeds if not 0 <= seed <= MAX_SEED), None)
    if bad is not None:
        return f"seed {bad} is out of range: seeds are integers from 0 to {MAX_SEED}"
    if len(set(seeds)) != len(seeds):
        return f"repeated seed in {list(seeds)}"
    return None


def _seeds(reader: _Reader) -> tuple[int, ...]:
    seeds = reader.get("seeds", list, [0])
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise reader.error("seeds", f"expected a non-empty list of integers, got {seeds!r}")
    problem = seeds_problem(seeds)
    if problem is not None:
        raise reader.error("seeds", problem)
    return tuple(seeds)


def load_spec(path: Path | None = None) -> Spec:
    """Read and check a spec file (default: paths.default_spec()); relative paths in it
    are relative to the file."""
    path = (path or paths.default_spec()).resolve()
    reader = _Reader(_read_yaml(path), "", path).only(
        "study", "description", "config_dir", "profile", "profiles", "baseline", "variants",
        "sweeps", "seeds", "train", "launcher", "trackers",
    )  # fmt: skip
    config_dir_text = reader.get("config_dir", str, None, nullable=True)
    config_dir = (
        paths.PLUGIN_CONFIGS if config_dir_text is None else _resolve(path.parent, config_dir_text)
    )
    profiles = _profiles(reader.sub("profiles"), config_dir, path.parent)
    default_profile = reader.get("profile", str, next(iter(profiles)))
    if default_profile not in profiles:
        raise reader.error("profile", str(unknown("profile", default_profile, list(profiles))))
    variants = _variants(reader.sub("variants"))
    for variant in variants.values():
        for name in variant.profiles or ():
            if name not in profiles:
                raise (
                    reader.sub("variants")
                    .sub(variant.name)
                    .error("profiles", str(unknown("profile", name, list(profiles))))
                )
    for profile in profiles.values():
        where = reader.sub("profiles").sub(profile.name)
        if profile.init_from is not None and profile.init_from not in variants:
            raise where.error(
                "init_from", str(unknown("variant", profile.init_from, list(variants)))
            )
        if profile.init_from is not None and not variants[profile.init_from].exists_at(profile):
            raise where.error("init_from", f"variant {profile.init_from!r} is not at this profile")
    baseline = reader.get("baseline", str, "baseline")
    if baseline not in variants:
        raise reader.error("baseline", f"{baseline!r} is not one of the variants {list(variants)}")
    if variants[baseline].profiles is not None:
        raise (
            reader.sub("variants")
            .sub(baseline)
            .error("profiles", "the baseline exists at every profile: remove `profiles`")
        )
    train = reader.sub("train").only("checkpoint_interval")
    launcher = reader.sub("launcher").only("type", "max_concurrent", "gpus_per_run", "slurm")
    study = reader.get("study", str)
    if not _is_dir_name(study):
        raise reader.error("study", _DIR_NAME_RULE + f", got {study!r}")
    return Spec(
        path=path,
        study=study,
        description=reader.get("description", str, ""),
        profiles=profiles,
        default_profile=default_profile,
        baseline=baseline,
        variants=variants,
        sweeps=_sweeps(reader.sub("sweeps"), variants),
        seeds=_seeds(reader),
        checkpoint_interval=train.positive("checkpoint_interval", None, nullable=True),
        launcher=LauncherSettings(
            type=launcher.get("type", str, "local"),
            max_concurrent=launcher.positive("max_concurrent", 1),
            gpus_per_run=launcher.positive("gpus_per_run", None, nullable=True),
            slurm=_slurm(launcher.sub("slurm")),
        ),
        trackers=_trackers(reader),
    )


def _trackers(reader: _Reader) -> tuple[str, ...]:
    names = reader.get("trackers", list, list(trackers_module.DEFAULT))
    if not all(isinstance(name, str) for name in names):
        raise reader.error("trackers", f"expected a list of tracker names, got {names!r}")
    problem = trackers_module.names_problem(names)
    if problem is not None:
        raise reader.error("trackers", problem)
    return trackers_module.normalized(names)


def _slurm(reader: _Reader) -> SlurmSettings:
    reader.only(*(item.name for item in fields(SlurmSettings)))
    optional_text = {name: reader.get(name, str, None, nullable=True)
                     for name in ("partition", "mem", "time", "account", "qos")}  # fmt: skip
    extra = reader.get("extra_args", list, [])
    if not all(isinstance(arg, str) for arg in extra):
        raise reader.error("extra_args", f"expected a list of strings, got {extra!r}")
    settings = SlurmSettings(
        **optional_text,
        nodes=reader.get("nodes", int, 1),
        gpus_per_node=reader.get("gpus_per_node", int, 0),
        cpus_per_task=reader.get("cpus_per_task", int, None, nullable=True),
        extra_args=tuple(extra),
        array=reader.get("array", bool, True),
        max_running=reader.get("max_running", int, None, nullable=True),
        requeue_before_s=reader.get("requeue_before_s", int, 300),
    )
    problem = slurm_problem(settings)
    if problem is not None:
        raise reader.error(*problem)
    return settings
