"""From a plan to launched runs, and from finished runs to the report.

The one step between planning and the registry/launchers: `decide` what each run of a
plan needs (start, resume, rerun, skip, wait for its warm-start parent), `prepare`
their registry entries, hand them to a launcher (foreground, detached, or a
scheduler), and chain collect → compare → report once they are done. Everything
here returns what happened; the CLI prints it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aqr_exp import configs, paths, registry
from aqr_exp.errors import AqrError
from aqr_exp.launch import backends
from aqr_exp.launch.base import Launcher, RunHandle, TrainJob, run_all
from aqr_exp.plan import Plan, Run
from aqr_exp.records import CorruptRecord
from aqr_exp.registry import ACTIVE, RUN_FILE, RunHeld, RunRecord
from aqr_exp.spec import LauncherSettings, SlurmSettings, Spec, slurm_problem

if TYPE_CHECKING:
    from aqr_exp.results.compare import Comparison

Say = Callable[[str], None]  # one line of progress for the user
Tick = Callable[[list[RunHandle]], None]


@dataclass(frozen=True)
class Launch:
    """How to start a plan (the launcher options of `run` and `sweep`)."""

    settings: LauncherSettings
    dry_run: bool = False
    detach: bool = False
    force: bool = False
    retry_failed: bool = False


def slurm_flag(field_name: str) -> str:
    return "--sbatch-arg" if field_name == "extra_args" else f"--{field_name.replace('_', '-')}"


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
        name, message = problem
        origin = "" if name in given else f" (launcher.slurm.{name} of {spec_path.name})"
        raise AqrError(f"{slurm_flag(name)}{origin}: {message}")
    return settings


def launch_settings(
    spec: Spec,
    launcher: str | None = None,
    jobs: int | None = None,
    gpus: int | None = None,
    slurm_options: dict[str, Any] | None = None,
    detach: bool = False,
) -> LauncherSettings:
    """The spec's launcher settings with the command line's on top, checked together."""
    base = spec.launcher
    chosen = backends.backend(launcher or base.type)
    kind = chosen.name
    slurm_options = slurm_options or {}
    if jobs is not None and jobs < 1:
        raise AqrError(f"--jobs must be at least 1, got {jobs}")
    if gpus is not None and gpus < 0:
        raise AqrError(f"--gpus-per-run must be 0 or more, got {gpus}")
    if chosen.scheduler and gpus is not None:
        raise AqrError(
            f"--gpus-per-run is for the local launchers; {kind} takes its own (--gpus-per-node)"
        )
    if chosen.scheduler and detach:
        raise AqrError(f"--detach is for the local launchers: {kind} never waits for its runs")
    if kind != "slurm" and slurm_options:
        raise AqrError(
            f"{slurm_flag(next(iter(slurm_options)))} is a Slurm option: add --launcher slurm "
            f"(the launcher is {kind})"
        )
    return LauncherSettings(
        type=kind,
        max_concurrent=jobs or base.max_concurrent,
        gpus_per_run=base.gpus_per_run if gpus is None else gpus,
        slurm=_slurm_settings(base.slurm, slurm_options, jobs, spec.path)
        if kind == "slurm"
        else base.slurm,
    )


# ------------------------------------------------------------------ decide / prepare


@dataclass(frozen=True)
class Step:
    """What starting a plan does to one run."""

    run: Run
    # start | resume | rerun | skip | wait (for its warm-start parent) | blocked (its
    # run.yaml is corrupt: `problem` says how; nothing may start or rewrite it)
    action: str
    note: str = ""
    problem: CorruptRecord | None = None


def _has_checkpoint(work_dir: Path) -> bool:
    return (work_dir / "last_checkpoint").is_file()


def _status(run: Run) -> tuple[str | None, str | None]:
    record = registry.read(run.run_dir)
    return backends.observe(record) if record else (None, None)


def decide(
    plan: Plan,
    force: bool = False,
    retry_failed: bool = False,
    only: set[str] | None = None,
) -> list[Step]:
    """Per run: start it, resume it, rerun it from scratch, skip it (read-only),
    wait until its warm-start parent is done, or leave it blocked (corrupt run.yaml).

    Finished runs are skipped, interrupted/cancelled ones resumed from their
    last checkpoint, failed ones retried only on request; `force` reruns all
    but the ones still running. `only`: decide for these run ids alone (the
    others are taken as settled).
    """
    steps, starting, blocked = [], set(), set()
    for run in plan.runs:
        if only is not None and run.run_id not in only:
            continue
        step = _decide_one(run, force, retry_failed)
        parent = run.parent
        if step.action == "blocked":
            blocked.add(run.run_id)
        elif parent is not None and step.action != "skip":
            if parent.run_id in blocked:
                note = f"starts once {parent.run_id} is done (its {RUN_FILE} is corrupt)"
                step = Step(run, "wait", note)
            else:
                parent_status, _ = _status(parent)
                if parent.run_id in starting or parent_status != "done":
                    state = "starting now" if parent.run_id in starting else parent_status
                    note = f"starts once {parent.run_id} is done ({state or 'new'})"
                    step = Step(run, "wait", note)
        if step.action not in ("skip", "wait", "blocked"):
            starting.add(run.run_id)
        steps.append(step)
    return steps


def _decide_one(run: Run, force: bool, retry_failed: bool) -> Step:
    try:
        record = registry.read(run.run_dir)
    except CorruptRecord as err:
        return Step(run, "blocked", f"its {RUN_FILE} is corrupt: {err.problem}", err)
    status, reason = backends.observe(record) if record else (None, None)
    resume = "resume" if _has_checkpoint(run.work_dir) else "start"
    if status in ACTIVE:
        where = registry.describe_launch(record.launcher if record else None)
        return Step(run, "skip", f"{status} ({where}); `aqr-exp cancel` stops it")
    if force and status is not None:
        return Step(run, "rerun", f"was {status}; --force starts it from scratch")
    if status == "done":
        return Step(run, "skip", "done")
    if status == "failed" and not retry_failed:
        return Step(run, "skip", f"failed: {reason}; --retry-failed retries it")
    note = {None: "new", "planned": "planned earlier"}.get(status, f"was {status}")
    return Step(run, resume, note)


def job_for(run: Run) -> TrainJob:
    """What a launcher needs to train a planned run."""
    return TrainJob(
        run_id=run.run_id,
        run_dir=run.run_dir,
        work_dir=run.work_dir,
        train_len=configs.train_length(run.cfg),
    )


def prepare(plan: Plan, run: Run, fresh: bool) -> TrainJob:
    """Create (or reset) a run's registry entry and resolved config: status planned.

    `fresh` (--force) deletes the work dir first, so nothing is resumed and
    the logs of the earlier attempt do not mix with the new ones.
    """
    if run.parent is not None and not Path(run.cfg.load_from).is_file():
        raise AqrError(
            f"{run.run_id} starts from {run.parent.run_id}, whose final checkpoint "
            f"{run.cfg.load_from} is missing: rerun that run (--force) first"
        )
    run.run_dir.mkdir(parents=True, exist_ok=True)
    backends.reconcile(run.run_dir)  # a run whose process died is interrupted, not running
    record = RunRecord(
        run_id=run.run_id,
        study=run.study,
        variant=run.variant,
        sweep=run.sweep.as_dict() if run.sweep else None,
        overrides=run.overrides,
        seed=run.seed,
        config=run.config_name,
        work_dir=str(run.work_dir),
        git_commit=registry.git_commit(),
        code=str(paths.PACKAGE_ROOT),
        data_root=str(plan.data_root),
        init_from=run.parent.run_id if run.parent else None,
        trackers=run.trackers or None,
    )
    with registry.locked(run.run_dir):
        previous = registry.read(run.run_dir)
        if previous is not None and backends.observe(previous)[0] in ACTIVE:
            # Another `run`/`sweep` took it since `decide`: its work dir and config stay.
            raise RunHeld([registry.holding(previous)])
        if fresh and run.work_dir.exists():
            shutil.rmtree(run.work_dir)
        configs.dump_config(run.cfg, run.run_dir / registry.CONFIG_FILE)
        if previous is not None:
            record.created = previous.created
        registry.write_record(run.run_dir, record)
    return job_for(run)


def held(runs: Iterable[Run]) -> list[str]:
    """The runs that a live process holds (queued or running), each with its holder."""
    found = []
    for run in runs:
        record = registry.read(run.run_dir)
        if record is not None and backends.observe(record)[0] in ACTIVE:
            found.append(registry.holding(record))
    return found


@contextlib.contextmanager
def _name_all_held(plan: Plan) -> Iterator[None]:
    """Another process took a run between `decide` and its claim (both started at once):
    the error names every run of the plan it holds, not only the first one met."""
    try:
        yield
    except RunHeld as err:
        raise RunHeld(held(plan.runs) or err.held) from None


def _prepare_all(plan: Plan, steps: Sequence[Step]) -> list[TrainJob]:
    with _name_all_held(plan):
        return [prepare(plan, step.run, fresh=step.action == "rerun") for step in steps]


# ------------------------------------------------------------------ start


@dataclass
class Prepared:
    """A plan with what starting it would do, before anything is written."""

    plan: Plan
    how: Launch
    steps: list[Step]
    launcher: Launcher
    scripts: dict[Path, str]  # files a scheduler submission writes (shown by --dry-run)

    @property
    def todo(self) -> list[Step]:
        return [step for step in self.steps if step.action not in ("skip", "blocked")]

    @property
    def waiting(self) -> list[Step]:
        return [step for step in self.steps if step.action == "wait"]


def _refuse_taken(plan: Plan, steps: Sequence[Step]) -> None:
    """Start nothing when a run of the plan has a corrupt run.yaml (it would be
    overwritten) or another live process holds one: one line says which."""
    problems = [step.problem for step in steps if step.problem is not None]
    if problems:
        raise AqrError(
            f"{len(problems)} run(s) of this plan cannot start, nothing was started: "
            + " | ".join(str(problem) for problem in problems)
        )
    taken = held(step.run for step in steps if step.action == "skip")
    if taken:
        raise RunHeld(taken)


def prepare_plan(plan: Plan, how: Launch) -> Prepared:
    """Decide each run's step and build the launcher; checks everything a start would
    (held or corrupt runs, paths a scheduler cannot take) and writes nothing."""
    steps = decide(plan, force=how.force, retry_failed=how.retry_failed)
    if not how.dry_run:
        _refuse_taken(plan, steps)
    launcher = backends.make_launcher(how.settings, plan.study, dry_run=how.dry_run)
    prepared = Prepared(plan, how, steps, launcher, {})
    prepared.scripts = launcher.scripts([job_for(step.run) for step in prepared.todo])
    return prepared


@dataclass
class Started:
    """How a plan's runs were started: handed to a scheduler, a background pool, or
    trained here (`jobs`, for `train_here`)."""

    how: str  # submitted | detached | here | nothing
    handles: list[RunHandle] = field(default_factory=list)
    jobs: list[TrainJob] = field(default_factory=list)
    pool_pid: int | None = None
    pool_log: Path | None = None


def generate_data(plan: Plan, say: Say) -> None:
    """The synthetic data set of the plan's profile, generated once when absent."""
    from aqr_exp.data.synth import SynthSpec, generate

    say(f"Generating the synthetic data set at {plan.data_root} (once) …")
    summary = generate(SynthSpec(**(plan.profile.synth or {})), plan.data_root, force=False)
    say(f"  {sum(summary.samples.values())} samples in {summary.seconds:.0f} s")


