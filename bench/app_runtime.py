"""The C++ app runtime against lgc's Python API on the same bundle, measured side by side in one run.

    python bench/app_runtime.py BUNDLE [BUNDLE ...] --app build/app-runtime [--images 6] [--rounds 3]

For each bundle and round: ``lgc.load_bundle(BUNDLE).generate(prompt, count=N)`` in this process, then
``lgc-generate BUNDLE prompt -n N`` in a child process, each timed around the N images only (the
C++ tool's load time is printed apart, the Python bundle is loaded before its clock starts). Prints
milliseconds per image for both and their ratio per round, and the median ratio: the machine is
shared and noisy, so only the ratio of adjacent runs means anything.
This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

PROMPT = "a photo of a tabby cat"


def cpp_ms_per_image(app: Path, bundle: Path, images: int) -> tuple[float, float]:
    """(ms per image, load ms) of one lgc-generate run, from its own report lines and the wall clock."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        done = subprocess.run([str(app / "lgc-generate"), str(bundle), PROMPT, "-n", str(images), "-o", f"{tmp}/x.png"],
                              capture_output=True, text=True, check=True)
        wall = (time.perf_counter() - t0) * 1000
    load = float(re.search(r"loaded in (\d+) ms", done.stderr).group(1))
    return (wall - load) / images, load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--app", type=Path, required=True, help="the CMake build folder holding lgc-generate")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import lgc

    print(f"{'bundle':<16} {'round':>5} {'python ms/img':>14} {'c++ ms/img':>11} {'c++ load ms':>12} {'c++/python':>11}")
    for bundle in args.bundles:
        loaded = lgc.load_bundle(bundle)
        loaded.generate(PROMPT, seed=0)  # warm: first-call allocations and time_features rows
        ratios = []
        for r in range(args.rounds):
            t0 = time.perf_counter()
            loaded.generate(PROMPT, seed=0, count=args.images)
            py = (time.perf_counter() - t0) * 1000 / args.images
            cpp, load = cpp_ms_per_image(args.app, bundle, args.images)
            ratios.append(cpp / py)
            print(f"{bundle.name:<16} {r:>5} {py:>14.1f} {cpp:>11.1f} {load:>12.0f} {cpp / py:>11.3f}")
        print(f"{bundle.name:<16} median c++/python {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
