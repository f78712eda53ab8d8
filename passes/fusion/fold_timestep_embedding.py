"""Move everything the U-Net computes from the timestep alone out of its per-step graph, into a method of its own."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lgc.compiler.model_import import Method
from lgc.compiler.pass_manager import Pass, PassResult, register_pass
from lgc.passes.fusion.graph_utils import refresh_meta

aten = torch.ops.aten

# Nodes that only check their input (export's input guards, dtype asserts): they keep the
# timestep alive in the per-step graph without computing anything from it.
_CHECKS = ("_guards_fn", "_assert_tensor_metadata", "_assert_scalar")


def _is_check(node: torch.fx.Node) -> bool:
    return any(word in str(node.target) for word in _CHECKS)


def _placeholder(gm: torch.fx.GraphModule, name: str) -> torch.fx.Node:
    return next(n for n in gm.graph.nodes if n.op == "placeholder" and n.name == name)


def input_cone(gm: torch.fx.GraphModule, input_name: str) -> tuple[list[torch.fx.Node], list[torch.fx.Node]]:
    """(cone, frontier): the nodes computed from ``input_name`` and constants only, and those of them another node reads.

    The frontier is what the rest of the graph needs from the cone; for a
    diffusers U-Net and its timestep: each ResNet block's time projection
    (SiLU, linear, ``[:, :, None, None]``) and nothing else.
    """
    kind: dict[torch.fx.Node, str] = {}  # "t": from the input (and constants), "c": constant, "x": anything else
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            kind[n] = "t" if n.name == input_name else "x"
        elif n.op == "get_attr":
            kind[n] = "c"
        elif n.op == "call_function" and not _is_check(n):
            ins = {kind.get(a, "x") for a in n.all_input_nodes}
            kind[n] = "x" if "x" in ins else ("t" if "t" in ins else "c")
    cone = [n for n in gm.graph.nodes if kind.get(n) == "t" and n.op != "placeholder"]
    frontier = [n for n in cone if any(kind.get(u) == "x" or u.op == "output" for u in n.users)]
    return cone, frontier


def features_graph(gm: torch.fx.GraphModule, input_name: str, frontier) -> torch.fx.GraphModule:
    """A graph of ``input_name`` alone that returns the frontier values flattened and concatenated, (1, F)."""
    needed: set = set()
    stack = list(frontier)
    while stack:  # the cone nodes the frontier reads, and the constants they read
        n = stack.pop()
        if n in needed or n.op == "placeholder":
            continue
        needed.add(n)
        stack.extend(n.all_input_nodes)
    g = torch.fx.Graph()
    env = {_placeholder(gm, input_name): g.placeholder(input_name)}
    for n in gm.graph.nodes:
        if n in needed:
            env[n] = g.node_copy(n, lambda a: env[a])
    flat = [g.call_function(aten.reshape.default, (env[f], [1, -1])) for f in frontier]
    out = g.call_function(aten.cat.default, (flat, 1)) if len(flat) > 1 else flat[0]
    g.output(out)
    return torch.fx.GraphModule(gm, g)


def take_features(gm: torch.fx.GraphModule, input_name: str, feature_name: str, cone, frontier) -> None:
    """Rewrite ``gm`` in place: the input ``input_name`` becomes ``feature_name``, (1, F), sliced into the frontier values."""
    g = gm.graph
    old = _placeholder(gm, input_name)
    with g.inserting_before(old):
        new = g.placeholder(feature_name)
    offset = 0
    for f in frontier:
        shape, k = list(f.meta["val"].shape), f.meta["val"].numel()
        with g.inserting_before(f):
            piece = g.call_function(aten.reshape.default, (g.call_function(aten.slice.Tensor, (new, 1, offset, offset + k)), shape))
        f.replace_all_uses_with(piece)
        offset += k
    dead = {old, *cone}
    for n in list(g.nodes):
        if _is_check(n) and dead & set(n.all_input_nodes):
            g.erase_node(n)
    g.eliminate_dead_code()
    g.erase_node(old)
    gm.recompile()


@register_pass
class FoldTimestepEmbedding(Pass):
    """Compute the U-Net's timestep path once per step outside its per-step graph, in a second method of the artifact.

    Before: every U-Net call recomputes, from the timestep alone, the
            sinusoidal embedding, the time MLP (two linears) and each ResNet
            block's time projection (SiLU + linear): small M = batch GEMMs
            whose weights are read on every step.
    After:  the artifact has two methods. ``time_features(timestep)`` returns
            those projections flattened into one (1, F) tensor;
            ``forward(sample, time_features, encoder_hidden_states)`` slices
            them where the projections were. The sampler's timesteps are fixed
            for a bundle, so an app can call ``time_features`` for each step
            once (at load time) and feed the stored rows at every generation.
    The cone is found generically: every node computed from the input and
    constants only; the frontier is what the rest of the graph reads from it.
    Runs after quantization, so calibration and the sensitivity search see
    the U-Net as the model defines it; the cone moves with its own
    quantization ops and computes exactly what it did inside ``forward``.
    """

    name = "fold_timestep_embedding"
    group = "fusion"

    @dataclass(frozen=True)
    class Config:
        components: tuple = ("unet",)  # components whose input ``input`` gets its own method
        input: str = "timestep"  # the input whose cone moves out
        method: str = "time_features"  # the new method's name, and the forward input it feeds

    def run(self, state, config: Config) -> PassResult:
        moved = {}
        for name, comp in state.model.components.items():
            gm = comp.graph
            if gm is None or name not in config.components or config.input not in comp.input_names or comp.methods:
                continue
            if any("val" not in n.meta for n in gm.graph.nodes if n.op == "call_function"):
                refresh_meta(gm, comp.example_inputs)  # PT2E convert's Q/DQ nodes come without shapes
            cone, frontier = input_cone(gm, config.input)
            if not frontier:
                continue
            i = comp.input_names.index(config.input)
            t = comp.example_inputs[i]
            features = features_graph(gm, config.input, frontier)
            with torch.no_grad():
                example = features(t)
            take_features(gm, config.input, config.method, cone, frontier)
            if comp.source_inputs is None:
                comp.source_inputs, comp.source_input_names = comp.example_inputs, list(comp.input_names)
            comp.example_inputs = comp.example_inputs[:i] + (example,) + comp.example_inputs[i + 1:]
            comp.input_names = comp.input_names[:i] + [config.method] + comp.input_names[i + 1:]
            comp.methods[config.method] = Method(features, (t,), [config.input], [config.method], feeds=config.method,
                                                 replaces=config.input)
            refresh_meta(gm, comp.example_inputs)
            moved[name] = {"ops_moved": len(cone), "frontier": len(frontier),
                           "features": int(example.shape[1])}
        return PassResult(bool(moved), {"moved": moved})
