"""Small helpers shared by the fusion passes (graph rewriting on aten GraphModules)."""

from __future__ import annotations

import torch


def graphs(state, components: tuple[str, ...] | None = None):
    """(name, GraphModule) of each captured component, optionally only the named ones."""
    for name, comp in state.model.components.items():
        if comp.graph is not None and (components is None or name in components):
            yield name, comp.graph


def shape_of(node: torch.fx.Node):
    """Static shape recorded by torch.export on ``node`` (None when unknown)."""
    val = node.meta.get("val")
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def finish(gm: torch.fx.GraphModule) -> None:
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
