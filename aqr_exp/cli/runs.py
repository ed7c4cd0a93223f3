"""`aqr-exp variants | plan | run | sweep | status | cancel | train`: run experiments.

Thin: parse options, call spec → plan → registry → launch, print. Every
command that would start trainings takes `--dry-run`, which prints the plan
(the runs and their config diffs against the baseline) and writes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from tabulate import tabulate

from aqr_exp import configs, paths, records, registry, trackers
from aqr_exp.errors import AqrError
from aqr_exp.launch import slurmctl
from aqr_exp.launch.backends import cancel_run, check_backend, make_launcher
from aqr_exp.launch.base import FINAL_STATES, LOG_NAME, RunHandle, TrainJob, run_all
from aqr_exp.launch.local import LocalLauncher, spawn_detached
from aqr_exp.plan import (
    Plan,
    Target,
    plan_study,
    plan_sweep,
    plan_variants,
    resolve_sweep,
)
from aqr_exp.progress import Progress, read_progress
from aqr_exp.results.collect import collect
from aqr_exp.results.compare import BootstrapSettings, compare, select_runs
from aqr_exp.results.render import render
from aqr_exp.results.report import write_report
from aqr_exp.spec import (
    LauncherSettings,
    SlurmSettings,
    Spec,
    load_spec,
    seeds_problem,
    slurm_problem,
)

SPEC = typer.Option(
    default_factory=paths.default_spec,
    show_default="experiments/aqr_cmt.yaml, else the bundled example",
    help="The experiment spec (YAML) with variants, sweeps, seeds.",
)
PROFILE = typer.Option(
    None,
    "--profile",
    "-p",
    help="Scale, a profile of the spec: demo = CPU demo on synthetic data, full = nuScenes "
    "(default: the spec's `profile`).",
)
DATA_ROOT = typer.Option(
    None,
    "--data-root",
    help="The data set (default: the profile's; synthetic data is generated when absent).",
)
SEEDS = typer.Option(
    None, "--seeds", help="Comma-separated seeds, e.g. 0,1,2 (default: the spec's)."
)
RESULTS_ROOT = typer.Option(
    ...,
    "--results-root",
    default_factory=paths.results_root,
    show_default="<project>/results",
    help="The run registry's root (holds <study>/runs/<run_id>/).",
)
WORK = typer.Option(
    ...,
    "--work-root",
    default_factory=paths.work_root,
    show_default="<project>/work_dirs",
    help="Where the mmengine work dirs (checkpoints, logs) go.",
)
TRACKER = typer.Option(
    [],
    "--tracker",
    help="Log each run to tensorboard, mlflow or wandb (repeatable; none = no tracker; "
    "default: the spec's `trackers`, else tensorboard).",
)
LAUNCHER = typer.Option(
    None, "--launcher", help="local, torchrun or slurm (default: the spec's launcher.type)."
)
JOBS = typer.Option(
    None,
    "--jobs",
    "-j",
    help="Runs at a time (default: the spec's launcher.max_concurrent; "
    "with slurm: the job array's limit, none by default).",
)
GPUS = typer.Option(
    None,
    "--gpus-per-run",
    help="GPUs per run; 0 = CPU (default: 1 if a GPU is visible). Local launchers only.",
)
_SLURM = "Slurm (--launcher slurm; defaults from the spec's launcher.slurm)"
PARTITION = typer.Option(None, "--partition", help="Slurm partition.", rich_help_panel=_SLURM)
NODES = typer.Option(None, "--nodes", help="Nodes per run.", rich_help_panel=_SLURM)
GPUS_PER_NODE = typer.Option(
    None,
    "--gpus-per-node",
    help="GPUs per node (one training process each); 0 = one CPU process.",
    rich_help_panel=_SLURM,
)
CPUS_PER_TASK = typer.Option(
    None, "--cpus-per-task", help="CPU cores per training process.", rich_help_panel=_SLURM
)
MEM = typer.Option(None, "--mem", help="Memory per node, e.g. 64G.", rich_help_panel=_SLURM)
TIME = typer.Option(
    None,
    "--time",
    help="Time limit, e.g. 4:00:00; the job requeues itself before it and resumes.",
    rich_help_panel=_SLURM,
)
ACCOUNT = typer.Option(None, "--account", help="Slurm account.", rich_help_panel=_SLURM)
QOS = typer.Option(None, "--qos", help="Slurm QOS.", rich_help_panel=_SLURM)
SBATCH_ARG = typer.Option(
    [],
    "--sbatch-arg",
    help="Another sbatch option, e.g. --sbatch-arg=--constraint=a100 (repeatable).",
    rich_help_panel=_SLURM,
)
DRY_RUN = typer.Option(
    False, "--dry-run", help="Print the plan and config diffs; start and write nothing."
)
DETACH = typer.Option(
    False, "--detach", help="Run in the background; follow with `aqr-exp status`."
)
FORCE = typer.Option(
    False, "--force", help="Rerun finished runs from scratch (deletes their work dirs)."
)
RETRY = typer.Option(
    False, "--retry-failed", help="Retry failed runs (from their last checkpoint)."
)
STUDY = typer.Option(
    None, "--study", "-s", help="Only this study (a folder under the results root)."
)


@dataclasses.dataclass(frozen=True)
class _Launch:
    """How to start a plan (the launcher options of `run` and `sweep`)."""

    settings: LauncherSettings
    dry_run: bool
    detach: bool
    force: bool
    retry_failed: bool


def _seeds(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        seeds = tuple(int(part) for part in configs.split_values(text))
    except ValueError:
        raise AqrError(f"--seeds takes comma-separated integers, got {text!r}") from None
    problem = seeds_problem(seeds)
    if problem is not None:
        raise AqrError(f"--seeds: {problem}")
    return seeds


def _target(
    results_root: Path,
    work_root: Path,
    profile: str | None,
    data_root: Path | None,
    seeds: str | None,
    tracker: list[str],
) -> Target:
    return Target(
        results_root=results_root,
        work_root=work_root,
        profile=profile,
        data_root=data_root,
        seeds=_seeds(seeds),
        trackers=_trackers(tracker),
    )


def _trackers(names: list[str]) -> tuple[str, ...] | None:
    if not names:
        return None
    problem = trackers.names_problem(names)
    if problem is not None:
        raise AqrError(f"--tracker: {problem}")
    return trackers.normalized(names)


def _slurm_options(
    partition: str | None,
    nodes: int | None,
    gpus_per_node: int | None,
    cpus_per_task: int | None,
    mem: str | None,
    time: str | None,
    account: str | None,
    qos: str | None,
    sbatch_arg: Sequence[str],
) -> dict[str, Any]:
    """The Slurm flags of `run`/`sweep` that were given, by SlurmSettings field."""
    options = dict(
        partition=partition, nodes=nodes, gpus_per_node=gpus_per_node,
        cpus_per_task=cpus_per_task, mem=mem, time=time, account=account, qos=qos,
        extra_args=tuple(sbatch_arg) or None,
    )  # fmt: skip
    return {field: value for field, value in options.items() if value is not None}


def _slurm_flag(field: str) -> str:
    return "--sbatch-arg" if field == "extra_args" else f"--{field.replace('_', '-')}"


def _slurm_settings(
    base: SlurmSettings, options: dict[str, Any], jobs: int | None, spec_path: Path
) -> SlurmSettings:
    """The spec's Slurm settings with the command line's (given) options on top, checked."""
    given = dict(options)
    if "extra_args" in given:
        given["extra_args"] = (*base.extra_args, *given["extra_args"])
    settings = dataclasses.replace(base, **given, max_running=jobs or base.max_running)
    problem = slurm_problem(settings)
    if problem is not None:
        field, message = problem
        origin = "" if field in given else f" (launcher.slurm.{field} of {spec_path.name})"
        raise AqrError(f"{_slurm_flag(field)}{origin}: {message}")
    return settings


def _launch(
    spec: Spec,
    launcher: str | None,
    jobs: int | None,
    gpus: int | None,
    slurm_options: dict[str, Any],
    dry_run: bool,
    detach: bool,
    force: bool,
    retry: bool,
) -> _Launch:
    base = spec.launcher
    kind = check_backend(launcher or base.type)
    if jobs is not None and jobs < 1:
        raise AqrError(f"--jobs must be at least 1, got {jobs}")
    if gpus is not None and gpus < 0:
        raise AqrError(f"--gpus-per-run must be 0 or more, got {gpus}")
    if kind == "slurm" and gpus is not None:
        raise AqrError("--gpus-per-run is for the local launchers; with slurm use --gpus-per-node")
    if kind != "slurm" and slurm_options:
        raise AqrError(
            f"{_slurm_flag(next(iter(slurm_options)))} is a Slurm option: add --launcher slurm "
            f"(the launcher is {kind})"
        )
    settings = LauncherSettings(
        type=kind,
        max_concurrent=jobs or base.max_concurrent,
        gpus_per_run=base.gpus_per_run if gpus is None else gpus,
        slurm=_slurm_settings(base.slurm, slurm_options, jobs, spec.path)
        if kind == "slurm"
        else base.slurm,
    )
    return _Launch(settings, dry_run, detach, force, retry)


# ---------------------------------------------------------------- printing


def _short(value: Any, width: int = 70) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _diff_lines(plan: Plan, cfg: Any) -> list[str]:
    """The run's config against the baseline's; where runs write always differs."""
    diff = [
        row
        for row in configs.config_diff(plan.baseline.cfg, cfg)
        if not configs.is_run_place(row[0])
    ]
    return [f"    {key}: {_short(old)} → {_short(new)}" for key, old, new in diff]


def _print_plan(plan: Plan, steps: Sequence[registry.Step], launcher: str | None) -> None:
    typer.echo(f"Plan: {plan.title}")
    typer.echo(f"  study     {plan.study}  (spec {plan.spec.path}, profile {plan.profile.name})")
    data_note = "  (absent: generated first)" if plan.generate_data else ""
    typer.echo(f"  data      {plan.data_root}{data_note}")
    typer.echo(f"  registry  {plan.study_dir / 'runs'}")
    typer.echo(f"  work dirs {plan.runs[0].work_dir.parent}")
    if launcher:
        typer.echo(f"  launcher  {launcher}")
    rows = [
        [
            step.run.run_id,
            step.run.variant,
            "-" if step.run.sweep is None else f"{step.run.sweep.param}={step.run.sweep.value}",
            step.run.seed,
            step.action,
            step.note,
        ]
        for step in steps
    ]
    typer.echo("")
    typer.echo(tabulate(rows, headers=["run id", "variant", "sweep", "seed", "action", "note"]))
    for step in steps:
        if step.problem is not None:
            records.report(step.problem)
    starting = sum(step.action not in ("skip", "blocked") for step in steps)
    typer.echo(f"\n{starting} of {len(steps)} runs would start.")
    typer.echo(
        f"\nConfig diff against the baseline ({plan.baseline.run_id}, {plan.baseline.config_name}):"
    )
    for step in steps:
        lines = _diff_lines(plan, step.run.cfg)
        source = (
            ""
            if step.run.config_name == plan.baseline.config_name
            else f" ({step.run.config_name})"
        )
        typer.echo(f"  {step.run.run_id}{source}:" + ("" if lines else " identical"))
        for line in lines:
            typer.echo(line)


def _progress_text(progress: Progress | None) -> tuple[str, str, str]:
    if progress is None:
        return "", "", ""
    total = f"/{progress.total}" if progress.total else ""
    epoch = f" (epoch {progress.epoch})" if progress.epoch else ""
    loss = "" if progress.loss is None else f"{progress.loss:.4g}"
    return f"{progress.iteration}{total}{epoch}", loss, progress.eta or ""


def _handle_rows(handles: Sequence[RunHandle]) -> list[list[str]]:
    rows = []
    for handle in handles:
        state = handle.state()
        iteration, loss, eta = _progress_text(
            read_progress(handle.log_path, handle.job.train_len) if state != "queued" else None
        )
        rows.append(
            [handle.job.run_id, state, iteration, loss, "" if state in FINAL_STATES else eta]
        )
    return rows


_HEADERS = ["run", "state", "iteration", "loss", "ETA"]


class _View:
    """Live progress: a refreshing table on a terminal, one line per change elsewhere."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console()
        self.live = (
            Live(console=self.console, refresh_per_second=2) if self.console.is_terminal else None
        )
        self.seen: dict[str, str] = {}

    def __enter__(self) -> _View:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def tick(self, handles: list[RunHandle]) -> None:
        if self.live is not None:
            from rich.table import Table

            table = Table(*_HEADERS)
            for row in _handle_rows(handles):
                table.add_row(*row)
            self.live.update(table)
            return
        for handle in handles:
            state = handle.state()
            if self.seen.get(handle.job.run_id) != state:
                self.seen[handle.job.run_id] = state
                typer.echo(f"{datetime.now():%H:%M:%S} {handle.job.run_id}: {state}")


