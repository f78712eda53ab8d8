"""shared_node_provenance: the same from_node history as torch records, without copying it on every retrace."""

from __future__ import annotations

import contextlib

import torch
from torch.fx import traceback as fx_traceback

from lgc.compiler.node_provenance import shared_node_provenance


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.norm = torch.nn.GroupNorm(2, 8)

    def forward(self, x):
        return torch.nn.functional.silu(self.norm(self.conv(x))) * 2.0


def _retraced(times: int) -> torch.export.ExportedProgram:
    """The block exported, then retraced ``times`` more times (each decomposition run replays the graph
    through an fx Interpreter, which is where torch records provenance)."""
    ep = torch.export.export(_Block().eval(), (torch.randn(1, 4, 8, 8),))
    for _ in range(times):
        ep = ep.run_decompositions()
    return ep


def _history(ep) -> list:
    """Each node's provenance as a tree of (name, target, pass, action); graph ids differ between runs by design."""
    def tree(source):
        return (source.name, source.target, source.pass_name, source._get_action_string(), [tree(s) for s in source.from_node])

    return [(n.name, [tree(s) for s in n.meta.get("from_node", [])]) for n in _graph_nodes(ep)]


def _graph_nodes(ep):
    return [n for n in ep.graph.nodes if n.op == "call_function"]


def _depth(source) -> int:
    return 1 + max((_depth(s) for s in source.from_node), default=0)


def test_history_is_what_torch_records_and_records_are_shared():
    deep = _retraced(4)
    with shared_node_provenance():
        shared = _retraced(4)
    assert _history(shared) == _history(deep)
    # Four retraces on top of export's own: the chains really are deep (the test is not vacuous).
    assert max(_depth(s) for n in _graph_nodes(shared) for s in n.meta["from_node"]) >= 5
    # Shared, not copied: the retraced node's history holds its source's own record objects (torch's
    # constructor copies them, so there they never are).
    assert _shares_history(shared_node_provenance()) and not _shares_history(contextlib.nullcontext())


def _shares_history(mode) -> bool:
    with mode:
        ep = _retraced(1)
        again = ep.run_decompositions()
    before = {n.name: n.meta["from_node"][0] for n in _graph_nodes(ep)}
    node = next(n for n in _graph_nodes(again) if n.name in before)
    return any(record is before[node.name] for record in _walk(node.meta["from_node"]))


def _walk(records):
    for r in records:
        yield r
        yield from _walk(r.from_node)


def test_torch_is_restored_after_the_block_even_nested_and_on_error():
    original = fx_traceback.NodeSource.__init__
    try:
        with shared_node_provenance():
            with shared_node_provenance():
                assert fx_traceback.NodeSource.__init__ is not original
            assert fx_traceback.NodeSource.__init__ is not original  # the outer block still holds it
            raise KeyError("boom")
    except KeyError:
        pass
    assert fx_traceback.NodeSource.__init__ is original
