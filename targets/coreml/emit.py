"""Emit one component as a Core ML ML program (``.mlpackage``), weights compressed as the profile asks.

coremltools converts the ``torch.export`` program of the component after
lgc's passes; compression is coremltools' own ``optimize.coreml`` applied to
the converted program, so what ships is exactly what Apple's tools produce.
"""

from __future__ import annotations

import json
import time
import uuid
import warnings
from pathlib import Path

import torch

from lgc.targets.coreml import dedup_small_constants

# Core ML has no int64 tensors: the converter turns int64 inputs into int32.
COREML_DTYPE = {"FLOAT32": "float32", "FLOAT16": "float16", "INT32": "int32"}


def register_missing_torch_ops() -> None:
    """``aten.alias`` (left by torch.export around CLIP's position ids) has no coremltools 9.0 translation.

    coremltools maps ``alias_copy``, ``clone`` and ``detach`` to its no-op
    translation but not ``alias`` itself; it is the same no-op.
    """
    from coremltools.converters.mil.frontend.torch.ops import noop
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    if _TORCH_OPS_REGISTRY.get_func("alias") is None:
        _TORCH_OPS_REGISTRY.set_func_by_name(noop, "alias")


PALETTE_GROUP = 16  # output channels sharing one look-up table
# Palettized weight formats and their index widths. 6 bits: the 4-bit error on the reference U-Net is spread
# over all its layers (no few layers to keep at 8 bits), and a 64-entry palette takes its output
# from 33.5 to 45.1 dB against fp16 at 0.431x of fp16's weight bytes (0.296x for 4 bits).
PALETTIZED = {"4bit-palettized": 4, "6bit-palettized": 6}


def compression_config(weights: str, consts: dict[str, tuple[int, ...]] | None = None):
    """The ``coremltools.optimize.coreml`` config of a profile's ``weights`` setting (None: fp16 as converted).

    ``consts``: {const op name: shape} of the converted program, for configs that depend on a weight's shape.
    """
    import math

    import coremltools.optimize.coreml as cto

    if weights == "fp16":
        return None
    if weights == "int8-linear":
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
        return "linear_quantize_weights", cto.OptimizationConfig(global_config=op)
    if weights in PALETTIZED:
        nbits = PALETTIZED[weights]
        # Grouped per-channel look-up tables (iOS 18): each group of 16 output channels has its own 2**nbits values.
        op = cto.OpPalettizerConfig(mode="kmeans", nbits=nbits, granularity="per_grouped_channel", group_size=PALETTE_GROUP)
        # coremltools skips, and leaves in fp16, a weight whose first axis 16 does not divide: CLIP's token
        # embedding (vocabulary 676 here, 49,408 in SD) was the largest fp16 weight left. Those get the
        # largest group that divides their first axis (676: 4), a table per 4 rows instead of none.
        uneven = {name: math.gcd(shape[0], PALETTE_GROUP) for name, shape in (consts or {}).items()
                  if len(shape) >= 2 and math.prod(shape) > op.weight_threshold and shape[0] % PALETTE_GROUP}
        per_op = {name: cto.OpPalettizerConfig(mode="kmeans", nbits=nbits, granularity="per_grouped_channel", group_size=g)
                  for name, g in uneven.items()}
        return "palettize_weights", cto.OptimizationConfig(global_config=op, op_name_configs=per_op)
    raise ValueError(f"unknown Core ML weight format {weights!r}")


def _const_shapes(mlmodel) -> dict[str, tuple[int, ...]]:
    """{const op name: shape} of a converted model's program (weights and small constants alike)."""
    program = mlmodel._mil_program
    return {op.name: tuple(op.outputs[0].shape) for op in program.functions["main"].operations
            if op.op_type == "const" and op.outputs[0].shape} if program is not None else {}


