"""Build a one-component state from a small module, and compare a pass's output with eager."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from lgc.compiler.model_import import Component
from lgc.compiler.pass_manager import op_histogram


def state_of(module: torch.nn.Module, *inputs, name: str = "unet"):
    module = module.eval()
    gm = torch.export.export(module, inputs).module()
    comp = Component(name, module, inputs, [f"in{i}" for i in range(len(inputs))], ["out"], type(module).__name__, graph=gm)
    return SimpleNamespace(model=SimpleNamespace(components={name: comp}))


def run_pass(cls, module, *inputs, name="unet", first=(), **config):
    """Run ``cls`` on ``module``; return (result, ops before, ops after, max abs error vs eager).

    ``first``: passes run before it with their default options (the graph as the pipeline hands it over).
    """
    state = state_of(module, *inputs, name=name)
    comp = state.model.components[name]
    for earlier in first:
        earlier().run(state, earlier.Config())
    before = op_histogram(comp.graph)
    res = cls().run(state, cls.Config(**config))
    after = op_histogram(comp.graph)
    with torch.no_grad():
        err = (comp.graph(*inputs) - module(*inputs)).abs().max().item()
    return res, before, after, err


def lower_and_count(gm, inputs) -> dict:
    """Delegation figures when ``gm`` is lowered to XNNPACK (the point of the fusion passes).

    ``xnnpack_ops`` counts the XNNPACK operators inside the delegates (layout
    transposes included), read back from the serialized program.
    """
    from lgc.targets.executorch.emit import delegation_summary
    from lgc.targets.executorch.xnnpack_graph import delegate_ops
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    ep = torch.export.export(gm, inputs)
    edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
    summary = delegation_summary(edge.exported_program().graph_module)
    return {**summary, "xnnpack_ops": delegate_ops(edge.to_executorch().buffer)}


def delegation_before_after(cls, module, *inputs, name="unet", **config):
    """Lowering figures of ``module``'s graph without and with pass ``cls`` (``config``: its options)."""
    state = state_of(module, *inputs, name=name)
    before = lower_and_count(state.model.components[name].graph, inputs)
    cls().run(state, cls.Config(**config))
    return before, lower_and_count(state.model.components[name].graph, inputs)
