"""Emit one component as a TVM Relax module: the component's graph imported into Relax, compiled for the profile's target.

The weights are bound into the module as constants, so each component is
one self-contained library: a shared object for the host, an archive of
objects for arm64 Android (linked into the app with the NDK; no NDK is
needed to produce it). The Relax VM entry point is ``main``, taking the
component's inputs in the manifest's order.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

# Library format per target OS: what export_library writes without a cross toolchain.
FORMATS = {"host": "so", "android": "tar"}


def relax_module(component):
    """The component's post-pass graph as a Relax IRModule (weights bound as constants)."""
    from tvm.relax.frontend.torch import from_exported_program

    # Core ATen: TVM's importer translates the decomposed forms, not every composite op.
    ep = torch.export.export(component.graph, component.example_inputs, strict=False).run_decompositions()
    return from_exported_program(ep, keep_params_as_input=False)


def compile_module(mod, target_json: dict):
    import tvm
    from tvm import relax

    target = tvm.target.Target(target_json)
    return relax.build(mod, target=target)


def library_name(options: dict) -> str:
    return f"module.{FORMATS[options['os']]}"


def emit(component, out_dir: Path, profile) -> dict:
    options = profile.emit_options
    t0 = time.perf_counter()
    mod = relax_module(component)
    t_import = time.perf_counter() - t0
    executable = compile_module(mod, options["target"])
    t_compile = time.perf_counter() - t0 - t_import
    folder = Path(out_dir) / f"{component.name}.tvm"
    folder.mkdir()
    executable.export_library(str(folder / library_name(options)))
    t_export = time.perf_counter() - t0 - t_import - t_compile
    return {
        "file": folder.name,
        "format": "tvm-relax-vm",
        "backend": f"tvm-{options['os']}",
        "library": library_name(options),
        "target": options["target"],
        "tuned": False,
        "seconds": {"import": round(t_import, 2), "compile": round(t_compile, 2), "export": round(t_export, 2)},
    }
