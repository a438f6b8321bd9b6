"""The experiment interface: what every file in experiments/ implements.

An experiment is a subclass of `Experiment` with a frozen parameters dataclass; its file
ends with `EXPERIMENT = TheClass()`. A newcomer copies this template:

    from dataclasses import dataclass
    from g5kdeploy.engine import Experiment, param, reserved, sweep
    from g5kdeploy.testbed import Feature

    @dataclass(frozen=True)
    class Params:
        site: str = param("rennes", "where to run")
        sizes: list[int] = param([1, 2, 4], "the grid")
        repeats: int = param(1, "repeats of each point")
        walltime: str = param("0:30", "OAR walltime, H:MM")
        FULL = {"repeats": 3}                  # --param full=true (explicit params still win)

    class Demo(Experiment):
        name = "demo"
        Params = Params

        def request(self, p, testbed):         # checked against the free nodes first
            return {p.site: max(p.sizes)}

        def needs(self, p):                    # testbed features, checked before reserving
            return {Feature.SHAPING}

        def validate(self, p, testbed):        # one-line UserErrors, before anything is made
            self.known_sites(testbed, [p.site])

        def main(self, run, testbed, p):
            with reserved(run, testbed, self.request(p, testbed), p.walltime, self.job_name) as res:
                sweep(run, [{"size": s, "repeat": r} for s in p.sizes for r in range(p.repeats)],
                      lambda point: run.row(**point, time_s=...))

        def summary(self, rows): return [f"{len(rows)} rows"]
        def figures(self, rows, outdir): return []

    EXPERIMENT = Demo()

`invoke experiment demo --list-params` prints the parameters; `--param sizes=[1,8]` is
parsed against the field's type."""
from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from g5kdeploy.errors import UserError

MISSING = dataclasses.MISSING


def param(default: Any, help: str = "") -> Any:
    """A parameter with its default (mutable defaults copied per instance) and its help."""
    if isinstance(default, (list, dict, set)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


class Experiment(ABC):
    """One experiment: typed parameters, the testbed features it needs, its stages (main),
    console lines (summary) and figures, all drawn from the run's rows."""
    name: ClassVar[str]
    Params: ClassVar[type]

    @property
    def job_name(self) -> str:
        """The OAR jobs' name: a live job of that name is reused."""
        return self.name

    def request(self, params, testbed) -> dict[str, int] | None:
        """Nodes per site the run reserves (checked against the free nodes before the run
        starts); None: not known ahead."""
        return None

    def needs(self, params) -> set:
        """The testbed features (`g5kdeploy.testbed.Feature`) these parameters need."""
        return set()

    def validate(self, params, testbed) -> None:
        """Raise a one-line UserError for parameters this testbed cannot run."""

    @abstractmethod
    def main(self, run, testbed, params) -> None:
        """Reserve, deploy, measure: rows and events into `run`."""

    def summary(self, rows) -> list[str]:
        """Lines for the console, from the rows."""
        return []

    def figures(self, rows, outdir: Path) -> list[Path]:
        """Figures drawn from the rows into outdir; their paths."""
        return []

    # -- shared checks ------------------------------------------------------------------
    @staticmethod
    def known_sites(testbed, sites) -> None:
        sites_of = testbed.description.sites
        if unknown := [s for s in sites if s not in sites_of]:
            raise UserError(f"unknown site {', '.join(unknown)}: the testbed has {', '.join(sites_of)}")

    @staticmethod
    def one_of(what: str, values, allowed) -> None:
        for v in [values] if isinstance(values, str) or values is None else values:
            if v not in allowed:
                raise UserError(f"unknown {what} {v!r}: use {', '.join(map(str, allowed))}")


# -- parameters ---------------------------------------------------------------------------
def fields(experiment: Experiment) -> dict[str, tuple[Any, Any, str]]:
    """name -> (type, default, help) of an experiment's parameters."""
    hints = typing.get_type_hints(experiment.Params)
    out = {}
    for f in dataclasses.fields(experiment.Params):
        default = f.default if f.default is not MISSING else f.default_factory()
        out[f.name] = (hints[f.name], default, f.metadata.get("help", ""))
    return out


def type_name(tp) -> str:
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return "{" + ", ".join(f"{k}: {type_name(t)}" for k, t in hints.items()) + "}"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else type_name(a) for a in typing.get_args(tp))
    return tp.__name__ if isinstance(tp, type) and not typing.get_args(tp) else str(tp).replace("typing.", "")


def coerce(value: Any, tp, key: str) -> Any:
    """`value` (from JSON, a stored run or the command line) as a `tp`; UserError if it is none."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = UserError(f"bad --param {key}={value!r}: expected {type_name(tp)}")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in (a for a in args if a is not type(None)):
            try:
                return coerce(value, a, key)
            except UserError:
                pass
        raise bad
    if tp is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false", "1", "0", "yes", "no"):
            return str(value).lower() in ("true", "1", "yes")
        raise bad
    if tp in (int, float):
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)) and (tp is float or float(value).is_integer()):
            return tp(value)
        try:
            return tp(str(value))
        except ValueError:
            raise bad from None
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if dataclasses.is_dataclass(tp):             # a group of parameters, given as an object
        if isinstance(value, tp):
            return value
        hints = typing.get_type_hints(tp)
        if not isinstance(value, dict) or set(value) - set(hints):
            raise bad
        try:
            return tp(**{k: coerce(v, hints[k], f"{key}.{k}") for k, v in value.items()})
        except TypeError:                        # a field without a default is missing
            raise bad from None
    if origin is list:
        if isinstance(value, str):           # --param sites=rennes,nancy
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise bad
        return [coerce(v, args[0], key) for v in value] if args else list(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise bad
        return {coerce(k, args[0], key): coerce(v, args[1], key) for k, v in value.items()} if args else dict(value)
    raise TypeError(f"parameter {key}: unsupported type {tp}")


def parameters(experiment: Experiment, overrides: dict | None = None):
    """The experiment's Params: defaults, the FULL preset when `full` is true, then the
    overrides, each checked against its field's type. Unknown keys are refused."""
    overrides = dict(overrides or {})
    known = fields(experiment)
    full = coerce(overrides.pop("full", False), bool, "full")
    if unknown := sorted(set(overrides) - set(known)):
        raise UserError(f"bad --param {', '.join(unknown)}: {experiment.name} has no such parameter (see "
                        f"invoke experiment {experiment.name} --list-params)")
    preset = getattr(experiment.Params, "FULL", {}) if full else {}
    values = {}
    for key, value in {**preset, **overrides}.items():
        try:
            values[key] = coerce(value, known[key][0], key)
        except UserError:
            default = known[key][1]
            default = dataclasses.asdict(default) if dataclasses.is_dataclass(default) else default
            raise UserError(f"bad --param {key}={json.dumps(value)}: expected {type_name(known[key][0])} "
                            f"(default {json.dumps(default)})") from None
    return experiment.Params(**values)


def describe(experiment: Experiment) -> list[str]:
    """One line per parameter: name, type, default, help; then the FULL preset."""
    lines = [f"{experiment.name} parameters (--param key=value, values in JSON):"]
    for name, (tp, default, help_) in fields(experiment).items():
        shown = json.dumps(dataclasses.asdict(default) if dataclasses.is_dataclass(default) else default)
        lines.append(f"  {name:22} {type_name(tp):24} default {shown}" + (f"  {help_}" if help_ else ""))
    lines.append(f"  {'full':22} {'bool':24} default False  the full grid: {getattr(experiment.Params, 'FULL', {})}")
    return lines