def _print_outcome(plan: Plan) -> bool:
    """A table of the plan's runs as the registry has them; True when all are done."""
    rows, all_done = [], True
    for run in plan.runs:
        record = registry.read(run.run_dir)
        status = record.status if record else "not started"
        all_done &= status == "done"
        reason = (record.reason or "") if record else ""
        rows.append([run.run_id, status, reason])
    typer.echo("")
    typer.echo(tabulate(rows, headers=["run id", "status", "reason"]))
    return all_done


def _generate_data(plan: Plan) -> None:
    from aqr_exp.data.synth import SynthSpec, generate

    typer.echo(f"Generating the synthetic data set at {plan.data_root} (once) …")
    summary = generate(SynthSpec(**(plan.profile.synth or {})), plan.data_root, force=False)
    typer.echo(f"  {sum(summary.samples.values())} samples in {summary.seconds:.0f} s")


def _report(plan: Plan, by: str | None) -> None:
    """Collect the finished runs' metrics, print the comparison, write the report."""
    results_root = plan.study_dir.parent
    ours = {run.run_id for run in plan.runs}
    collected = []
    for outcome in collect(results_root, plan.study):
        if outcome.run_dir.name not in ours:
            continue
        if outcome.state == "collected":
            collected.append(outcome.run_dir.name)
        else:
            typer.echo(f"collect {outcome.run_dir.name}: {outcome.state}: {outcome.detail}")
    if not collected:
        typer.echo("\nNo metrics to compare yet.")
        return
    study, results, notes = select_runs(results_root, plan.study, collected)
    typer.echo("")
    settings = BootstrapSettings()
    comparison = compare(results, by=by, study=study, notes=notes, bootstrap=settings)
    typer.echo(render(comparison, "table"), nl=False)
    typer.echo(f"\nReport: {write_report(results_root, plan.study, by, bootstrap=settings)}")


