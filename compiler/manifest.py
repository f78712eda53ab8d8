"""The bundle manifest: building it, validating it against its JSON Schema, reading it back."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from lgc.compiler.errors import UsageError
from lgc.passes.step_reduction.sampler_plan import check_plan

SCHEMA_VERSION = 2  # 2: every shipped file listed under its sha256 (files)
SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")
# An SD-1.5 bundle's manifest is tens of KiB (a Core ML package lists a few hundred files): anything near
# this is not a manifest, and is refused before it is parsed.
MAX_MANIFEST_BYTES = 16 << 20


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate(manifest: dict) -> None:
    import jsonschema

    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise UsageError(f"manifest schema_version {version} is newer than this lgc understands ({SCHEMA_VERSION}); upgrade lgc")
    if isinstance(version, int) and version < SCHEMA_VERSION:
        raise UsageError(f"manifest schema_version {version} predates the file list every bundle now carries; rebuild the bundle")
    try:
        jsonschema.validate(manifest, schema())
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise UsageError(f"manifest is invalid at {where}: {e.message}") from None
    try:  # what a JSON Schema cannot say: the per-step arrays agree in length, every constant is finite
        check_plan(manifest["sampler"])
    except ValueError as e:
        raise UsageError(f"manifest is invalid at sampler: {e}") from None


def load(bundle: Path) -> dict:
    path = Path(bundle) / "manifest.json"
    if not Path(bundle).is_dir():
        raise UsageError(f"bundle folder not found: {bundle}")
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise UsageError(f"{path}: {path.stat().st_size} bytes, more than a manifest holds ({MAX_MANIFEST_BYTES}); not an lgc manifest")
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"not an lgc bundle (no manifest.json): {bundle}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise UsageError(f"{path}: JSON nested too deeply to be an lgc manifest") from None
    validate(manifest)
    return manifest


def tensor_spec(name: str, t) -> dict:
    return {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}


def component_entry(comp, artifact: dict, sha: str, nbytes: int, runtime: str, precision: str, out_example) -> dict:
    outs = out_example if isinstance(out_example, (tuple, list)) else (out_example,)
    return {
        "file": artifact["file"],
        "sha256": sha,
        "bytes": nbytes,
        "runtime": runtime,
        "backend": artifact.get("backend", ""),
        "precision": precision,
        **({"kernel_libraries": artifact["kernel_libraries"]} if "kernel_libraries" in artifact else {}),
        # An artifact that takes other dtypes than the torch graph (Core ML: int32 ids) says so itself.
        "inputs": artifact.get("inputs") or [tensor_spec(n, t) for n, t in zip(comp.input_names, comp.example_inputs)],
        "outputs": artifact.get("outputs") or [tensor_spec(n, t) for n, t in zip(comp.output_names, outs)],
        **({"methods": {name: {k: m[k] for k in ("inputs", "outputs", "feeds", "replaces")} for name, m in artifact["methods"].items()}}
           if artifact.get("methods") else {}),
    }
