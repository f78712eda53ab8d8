"""Shared machinery of the fusion passes: rewriting one node at a time on aten GraphModules."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lgc.compiler.pass_manager import Pass, PassResult

ALL_COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")


def shape_of(node: torch.fx.Node):
    """Static shape recorded by torch.export on ``node`` (None when unknown)."""
    val = node.meta.get("val")
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def refresh_meta(gm: torch.fx.GraphModule, example_inputs) -> None:
    """Recompute ``meta["val"]`` (shapes/dtypes) of every node, new ones included.

    Later passes read shapes from it, and PT2E's ``prepare_pt2e`` needs it on
    every node it annotates.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    FakeTensorProp(gm, mode).propagate(*[mode.from_tensor(t) for t in example_inputs])


def arg(node: torch.fx.Node, index: int, name: str, default=None):
    """A call argument given either positionally or by keyword."""
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def constant_of(gm: torch.fx.GraphModule, node) -> torch.Tensor | None:
    """The tensor behind a ``get_attr`` node (a weight or buffer of the graph), else None."""
    if not isinstance(node, torch.fx.Node) or node.op != "get_attr":
        return None
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, torch.Tensor) else None


def add_constant(gm: torch.fx.GraphModule, name: str, value: torch.Tensor) -> torch.fx.Node:
    """A ``get_attr`` node for a new constant buffer named ``name`` (reused if it already holds an equal tensor)."""
    name = name.replace(".", "_")
    # Detached: a constant derived from a parameter (a reshaped norm weight)
    # would otherwise be a non-leaf autograd tensor, which ExecuTorch cannot
    # deepcopy once the constant is handed to a delegate.
    value = value.detach()
    existing = getattr(gm, name, None)
    if not (isinstance(existing, torch.Tensor) and existing.shape == value.shape and torch.equal(existing, value)):
        base, i = name, 0
        while hasattr(gm, name):
            i += 1
            name = f"{base}_{i}"
        gm.register_buffer(name, value)
    return gm.graph.get_attr(name)


def pair(v, default) -> list:
    """A conv's stride, padding or dilation argument as [height, width] (given as one value, one-item list, pair or None)."""
    v = default if v is None else v
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return v * 2 if len(v) == 1 else v


def copy_module_meta(new: torch.fx.Node, old: torch.fx.Node) -> None:
    """A replaced layer's module path, on the node that replaces it (sensitivity ranking and fp32 fallbacks name layers by it)."""
    new.meta.update({key: old.meta[key] for key in ("nn_module_stack", "stack_trace", "source_fn_stack") if key in old.meta})


def reshaped(gm: torch.fx.GraphModule, node, shape) -> torch.fx.Node:
    """``node`` reshaped to ``shape``; a constant is reshaped now rather than in the graph.

    Why: a ``view`` left in the graph on a weight costs, once lowered to
    XNNPACK, a reshape plus two layout transposes around it (the delegate
    keeps 4-D tensors channels-last), and bytes in the delegate's graph.
    """
    value = constant_of(gm, node)
    if value is not None:
        return add_constant(gm, f"{node.target}_{'x'.join(map(str, shape))}", value.reshape(shape).clone())
    return gm.graph.call_function(torch.ops.aten.reshape.default, (node, list(shape)))


class NodeRewritePass(Pass):
    """A pass that rewrites each node whose target is in ``op_targets``, component by component.

    Subclasses implement ``rewrite(gm, node)``, inserting the new nodes before
    ``node`` and returning the node that replaces it (the base class rewires
    its users and erases it), ``True`` when they rewired it themselves, or
    ``None`` to leave this node alone. ``self.config`` holds the run's Config.
    """

    @dataclass(frozen=True)
    class Config:
        components: tuple = ALL_COMPONENTS  # names of the component graphs to rewrite

    def rewrite(self, gm: torch.fx.GraphModule, node: torch.fx.Node):  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self, state, config) -> PassResult:
        self.config = config
        targets = set(self.op_targets)
        counts = {}
        for name, comp in state.model.components.items():
            gm = comp.graph
            if gm is None or name not in config.components:
                continue
            if not any(node.target in targets for node in gm.graph.nodes):
                continue
            if any("val" not in node.meta for node in gm.graph.nodes if node.op == "call_function"):
                # Earlier rewrites (e.g. PT2E convert's Q/DQ nodes) left nodes without shapes.
                refresh_meta(gm, comp.example_inputs)
            n = 0
            for node in list(gm.graph.nodes):
                if node.op != "call_function" or node.target not in targets:
                    continue
                with gm.graph.inserting_before(node):
                    new = self.rewrite(gm, node)
                if new is None:
                    continue
                if new is not True:
                    node.replace_all_uses_with(new)
                    gm.graph.erase_node(node)
                n += 1
            if n:
                gm.graph.eliminate_dead_code()
                gm.graph.lint()
                gm.recompile()
                refresh_meta(gm, comp.example_inputs)
                counts[name] = n
        return PassResult(bool(counts), {"rewritten": counts})
