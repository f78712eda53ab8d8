"""ExecuTorch bundles on AArch64 kernels: the C++ app runtime under qemu-user, against the goldens and x86.

    bash targets/executorch/app_runtime/arm64/build.sh              # build/app-runtime-arm64 (cached)
    python bench/arm64_images.py build/android-int8 build/android-fp32 --host build/app-runtime \\
        --arm64 build/app-runtime-arm64 [--cpus neoverse-n1,cortex-a57,max,sme=off,max] [--cases 4]

For each bundle, emulated CPU model and golden case (the goldens' prompt and pinned initial noise), the
arm64 binary's image is compared with the golden image (PSNR, SSIM) and with the x86 binary's image of
the same case (max |difference|, PSNR). XNNPACK picks its kernels from the CPU features qemu reports
(cortex-a57: NEON; neoverse-n1: + dot product; max,sme=off: + i8mm, SVE2; max: + SME), so each model
runs other int8 and fp32 kernels. Instructions are emulated: the times printed are qemu's, not a phone's.
This is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lgc.runtime_harness.golden import GOLDEN_ROOT, read_golden_dir
from lgc.runtime_harness.metrics import psnr_db, ssim


def image(cmd: list[str], bundle: Path, case, tmp: Path) -> tuple[torch.Tensor, float]:
    case.noise.numpy().astype(np.float32).tofile(tmp / "noise.f32")
    t0 = time.perf_counter()
    subprocess.run(cmd + [str(bundle), case.prompt, "--noise", str(tmp / "noise.f32"), "--raw", str(tmp / "out.f32"),
                          "-o", str(tmp / "out.png")], check=True, capture_output=True)
    seconds = time.perf_counter() - t0
    return torch.from_numpy(np.fromfile(tmp / "out.f32", dtype=np.float32)).reshape(case.image.reshape(1, 3, *case.image.shape[-2:]).shape), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--host", type=Path, required=True, help="x86 build folder of the app runtime")
    ap.add_argument("--arm64", type=Path, required=True, help="arm64 build folder (arm64/build.sh)")
    ap.add_argument("--cpus", default="cortex-a57;neoverse-n1;max,sme=off;max", help="qemu -cpu models, ';'-separated")
    ap.add_argument("--cases", type=int, default=4, help="golden cases per bundle (16 in all)")
    ap.add_argument("--golden", type=Path, default=GOLDEN_ROOT / "reference-student")
    args = ap.parse_args()

    cases = read_golden_dir(args.golden).cases[: args.cases]
    print(f"{'bundle':<14} {'cpu':<20} {'psnr vs golden min/mean':>24} {'ssim min':>9} {'vs x86 psnr min':>16} "
          f"{'max|arm-x86|':>13} {'s/image':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for bundle in args.bundles:
            host = {i: image([str(args.host / "lgc-generate")], bundle, c, tmp)[0] for i, c in enumerate(cases)}
            gold = [psnr_db(host[i], c.image.reshape(host[i].shape), data_range=1.0) for i, c in enumerate(cases)]
            print(f"{bundle.name:<14} {'x86-64 (host)':<20} {min(gold):>11.2f} / {statistics.fmean(gold):<10.2f}")
            for cpu in args.cpus.split(";"):
                qemu = ["qemu-aarch64-static", "-cpu", cpu, str(args.arm64 / "lgc-generate")]
                p, s, vs, diff, secs = [], [], [], 0.0, []
                for i, c in enumerate(cases):
                    got, sec = image(qemu, bundle, c, tmp)
                    ref = c.image.reshape(got.shape)
                    p.append(psnr_db(got, ref, data_range=1.0))
                    s.append(ssim(got, ref))
                    vs.append(psnr_db(got, host[i], data_range=1.0))
                    diff = max(diff, float((got - host[i]).abs().max()))
                    secs.append(sec)
                print(f"{bundle.name:<14} {cpu:<20} {min(p):>11.2f} / {statistics.fmean(p):<10.2f} {min(s):>9.4f} "
                      f"{min(vs):>16.2f} {diff:>13.2e} {statistics.median(secs):>8.1f}")


if __name__ == "__main__":
    main()
