"""Node provenance without the quadratic copy: ``from_node`` history shared, not deep-copied, on each retrace.

Every pass that retraces a graph (torch.export's decompositions, the PT2E
quantizer, ExecuTorch's edge passes and the ~20 passes XNNPACK's preprocess
runs) gives each new node a ``NodeSource`` recording the node it came from.
torch 2.13's ``NodeSource.__init__`` deep-copies that node's whole
``from_node`` history, which holds the previous ``NodeSource`` records, which
hold theirs: after k retraces every node copies a chain k deep, so the cost
grows with the square of the number of passes. Profiled on the reference
U-Net's int8 lowering it was 33 of 200 seconds, all in ``copy.deepcopy``.

Upstream proposed the same change (pytorch/pytorch#193051, "Shallow-copy
from_node provenance in NodeSource instead of deepcopy"): copy the outer list,
share the records. Records are not mutated after construction, so the
metadata and its serialization (``to_dict``) stay the same; only the copying
goes. Scoped to lgc's passes and lowering, so a caller's own torch use is
untouched.
"""

from __future__ import annotations

import contextlib
import threading

from torch.fx import traceback as fx_traceback

_lock = threading.Lock()
_depth = 0
_original_init = fx_traceback.NodeSource.__init__


def _init_sharing_history(self, node, pass_name: str = "", action=None) -> None:
    # The original constructor without a node sets the pass name and actions (and validates them);
    # the node's part is then filled in as it would be, with a new outer list over the same records.
    _original_init(self, None, pass_name, action)
    if node is not None:
        self.node_info = self.NodeInfo(name=node.name, target=str(node.target), graph_id=id(node.graph))
        self.from_node = list(node.meta.get("from_node", ()))


@contextlib.contextmanager
def shared_node_provenance():
    """Within this block, ``NodeSource`` shares ``from_node`` records instead of deep-copying them (re-entrant)."""
    global _depth
    with _lock:
        if _depth == 0:
            fx_traceback.NodeSource.__init__ = _init_sharing_history
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                fx_traceback.NodeSource.__init__ = _original_init
