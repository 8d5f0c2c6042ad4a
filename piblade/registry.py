"""The job registry: which jobs exist, what parameters they take, how they fan out.

Only functions registered here ever run on a worker. A queued job names its
function by dotted path; the worker looks that path up in the registry and
refuses anything else, so writing to Redis is not enough to run arbitrary code.

This module is pure: it imports neither Redis nor Numba. Job modules import it
to declare themselves; the controller uses it to validate parameters before a
single byte is enqueued.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import math
import os
import pkgutil
import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from piblade import envvars
from piblade.errors import BadParameter, JobError, UnknownJob, UnregisteredCallable

if TYPE_CHECKING:
    from piblade.resultsdb import Column, ResultsTarget

#: The module that a wheel built for a node carries, naming the source it was built from
#: (``piblade.provision.wheelhouse`` writes it into the copy it builds from).
BUILD_MODULE = "piblade._build"


class JobChanged(JobError):
    """A queued task that the code this worker runs can no longer take: its job changed since the submit.

    Raised instead of the ``TypeError`` (or worse, a wrong result) that calling
    the new function with the old run's keyword arguments would give.
    """


@functools.cache
def code_version() -> str:
    """Which piblade code this process runs: ``<version>+<build>``, e.g. ``0.1.0+3add8bb60c786e19``.

    The build is the hash of the source a wheel was built from (the wheelhouse's
    ``source_hash``, stamped into the wheel as :data:`BUILD_MODULE`), so it changes
    with every change of the code even when pyproject's version does not. A source
    checkout (the controller, `piblade local`) computes the same hash from its
    files, so a controller and a worker built from one tree agree.
    """
    try:
        build = str(importlib.import_module(BUILD_MODULE).BUILD)
    except ImportError:
        root = Path(__file__).resolve().parents[1]
        if (root / "pyproject.toml").exists():
            # A checkout's version is its pyproject's, the one a wheel built from it carries; read
            # there, not from the installed metadata (a search of every installed package: ~10 ms
            # of each `piblade submit`).
            import tomllib

            from piblade.provision.wheelhouse import source_hash

            version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
            return f"{version}+{source_hash(root)}"
        build = ""
    from importlib import metadata

    try:
        version = metadata.version("piblade")
    except metadata.PackageNotFoundError:
        version = "0"
    if not build:
        return version
    return f"{version}+{build}"


@functools.cache
def _task_signature(task: Callable[..., Any]) -> tuple[frozenset[str], tuple[str, ...], bool]:
    """A task function's keyword parameters, the required ones, and whether it takes ``**kwargs``.

    Read once per function, not once per task (``inspect.signature`` costs ≈ 0.1 ms).
    """
    import inspect

    accepted = list(inspect.signature(task).parameters.values())[1:]  # after ctx
    named = [p.name for p in accepted if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    required = tuple(p.name for p in accepted if p.name in named and p.default is p.empty)
    return frozenset(named), required, any(p.kind is p.VAR_KEYWORD for p in accepted)


#: Marks a parameter without a default: the user must give it.
REQUIRED: Any = object()

#: Modules imported by :func:`load_registry` besides the bundled ``jobs`` package.
JOB_MODULES_ENV = envvars.JOB_MODULES.name

_TYPE_NAMES = {int: "int", float: "float", str: "str", bool: "bool"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean "x"?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


#: How much of a refused value an error message quotes.
SHOWN_MAX = 60
#: Default longest string parameter, in characters.
STR_MAX = 1024
#: Longest path parameter (Linux PATH_MAX) and longest path component (NAME_MAX).
PATH_MAX = 4096
NAME_MAX = 255


def shown(raw: Any, limit: int = SHOWN_MAX) -> str:
    """A value as the user typed it (width=0, not width='0'), cut to a short prefix when long.

    A refused 100 KB value must not come back as a 100 KB error message: it is
    quoted as its first ``limit`` characters, an ellipsis, and its length.
    """
    text = raw if isinstance(raw, str) and raw else repr(raw)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


_shown = shown


def _number(value: float | None) -> str:
    """Bounds as people write them: 2147483647, not 2.14748e+09."""
    if value is None:
        return ""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:g}"


def relative_share_path(job: str, path: str, hint: str) -> str:
    """``path`` normalised; refused, before anything is queued, when absolute or climbing out with '..'.

    (The task resolves it again with :meth:`TaskContext.resolve`, which also
    catches symlinks pointing outside the data directory.)
    """
    norm = posixpath.normpath(path.replace("\\", "/")) if path else ""
    if not path or posixpath.isabs(norm) or norm == ".." or norm.startswith("../"):
        raise BadParameter(f"{job}: path={shown(path)} must be a file path relative to the share", hint=hint)
    return norm


@dataclass(frozen=True, slots=True)
class Param:
    """One typed job parameter with an optional default, bounds and choices."""

    name: str
    type: type
    default: Any = REQUIRED
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    help: str = ""
    #: str only: the longest value accepted (default :data:`STR_MAX`, or :data:`PATH_MAX` for a path).
    max_length: int | None = None
    #: str only: a path on the share; also each '/'-separated component is at most :data:`NAME_MAX`.
    path: bool = False

    @property
    def length_limit(self) -> int:
        if self.max_length is not None:
            return self.max_length
        return PATH_MAX if self.path else STR_MAX

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def type_name(self) -> str:
        return _TYPE_NAMES.get(self.type, self.type.__name__)

    def describe_bounds(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        low, high = _number(self.min), _number(self.max)
        if low and high:
            return f"{low}..{high}"
        if low:
            return f">= {low}"
        if high:
            return f"<= {high}"
        return ""

    def parse(self, job: str, raw: Any) -> Any:
        """Convert a CLI string (or a JSON value) to this parameter's type and check it."""
        value = self._convert(job, raw)
        if self.choices is not None and value not in self.choices:
            raise BadParameter(
                f"{job}: {self.name}={_shown(raw)} is not allowed{did_you_mean(str(raw), map(str, self.choices))}",
                hint=f"{self.name} must be {self.describe_bounds()}",
            )
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                raise BadParameter(f"{job}: {self.name}={_shown(raw)} is not a finite number")
            too_low = self.min is not None and value < self.min
            too_high = self.max is not None and value > self.max
            if too_low or too_high:
                raise BadParameter(
                    f"{job}: {self.name}={_shown(raw)} is out of range",
                    hint=f"{self.name} must be {self.describe_bounds()}",
                )
        return value

    def _convert(self, job: str, raw: Any) -> Any:
        bad = BadParameter(
            f"{job}: {self.name}={_shown(raw)} is not a valid {self.type_name}",
            hint=f"give {self.name} as a {self.type_name}"
            + (f" ({self.describe_bounds()})" if self.describe_bounds() else ""),
        )
        if self.type is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise bad
        if self.type is int:
            if isinstance(raw, bool):
                raise bad
            if isinstance(raw, int):
                return raw
            if isinstance(raw, float) and raw.is_integer():
                return int(raw)
            try:
                return int(str(raw).replace("_", ""), 0) if isinstance(raw, str) else int(raw)
            except (TypeError, ValueError):
                # Allow "1e6" for sample counts: only when it is a whole number.
                try:
                    as_float = float(str(raw))
                except ValueError:
                    raise bad from None
                if as_float.is_integer():
                    return int(as_float)
                raise bad from None
        if self.type is float:
            if isinstance(raw, bool):
                raise bad
            try:
                return float(raw)
            except (TypeError, ValueError):
                raise bad from None
        if self.type is str:
            if not isinstance(raw, str):
                raise bad
            self._check_length(job, raw)
            return raw
        raise bad

    def _check_length(self, job: str, raw: str) -> None:
        limit = self.length_limit
        if len(raw) > limit:
            raise BadParameter(
                f"{job}: {self.name}={shown(raw)} is too long",
                hint=f"{self.name} must be at most {limit} characters",
            )
        if self.path:
            for part in raw.replace("\\", "/").split("/"):
                if len(part.encode("utf-8", "surrogatepass")) > NAME_MAX:
                    raise BadParameter(
                        f"{job}: {self.name}={shown(raw)} has a path component of {len(part)} characters "
                        f"({shown(part, 30)})",
                        hint=f"each part of a path between '/' must be at most {NAME_MAX} bytes",
                    )


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a task knows about where it runs. Built by the worker for each task.

    ``output_dir`` is the run's directory under the worker's data root (the
    NAS mount on a real cluster), already created. Tasks write there with a
    temporary name and rename, because RQ may run a task twice. ``results`` is
    the cluster's results database (PostgreSQL), when the worker knows one.
    """

    run_id: str
    index: int
    total: int
    node: str
    data_root: Path
    output_dir: Path
    threads: int = 1
    results: ResultsTarget | None = None

    def emit(self, table: str, columns: Sequence[Column], rows: Iterable[Sequence[Any]]) -> int:
        """Write rows into a results-database table (binary COPY, declared types), once per task.

        The table gets ``run_id`` and ``task`` before ``columns`` and is created
        when missing; a second attempt of the same task replaces its rows.
        """
        from piblade import resultsdb

        return resultsdb.emit_rows(self.results_target(), table, columns, rows, run_id=self.run_id, task=self.index)

    def results_target(self) -> ResultsTarget:
        """The cluster's results database, or an error that says how to give the worker one."""
        from piblade import resultsdb

        if self.results is None:
            raise resultsdb.ResultsUnavailable(
                "this worker knows of no results database",
                hint=f"start the local cluster with `piblade local up`, or set {resultsdb.URL_ENV} for the worker",
            )
        return self.results

    def resolve(self, relative: str) -> Path:
        """Resolve a path given relative to the data root, refusing escapes."""
        root = self.data_root.resolve()
        path = (root / relative).resolve()
        if path != root and root not in path.parents:
            raise BadParameter(f"path {relative!r} is outside the data directory {root}")
        return path