def _print_scripts(scripts: dict[Path, str]) -> None:
    for path, text in scripts.items():
        typer.echo(f"\n--- {path}")
        typer.echo(text, nl=False)


def _submitted(plan: Plan, handles: Sequence[RunHandle]) -> None:
    """What went to the scheduler, and how to follow it."""
    rows = []
    for handle in handles:
        record = registry.read(handle.job.run_dir)
        launcher = (record.launcher if record else None) or {}
        rows.append([handle.job.run_id, launcher.get("job_id"), launcher.get("script")])
    typer.echo(f"\nSubmitted {len(handles)} run(s) to Slurm:\n")
    typer.echo(tabulate(rows, headers=["run id", "slurm job", "script"]))
    root = plan.study_dir.parent
    typer.echo(
        f"\nFollow with: aqr-exp status --study {plan.study} --results-root {root}\n"
        f"When they are done: aqr-exp report --study {plan.study} --results-root {root}"
    )


def _waiting_note(steps: Sequence[registry.Step]) -> None:
    waiting = [step for step in steps if step.action == "wait"]
    if waiting:
        typer.echo(
            f"\n{len(waiting)} run(s) wait for their warm-start parent "
            f"({', '.join(sorted({step.run.parent.run_id for step in waiting}))}): "
            "run the same command again once it is done."
        )


