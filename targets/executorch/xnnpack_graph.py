"""Read the XNNPACK graphs inside a ``.pte``: which XNNPACK operators the delegates run.

``get_delegation_info`` sees a delegate as one opaque call; what the
delegate does inside (how many layout transposes XNNPACK's channels-last
pass added, how many dynamic-quantization converts) is only in the
serialized XNNPACK flatbuffer. ExecuTorch ships its schema and a ``flatc``;
this decompiles each delegate's graph to JSON with them and counts nodes.
Used by the tests that guard layout work and by ``bench/speed.py``.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from pathlib import Path


def _graph_json(blob: bytes, schema: Path, work: Path) -> dict:
    from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import XNNHeader
    from executorch.exir._serialize._flatbuffer import _flatc_decompile

    header = XNNHeader.from_bytes(blob[: XNNHeader.EXPECTED_LENGTH])
    (work / "g.bin").write_bytes(blob[header.flatbuffer_offset: header.flatbuffer_offset + header.flatbuffer_size])
    _flatc_decompile(str(work), str(schema), str(work / "g.bin"), ["--raw-binary"])
    text = (work / "g.json").read_text()
    # flatc writes non-finite floats (clamp bounds) as bare inf/nan, which JSON does not allow.
    return json.loads(re.sub(r"(?<=[:\[,\s])-?(inf|nan)\b", "0", text))


def delegate_ops(pte: bytes) -> Counter:
    """XNNPACK node types (``Conv2d``, ``StaticTranspose``, ...) summed over every XNNPACK delegate in ``pte``."""
    from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import _get_schema_bytes
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(pte).program
    ops = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        schema = work / "schema.fbs"
        schema.write_bytes(_get_schema_bytes())
        for plan in program.execution_plan:
            for delegate in plan.delegates:
                if delegate.id != "XnnpackBackend":
                    continue
                blob = bytes(program.backend_delegate_data[delegate.processed.index].data)
                for node in _graph_json(blob, schema, work)["xnodes"]:
                    ops[node["xnode_union_type"].removeprefix("XNN")] += 1
    return ops
