"""Emitters, one per runtime, and the build profiles that choose them."""

from __future__ import annotations


def _executorch_xnnpack(component, out_dir, profile):
    from lgc.targets.executorch.emit import emit

    return emit(component, out_dir, "xnnpack")


def _executorch_coreml(component, out_dir, profile):
    from lgc.targets.executorch.emit import emit

    return emit(component, out_dir, "coreml", profile.emit_options)


def _coreml(component, out_dir, profile):
    from lgc.targets.coreml.emit import emit

    return emit(component, out_dir, profile)


def _tvm(component, out_dir, profile):
    from lgc.targets.tvm.emit import emit

    return emit(component, out_dir, profile)


# Dispatch on a profile's ``runtime``: one table, not an if-chain.
EMITTERS = {"executorch-xnnpack": _executorch_xnnpack, "executorch-coreml": _executorch_coreml, "coreml": _coreml, "tvm": _tvm}
# Which harness runner loads each runtime's artifacts.
RUNNERS = {"executorch-xnnpack": "executorch", "executorch-coreml": "executorch-coreml", "coreml": "coreml", "tvm": "tvm"}
