"""The bad-input inventory: each kind of bad input or fault, its one-line message, its exit code, the output left behind.

The table ``INVENTORY`` is the source of the README's "Bad input and faults"
table (a test keeps the two in step). Cases run in process through
``lgc.compiler.cli.main`` (what the ``lgc`` script calls), except those about
processes and signals, which run ``python -m lgc.compiler.cli``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from lgc.compiler.bundle import staged_bundle
from lgc.compiler.cli import main
from lgc.compiler.errors import UsageError

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Case:
    id: str
    what: str  # the bad input, as the README table states it
    args: Callable  # (tmp_path, fixtures) -> argv
    code: int
    message: str  # a fragment of the one line on stderr
    output: str = "out"  # folder that must not exist afterwards (relative to tmp_path), or "" for none


def _model(tmp, fx, edit):
    model = tmp / "model"
    shutil.copytree(fx["tiny"](), model)
    edit(model)
    return model


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bundle(tmp, fx, edit=None):
    folder = tmp / "bundle"
    shutil.copytree(fx["bundle"](), folder)
    if edit:
        edit(folder)
    return folder


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _link_out(path: Path, tmp: Path) -> None:
    outside = tmp / "outside.json"
    outside.write_text(path.read_text())
    path.unlink()
    path.symlink_to(outside)


def _pickle_unet(model: Path) -> None:
    w = next((model / "unet").glob("*.safetensors"))
    w.unlink()
    (model / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04N.")  # refused before it is read


def _swap_vocab(path: Path) -> None:
    """Two vocabulary entries exchanged: valid JSON, a valid tokenizer, another model's behaviour."""
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    path.write_text(json.dumps(data))


def _write(tmp: Path, name: str, data: bytes) -> Path:
    (tmp / name).write_bytes(data)
    return tmp / name


B = ["build", "--target", "android-int8"]

