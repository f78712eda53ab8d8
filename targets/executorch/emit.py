"""Emit one component as an ExecuTorch ``.pte``: XNNPACK delegate (Android) or Core ML delegate (iOS)."""

from __future__ import annotations

import contextlib
import re
import time
from collections import Counter
from pathlib import Path

import torch

# Nodes outside the delegate that only move data between the delegate and
# the caller (no arithmetic): they do not count as non-delegated compute.
IO_GLUE = {"getitem", "executorch_call_delegate"}
# Layout conversions (dim order: channels-last <-> contiguous). At the program's
# inputs or outputs they are glue too: the delegate keeps 4-D tensors
# channels-last and the caller hands over and gets back contiguous ones.
LAYOUT_COPIES = ("_to_dim_order_copy", "_clone_dim_order")


# The delegation figures an emitter records, carried into report.json by lgc build and lgc check.
DELEGATION_FIELDS = ("delegate_subgraphs", "nondelegated_compute_ops", "nondelegated_ops", "io_layout_copies")


def _op_type(node) -> str:
    """The operator key get_delegation_info uses: the node name without its numeric suffix."""
    return re.sub(r"_[\d]+$", "", node.name)


def io_layout_copies(graph_module, user_inputs=None) -> Counter:
    """Layout copies outside the delegates that only convert a program input (one the caller passes) or output.

    ``user_inputs``: names of the caller's inputs (the graph signature's); the
    other placeholders are weights and constants, and a per-call layout copy
    of a constant is waste, not glue. Without it, no input copy counts as glue.
    """
    found = Counter()
    inputs = set(user_inputs or ())
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or not any(k in str(node.target) for k in LAYOUT_COPIES):
            continue
        of_input = bool(node.all_input_nodes) and all(a.op == "placeholder" and a.name in inputs for a in node.all_input_nodes)
        if of_input or all(u.op == "output" for u in node.users):
            found[_op_type(node)] += 1
    return found


def delegation_summary(graph_module, user_inputs=None) -> dict:
    """Delegate subgraphs and the compute ops left outside them, from the lowered program."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    glue = io_layout_copies(graph_module, user_inputs)
    outside = Counter()
    for op, b in info.delegation_by_operator.items():
        n = b.non_delegated - glue.get(op, 0)
        if n > 0 and op not in IO_GLUE:
            outside[op] += n
    return {
        "delegate_subgraphs": info.num_delegated_subgraphs,
        "delegated_nodes": info.num_delegated_nodes,
        "nondelegated_compute_ops": sum(outside.values()),
        "nondelegated_ops": dict(sorted(outside.items())),
        "io_layout_copies": sum(glue.values()),
    }


def kernel_libraries(graph_module) -> list[str]:
    """ExecuTorch kernel libraries the ops left outside the delegate need at run time.

    The app links them next to the XNNPACK backend; ``quantized`` holds the
    ``quantized_decomposed`` kernels (weight-only embeddings), everything else is portable.
    """
    libs = {"portable"}
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and str(getattr(node.target, "namespace", "")) == "quantized_decomposed":
            libs.add("quantized")
    return sorted(libs)


def partitioner(backend: str, options: dict):
    if backend == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return XnnpackPartitioner()
    if backend == "coreml":
        import coremltools as ct
        from executorch.backends.apple.coreml.compiler import CoreMLBackend
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        from lgc.targets.coreml import dedup_small_constants
        from lgc.targets.coreml.emit import register_missing_torch_ops

        register_missing_torch_ops()
        specs = CoreMLBackend.generate_compile_specs(
            minimum_deployment_target=getattr(ct.target, options["minimum_deployment_target"]),
            compute_precision=ct.precision.FLOAT16, pass_names=dedup_small_constants.pass_names())
        return CoreMLPartitioner(compile_specs=specs)
    raise ValueError(f"unknown ExecuTorch backend {backend!r}")


@contextlib.contextmanager
def timed_lowering_steps(part, seconds: dict):
    """Add the wall time of ``part``'s partitioning and of its backend's preprocess (serializing the delegate) to ``seconds``.

    ``to_edge_transform_and_lower`` runs edge decompositions, partitioning and
    each delegate's preprocess as one call; the build report splits it so a
    slow lowering says which of the three to look at.
    """
    from executorch.exir.backend.backend_details import BackendDetails

    def timed(key, fn):
        def call(*args, **kw):
            t = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - t
        return call

    backends = {c.__name__: c for c in BackendDetails.__subclasses__()}
    saved = {name: c.__dict__["preprocess"] for name, c in backends.items() if "preprocess" in c.__dict__}
    part.partition = timed("partition", part.partition)  # an attribute of this instance only
    for name, original in saved.items():
        setattr(backends[name], "preprocess", staticmethod(timed("preprocess", original.__func__)))
    try:
        yield
    finally:
        for name, original in saved.items():
            setattr(backends[name], "preprocess", original)


def _single_output(method) -> torch.Tensor:
    with torch.no_grad():
        return method.graph(*method.example_inputs)


def emit(component, out_dir: Path, backend: str = "xnnpack", options: dict | None = None) -> dict:
    from executorch.exir import to_edge_transform_and_lower

    t0 = time.perf_counter()
    ep = torch.export.export(component.graph, component.example_inputs, strict=False)
    # A component's extra methods (passes/fusion/fold_timestep_embedding.py) go in the same program.
    extra = {name: torch.export.export(m.graph, m.example_inputs, strict=False) for name, m in component.methods.items()}
    t_export = time.perf_counter() - t0
    from lgc.targets.executorch.dynamic_conv_layout import fixed_dynamic_conv_layout
    from lgc.targets.executorch.shared_preprocess_weights import shared_preprocess_weights
    from lgc.targets.executorch.short_named_keys import short_named_keys

    part = partitioner(backend, options or {})
    steps: dict[str, float] = {}
    with fixed_dynamic_conv_layout(), short_named_keys(), shared_preprocess_weights(), timed_lowering_steps(part, steps):
        edge = to_edge_transform_and_lower({"forward": ep, **extra} if extra else ep, partitioner=[part])
    t_lower = time.perf_counter() - t0 - t_export
    lowered = edge.exported_program()
    summary = delegation_summary(lowered.graph_module, lowered.graph_signature.user_inputs)
    libraries = kernel_libraries(edge.exported_program().graph_module)
    from lgc.compiler.manifest import tensor_spec

    methods = {}
    for name, m in component.methods.items():
        method_ep = edge.exported_program(name)
        libraries = sorted(set(libraries) | set(kernel_libraries(method_ep.graph_module)))
        methods[name] = {"inputs": [tensor_spec(n, t) for n, t in zip(m.input_names, m.example_inputs)],
                         "outputs": [tensor_spec(m.output_names[0], _single_output(m))],
                         "feeds": m.feeds, "replaces": m.replaces,
                         **delegation_summary(method_ep.graph_module, method_ep.graph_signature.user_inputs)}
    prog = edge.to_executorch()
    t_serialize = time.perf_counter() - t0 - t_export - t_lower
    path = Path(out_dir) / f"{component.name}.pte"
    path.write_bytes(prog.buffer)
    return {
        "file": path.name,
        "format": "executorch",
        "backend": backend,
        "kernel_libraries": libraries,
        # lower = edge decompositions + partition + preprocess (the delegate's own passes and serialization)
        "seconds": {"export": round(t_export, 2), "lower": round(t_lower, 2),
                    **{k: round(v, 2) for k, v in steps.items()}, "serialize": round(t_serialize, 2)},
        **summary,
        **({"methods": methods} if methods else {}),
    }
