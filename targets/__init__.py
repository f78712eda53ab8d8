"""Emitters, one per runtime, and the build profiles that choose them."""

from __future__ import annotations


def _executorch_xnnpack(component, out_dir):
    from lgc.targets.executorch.emit import emit

    return emit(component, out_dir)


# Dispatch on a profile's ``runtime``: one table, not an if-chain.
EMITTERS = {"executorch-xnnpack": _executorch_xnnpack}
# Which harness runner loads each runtime's artifacts.
RUNNERS = {"executorch-xnnpack": "executorch"}
