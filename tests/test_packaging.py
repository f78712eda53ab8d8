"""The wheel is a working lgc: every data file it reads ships in it, and an installed copy builds from anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Source folder -> where it lands in the wheel (pyproject.toml's package-dir).
PACKAGE_DIRS = {"compiler": "lgc/compiler", "passes": "lgc/passes", "targets": "lgc/targets", "calibration": "lgc/calibration",
                "runtime_harness": "lgc/runtime_harness", "golden_outputs": "lgc/golden_outputs"}
# Files in those folders that nothing reads at run time: they stay in the repository only.
NOT_SHIPPED = {"compiler/PASSES.md", "compiler/reference/samples.png"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the build backend (setuptools) is already installed, and no index is needed.
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
                   check=True, capture_output=True)
    (found,) = out.glob("lgc-*.whl")
    return found


def _data_files() -> dict[str, str]:
    """{repository path: wheel path} of every file lgc's packages hold besides Python modules."""
    out = {}
    for src, dst in PACKAGE_DIRS.items():
        for f in sorted((REPO / src).rglob("*")):
            rel = f.relative_to(REPO).as_posix()
            if f.is_file() and f.suffix not in (".py", ".pyc") and "__pycache__" not in f.parts and rel not in NOT_SHIPPED:
                out[rel] = dst + rel[len(src):]
    return out


def test_the_wheel_holds_every_data_file_and_nothing_else(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    data = _data_files()
    assert {"compiler/manifest.schema.json", "compiler/reference/student/unet/diffusion_pytorch_model.safetensors",
            "golden_outputs/reference-student/manifest.json", "calibration/prompts.txt",
            "runtime_harness/policy.default.toml", "targets/executorch/app_runtime/CMakeLists.txt"} <= set(data)
    missing = sorted(src for src, dst in data.items() if dst not in names)
    assert not missing, missing[:5]
    outside = sorted(n for n in names if not n.startswith(("lgc/", "lgc-")))
    assert not outside, outside[:5]  # no top-level `tests`, `passes`, ... in site-packages


def test_an_installed_wheel_builds_the_reference_model_from_another_folder(wheel, tmp_path):
    """A non-editable install: nothing resolves into the source tree, and a build and its check pass."""
    env_dir = tmp_path / "venv"
    # The venv sees the already-installed dependencies (torch & co.); lgc itself comes from the wheel only.
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    py = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)], check=True,
                   capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(py), "-c", "import lgc.compiler.build as b; print(b.__file__); print(b.DEFAULT_MODEL)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(p.startswith(str(env_dir)) for p in where), where
    build = subprocess.run([str(env_dir / "bin" / "lgc"), "build", "--target", "android-fp32", "--out", "out", "--quiet"],
                           cwd=work, env=env, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    check = subprocess.run([str(env_dir / "bin" / "lgc"), "check", "out/android-fp32"], cwd=work, env=env, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
