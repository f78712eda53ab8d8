"""The pass contract, the registry, and the manager that runs a pipeline of passes.

A pass is a class with a ``name``, a frozen-dataclass ``Config`` and
``run(state, config) -> PassResult``. The manager, not the pass, measures
wall time and the op histogram of every component graph before and after,
validates each graph after the pass, tags the nodes the pass created with
its name, and collects all of it into the pipeline report stored with the
bundle. Pipelines are lists of names, resolved (and unknown names rejected)
before the first pass runs.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from lgc.compiler.errors import LgcError, PassError, UsageError

PASS_TAG = "lgc_pass"


@dataclass
class PassResult:
    """What a pass did. ``changed`` must be computed from the work done, never hard-coded."""

    changed: bool
    details: dict = field(default_factory=dict)


class Pass:
    """Base of every pass. Subclasses set ``name`` and ``Config`` and implement ``run``."""

    name: ClassVar[str]
    group: ClassVar[str]  # "fusion" | "step_reduction" | "quantization"

    @dataclass(frozen=True)
    class Config:
        pass

    # Op targets the pass rewrites; when set and no component graph holds any
    # of them, the manager skips the pass without running it.
    op_targets: ClassVar[tuple] = ()

    def run(self, state, config) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError


_REGISTRY: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator adding a pass to the registry; a duplicate name is an error."""
    name = getattr(cls, "name", None)
    if not name:
        raise TypeError(f"{cls.__qualname__} has no pass name")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"duplicate pass name '{name}': {_REGISTRY[name].__module__} and {cls.__module__}")
    _REGISTRY[name] = cls
    return cls


def registered_passes() -> dict[str, type[Pass]]:
    import lgc.passes  # noqa: F401  (imports every pass module, which registers it)

    return dict(_REGISTRY)


def make_config(cls: type[Pass], options: dict[str, Any]):
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = set(options) - fields
    if unknown:
        raise UsageError(f"pass '{cls.name}' has no option(s) {sorted(unknown)}; it takes {sorted(fields) or 'none'}")
    try:
        return cls.Config(**options)
    except (TypeError, ValueError) as e:
        raise UsageError(f"pass '{cls.name}': invalid options {options}: {e}") from None


@dataclass
class PlannedPass:
    cls: type[Pass]
    config: Any


def resolve_pipeline(names: list[str], options: dict[str, dict]) -> list[PlannedPass]:
    """Turn pass names and per-pass options into runnable passes, failing early on unknown names."""
    reg = registered_passes()
    unknown = [n for n in names if n not in reg]
    if unknown:
        raise UsageError(f"unknown pass(es) {unknown}; `lgc passes` lists the {len(reg)} known passes")
    stray = set(options) - set(names)
    if stray:
        raise UsageError(f"options given for pass(es) not in the pipeline: {sorted(stray)}")
    return [PlannedPass(reg[n], make_config(reg[n], options.get(n, {}))) for n in names]


def op_histogram(gm: torch.fx.GraphModule) -> Counter:
    return Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_function")


def _graphs(state) -> dict[str, torch.fx.GraphModule]:
    return {name: c.graph for name, c in state.model.components.items() if c.graph is not None}


def validate_graph(name: str, gm: torch.fx.GraphModule, expected: list[tuple], example_inputs) -> None:
    """Lint the graph and run it once: outputs must keep their shapes and dtypes and stay finite.

    A graph holding PT2E observers is only linted: running it on example
    inputs would feed them data that is not calibration data.
    """
    gm.graph.lint()
    if has_observers(gm):
        return
    with torch.no_grad():
        out = gm(*example_inputs)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    got = [(tuple(o.shape), o.dtype) for o in outs]
    if got != expected:
        raise ValueError(f"{name}: outputs changed from {expected} to {got}")
    for o in outs:
        if not torch.isfinite(o).all():
            raise ValueError(f"{name}: output holds NaN or Inf")


def graph_fingerprint(gm: torch.fx.GraphModule) -> tuple:
    """What running the graph depends on, cheaply: its code and the identity and in-place version of every tensor it holds.

    A pass that rewrites nodes changes the code; one that replaces a weight
    changes a tensor's identity; one that edits a weight in place bumps the
    tensor's version counter. Equal fingerprints mean the graph computes what
    it computed before, so validating it again would only repeat a forward
    pass (about 8 s per pass for an SD-1.5-size U-Net on this machine).
    """
    from lgc.compiler.artifact_cache import graph_tensors

    # state_dict's detached tensors share their parameter's storage and version counter.
    return gm.code, tuple((k, t.data_ptr(), t._version) for k, t in sorted(graph_tensors(gm).items()))