def start(prepared: Prepared, say: Say) -> Started:
    """Write the runs' registry entries and start them with the plan's launcher."""
    plan, how, launcher = prepared.plan, prepared.how, prepared.launcher
    todo = prepared.todo
    if todo and plan.generate_data:
        generate_data(plan, say)
    jobs = _prepare_all(plan, [step for step in todo if step.action != "wait"])
    if not jobs:
        return Started("nothing")
    if not launcher.runs_here:
        return Started("submitted", handles=launcher.submit_all(jobs), jobs=jobs)
    if how.detach:
        from aqr_exp.launch.local import LocalLauncher, spawn_detached

        if not isinstance(launcher, LocalLauncher):
            raise AqrError(f"--detach is for the local launchers, not {how.settings.type}")
        pool_log = plan.runs[0].work_dir.parent / f"pool-{datetime.now():%Y%m%d_%H%M%S}.log"
        pid = spawn_detached(jobs, launcher, pool_log)
        return Started("detached", jobs=jobs, pool_pid=pid, pool_log=pool_log)
    return Started("here", jobs=jobs)


def train_here(
    prepared: Prepared, jobs: list[TrainJob], watch: Callable[[], AbstractContextManager[Tick]]
) -> None:
    """Train in the foreground until every run is done, then the warm-start children
    whose parents have just finished. `watch` shows the live progress of each batch."""
    plan, how = prepared.plan, prepared.how
    waiting = {step.run.run_id for step in prepared.waiting}
    while jobs:
        with watch() as tick, _name_all_held(plan):
            run_all(prepared.launcher, jobs, on_tick=tick)
        if not waiting:
            return
        later = decide(plan, how.force, how.retry_failed, only=waiting)
        waiting = {step.run.run_id for step in later if step.action == "wait"}
        jobs = _prepare_all(plan, [step for step in later if step.action != "wait"])