def _refuse_taken(plan: Plan, steps: Sequence[registry.Step]) -> None:
    """Start nothing when a run of the plan has a corrupt run.yaml (it would be
    overwritten) or another live process holds one: one line says which."""
    problems = [step.problem for step in steps if step.problem is not None]
    if problems:
        raise AqrError(
            f"{len(problems)} run(s) of this plan cannot start, nothing was started: "
            + " | ".join(str(problem) for problem in problems)
        )
    taken = registry.held(step.run for step in steps if step.action == "skip")
    if taken:
        raise registry.RunHeld(taken)


@contextlib.contextmanager
def _name_all_held(plan: Plan) -> Iterator[None]:
    """Another process took a run between `decide` and its claim (both started at once):
    the error names every run of the plan it holds, not only the first one met."""
    try:
        yield
    except registry.RunHeld as err:
        raise registry.RunHeld(registry.held(plan.runs) or err.held) from None


def _prepare(plan: Plan, steps: Sequence[registry.Step]) -> list[TrainJob]:
    with _name_all_held(plan):
        return [registry.prepare(plan, step.run, fresh=step.action == "rerun") for step in steps]


def _execute(plan: Plan, how: _Launch, by: str | None = None) -> None:
    steps = registry.decide(plan, force=how.force, retry_failed=how.retry_failed)
    if not how.dry_run:
        _refuse_taken(plan, steps)
    launcher = make_launcher(how.settings, plan.study, dry_run=how.dry_run)
    _print_plan(plan, steps, launcher.describe())
    todo = [step for step in steps if step.action not in ("skip", "blocked")]
    # Built before anything is written: a path sbatch cannot take fails here, cleanly.
    scripts = launcher.scripts([registry.job_for(step.run) for step in todo])
    if how.dry_run:
        _print_scripts(scripts)
        typer.echo("\nDry run: nothing was started or written.")
        return
    if todo and plan.generate_data:
        _generate_data(plan)
    ready = [step for step in todo if step.action != "wait"]
    jobs = _prepare(plan, ready)
    if jobs and not launcher.runs_here:
        _submitted(plan, launcher.submit_all(jobs))
        _waiting_note(todo)
        return
    if jobs and how.detach:
        assert isinstance(launcher, LocalLauncher)
        pool_log = plan.runs[0].work_dir.parent / f"pool-{datetime.now():%Y%m%d_%H%M%S}.log"
        pid = spawn_detached(jobs, launcher, pool_log)
        typer.echo(
            f"\nStarted {len(jobs)} run(s) in the background (pool pid {pid}, log {pool_log})."
        )
        typer.echo(
            f"Follow with: aqr-exp status --study {plan.study} "
            f"--results-root {plan.study_dir.parent}"
        )
        _waiting_note(todo)
        return
    waiting = {step.run.run_id for step in todo if step.action == "wait"}
    while jobs:
        typer.echo("")
        with _View() as view, _name_all_held(plan):
            run_all(launcher, jobs, on_tick=view.tick)
        if not waiting:
            break
        # Warm starts: the runs whose parents have just finished go next.
        later = registry.decide(plan, how.force, how.retry_failed, only=waiting)
        ready = [step for step in later if step.action != "wait"]
        waiting = {step.run.run_id for step in later if step.action == "wait"}
        jobs = _prepare(plan, ready)
    all_done = _print_outcome(plan)
    _report(plan, by)
    if not all_done:
        raise typer.Exit(1)