def _deterministic_package_ids(package: Path) -> None:
    """coremltools names the package's items with random UUIDs; derive them from the item paths instead.

    Two builds of the same inputs then give byte-identical packages (the
    UUIDs only tie ``Manifest.json`` entries together; Core ML does not care which they are).
    """
    path = package / "Manifest.json"
    manifest = json.loads(path.read_text())
    renamed = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, "lgc/" + item["path"])) for old, item in manifest["itemInfoEntries"].items()}
    manifest["itemInfoEntries"] = {renamed[k]: v for k, v in manifest["itemInfoEntries"].items()}
    manifest["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    # In the layout coremltools' ModelPackage writes itself: opening the package then leaves it byte-identical.
    path.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n")


def _deterministic_spec(package: Path, component: str, target: str) -> None:
    """Rewrite the package's model spec so the same inputs give the same bytes.

    Protobuf serialises map fields (the metadata) in arbitrary order unless
    asked not to, and coremltools stamps the conversion date: the spec is
    re-serialised deterministically, with lgc's own provenance instead of the date.
    """
    from coremltools.proto import Model_pb2

    from lgc.runtime_harness.coreml.program import package_paths

    spec_path, _ = package_paths(package)
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    meta = spec.description.metadata.userDefined
    meta.pop("com.github.apple.coremltools.conversion_date", None)
    meta["lgc.component"] = component
    meta["lgc.target"] = target
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))


def _io_specs(features) -> list[dict]:
    out = []
    for f in features:
        arr = f.type.multiArrayType
        dtype = COREML_DTYPE[type(arr).ArrayDataType.Name(arr.dataType)]
        out.append({"name": f.name, "shape": list(arr.shape), "dtype": dtype})
    return out


def emit(component, out_dir: Path, profile) -> dict:
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    register_missing_torch_ops()
    options = profile.emit_options
    target = getattr(ct.target, options["minimum_deployment_target"])
    t0 = time.perf_counter()
    ep = torch.export.export(component.graph, component.example_inputs, strict=False).run_decompositions({})
    t_export = time.perf_counter() - t0
    with warnings.catch_warnings():
        # Folding fp32 constants to fp16 overflows the attention masks' large negatives to -inf:
        # exactly what a mask means, and numpy's warning about it would only alarm users.
        warnings.filterwarnings("ignore", message="overflow encountered in cast", category=RuntimeWarning)
        mlmodel = ct.convert(ep, convert_to="mlprogram", minimum_deployment_target=target,
                             compute_precision=ct.precision.FLOAT16, skip_model_load=True,
                             pass_pipeline=dedup_small_constants.pipeline())
    consts = _const_shapes(mlmodel)
    # Feature names as the manifest gives them (the converter names them after graph nodes).
    spec = mlmodel.get_spec()
    renames = [*zip([f.name for f in spec.description.input], component.input_names),
               *zip([f.name for f in spec.description.output], component.output_names)]
    for old, new in renames:
        ct.utils.rename_feature(spec, old, new)
    mlmodel = ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir, skip_model_load=True)
    t_convert = time.perf_counter() - t0 - t_export
    compression = compression_config(options["weights"], consts)
    if compression is not None:
        fn, config = compression
        mlmodel = getattr(cto, fn)(mlmodel, config)
    t_compress = time.perf_counter() - t0 - t_export - t_convert
    path = Path(out_dir) / f"{component.name}.mlpackage"
    mlmodel.save(str(path))
    # coremltools leaves a debug-handle map of the torch graph in the package; an app has no use for it.
    (path / "executorch_debug_handle_mapping.json").unlink(missing_ok=True)
    _deterministic_package_ids(path)
    _deterministic_spec(path, component.name, profile.name)
    # Weight compression leaves the features as renamed above: ``spec`` still describes them.
    return {
        "file": path.name,
        "format": "mlpackage",
        "backend": f"coreml-mlprogram-{options['minimum_deployment_target']}",
        "weights": options["weights"],
        "inputs": _io_specs(spec.description.input),
        "outputs": _io_specs(spec.description.output),
        "seconds": {"export": round(t_export, 2), "convert": round(t_convert, 2), "compress": round(t_compress, 2)},
    }
