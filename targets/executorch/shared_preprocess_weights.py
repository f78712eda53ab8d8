"""Let XNNPACK's preprocess read the partitioned program's weights instead of a deep copy of them.

executorch 1.5.1 hands each backend's ``preprocess`` a ``copy.deepcopy`` of
the partitioned program ("in case backends change graph"), weights
included: one more full copy of the model in memory while the delegate is
serialized. For an SD-1.5-size U-Net in fp32 that is 3.4 GB of a 12.1 GiB
peak. XNNPACK's preprocess rewrites the graph and replaces state-dict
entries, but never writes into a tensor it was given, so a copy of the graph
that shares the tensors is enough: the same memo-sharing copy executorch's
own CUDA backend uses in its low-memory mode
(``CudaBackend.copy_exported_program_for_preprocess``).
``tests/targets/test_shared_preprocess_weights.py`` checks that programs are
byte-identical and the source tensors untouched.
"""

from __future__ import annotations

import copy
from unittest import mock

import torch


def _copy_sharing_tensors(cls, edge_program, compile_specs):
    memo = {id(t): t for values in (edge_program.state_dict, edge_program.constants)
            for t in values.values() if isinstance(t, torch.Tensor)}
    return copy.deepcopy(edge_program, memo)


def shared_preprocess_weights():
    """A context in which XNNPACK's preprocess gets the tensor-sharing copy.

    ``patch.object`` restores the class as it was: XnnpackBackend inherits the
    method, so the override is deleted again rather than set to the base's.
    """
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    return mock.patch.object(XnnpackBackend, "copy_exported_program_for_preprocess", classmethod(_copy_sharing_tensors))