# ---------------------------------------------------------------- commands


def variants(
    write: Path | None = typer.Option(
        None, "--write", help="Write each variant's resolved config to DIR/<variant>.py."
    ),
    spec: Path = SPEC,
    profile: str | None = PROFILE,
    data_root: Path | None = DATA_ROOT,
) -> None:
    """List the spec's variants and their config diffs against the baseline.

    With --write, save each resolved config (data root and seed filled in); they
    also train unchanged with mmdet3d's tools/train.py."""
    if write is not None and write.exists() and not write.is_dir():
        raise AqrError(f"--write {write} is a file; expected a folder for the configs")
    loaded = load_spec(spec)
    target = Target(profile=profile, data_root=data_root, check_data=False)
    plan = plan_variants(loaded, list(loaded.variants), target)
    for run in plan.runs:
        description = loaded.variants[run.variant].description
        typer.echo(f"{run.variant}: {description}  [{run.config_name}]")
        for line in _diff_lines(plan, run.cfg) or ["    (the baseline)"]:
            typer.echo(line)
        if write is not None:
            path = write / f"{run.variant}.py"
            configs.dump_config(run.cfg, path)
            typer.echo(f"    wrote {path}")


def plan(
    sweep: str | None = typer.Option(
        None, "--sweep", help="Plan only this sweep (name or dotted key)."
    ),
    values: str | None = typer.Option(None, "--values", help="Sweep values, comma-separated."),
    variant: list[str] = typer.Option(
        [], "--variant", help="Plan only these variants (repeatable)."
    ),
    spec: Path = SPEC,
    profile: str | None = PROFILE,
    data_root: Path | None = DATA_ROOT,
    seeds: str | None = SEEDS,
    tracker: list[str] = TRACKER,
    results_root: Path = RESULTS_ROOT,
    work_root: Path = WORK,
) -> None:
    """Show what would run and each run's config diff against the baseline; writes nothing.

    Default: every variant and every named sweep of the spec. Each run's action
    says whether it would start, resume from a checkpoint, or be skipped."""
    loaded = load_spec(spec)
    target = _target(results_root, work_root, profile, data_root, seeds, tracker)
    if sweep is not None:
        chosen = resolve_sweep(loaded, sweep, _values(values), variant[0] if variant else None)
        built = plan_sweep(loaded, chosen, target)
    elif variant:
        built = plan_variants(loaded, variant, target)
    else:
        built = plan_study(loaded, target)
    _print_plan(built, registry.decide(built), None)


