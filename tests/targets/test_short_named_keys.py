"""XNNPACK constants named by 16 hex digits: smaller programs that load and compute the same."""

from __future__ import annotations

import contextlib

import torch


def _lower(module, x, short: bool) -> bytes:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from lgc.targets.executorch.short_named_keys import short_named_keys

    with short_named_keys() if short else contextlib.nullcontext():
        edge = to_edge_transform_and_lower(torch.export.export(module, (x,)), partitioner=[XnnpackPartitioner()])
    return edge.to_executorch().buffer


def _keys(buffer: bytes) -> list[str]:
    from executorch.exir._serialize._program import deserialize_pte_binary

    return list(deserialize_pte_binary(buffer).named_data.pte_data)


def test_short_keys_shrink_the_program_and_run_the_same():
    from executorch.runtime import Runtime

    torch.manual_seed(0)
    module = torch.nn.Sequential(*(torch.nn.Conv2d(8, 8, 1) for _ in range(6))).eval()
    x = torch.randn(1, 8, 4, 4)
    full, short = _lower(module, x, short=False), _lower(module, x, short=True)

    assert {len(k) for k in _keys(full)} == {64}  # executorch's own names: the whole sha256 digest
    keys = _keys(short)
    assert len(keys) == 12 and {len(k) for k in keys} == {16}  # 6 weights + 6 biases, all still distinct
    # Each name was stored twice (delegate and program), about 48 bytes saved per copy.
    assert len(full) - len(short) >= 12 * 2 * 40, (len(full), len(short))
    outputs = []
    for buffer in (full, short):
        method = Runtime.get().load_program(buffer).load_method("forward")  # buffer held by the loop variable
        outputs.append(method.execute([x])[0])
    assert torch.equal(outputs[0], outputs[1])
    with torch.no_grad():
        assert torch.allclose(outputs[1], module(x), atol=1e-5)
