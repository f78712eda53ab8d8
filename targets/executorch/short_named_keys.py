"""Shorter names for the XNNPACK delegate's constant tensors: 16 hex digits of their sha256, not 64.

executorch 1.5.1's XNNPACK serializer names every constant (weight, bias,
per-channel scale vector) by the full sha256 hex digest of its bytes and
writes that name twice: in the delegate's own flatbuffer and in the
program's named-data table. At about 90 bytes per copy this is 4% of the
reference int8 U-Net (311 constants, 59 KB of names for 1.25 MB of
weights) and a larger share for an int8 program than for its fp32 twin,
whose weights are four times the bytes with fewer named tensors. The name
only has to be unique within one program (it deduplicates equal tensors and
is the lookup key at load time); 64 bits of the same digest keeps a
collision among a few thousand tensors below 1e-12.

``short_named_keys()`` swaps in a truncating digest for the duration of one
lowering. Upstream-worthy: a ``named_key_digest_len`` option in the
serializer would make this patch unnecessary.
"""

from __future__ import annotations

import contextlib
import hashlib
import types

KEY_HEX_DIGITS = 16


class _ShortDigest:
    def __init__(self, data: bytes = b""):
        self._h = hashlib.sha256(data)

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()[:KEY_HEX_DIGITS]


@contextlib.contextmanager
def short_named_keys():
    from executorch.backends.xnnpack.operators import node_visitor

    original = node_visitor.hashlib
    node_visitor.hashlib = types.SimpleNamespace(sha256=_ShortDigest)
    try:
        yield
    finally:
        node_visitor.hashlib = original