def _values(text: str | None) -> list[Any] | None:
    return configs.parse_values(text, "--values") if text else None


def run(
    variant: list[str] = typer.Argument(
        ..., help="Variant name(s) of the spec, e.g. baseline new_aqr."
    ),
    spec: Path = SPEC,
    profile: str | None = PROFILE,
    data_root: Path | None = DATA_ROOT,
    seeds: str | None = SEEDS,
    tracker: list[str] = TRACKER,
    launcher: str | None = LAUNCHER,
    jobs: int | None = JOBS,
    gpus_per_run: int | None = GPUS,
    partition: str | None = PARTITION,
    nodes: int | None = NODES,
    gpus_per_node: int | None = GPUS_PER_NODE,
    cpus_per_task: int | None = CPUS_PER_TASK,
    mem: str | None = MEM,
    time: str | None = TIME,
    account: str | None = ACCOUNT,
    qos: str | None = QOS,
    sbatch_arg: list[str] = SBATCH_ARG,
    dry_run: bool = DRY_RUN,
    detach: bool = DETACH,
    force: bool = FORCE,
    retry_failed: bool = RETRY,
    results_root: Path = RESULTS_ROOT,
    work_root: Path = WORK,
) -> None:
    """Train variants of the spec, at each seed.

    Finished runs are skipped, interrupted ones resumed from their last
    checkpoint, failed ones retried with --retry-failed."""
    loaded = load_spec(spec)
    slurm = _slurm_options(
        partition, nodes, gpus_per_node, cpus_per_task, mem, time, account, qos, sbatch_arg
    )
    how = _launch(loaded, launcher, jobs, gpus_per_run, slurm, dry_run, detach, force, retry_failed)
    built = plan_variants(
        loaded, variant, _target(results_root, work_root, profile, data_root, seeds, tracker)
    )
    _execute(built, how)


def sweep(
    name: str = typer.Argument(
        ..., help="A named sweep of the spec (window_size, bias_scale) or a dotted config key."
    ),
    values: str | None = typer.Option(
        None,
        "--values",
        help="Comma-separated values (required for a config key; replaces a named sweep's).",
    ),
    variant: str | None = typer.Option(
        None,
        "--variant",
        help="The variant to sweep (default: the sweep's, or the baseline for a key).",
    ),
    spec: Path = SPEC,
    profile: str | None = PROFILE,
    data_root: Path | None = DATA_ROOT,
    seeds: str | None = SEEDS,
    tracker: list[str] = TRACKER,
    launcher: str | None = LAUNCHER,
    jobs: int | None = JOBS,
    gpus_per_run: int | None = GPUS,
    partition: str | None = PARTITION,
    nodes: int | None = NODES,
    gpus_per_node: int | None = GPUS_PER_NODE,
    cpus_per_task: int | None = CPUS_PER_TASK,
    mem: str | None = MEM,
    time: str | None = TIME,
    account: str | None = ACCOUNT,
    qos: str | None = QOS,
    sbatch_arg: list[str] = SBATCH_ARG,
    dry_run: bool = DRY_RUN,
    detach: bool = DETACH,
    force: bool = FORCE,
    retry_failed: bool = RETRY,
    results_root: Path = RESULTS_ROOT,
    work_root: Path = WORK,
) -> None:
    """Train the baseline and a variant at each value of a parameter; compare and report.

    `aqr-exp sweep window_size` is the main job: on a fresh machine it generates
    the synthetic data, trains the CPU demo for window_size 5, 8, 10, 15 and the
    baseline, prints the comparison and writes results/<study>/report.md."""
    loaded = load_spec(spec)
    slurm = _slurm_options(
        partition, nodes, gpus_per_node, cpus_per_task, mem, time, account, qos, sbatch_arg
    )
    how = _launch(loaded, launcher, jobs, gpus_per_run, slurm, dry_run, detach, force, retry_failed)
    chosen = resolve_sweep(loaded, name, _values(values), variant)
    built = plan_sweep(
        loaded, chosen, _target(results_root, work_root, profile, data_root, seeds, tracker)
    )
    _execute(built, how, by=chosen.name)


