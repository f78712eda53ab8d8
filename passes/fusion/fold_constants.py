"""Evaluate at compile time every op whose inputs are all constants (masks, position ids, index tables)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lgc.compiler.pass_manager import Pass, PassResult, register_pass
from lgc.passes.fusion.graph_utils import ALL_COMPONENTS, add_constant, constant_of, refresh_meta

# Ops never folded: randomness, and the quantization ops (folding a weight's
# dequantize would store it back in fp32).
_NEVER = ("quantized_decomposed", "torchao", "rand", "dropout", "bernoulli", "normal", "empty")


def _foldable_target(target) -> bool:
    if not isinstance(target, torch._ops.OpOverload):
        return False
    name = str(target)
    return not any(word in name for word in _NEVER) and not target._schema.is_mutable


def _constant_args(args, known: dict) -> bool:
    """True when every tensor reached through ``args`` is a known constant."""
    flat, _ = torch.utils._pytree.tree_flatten(args)
    return all(not isinstance(a, torch.fx.Node) or a in known for a in flat)


@register_pass
class FoldConstants(Pass):
    """Replace each constant-only computation by its value, stored as a buffer.

    Before: e.g. CLIP's causal mask, built on every call from ``arange``,
            ``unsqueeze``, ``le``, ``expand``: a dozen ops the XNNPACK delegate
            does not take (they split it and run in portable kernels), and the
            position embedding looked up with constant position ids.
    After:  one ``get_attr`` per value a non-constant op reads.
    Folded values are kept only when they are small (``max_elements``), so
    an ``expand`` of a scalar into a large tensor is not written to disk.
    Exact: the ops are evaluated by torch on the same values.
    """

    name = "fold_constants"
    group = "fusion"

    @dataclass(frozen=True)
    class Config:
        components: tuple = ALL_COMPONENTS  # names of the component graphs to fold
        max_elements: int = 65536  # larger folded values stay computed in the graph

    def run(self, state, config: Config) -> PassResult:
        counts = {}
        for name, comp in state.model.components.items():
            gm = comp.graph
            if gm is None or name not in config.components:
                continue
            n = fold_graph(gm, config.max_elements)
            if n:
                refresh_meta(gm, comp.example_inputs)
                counts[name] = n
        return PassResult(bool(counts), {"folded_ops": counts})


def fold_graph(gm: torch.fx.GraphModule, max_elements: int) -> int:
    known: dict[torch.fx.Node, object] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = constant_of(gm, node)
            if value is not None:
                known[node] = value
        elif node.op == "call_function" and _foldable_target(node.target) and _constant_args((node.args, node.kwargs), known):
            args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda a: known[a])
            with torch.no_grad():
                known[node] = node.target(*args, **kwargs)
    # Replace the folded nodes that a non-folded node reads, then drop the rest.
    folded = 0
    for node, value in known.items():
        if node.op == "get_attr" or not isinstance(value, torch.Tensor) or value.numel() > max_elements:
            continue
        readers = [u for u in node.users if u not in known or u.op == "output"]
        if not readers:
            continue
        with gm.graph.inserting_before(node):
            const = add_constant(gm, f"lgc_folded_{node.name}", value.clone().contiguous())
        const.meta["val"] = node.meta.get("val")
        for u in readers:
            u.replace_input_with(node, const)
        folded += 1
    if folded:
        before = sum(1 for n in gm.graph.nodes if n.op == "call_function")
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
        return before - sum(1 for n in gm.graph.nodes if n.op == "call_function")
    return 0