TaskFn = Callable[..., Any]
SplitFn = Callable[[Mapping[str, Any]], Sequence[Mapping[str, Any]]]
SplitFileFn = Callable[[Mapping[str, Any], int], Sequence[Mapping[str, Any]]]
ReduceFn = Callable[[TaskContext, Mapping[str, Any], list[Any]], Any]


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A registered job: its parameters and the functions that do the work.

    ``task(ctx, **kwargs)`` runs on a worker. ``split(params)`` turns validated
    parameters into the kwargs of each task (one RQ job each); without it the
    job runs as one task with the parameters as kwargs. ``reduce(ctx, params,
    results)`` runs once on a worker after every task has succeeded.
    ``split_file(params, size)``, for a job that takes a ``path``, turns one
    file of ``size`` bytes into its tasks for ``submit --over`` (e.g. one per
    64 MiB of a CSV file); without it a file is one task.
    """

    name: str
    summary: str
    params: tuple[Param, ...]
    task: TaskFn
    split: SplitFn | None = None
    reduce: ReduceFn | None = None
    warmup: Callable[[], None] | None = None
    timeout: int = 600
    writes_output: bool = False
    check: Callable[[Mapping[str, Any]], None] | None = None
    split_file: SplitFileFn | None = None

    @property
    def task_path(self) -> str:
        return dotted_path(self.task)

    @property
    def reduce_path(self) -> str | None:
        return dotted_path(self.reduce) if self.reduce else None

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise BadParameter(
            f"{self.name}: unknown parameter {name!r}{did_you_mean(name, (p.name for p in self.params))}",
            hint=f"{self.name} takes: " + (", ".join(p.name for p in self.params) or "no parameters"),
        )

    def validate(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Return complete, typed parameters or raise :class:`BadParameter`."""
        values: dict[str, Any] = {}
        for name, value in raw.items():
            values[name] = self.param(name).parse(self.name, value)
        for p in self.params:
            if p.name not in values:
                if p.required:
                    raise BadParameter(
                        f"{self.name}: missing required parameter {p.name!r}",
                        hint=f"add --param {p.name}=<{p.type_name}>",
                    )
                values[p.name] = p.default
        if self.check is not None:
            self.check(values)  # rules that involve several parameters raise BadParameter
        return values

    def check_task_kwargs(self, kwargs: Mapping[str, Any]) -> None:
        """Refuse kwargs the task function cannot take (a parameter added, removed or renamed).

        A job without a split gets its validated parameters as kwargs, so they are
        checked as a submit would check them (types, bounds, rules); a split job's
        task kwargs are the split's own, so they are checked against the task's signature.
        """
        if self.split is None:
            try:
                self.validate(kwargs)
            except BadParameter as exc:
                raise JobChanged(exc.message) from None
        named, required, open_ended = _task_signature(self.task)
        problems = []
        if not open_ended:
            problems += [f"its task takes no argument {name!r}" for name in kwargs if name not in named]
        problems += [f"its task needs {name!r}, which the run does not give" for name in required
                     if name not in kwargs]
        if problems:
            raise JobChanged(f"{self.name}: " + "; ".join(problems))

    def check_run_params(self, params: Mapping[str, Any]) -> None:
        """Refuse a run's parameters that this job no longer takes (the reduce step gets them)."""
        given = {k: v for k, v in params.items() if k != "over"}  # `submit --over` adds the pattern
        try:
            for name, value in given.items():
                self.param(name).parse(self.name, value)
        except BadParameter as exc:
            raise JobChanged(exc.message) from None
        missing = [p.name for p in self.params if p.required and p.name not in given
                   and not (p.name == "path" and "over" in params)]
        if missing:
            raise JobChanged(f"{self.name}: missing required parameter {missing[0]!r}")

    def plan(self, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The kwargs of every task, in order. Pure: no I/O."""
        if self.split is None:
            return [dict(params)]
        tasks = [dict(t) for t in self.split(params)]
        if not tasks:
            raise BadParameter(f"{self.name}: these parameters make no tasks")
        return tasks


def dotted_path(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


@dataclass(slots=True)
class Registry:
    """Registered jobs by name, and the set of function paths a worker may run."""

    jobs: dict[str, JobSpec] = field(default_factory=dict)
    _callables: dict[str, tuple[JobSpec, str]] = field(default_factory=dict)

    def add(self, spec: JobSpec) -> None:
        if spec.name in self.jobs and self.jobs[spec.name].task_path != spec.task_path:
            raise ValueError(f"job name {spec.name!r} is registered twice")
        self.jobs[spec.name] = spec
        self._callables[spec.task_path] = (spec, "task")
        if spec.reduce_path:
            self._callables[spec.reduce_path] = (spec, "reduce")

    def get(self, name: str) -> JobSpec:
        try:
            return self.jobs[name]
        except KeyError:
            raise UnknownJob(
                f"unknown job {name!r}{did_you_mean(name, self.jobs)}",
                hint="`piblade jobs list` shows the registered jobs",
            ) from None

    def by_callable(self, path: str) -> tuple[JobSpec, str]:
        """Look up a queued function path; refuse anything not registered."""
        try:
            return self._callables[path]
        except KeyError:
            raise UnregisteredCallable(
                f"refused to run {path!r}: it is not a registered piblade job",
                hint="only functions declared with @piblade.registry.job run on workers",
            ) from None

    def __iter__(self) -> Iterator[JobSpec]:
        return iter(sorted(self.jobs.values(), key=lambda s: s.name))


#: The process-wide registry that job modules register into at import time.
REGISTRY = Registry()


def job(
    name: str,
    *,
    summary: str,
    params: Sequence[Param] = (),
    split: SplitFn | None = None,
    reduce: ReduceFn | None = None,
    warmup: Callable[[], None] | None = None,
    timeout: int = 600,
    writes_output: bool = False,
    check: Callable[[Mapping[str, Any]], None] | None = None,
    split_file: SplitFileFn | None = None,
) -> Callable[[TaskFn], TaskFn]:
    """Declare a job: ``@job("name", summary=..., params=[Param(...)])`` on its task function."""

    def register(fn: TaskFn) -> TaskFn:
        REGISTRY.add(
            JobSpec(
                name=name,
                summary=summary,
                params=tuple(params),
                task=fn,
                split=split,
                reduce=reduce,
                warmup=warmup,
                timeout=timeout,
                writes_output=writes_output,
                check=check,
                split_file=split_file,
            )
        )
        return fn

    return register


def load_registry(extra_modules: Iterable[str] | None = None) -> Registry:
    """Import the bundled ``jobs`` package and any extra modules; return the registry.

    Extra modules come from ``PIBLADE_JOB_MODULES`` (comma separated) unless given.
    """
    import jobs as bundled

    for info in pkgutil.iter_modules(bundled.__path__, prefix="jobs."):
        if not info.ispkg and not info.name.rsplit(".", 1)[-1].startswith("_"):
            importlib.import_module(info.name)
    if extra_modules is None:
        extra_modules = [m for m in os.environ.get(JOB_MODULES_ENV, "").split(",") if m.strip()]
    for module in extra_modules:
        importlib.import_module(module.strip())
    return REGISTRY