def status(
    run_id: str | None = typer.Argument(
        None, help="Show one run in full (a unique prefix of its id)."
    ),
    study: str | None = STUDY,
    results_root: Path = RESULTS_ROOT,
) -> None:
    """Show every run's state: progress while running, the reason when it did not finish.

    A run whose process is gone (killed, machine restarted) is marked interrupted."""
    if run_id is not None:
        run_dir = _find_run(results_root, study, run_id)
        record = registry.reconcile(run_dir)
        assert record is not None
        typer.echo(record.to_yaml(), nl=False)
        if record.work_dir:  # an imported run has none
            typer.echo(f"# log: {Path(record.work_dir) / LOG_NAME}")
        slurm_state = _slurm_state(record, slurmctl.queue())
        if slurm_state:
            typer.echo(f"# slurm: job {slurm_state}")
        return
    run_dirs = registry.runs_of(results_root, study)
    if not run_dirs:
        typer.echo(f"No runs under {results_root}" + (f" for study {study}" if study else ""))
        return
    rows, shown = [], []
    for run_dir, record in records.readable(run_dirs, registry.reconcile):
        assert record is not None
        shown.append(record)
        detail = record.reason or ""
        if record.status == "running":
            train_len = configs.train_length(configs.load_config(run_dir / registry.CONFIG_FILE))
            iteration, loss, eta = _progress_text(
                read_progress(Path(record.work_dir) / LOG_NAME, train_len)
            )
            detail = f"iter {iteration}  loss {loss}  ETA {eta}" if iteration else "starting"
        sweep = record.sweep
        sweep_text = f"{sweep.get('param')}={sweep.get('value')}" if sweep else "-"
        rows.append(
            [
                record.study,
                record.run_id,
                record.variant,
                sweep_text,
                record.seed,
                record.status,
                _cut(detail),
            ]
        )
    headers = ["study", "run id", "variant", "sweep", "seed", "status", "detail"]
    on_slurm = any((record.launcher or {}).get("type") == "slurm" for record in shown)
    jobs = slurmctl.queue() if on_slurm else None  # one snapshot for the whole table
    slurm_states = [_slurm_state(record, jobs) for record in shown]
    if any(slurm_states):
        headers.insert(6, "slurm")
        rows = [
            [*row[:6], state or "-", *row[6:]]
            for row, state in zip(rows, slurm_states, strict=True)
        ]
    typer.echo(tabulate(rows, headers=headers))
    for line in trackers.where_to_look_all(record.trackers for record in shown):
        typer.echo(f"Curves in {line}")


def _slurm_state(record: registry.RunRecord, jobs: dict[str, slurmctl.SlurmJob] | None) -> str:
    """'12_0 RUNNING' for a run with a Slurm job ('gone' once Slurm forgot it); '' otherwise.

    `jobs` is one squeue snapshot (None: squeue could not be asked)."""
    launcher = record.launcher or {}
    if launcher.get("type") != "slurm" or not launcher.get("job_id"):
        return ""
    if jobs is None:
        return f"{launcher['job_id']} (squeue unavailable)"
    job = jobs.get(str(launcher["job_id"]))
    return f"{launcher['job_id']} {job.describe() if job else 'gone'}"


