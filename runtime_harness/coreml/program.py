"""Read a saved ``.mlpackage`` (the MIL program in its model spec, the weights file) and run it with torch.

This is the Core ML program as it ships, not the torch graph it came from:
every op, constant and compressed weight is read back from the package.
Compile-time ops (``const``, ``constexpr_*`` dequantization and look-up
tables) are evaluated once when the program loads, as Core ML does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lgc.compiler.errors import UnsupportedModelError
from lgc.runtime_harness.coreml.ops import OPS

# MIL DataType names -> torch dtypes (what each value is stored as between ops).
DTYPES = {"FLOAT16": torch.float16, "FLOAT32": torch.float32, "INT32": torch.int32, "INT16": torch.int16,
          "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool, "INT64": torch.int64}


def package_paths(package: Path) -> tuple[Path, Path]:
    """The model spec and the weights folder of a ``.mlpackage``, found through its Manifest.json."""
    manifest = json.loads((package / "Manifest.json").read_text())
    root = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"]
    spec_path = package / "Data" / root
    return spec_path, spec_path.parent / "weights"


def _to_torch(value):
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "US":
            return value.tolist()
        return torch.from_numpy(np.ascontiguousarray(value).copy())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _widen(v):
    """fp16 operands are computed in fp32 inside an op (the result is rounded back by the caller)."""
    if isinstance(v, torch.Tensor) and v.dtype == torch.float16:
        return v.float()
    if isinstance(v, list):
        return [_widen(x) for x in v]
    return v


def _declared_dtype(value_type):
    which = value_type.WhichOneof("type")
    if which != "tensorType":
        return None
    from coremltools.proto import MIL_pb2

    return DTYPES.get(MIL_pb2.DataType.Name(value_type.tensorType.dataType))


class MilProgram:
    """One function (``main``) of a Core ML ML program, callable with torch tensors."""

    def __init__(self, package: Path):
        from coremltools.converters.mil.frontend.milproto.load import TranscriptionContext, _load_value
        from coremltools.proto import Model_pb2

        self.package = Path(package)
        spec_path, weights = package_paths(self.package)
        spec = Model_pb2.Model()
        spec.ParseFromString(spec_path.read_bytes())
        if spec.WhichOneof("Type") != "mlProgram":
            raise UnsupportedModelError(f"{self.package.name}: not an ML program (Core ML model type {spec.WhichOneof('Type')})")
        function = spec.mlProgram.functions["main"]
        block = function.block_specializations[function.opset]
        self.opset = function.opset
        self.input_names = [i.name for i in function.inputs]
        self.input_dtypes = [_declared_dtype(i.type) for i in function.inputs]
        self.output_names = list(block.outputs)
        # coremltools' own decoder of the proto value format (immediate values and blob-file weights, sub-byte types).
        context = TranscriptionContext(str(weights))
        decode = lambda v: _to_torch(_load_value(context, v))  # noqa: E731
        self.values: dict = {}
        self.steps: list = []
        for op in block.operations:
            if op.type == "const":
                self.values[op.outputs[0].name] = decode(op.attributes["val"])
                continue
            if op.blocks:
                raise UnsupportedModelError(f"{self.package.name}: control-flow op '{op.type}' is not supported by lgc's Core ML interpreter")
            fn = OPS.get(op.type)
            if fn is None:
                raise UnsupportedModelError(f"{self.package.name}: MIL op '{op.type}' (output {op.outputs[0].name}) is not "
                                            f"supported by lgc's Core ML interpreter")
            args = {}
            for param, arg in op.inputs.items():
                bound = [("name", b.name) if b.WhichOneof("binding") == "name" else ("value", decode(b.value)) for b in arg.arguments]
                args[param] = bound
            # Some ops (the iOS 16 constexpr_* family) carry their operands as attributes.
            args.update({k: [("value", decode(v))] for k, v in op.attributes.items() if k != "name"})
            step = (op.type, fn, args, [o.name for o in op.outputs], [_declared_dtype(o.type) for o in op.outputs])
            if op.type.startswith("constexpr_"):
                self._run_step(step, self.values)  # compile-time: weights are materialised once
            else:
                self.steps.append(step)

    @staticmethod
    def _run_step(step, env: dict) -> None:
        op_type, fn, args, out_names, out_dtypes = step
        kwargs = {}
        for param, bound in args.items():
            vals = [env[v] if kind == "name" else v for kind, v in bound]
            kwargs[param] = _widen(vals if param == "values" else vals[0])
        result = fn(**kwargs)
        results = result if isinstance(result, tuple) else (result,)
        for name, value, dtype in zip(out_names, results, out_dtypes):
            env[name] = value.to(dtype) if dtype is not None and isinstance(value, torch.Tensor) else value

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"{self.package.name} takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), got {len(inputs)}")
        env = dict(self.values)
        for name, dtype, value in zip(self.input_names, self.input_dtypes, inputs):
            env[name] = value.to(dtype)
        for step in self.steps:
            try:
                self._run_step(step, env)
            except Exception as e:
                raise RuntimeError(f"{self.package.name}: MIL op '{step[0]}' (output {step[3][0]}) failed: {e}") from e
        return [env[name] for name in self.output_names]

    def op_types(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for step in self.steps:
            counts[step[0]] = counts.get(step[0], 0) + 1
        return dict(sorted(counts.items()))
