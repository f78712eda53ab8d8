"""import_tensor_intrinsics registers exactly the intrinsics TVM's own import does (its inspect.stack stand-in changes nothing parsed)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("tvm")

# Run in a fresh process (the package imports once per process): record every intrinsic TVM
# registers, by name and the structural hashes of its description and implementation.
_RECORD = r"""
import inspect, json, sys
import torch, tvm, tvm_ffi  # what lgc has loaded when it tunes: the slow path scans these modules
from tvm.s_tir import TensorIntrin

seen = {}
original = TensorIntrin.register
def register(name, desc, impl, override=False):
    seen[name] = [str(tvm_ffi.structural_hash(desc)), str(tvm_ffi.structural_hash(impl))]
    return original(name, desc, impl, override)
TensorIntrin.register = staticmethod(register)
stack = inspect.stack
if sys.argv[1] == "lgc":
    from lgc.targets.tvm.tensor_intrinsics import import_tensor_intrinsics
    import_tensor_intrinsics()
    import_tensor_intrinsics()  # a no-op the second time
else:
    import tvm.s_tir.tensor_intrin
print(json.dumps({"intrinsics": seen, "stack_restored": inspect.stack is stack}))
"""


def _registered(how: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _RECORD, how], capture_output=True, text=True, check=True, timeout=900)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_same_intrinsics_as_tvms_own_import():
    ours, theirs = _registered("lgc"), _registered("tvm")
    assert len(theirs["intrinsics"]) > 100  # CUDA, ROCm, ARM and x86 intrinsics: the package really was parsed
    assert ours["intrinsics"] == theirs["intrinsics"]
    assert ours["stack_restored"]
