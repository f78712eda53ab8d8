"""Import TVM's tensor intrinsics in seconds, not minutes: TVMScript's ``inspect.stack()`` without the module scan.

MetaSchedule imports ``tvm.s_tir.tensor_intrin`` before it tunes (TuneContext) and in
each builder worker before its first build. That package parses a few hundred
TVMScript functions (CUDA, ROCm, ARM, x86 intrinsics); each ``@T.prim_func``
calls ``inspect.stack()``, which reads every frame's source line through
``inspect.getsourcefile``. For a frame whose file does not exist on disk (the
import machinery's ``<frozen importlib._bootstrap>`` frames, of which a nested
import has many) ``getsourcefile`` asks ``inspect.getmodule``, which finds no
cached answer and scans every module in ``sys.modules``; with torch and
ExecuTorch loaded that is thousands of modules, for every frame, for every
function. Profiled here (py-spy, the TVM tuning tests): 184 s in the test
process and 189 s in the builder worker, almost all in ``inspect.getmodule``.

TVMScript uses the stack for two things: the source line of the decorating
frame (is the function defined in a class?) and the frames' locals (names hidden
by PEP 563). ``_stack`` gives both, reading the line from ``linecache`` by the
code's file name, as ``inspect`` ends up doing for files that exist. It stands
in for ``inspect.stack`` only while this import runs.
"""

from __future__ import annotations

import contextlib
import inspect
import linecache
import sys

PACKAGE = "tvm.s_tir.tensor_intrin"


def _frame_info(frame) -> inspect.FrameInfo:
    filename, lineno = frame.f_code.co_filename, frame.f_lineno
    line = linecache.getline(filename, lineno, frame.f_globals)
    return inspect.FrameInfo(frame, filename, lineno, frame.f_code.co_name, [line] if line else None,
                             0 if line else None, positions=None)


def _stack(context: int = 1) -> list[inspect.FrameInfo]:
    """``inspect.stack()`` of the caller, one line of context per frame (what TVMScript asks for)."""
    frames, frame = [], sys._getframe(1)
    while frame is not None:
        frames.append(_frame_info(frame))
        frame = frame.f_back
    return frames


@contextlib.contextmanager
def _cheap_inspect_stack():
    original = inspect.stack
    inspect.stack = _stack
    try:
        yield
    finally:
        inspect.stack = original


def import_tensor_intrinsics() -> None:
    """Import ``tvm.s_tir.tensor_intrin`` now, cheaply (a no-op once imported). Also a builder worker's initializer."""
    if PACKAGE in sys.modules:
        return
    with _cheap_inspect_stack():
        import tvm.s_tir.tensor_intrin  # noqa: F401  (registers the intrinsics)
