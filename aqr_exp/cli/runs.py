"""`aqr-exp variants | plan | run | sweep | status | cancel | train`: run experiments.

Thin: parse options, call spec → plan → execute, print. Every
command that would start trainings takes `--dry-run`, which prints the plan
(the runs and their config diffs against the baseline) and writes nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from tabulate import tabulate

from aqr_exp import configs, execute, paths, records, registry, trackers
from aqr_exp.errors import AqrError
from aqr_exp.launch import backends
from aqr_exp.launch.base import FINAL_STATES, LOG_NAME, RunHandle
from aqr_exp.plan import (
    Plan,
    Target,
    plan_study,
    plan_sweep,
    plan_variants,
    resolve_sweep,
)
from aqr_exp.progress import Progress, read_progress
from aqr_exp.spec import (
    Spec,
    load_spec,
    seeds_problem,
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
class _StartOptions:
    """The options `run` and `sweep` share, declared once (see `_start_command`)."""

    spec: Path
    profile: str | None
    data_root: Path | None
    seeds: str | None
    tracker: list[str]
    launcher: str | None
    jobs: int | None
    gpus_per_run: int | None
    partition: str | None
    nodes: int | None
    gpus_per_node: int | None
    cpus_per_task: int | None
    mem: str | None
    time: str | None
    account: str | None
    qos: str | None
    sbatch_arg: list[str]
    dry_run: bool
    detach: bool
    force: bool
    retry_failed: bool
    results_root: Path
    work_root: Path

    def resolve(self) -> tuple[Spec, execute.Launch, Target]:
        """The spec, how to start its runs, and where they go."""
        loaded = load_spec(self.spec)
        slurm = _slurm_options(
            self.partition, self.nodes, self.gpus_per_node, self.cpus_per_task, self.mem,
            self.time, self.account, self.qos, self.sbatch_arg,
        )  # fmt: skip
        settings = execute.launch_settings(
            loaded, self.launcher, self.jobs, self.gpus_per_run, slurm, self.detach
        )
        how = execute.Launch(settings, self.dry_run, self.detach, self.force, self.retry_failed)
        target = _target(
            self.results_root, self.work_root, self.profile, self.data_root, self.seeds,
            self.tracker,
        )  # fmt: skip
        return loaded, how, target


_START_DEFAULTS = {
    "spec": SPEC, "profile": PROFILE, "data_root": DATA_ROOT, "seeds": SEEDS,
    "tracker": TRACKER, "launcher": LAUNCHER, "jobs": JOBS, "gpus_per_run": GPUS,
    "partition": PARTITION, "nodes": NODES, "gpus_per_node": GPUS_PER_NODE,
    "cpus_per_task": CPUS_PER_TASK, "mem": MEM, "time": TIME, "account": ACCOUNT,
    "qos": QOS, "sbatch_arg": SBATCH_ARG, "dry_run": DRY_RUN, "detach": DETACH,
    "force": FORCE, "retry_failed": RETRY, "results_root": RESULTS_ROOT, "work_root": WORK,
}  # fmt: skip


def _start_command(command: Callable[..., None]) -> Callable[..., None]:
    """A command that starts runs: its own parameters, then the shared options (typer
    reads the signature), handed to it as one `opts`."""
    own = inspect.signature(command, eval_str=True).parameters
    kinds = typing.get_type_hints(_StartOptions)
    shared = [
        inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kinds[name]
        )
        for name, option in _START_DEFAULTS.items()
    ]

    @functools.wraps(command)
    def with_options(**given: Any) -> None:
        opts = _StartOptions(**{name: given.pop(name) for name in _START_DEFAULTS})
        command(**given, opts=opts)

    params = [p for name, p in own.items() if name != "opts"]
    with_options.__signature__ = inspect.Signature([*params, *shared])  # type: ignore[attr-defined]
    with_options.__annotations__ = {p.name: p.annotation for p in [*params, *shared]}
    return with_options


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


def _print_plan(plan: Plan, steps: Sequence[execute.Step], launcher: str | None) -> None:
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

    def __enter__(self) -> execute.Tick:
        typer.echo("")
        if self.live is not None:
            self.live.__enter__()
        return self.tick

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


def _print_scripts(scripts: dict[Path, str]) -> None:
    for path, text in scripts.items():
        typer.echo(f"\n--- {path}")
        typer.echo(text, nl=False)


def _submitted(plan: Plan, handles: Sequence[RunHandle], scheduler: str) -> None:
    """What went to the scheduler, and how to follow it."""
    rows = []
    for handle in handles:
        record = registry.read(handle.job.run_dir)
        launcher = (record.launcher if record else None) or {}
        rows.append([handle.job.run_id, launcher.get("job_id"), launcher.get("script")])
    typer.echo(f"\nSubmitted {len(handles)} run(s) to {scheduler}:\n")
    typer.echo(tabulate(rows, headers=["run id", f"{scheduler} job", "script"]))
    root = plan.study_dir.parent
    typer.echo(
        f"\nFollow with: aqr-exp status --study {plan.study} --results-root {root}\n"
        f"When they are done: aqr-exp report --study {plan.study} --results-root {root}"
    )


def _waiting_note(steps: Sequence[execute.Step]) -> None:
    waiting = [step for step in steps if step.action == "wait"]
    if waiting:
        typer.echo(
            f"\n{len(waiting)} run(s) wait for their warm-start parent "
            f"({', '.join(sorted({step.run.parent.run_id for step in waiting}))}): "
            "run the same command again once it is done."
        )


def _execute(plan: Plan, how: execute.Launch, by: str | None = None) -> None:
    prepared = execute.prepare_plan(plan, how)
    _print_plan(plan, prepared.steps, prepared.launcher.describe())
    if how.dry_run:
        _print_scripts(prepared.scripts)
        typer.echo("\nDry run: nothing was started or written.")
        return
    started = execute.start(prepared, typer.echo)
    if started.how == "submitted":
        _submitted(plan, started.handles, how.settings.type)
        _waiting_note(prepared.waiting)
        return
    if started.how == "detached":
        typer.echo(
            f"\nStarted {len(started.jobs)} run(s) in the background "
            f"(pool pid {started.pool_pid}, log {started.pool_log})."
        )
        typer.echo(
            f"Follow with: aqr-exp status --study {plan.study} "
            f"--results-root {plan.study_dir.parent}"
        )
        _waiting_note(prepared.waiting)
        return
    if started.how == "here":
        execute.train_here(prepared, started.jobs, _View)
    rows = execute.outcome(plan)
    typer.echo("")
    typer.echo(tabulate(rows, headers=["run id", "status", "reason"]))
    _print_summary(execute.summarize(plan, by))
    if any(status != "done" for _, status, _ in rows):
        raise typer.Exit(1)


def _print_summary(summary: execute.Summary) -> None:
    for run_id, state, detail in summary.skipped:
        typer.echo(f"collect {run_id}: {state}: {detail}")
    if summary.comparison is None:
        typer.echo("\nNo metrics to compare yet.")
        return
    from aqr_exp.results.render import render

    typer.echo("")
    typer.echo(render(summary.comparison, "table"), nl=False)
    typer.echo(f"\nReport: {summary.report}")


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
    names = [variant.name for variant in loaded.variants_at(loaded.profile(profile))]
    plan = plan_variants(loaded, names, target)
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
    _print_plan(built, execute.decide(built), None)


def _values(text: str | None) -> list[Any] | None:
    return configs.parse_values(text, "--values") if text else None


def run(
    variant: list[str] = typer.Argument(
        ..., help="Variant name(s) of the spec, e.g. baseline new_aqr."
    ),
    *,
    opts: _StartOptions,
) -> None:
    """Train variants of the spec, at each seed.

    Finished runs are skipped, interrupted ones resumed from their last
    checkpoint, failed ones retried with --retry-failed."""
    loaded, how, target = opts.resolve()
    _execute(plan_variants(loaded, variant, target), how)


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
    *,
    opts: _StartOptions,
) -> None:
    """Train the baseline and a variant at each value of a parameter; compare and report.

    `aqr-exp sweep window_size` is the main job: on a fresh machine it generates
    the synthetic data, trains the CPU demo for window_size 5, 8, 10, 15 and the
    baseline, prints the comparison and writes results/<study>/report.md."""
    loaded, how, target = opts.resolve()
    chosen = resolve_sweep(loaded, name, _values(values), variant)
    _execute(plan_sweep(loaded, chosen, target), how, by=chosen.name)


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
        record = backends.reconcile(run_dir)
        if record is None:
            raise AqrError(f"{run_dir}: no {registry.RUN_FILE}")
        typer.echo(record.to_yaml(), nl=False)
        if record.work_dir:  # an imported run has none
            typer.echo(f"# log: {Path(record.work_dir) / LOG_NAME}")
        queue_state = backends.queue_states([record])[0]
        if queue_state:
            typer.echo(f"# {record.launcher['type']}: job {queue_state}")
        return
    run_dirs = registry.runs_of(results_root, study)
    if not run_dirs:
        typer.echo(f"No runs under {results_root}" + (f" for study {study}" if study else ""))
        return
    rows, shown = [], []
    for run_dir, record in records.readable(run_dirs, backends.reconcile):
        if record is None:
            continue  # removed since it was listed
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
    queue_states = backends.queue_states(shown)  # each scheduler asked once
    if any(queue_states):
        headers.insert(6, "job")
        rows = [
            [*row[:6], state or "-", *row[6:]]
            for row, state in zip(rows, queue_states, strict=True)
        ]
    typer.echo(tabulate(rows, headers=headers))
    for line in trackers.where_to_look_all(record.trackers for record in shown):
        typer.echo(f"Curves in {line}")


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
        found = records.readable(registry.runs_of(results_root, study), backends.reconcile)
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
        record = backends.cancel_run(run_dir)
        typer.echo(f"cancelled {record.run_id}")


def train(ctx: typer.Context) -> None:
    """Train one config, like mmdet3d's tools/train.py (`aqr-exp train --help`: options).

    CONFIG [--work-dir DIR] [--resume [CHECKPOINT]] [--amp] [--launcher ...]
    [--cfg-options KEY=VALUE ...] [--seed N] [--checkpoint-interval N]: the same entry as
    `python -m aqr_exp.train`, plus the project's fixes: resume under torch >= 2.6,
    --seed, --checkpoint-interval, and a stop with a clear message on a NaN/inf loss."""
    from aqr_exp import train as entry

    code = entry.main(ctx.args, log_usage_errors=False, prog="aqr-exp train")
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command()(variants)
    app.command()(plan)
    app.command()(_start_command(run))
    app.command()(_start_command(sweep))
    app.command()(status)
    app.command()(cancel)
    # train.py's own parser reads every argument (--help included): declared once.
    passthrough = {
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "help_option_names": [],
    }
    app.command(context_settings=passthrough)(train)