INVENTORY = [
    Case("missing-model", "model folder does not exist",
         lambda t, fx: B + ["--model", str(t / "nope"), "--out", str(t / "out")], 3, "model folder not found"),
    Case("not-diffusers", "folder is not a diffusers pipeline",
         lambda t, fx: B + ["--model", str(_model(t, fx, lambda m: (m / "model_index.json").unlink())), "--out", str(t / "out")],
         3, "not a diffusers pipeline folder (no model_index.json)"),
    Case("bad-model-index", "model_index.json is not JSON",
         lambda t, fx: B + ["--model", str(_model(t, fx, lambda m: (m / "model_index.json").write_text("{ nope"))), "--out", str(t / "out")],
         3, "model_index.json: not valid JSON"),
    Case("truncated-weights", "truncated safetensors file",
         lambda t, fx: B + ["--model", str(_model(t, fx, lambda m: _truncate(m / "unet" / "diffusion_pytorch_model.safetensors"))), "--out", str(t / "out")],
         3, "unet: cannot load weights from"),
    Case("shape-mismatch", "weights that do not match the config's shapes",
         lambda t, fx: B + ["--model", str(_model(t, fx, lambda m: _edit_json(m / "unet" / "config.json", lambda c: c.update(cross_attention_dim=c["cross_attention_dim"] * 2)))), "--out", str(t / "out")],
         3, "weights do not match the config: down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight expected shape"),
    Case("unsupported-block", "architecture lgc does not support",
         lambda t, fx: B + ["--model", str(_model(t, fx, lambda m: _edit_json(m / "unet" / "config.json", lambda c: c["down_block_types"].__setitem__(0, "SimpleCrossAttnDownBlock2D")))), "--out", str(t / "out")],
         4, "unet: down block 0 'SimpleCrossAttnDownBlock2D' is not supported"),
    Case("unknown-target", "unknown target",
         lambda t, fx: ["build", "--target", "android-int4-turbo", "--out", str(t / "out")], 2, "unknown target 'android-int4-turbo'; known targets: android-int8"),
    Case("unknown-pass", "unknown pass name",
         lambda t, fx: B + ["--set", "fuse_everything.level=3", "--out", str(t / "out")], 2, "pass 'fuse_everything' is not in android-int8's pipeline"),
    Case("unknown-pass-option", "unknown pass option",
         lambda t, fx: B + ["--set", "calibrate_observers.max_promptz=3", "--out", str(t / "out")], 2, "pass 'calibrate_observers' has no option(s) ['max_promptz']"),
    Case("image-size", "image size not divisible by the model's downsampling",
         lambda t, fx: B + ["--model", str(fx["tiny"]()), "--image-size", "100", "--out", str(t / "out")], 3, "image size 100 is not divisible by 16"),
    Case("steps-zero", "steps < 1",
         lambda t, fx: B + ["--steps", "0", "--out", str(t / "out")], 2, "--steps must be at least 1"),
    Case("tune-trials-android", "TVM tuning flag on a target that is not TVM",
         lambda t, fx: B + ["--tune-trials", "8", "--out", str(t / "out")], 2, "--tune-trials does not apply to android-int8 (it is for tvm-host, tvm-android-arm64)"),
    Case("model-symlink-out", "model folder file that is a symbolic link out of the folder",
         lambda t, fx: B + ["--model", str(_model(t, fx, lambda m: _link_out(m / "unet" / "config.json", t))), "--out", str(t / "out")], 3,
         "config.json: a symbolic link out of the model folder"),
    Case("pickle-weights", "pickle weights (*.bin) without --allow-pickle",
         lambda t, fx: B + ["--model", str(_model(t, fx, lambda m: _pickle_unet(m))), "--out", str(t / "out")], 3,
         "unet: weights are pickle files (diffusion_pytorch_model.bin), which lgc opens only for a folder you trust"),
    Case("unknown-solver", "unknown solver",
         lambda t, fx: B + ["--solver", "euler_turbo", "--out", str(t / "out")], 2, "unknown solver 'euler_turbo'"),
    Case("unsupported-scheduler", "scheduler class lgc does not lower",
         lambda t, fx: B + ["--model", str(_model(t, fx, lambda m: _edit_json(m / "model_index.json", lambda c: c.__setitem__("scheduler", ["diffusers", "FlowMatchEulerDiscreteScheduler"])))), "--out", str(t / "out")],
         4, "scheduler FlowMatchEulerDiscreteScheduler is not supported"),
    Case("nonlinear-scheduler-key", "scheduler config key whose step is not a multiply-add",
         lambda t, fx: B + ["--model", str(_model(t, fx, lambda m: _edit_json(m / "scheduler" / "scheduler_config.json", lambda c: c.update(clip_sample=True)))), "--out", str(t / "out")],
         4, "scheduler DDIMScheduler: clip_sample=true clips the predicted sample"),
    Case("empty-prompts", "empty calibration prompt file",
         lambda t, fx: B + ["--calibration-prompts", str(_write(t, "p.txt", b"# comments only\n\n")), "--out", str(t / "out")],
         2, "calibration prompt file has no prompts"),
    Case("undecodable-prompts", "undecodable calibration prompt file",
         lambda t, fx: B + ["--calibration-prompts", str(_write(t, "p.txt", b"\xff\xfe\x00\x81")), "--out", str(t / "out")],
         2, "calibration prompt file is not UTF-8 text"),
    Case("out-not-writable", "output folder cannot be created or written",
         lambda t, fx: B + ["--model", str(fx["tiny"]()), "--out", str(_write(t, "afile", b"x") / "sub")], 2, "cannot create output folder", ""),
    Case("bad-command", "unknown command or flag",
         lambda t, fx: ["frobnicate"], 2, "invalid choice", ""),
    Case("check-missing-bundle", "bundle folder does not exist",
         lambda t, fx: ["check", str(t / "nope")], 2, "bundle folder not found", ""),
    Case("check-altered-file", "bundle file altered after build (hash mismatch)",
         lambda t, fx: ["check", str(_bundle(t, fx, lambda b: _flip_byte(b / "unet.pte")))], 2, "unet.pte was altered after build", ""),
    Case("check-tokenizer-edited", "tokenizer file edited after build",
         lambda t, fx: ["check", str(_bundle(t, fx, lambda b: _swap_vocab(b / "tokenizer" / "tokenizer.json")))], 2,
         "tokenizer/tokenizer.json was altered after build", ""),
    Case("check-swapped-artifact", "one component's artifact swapped for another's",
         lambda t, fx: ["check", str(_bundle(t, fx, lambda b: shutil.copy(b / "vae_decoder.pte", b / "unet.pte")))], 2,
         "unet.pte was altered after build", ""),
    Case("check-escaping-path", "manifest path with '..' (outside the bundle)",
         lambda t, fx: ["check", str(_bundle(t, fx, lambda b: _edit_json(b / "manifest.json", lambda m: m["components"]["unet"].update(file="../unet.pte"))))],
         2, "manifest path '../unet.pte' is not a plain relative path inside the bundle", ""),
    Case("check-absolute-path", "manifest path that is absolute",
         lambda t, fx: ["check", str(_bundle(t, fx, lambda b: _edit_json(b / "manifest.json", lambda m: m["files"].update({"/etc/hostname": "0" * 64}))))],
         2, "manifest path '/etc/hostname' is not a plain relative path inside the bundle", ""),
    Case("check-symlink", "symbolic link inside the bundle",
         lambda t, fx: ["check", str(_bundle(t, fx, lambda b: (b / "tokenizer" / "extra.json").symlink_to("/etc/hostname")))], 2,
         "tokenizer/extra.json is a symbolic link", ""),
    Case("check-unlisted-file", "file in the bundle that the manifest does not list",
         lambda t, fx: ["check", str(_bundle(t, fx, lambda b: (b / "tokenizer" / "added_tokens.json").write_text("{}")))], 2,
         "tokenizer/added_tokens.json is not listed in the manifest", ""),
    Case("check-newer-schema", "manifest with a newer schema version",
         lambda t, fx: ["check", str(_bundle(t, fx, lambda b: _edit_json(b / "manifest.json", lambda m: m.update(schema_version=99))))],
         2, "manifest schema_version 99 is newer than this lgc understands", ""),
    Case("check-corrupt-manifest", "manifest that is not JSON",
         lambda t, fx: ["check", str(_bundle(t, fx, lambda b: (b / "manifest.json").write_text("{")))], 2, "not valid JSON", ""),
    Case("check-stale-goldens", "stale golden outputs (model hash changed)",
         lambda t, fx: ["check", str(fx["bundle"]()), "--golden", str(REPO / "golden_outputs" / "reference-teacher")], 2, "stale goldens", ""),
    Case("check-bad-policy", "tolerance policy with an unknown key",
         lambda t, fx: ["check", str(fx["bundle"]()), "--policy", str(_write(t, "p.toml", b"policy_version = 1\n[default]\npsnr = 3\n"))],
         2, "unknown key(s) ['psnr'] in [default]", ""),
]