def _cut(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _find_run(results_root: Path, study: str | None, prefix: str) -> Path:
    matches = [
        path for path in registry.runs_of(results_root, study) if path.name.startswith(prefix)
    ]
    if len(matches) != 1:
        what = (
            "no run"
            if not matches
            else f"{len(matches)} runs ({', '.join(p.name for p in matches)})"
        )
        raise AqrError(f"{what} under {results_root} match {prefix!r}")
    return matches[0]


def cancel(
    run_ids: list[str] = typer.Argument(
        None, help="Runs to cancel (unique prefixes of their ids)."
    ),
    all_runs: bool = typer.Option(
        False, "--all", help="Cancel every queued or running run (of --study)."
    ),
    study: str | None = STUDY,
    results_root: Path = RESULTS_ROOT,
) -> None:
    """Stop running runs and drop queued ones (recorded as cancelled).

    The next `run`/`sweep` resumes them from their last checkpoint."""
    if all_runs:
        found = records.readable(registry.runs_of(results_root, study), registry.reconcile)
        targets = [
            run_dir
            for run_dir, record in found
            if record is not None and record.status in ("planned", "queued", "running")
        ]
    elif run_ids:
        targets = [_find_run(results_root, study, prefix) for prefix in run_ids]
    else:
        raise AqrError("name the runs to cancel, or pass --all")
    if not targets:
        typer.echo("Nothing to cancel.")
    for run_dir in targets:
        record = cancel_run(run_dir)
        typer.echo(f"cancelled {record.run_id}")


def train(
    config: Path = typer.Argument(..., help="The mmengine config to train."),
    work_dir: Path | None = typer.Option(None, "--work-dir", help="Where checkpoints and logs go."),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue from the work dir's last checkpoint (from scratch if none).",
    ),
    resume_from: Path | None = typer.Option(
        None, "--resume-from", help="Continue from this checkpoint."
    ),
    amp: bool = typer.Option(False, "--amp", help="Automatic mixed precision (GPU only)."),
    auto_scale_lr: bool = typer.Option(
        False, "--auto-scale-lr", help="Scale the LR with the batch size."
    ),
    launcher: str = typer.Option(
        "none", "--launcher", help="none, pytorch (torchrun) or slurm (srun)."
    ),
    cfg_options: list[str] = typer.Option(
        [], "--cfg-options", help="KEY=VALUE config override (repeatable), as in mmdet3d."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Random seed (sets randomness.seed)."),
    checkpoint_interval: int | None = typer.Option(
        None,
        "--checkpoint-interval",
        help="Save a checkpoint every N epochs (iterations if iteration-based).",
    ),
) -> None:
    """Train one config, like mmdet3d's tools/train.py (same as `python -m aqr_exp.train`).

    Plus the project's fixes: resume under torch >= 2.6, --seed,
    --checkpoint-interval, and a stop with a clear message on a NaN/inf loss."""
    from aqr_exp import train as entry

    argv = [str(config), "--launcher", launcher]
    argv += ["--work-dir", str(work_dir)] if work_dir else []
    argv += ["--resume", str(resume_from)] if resume_from else (["--resume"] if resume else [])
    argv += ["--amp"] if amp else []
    argv += ["--auto-scale-lr"] if auto_scale_lr else []
    argv += ["--cfg-options", *cfg_options] if cfg_options else []
    argv += ["--seed", str(seed)] if seed is not None else []
    argv += ["--checkpoint-interval", str(checkpoint_interval)] if checkpoint_interval else []
    if launcher not in entry.LAUNCHERS:
        raise AqrError(f"--launcher must be one of {', '.join(entry.LAUNCHERS)}, got {launcher!r}")
    problem = entry.cfg_options_problem(cfg_options)
    if problem is not None:
        raise AqrError(f"--cfg-options {problem}")
    # Bad options or files come back as AqrError: the app's one `error:` line.
    code = entry.main(argv, log_usage_errors=False)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command()(variants)
    app.command()(plan)
    app.command()(run)
    app.command()(sweep)
    app.command()(status)
    app.command()(cancel)
    app.command()(train)