def drop_unread_tensors(gm: torch.fx.GraphModule) -> int:
    """Remove the parameters and buffers no ``get_attr`` node reads; return how many.

    Passes replace weights (PT2E's convert stores int8 copies, fusions add
    fused kernels) and leave the originals registered. Nothing reads them,
    but ``torch.export`` before lowering lifts every registered tensor, and
    the artifact cache's key digests each one: at SD-1.5 size that is the
    3.4 GB of fp32 weights an int8 graph no longer uses.
    """
    read = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    # Tensors of called submodules (PT2E observers) are read by the submodule, not by get_attr.
    called = tuple(n.target + "." for n in gm.graph.nodes if n.op == "call_module")
    dropped = 0
    for kind in ("_parameters", "_buffers"):
        for qualified in [k for k, _ in (gm.named_parameters() if kind == "_parameters" else gm.named_buffers())]:
            if qualified in read or qualified.startswith(called):
                continue
            owner_path, _, leaf = qualified.rpartition(".")
            owner = gm.get_submodule(owner_path) if owner_path else gm
            del getattr(owner, kind)[leaf]
            dropped += 1
    return dropped


def has_observers(gm: torch.fx.GraphModule) -> bool:
    return any(n.op == "call_module" and "activation_post_process" in str(n.target) for n in gm.graph.nodes)


def signature(gm, example_inputs) -> list[tuple]:
    with torch.no_grad():
        out = gm(*example_inputs)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [(tuple(o.shape), o.dtype) for o in outs]


class PassManager:
    """Runs planned passes in order, validating every graph a pass changed.

    Validation runs the graph. A graph whose single run takes longer than
    ``run_seconds_per_pass`` (an SD-1.5-size U-Net: about 8 s here, times a
    dozen passes) is only linted after each pass and run once, after the last
    pass; a failure then names every pass that changed it.
    """

    def __init__(self, planned: list[PlannedPass], validate: bool = True, progress=None, run_seconds_per_pass: float = 2.0):
        self.planned = planned
        self.validate = validate
        self.progress = progress or (lambda msg: None)
        self.run_seconds_per_pass = run_seconds_per_pass

    def run(self, state) -> list[dict]:
        from lgc.compiler.node_provenance import shared_node_provenance

        with shared_node_provenance():  # quantization retraces every graph; see node_provenance
            return self._run(state)

    def _run(self, state) -> list[dict]:
        reports = []
        done: list[str] = []
        expected, deferred = {}, {}  # deferred: graph -> passes that changed it since it last ran
        for n, g in _graphs(state).items():
            t = time.perf_counter()
            expected[n] = signature(g, state.model.components[n].example_inputs)
            if time.perf_counter() - t > self.run_seconds_per_pass:
                deferred[n] = []
        for planned in self.planned:
            p = planned.cls()
            graphs = _graphs(state)
            if p.op_targets and not any(
                str(n.target) in {str(t) for t in p.op_targets} for g in graphs.values() for n in g.graph.nodes
            ):
                reports.append({"pass": p.name, "skipped": "no matching ops", "changed": False})
                done.append(p.name)
                continue
            self.progress(f"pass {p.name}")
            before = {n: op_histogram(g) for n, g in graphs.items()}
            fingerprints = {n: graph_fingerprint(g) for n, g in graphs.items()} if self.validate else {}
            seen = {n: set(g.graph.nodes) for n, g in graphs.items()}
            t0 = time.perf_counter()
            try:
                result = p.run(state, planned.config)
            except LgcError:
                raise  # already one line with its own exit code: a refusal (4), a usage error (2), a pass error (5)
            except Exception as e:
                raise PassError(p.name, done, f"{type(e).__name__}: {e}") from e
            seconds = time.perf_counter() - t0
            graphs = _graphs(state)
            for n, g in graphs.items():
                for node in g.graph.nodes:
                    if node not in seen.get(n, ()):
                        node.meta.setdefault(PASS_TAG, p.name)
                if self.validate and graph_fingerprint(g) != fingerprints.get(n):
                    if n in deferred:
                        deferred[n].append(p.name)
                    try:
                        if n in deferred:
                            g.graph.lint()
                        else:
                            validate_graph(n, g, expected[n], state.model.components[n].example_inputs)
                    except Exception as e:
                        raise PassError(p.name, done, f"left an invalid program: {e}") from e
            after = {n: op_histogram(g) for n, g in graphs.items()}
            delta = {}
            for n in after:
                diff = {op: after[n][op] - before.get(n, Counter())[op] for op in set(after[n]) | set(before.get(n, {}))}
                diff = {op: d for op, d in sorted(diff.items()) if d}
                if diff:
                    delta[n] = diff
            reports.append(
                {
                    "pass": p.name,
                    "config": dataclasses.asdict(planned.config),
                    "changed": result.changed,
                    "seconds": round(seconds, 3),
                    "ops_before": {n: sum(h.values()) for n, h in before.items()},
                    "ops_after": {n: sum(h.values()) for n, h in after.items()},
                    "op_delta": delta,
                    "details": result.details,
                }
            )
            done.append(p.name)
        for n, changed_by in deferred.items():
            g = _graphs(state).get(n)
            if self.validate and changed_by and g is not None:
                self.progress(f"validating {n} after the passes that changed it")
                try:
                    validate_graph(n, g, expected[n], state.model.components[n].example_inputs)
                except Exception as e:
                    raise PassError(" or ".join(changed_by), done, f"left an invalid program: {e}") from e
        for g in _graphs(state).values():
            drop_unread_tensors(g)
        return reports