@pytest.fixture
def fx(tiny_pipeline, bundles):
    return {"tiny": lambda: tiny_pipeline("sd1"), "bundle": lambda: bundles["android-int8"][0]}


@pytest.mark.parametrize("case", INVENTORY, ids=[c.id for c in INVENTORY])
def test_inventory(case, tmp_path, fx, capsys):
    argv = [str(a) for a in case.args(tmp_path, fx)]
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("lgc: ")]
    assert code == case.code, (code, err[-2000:])
    assert len(lines) == 1 and case.message in lines[0], err[-2000:]
    assert "Traceback" not in err
    if case.output:  # no bundle and no staging folder left behind
        out = tmp_path / case.output
        assert not (out / "android-int8").exists() and not list(out.glob(".android-int8.staging*"))


def test_inventory_is_the_readme_table():
    readme = (REPO / "README.md").read_text()
    for case in INVENTORY:
        assert f"| `{case.id}` |" in readme, case.id


def lgc(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "lgc.compiler.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600, env=env)


def test_a_real_process_prints_one_line_and_no_traceback(tmp_path):
    res = lgc("build", "--target", "android-int4-turbo", "--out", str(tmp_path / "out"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert [line for line in res.stderr.splitlines() if line.startswith("lgc: ")] == [
        "lgc: error: unknown target 'android-int4-turbo'; known targets: android-int8, android-fp32, ios-fp16, ios-w8, ios-w4, ios-w6, tvm-host, tvm-android-arm64, ios-et"]
    res = lgc("--debug", "build", "--target", "android-int4-turbo", "--out", str(tmp_path / "out"))
    assert res.returncode != 0 and "Traceback" in res.stderr  # --debug shows it


def _previous_bundle(out: Path) -> dict:
    """A stand-in previous bundle; returns its files' bytes to compare afterwards."""
    old = out / "android-int8"
    old.mkdir(parents=True)
    (old / "manifest.json").write_text('{"previous": true}')
    (old / "unet.pte").write_bytes(os.urandom(1000))
    return {p.name: p.read_bytes() for p in old.iterdir()}


def _unchanged(out: Path, before: dict) -> bool:
    old = out / "android-int8"
    return {p.name: p.read_bytes() for p in old.iterdir()} == before and not list(out.glob(".android-int8.staging*"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_build_leaves_previous_bundle_byte_identical(tmp_path, tiny_pipeline, sig):
    out = tmp_path / "out"
    before = _previous_bundle(out)
    proc = subprocess.Popen([sys.executable, "-m", "lgc.compiler.cli", "build", "--target", "android-fp32",
                             "--model", str(tiny_pipeline("sd1")), "--out", str(out)],
                            stderr=subprocess.PIPE, text=True)
    seen = ""
    deadline = time.time() + 300
    while "pass " not in seen and time.time() < deadline:  # interrupt once the passes run: mid-build
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    proc.send_signal(sig)
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 130, seen + rest
    assert "lgc: interrupted; no bundle was changed" in rest
    assert _unchanged(out, before)


def test_disk_full_while_writing(tmp_path, tiny_pipeline, monkeypatch, capsys):
    import errno

    out = tmp_path / "out"
    before = _previous_bundle(out)
    real = Path.write_bytes

    def full(self, data):
        if self.suffix == ".pte":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    code = main(["build", "--target", "android-fp32", "--model", str(tiny_pipeline("sd1")), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 5, err
    assert "lgc: error: disk full while writing" in err and "the previous bundle is untouched" in err
    assert _unchanged(out, before)


def test_failed_build_keeps_previous_bundle(tmp_path):
    target = tmp_path / "android-int8"
    with staged_bundle(target) as stage:
        (stage / "manifest.json").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_bundle(target) as stage:
            (stage / "manifest.json").write_text("half-written")
            raise RuntimeError("lowering failed")
    assert (target / "manifest.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir() if "staging" in p.name] == []


def test_second_concurrent_build_is_refused(tmp_path):
    target = tmp_path / "android-int8"
    with staged_bundle(target):
        with pytest.raises(UsageError, match="another lgc build is writing"):
            with staged_bundle(target):
                pass


def test_two_processes_building_one_output(tmp_path):
    """The lock is per output folder across processes: the second build exits 2 at once, the first is unharmed."""
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".android-int8.lock", "w") as held:  # what a running build holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        res = lgc("build", "--target", "android-int8", "--out", str(out))
    assert res.returncode == 2 and "another lgc build is writing" in res.stderr


def test_listing_commands():
    res = lgc("passes")
    assert res.returncode == 0 and "lower_sampler" in res.stdout and "annotate_xnnpack_w8a8" in res.stdout
    res = lgc("targets")
    assert res.returncode == 0 and "android-int8" in res.stdout and "android-fp32" in res.stdout


@pytest.mark.parametrize("loader_message", [
    # diffusers' own check, when accelerate is installed (low_cpu_mem_usage on)
    "Cannot load /m/unet because down_blocks.0.attn2.to_k.weight expected shape torch.Size([16, 64]), but got "
    "torch.Size([16, 32]). If you want to instead overwrite randomly initialized weights, please make sure to pass both",
    # torch's load_state_dict, which diffusers falls back to without accelerate (this machine)
    "Error(s) in loading state_dict for UNet2DConditionModel: size mismatch for down_blocks.0.attn2.to_k.weight: copying "
    "a param with shape torch.Size([16, 32]) from checkpoint, the shape in current model is torch.Size([16, 64]). size "
    "mismatch for down_blocks.0.attn2.to_v.weight: copying a param with shape torch.Size([16, 32]) from checkpoint, the "
    "shape in current model is torch.Size([16, 64]).",
], ids=["diffusers", "torch"])
def test_shape_mismatch_is_one_line_whichever_loader_said_it(loader_message):
    from lgc.compiler.model_import import _shape_mismatch

    line = _shape_mismatch(loader_message)
    assert line.startswith("weights do not match the config: down_blocks.0.attn2.to_k.weight expected shape "
                           "torch.Size([16, 64]), but got torch.Size([16, 32])"), line
    assert "overwrite" not in line and "copying a param" not in line
