"""Emitters, one per runtime, and the build profiles that choose them."""

from __future__ import annotations


# Every emitter takes (component, out_dir, profile, cache_dir, progress): the build cache for
# state an emitter keeps between builds (TVM's tuning records), and a progress callback for long work.


def _executorch_xnnpack(component, out_dir, profile, cache_dir=None, progress=None):
    from lgc.targets.executorch.emit import emit

    return emit(component, out_dir, "xnnpack")


def _executorch_coreml(component, out_dir, profile, cache_dir=None, progress=None):
    from lgc.targets.executorch.emit import emit

    return emit(component, out_dir, "coreml", profile.emit_options)


def _coreml(component, out_dir, profile, cache_dir=None, progress=None):
    from lgc.targets.coreml.emit import emit

    return emit(component, out_dir, profile)


def _tvm(component, out_dir, profile, cache_dir=None, progress=None):
    from lgc.targets.tvm.emit import emit

    return emit(component, out_dir, profile, cache_dir, progress)


def _tvm_key_material(profile, cache_dir) -> dict:
    from lgc.targets.tvm.tuning import DATABASE_DIR, databases_digest, resolve_target

    # The host CPU the code is generated for, and the tuning records the build applies.
    return {"target": resolve_target(profile.emit_options["target"]),
            "tuning_records": databases_digest(cache_dir / DATABASE_DIR if cache_dir else None)}


# Dispatch on a profile's ``runtime``: one table, not an if-chain.
EMITTERS = {"executorch-xnnpack": _executorch_xnnpack, "executorch-coreml": _executorch_coreml, "coreml": _coreml, "tvm": _tvm}
# What else an artifact depends on, per runtime, beyond its graph and the profile (read again
# after emitting: tuning adds records while it emits).
KEY_MATERIAL = {"tvm": _tvm_key_material}
# Which harness runner loads each runtime's artifacts.
RUNNERS = {"executorch-xnnpack": "executorch", "executorch-coreml": "executorch-coreml", "coreml": "coreml", "tvm": "tvm"}
