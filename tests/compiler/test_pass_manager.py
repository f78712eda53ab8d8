"""The pass manager: registry, pipeline resolution, validation after each pass, per-pass reports."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lgc.compiler.errors import PassError, UsageError
from lgc.compiler.model_import import Component
from lgc.compiler.pass_manager import PASS_TAG, Pass, PassManager, PassResult, PlannedPass, register_pass, registered_passes, resolve_pipeline
from lgc.targets.profiles import PROFILES, SHARED_PIPELINE

REPO = Path(__file__).resolve().parents[2]


class Tiny(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x) + 1.0


def state_with_graph():
    x = torch.randn(2, 3)
    gm = torch.export.export(Tiny(), (x,)).module()
    comp = Component("c", Tiny(), (x,), ["x"], ["y"], "Tiny", graph=gm)
    return SimpleNamespace(model=SimpleNamespace(components={"c": comp}))


class ReluToClamp(Pass):
    """Rewrite relu as clamp(min=0) (a test rewrite)."""

    name = "test_relu_to_clamp"
    group = "fusion"
    op_targets = (torch.ops.aten.relu.default,)

    @dataclass(frozen=True)
    class Config:
        pass

    def run(self, state, config):
        gm = state.model.components["c"].graph
        n = 0
        for node in list(gm.graph.nodes):
            if node.target == torch.ops.aten.relu.default:
                with gm.graph.inserting_before(node):
                    new = gm.graph.call_function(torch.ops.aten.clamp.default, (node.args[0], 0.0))
                node.replace_all_uses_with(new)
                gm.graph.erase_node(node)
                n += 1
        gm.recompile()
        return PassResult(n > 0, {"rewritten": n})


class BreakShape(Pass):
    """Corrupt the output shape (a test of validation)."""

    name = "test_break_shape"
    group = "fusion"

    @dataclass(frozen=True)
    class Config:
        pass

    def run(self, state, config):
        gm = state.model.components["c"].graph
        out = next(n for n in gm.graph.nodes if n.op == "output")
        val = out.args[0][0] if isinstance(out.args[0], (tuple, list)) else out.args[0]
        with gm.graph.inserting_before(out):
            s = gm.graph.call_function(torch.ops.aten.sum.default, (val,))
        out.args = ((s,),) if isinstance(out.args[0], (tuple, list)) else (s,)
        gm.recompile()
        return PassResult(True)


class Explode(Pass):
    """Raise (a test of error reporting)."""

    name = "test_explode"
    group = "fusion"

    @dataclass(frozen=True)
    class Config:
        pass

    def run(self, state, config):
        raise RuntimeError("boom")


def plan(*classes):
    return [PlannedPass(c, c.Config()) for c in classes]


def test_report_has_op_delta_time_and_tags():
    state = state_with_graph()
    reports = PassManager(plan(ReluToClamp)).run(state)
    r = reports[0]
    assert r["changed"] and r["details"] == {"rewritten": 1}
    assert r["op_delta"]["c"] == {"aten.clamp.default": 1, "aten.relu.default": -1}
    assert r["ops_before"]["c"] == r["ops_after"]["c"] and r["seconds"] >= 0
    tagged = [n for n in state.model.components["c"].graph.graph.nodes if n.meta.get(PASS_TAG) == "test_relu_to_clamp"]
    assert [str(n.target) for n in tagged] == ["aten.clamp.default"]


def test_pass_is_skipped_when_its_ops_are_absent():
    state = state_with_graph()
    PassManager(plan(ReluToClamp)).run(state)
    again = PassManager(plan(ReluToClamp)).run(state)[0]
    assert again["skipped"] and not again["changed"]


def test_validation_names_the_pass_and_the_passes_before():
    with pytest.raises(PassError, match=r"pass 'test_break_shape' failed: left an invalid program.*outputs changed.*after passes: test_relu_to_clamp"):
        PassManager(plan(ReluToClamp, BreakShape)).run(state_with_graph())


def test_exception_in_pass_is_a_pass_error():
    with pytest.raises(PassError, match=r"pass 'test_explode' failed: RuntimeError: boom \(after passes: \(none\)\)"):
        PassManager(plan(Explode)).run(state_with_graph())


def test_duplicate_registration_is_an_error():
    @register_pass
    class A(Pass):
        """A."""

        name = "test_duplicate_name"
        group = "fusion"

    with pytest.raises(ValueError, match="duplicate pass name 'test_duplicate_name'"):
        @register_pass
        class B(Pass):
            """B."""

            name = "test_duplicate_name"
            group = "fusion"


def test_unknown_pass_or_option_fails_before_running():
    with pytest.raises(UsageError, match=r"unknown pass\(es\) \['fuse_everything'\]"):
        resolve_pipeline(["lower_sampler", "fuse_everything"], {})
    with pytest.raises(UsageError, match="has no option"):
        resolve_pipeline(["lower_sampler"], {"lower_sampler": {"stepz": 3}})


def test_profiles_only_remove_passes_never_reorder():
    for p in PROFILES.values():
        pipeline = p.pipeline()
        assert pipeline == [n for n in SHARED_PIPELINE if n in pipeline], p.name
        resolve_pipeline(pipeline, p.options())


def test_every_registered_pass_is_documented_and_tested():
    """Self-test of the registry: docstring, documented frozen Config, a test file mirroring its path."""
    for name, cls in registered_passes().items():
        if name.startswith("test_"):
            continue
        assert (cls.__doc__ or "").strip(), f"{name} has no docstring"
        assert dataclasses.is_dataclass(cls.Config) and cls.Config.__dataclass_params__.frozen, f"{name}.Config is not a frozen dataclass"
        for f in dataclasses.fields(cls.Config):
            # The field is documented where it is declared (a base pass's Config may declare it).
            owner = next(c for c in cls.Config.__mro__ if f.name in c.__dict__.get("__annotations__", {}))
            lines = inspect.getsource(owner).splitlines()
            idx = next(i for i, l in enumerate(lines) if l.strip().startswith(f"{f.name}:"))
            assert "#" in lines[idx] or lines[idx - 1].strip().startswith("#"), f"{name}.Config.{f.name} has no comment saying what it does"
        module = Path(inspect.getfile(cls))
        rel = module.relative_to(REPO / "passes")
        assert (REPO / "tests" / "passes" / rel.parent / f"test_{rel.name}").exists(), f"{name} has no test file"


class Scaled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))

    def forward(self, x):
        return x * self.w


def graph_pass(name: str, group: str, body):
    """A registered-shape test pass whose ``run`` calls ``body(graph)`` on component "c" and reports a change."""

    class _Pass(Pass):
        @dataclass(frozen=True)
        class Config:
            pass

        def run(self, state, config):
            body(state.model.components["c"].graph)
            return PassResult(True)

    _Pass.name, _Pass.group, _Pass.__doc__ = name, group, body.__doc__
    return _Pass


def _poison_weight(gm):
    """Edit a weight in place, leaving the nodes alone (validation must see tensor edits)."""
    with torch.no_grad():
        gm.w.fill_(float("nan"))


def _leave_alone(gm):
    """Change nothing in any graph (like the sampler passes)."""


def _replace_weight(gm):
    """Point the graph at a new weight, leaving the old one registered (as PT2E's convert does)."""
    gm.register_buffer("w_new", torch.full((3,), 2.0))
    (node,) = [n for n in gm.graph.nodes if n.op == "get_attr" and n.target == "w"]
    node.target = "w_new"
    gm.recompile()


PoisonWeightInPlace = graph_pass("test_poison_weight", "fusion", _poison_weight)
LeaveGraphAlone = graph_pass("test_leave_graph_alone", "step_reduction", _leave_alone)
ReplaceWeight = graph_pass("test_replace_weight", "fusion", _replace_weight)


def scaled_state():
    x = torch.randn(2, 3)
    gm = torch.export.export(Scaled(), (x,)).module()
    return SimpleNamespace(model=SimpleNamespace(components={"c": Component("c", Scaled(), (x,), ["x"], ["y"], "Scaled", graph=gm)}))


def test_a_graph_the_pass_left_alone_is_not_run_again_but_an_in_place_weight_edit_is_validated():
    state = scaled_state()
    gm = state.model.components["c"].graph
    calls = []
    gm.register_forward_pre_hook(lambda *a: calls.append(1))
    PassManager(plan(LeaveGraphAlone)).run(state)
    assert len(calls) == 1  # the signature taken before the first pass, no validation run
    with pytest.raises(PassError, match="test_poison_weight.*NaN or Inf"):
        PassManager(plan(PoisonWeightInPlace)).run(state)


def test_a_graph_too_slow_to_run_after_every_pass_is_run_once_at_the_end_and_the_error_names_the_passes_that_changed_it():
    state = state_with_graph()
    gm = state.model.components["c"].graph
    calls = []
    gm.register_forward_pre_hook(lambda *a: calls.append(1))
    PassManager(plan(ReluToClamp, LeaveGraphAlone), run_seconds_per_pass=0.0).run(state)
    assert len(calls) == 2  # the signature before the first pass, one validation after the last
    with pytest.raises(PassError, match=r"pass 'test_relu_to_clamp or test_break_shape' failed: left an invalid program.*outputs changed"):
        PassManager(plan(ReluToClamp, BreakShape, LeaveGraphAlone), run_seconds_per_pass=0.0).run(state_with_graph())


def test_tensors_no_node_reads_are_dropped_after_the_pipeline():
    state = scaled_state()
    gm = state.model.components["c"].graph
    assert [k for k, _ in gm.named_parameters()] == ["w"]
    PassManager(plan(ReplaceWeight)).run(state)
    assert [k for k, _ in gm.named_parameters()] == [] and [k for k, _ in gm.named_buffers()] == ["w_new"]
    x = state.model.components["c"].example_inputs[0]
    assert torch.equal(gm(x), x * 2.0)