def outcome(plan: Plan) -> list[tuple[str, str, str]]:
    """(run id, status, reason) of each run of the plan, as the registry has it."""
    rows = []
    for run in plan.runs:
        record = registry.read(run.run_dir)
        rows.append(
            (
                run.run_id,
                record.status if record else "not started",
                (record.reason or "") if record else "",
            )
        )
    return rows


# ------------------------------------------------------------------ results


@dataclass
class Summary:
    """collect → compare → report of a plan's finished runs."""

    skipped: list[tuple[str, str, str]]  # (run id, state, detail) of runs not collected
    comparison: Comparison | None = None
    report: Path | None = None


def summarize(plan: Plan, by: str | None) -> Summary:
    """Collect the finished runs' metrics, compare them, write the report."""
    # pandas and matplotlib take a second to import: only once there is something to report.
    from aqr_exp.results.collect import collect
    from aqr_exp.results.compare import BootstrapSettings, compare, select_runs
    from aqr_exp.results.report import write_report

    results_root = plan.study_dir.parent
    ours = {run.run_id for run in plan.runs}
    collected, skipped = [], []
    for result in collect(results_root, plan.study):
        if result.run_dir.name not in ours:
            continue
        if result.state == "collected":
            collected.append(result.run_dir.name)
        else:
            skipped.append((result.run_dir.name, result.state, result.detail))
    if not collected:
        return Summary(skipped)
    study, results, notes = select_runs(results_root, plan.study, collected)
    settings = BootstrapSettings()
    comparison = compare(results, by=by, study=study, notes=notes, bootstrap=settings)
    report = write_report(results_root, plan.study, by, bootstrap=settings)
    return Summary(skipped, comparison, report)
