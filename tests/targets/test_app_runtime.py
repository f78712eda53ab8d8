"""The C++ app runtime (targets/executorch/app_runtime) against lgc's Python harness and transformers.

It is built with CMake against the executorch wheel's prebuilt runtime, as the README shows, then:
its images for every golden case of the android-fp32 and android-int8 reference bundles equal the
harness's (same prompt, same pinned initial noise); its step noise and seed noise are torch's; its
CLIP token ids equal transformers' on a corpus of hard prompts; bad bundles are refused in one line.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lgc.runtime_harness.golden import GOLDEN_ROOT, read_golden_dir

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "targets" / "executorch" / "app_runtime"
REFERENCE_TOKENIZER = REPO / "compiler" / "reference" / "student" / "tokenizer"

# Prompts that exercise every rule of CLIP's tokenizer: case, contractions, digits, punctuation runs,
# decomposed accents (NFC), scripts without case or spaces, emoji, every kind of whitespace, special
# tokens in the text, case mappings that change length (İ, ǅ, ß), and prompts far over the length.
CORPUS = [
    "a photo of a tabby cat", "", "   ", "A PHOTO OF A CAT!!!", "cat's toy isn't here, we'll see; they've I'm you'd",
    "1234567890 3.14159 1,000,000", "naïve café résumé", "nai\u0308ve cafe\u0301", "ΣΊΣΥΦΟΣ ΟΔΟΣ", "İstanbul'da ıı",
    "東京タワーの写真", "🐱🐶 emoji 👍🏽", "tab\tnew\nline\r\nnbsp\u00a0thin\u2009ideo\u3000end",
    "<|startoftext|>hello<|endoftext|>", "x<|endoftext|>y", "<|ENDOFTEXT|>", "Straße ǅemal ﬁne ß", "--==>> ~~`´^ ¡¿",
    "' s '' 's'''s", "a" * 200, " ".join(["word"] * 100), "\u200bzero\u200cwidth", "ﾊﾝｶｸ ＦＵＬＬ１２", "Ǆ ǅ ǆ ΐ ŉ",
    "x\u0307\u0323y", "mixed123abc456", "e.g. U.S.A. Dr. Smith's", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛", "٣ ٤ ٥ arabic-indic ٠١٢",
    "hello\x00world", "\U0001F600\U0001F3FB", "a cup of coffee on a saucer, 4k, highly detailed, trending on artstation",
]


def _missing_prerequisite() -> str | None:
    for tool in ("cmake", "ninja", "g++"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    for header in ("unicode/uchar.h", "png.h", "openssl/evp.h"):
        if not (Path("/usr/include") / header).exists():
            return f"/usr/include/{header} is missing (Debian: libicu-dev, libpng-dev, libssl-dev)"
    return None


def build_app_runtime(out: Path) -> Path:
    """The README's two CMake commands; returns the build folder."""
    import executorch
    import nlohmann_json

    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": "2"}
    configure = ["cmake", "-S", str(SOURCE), "-B", str(out), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_PREFIX_PATH={executorch.__path__[0]}",
                 f"-Dnlohmann_json_INCLUDE_DIR={Path(nlohmann_json.__file__).parent / 'include'}"]
    for cmd in (configure, ["cmake", "--build", str(out)]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert done.returncode == 0, f"{' '.join(cmd[:3])} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Path:
    """Built once per test session, shared by the xdist workers (whose temp folders share a parent)."""
    import fcntl
    import hashlib

    why = _missing_prerequisite()
    if why:
        pytest.skip(f"the C++ app runtime cannot be built here: {why}")
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(SOURCE.rglob("*")) if p.is_file())).hexdigest()[:16]
    root = tmp_path_factory.getbasetemp().parent
    with open(root / f".app-runtime-{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        out = root / f"app-runtime-{digest}"
        if not (out / "lgc-generate").exists():
            build_app_runtime(out)
    return out


def run(app: Path, tool: str, *args, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(app / tool), *map(str, args)], input=stdin, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


# --- tokenizer ---------------------------------------------------------------------------------------


def cpp_ids(app: Path, folder: Path, max_length: int, pad_id: int, prompts: list[str]) -> list[list[int]]:
    done = run(app, "lgc-tokenize", folder, max_length, pad_id, stdin="".join(json.dumps(p) + "\n" for p in prompts))
    assert done.returncode == 0, done.stderr
    got = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(got) == len(prompts)
    return got


def trained_clip_tokenizer(folder: Path) -> Path:
    """A CLIP-form tokenizer with merges learned on lgc's calibration prompts and the corpus.

    The reference model's own has 162 merges; this one has a few hundred more, learned by the
    tokenizers library itself, so merge order and long words are exercised beyond the reference.
    """
    from tokenizers import Tokenizer, pre_tokenizers, trainers

    shutil.copytree(REFERENCE_TOKENIZER, folder)
    tok = Tokenizer.from_file(str(REFERENCE_TOKENIZER / "tokenizer.json"))
    prompts = (REPO / "calibration" / "prompts.txt").read_text().splitlines()
    trainer = trainers.BpeTrainer(vocab_size=1500, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|startoftext|>", "<|endoftext|>"], end_of_word_suffix="</w>",
                                  show_progress=False)
    tok.train_from_iterator(prompts * 3 + CORPUS, trainer=trainer)
    data = json.loads(tok.to_str())
    ids = data["model"]["vocab"]
    data["post_processor"]["cls"][1], data["post_processor"]["sep"][1] = ids["<|startoftext|>"], ids["<|endoftext|>"]
    for added in data["added_tokens"]:
        added["id"] = ids[added["content"]]
    data["padding"] = data["truncation"] = None
    assert len(data["model"]["merges"]) > 300
    (folder / "tokenizer.json").write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize("which,max_length", [("reference", 16), ("reference", 77), ("trained", 77), ("trained", 8)])
def test_tokenizer_ids_equal_transformers(app, tmp_path, which, max_length):
    from transformers import CLIPTokenizer

    folder = REFERENCE_TOKENIZER if which == "reference" else trained_clip_tokenizer(tmp_path / "tok")
    tok = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    pad = tok.convert_tokens_to_ids(tok.pad_token)
    want = [tok(p, padding="max_length", max_length=max_length, truncation=True).input_ids for p in CORPUS]
    got = cpp_ids(app, folder, max_length, pad, CORPUS)
    differ = [(p, w, g) for p, w, g in zip(CORPUS, want, got) if w != g]
    assert not differ, differ[:3]
    assert len({tuple(w) for w in want}) > len(CORPUS) // 2  # the corpus is not all truncated to the same ids


@pytest.mark.parametrize("edit,named", [
    (lambda t: t["normalizer"]["normalizers"].pop(), "normalizer"),
    (lambda t: t["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex="\\w+"), "Split"),
    (lambda t: t["model"].update(type="WordPiece"), "BPE"),
    (lambda t: t.update(post_processor={"type": "BertProcessing"}), "post_processor"),
])
def test_a_tokenizer_of_another_form_is_refused_by_name(app, tmp_path, edit, named):
    folder = tmp_path / "tok"
    shutil.copytree(REFERENCE_TOKENIZER, folder)
    data = json.loads((folder / "tokenizer.json").read_text())
    edit(data)
    (folder / "tokenizer.json").write_text(json.dumps(data))
    done = run(app, "lgc-tokenize", folder, 16, 0, stdin='"a cat"\n')
    assert done.returncode == 4 and named in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


# --- images ------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _loaded(bundle: Path):
    import lgc

    return lgc.load_bundle(bundle)


def harness_image(bundle: Path, prompt: str, noise: torch.Tensor) -> np.ndarray:
    """The Python harness's image: the manifest loop over the artifacts in ExecuTorch's Python runtime."""
    from lgc.runtime_harness.harness import timestep_cond
    from lgc.runtime_harness.loop import generate, tokenize

    b = _loaded(bundle)
    m, L = b.manifest, b.manifest["tokenizer"]["max_length"]
    res = generate(m["sampler"], b.fns["text_encoder"], b.fns["unet"], b.fns["vae_decoder"], tokenize(b.tokenizer, prompt, L),
                   tokenize(b.tokenizer, m["tokenizer"]["uncond_prompt"], L), noise, m["guidance"]["mode"] == "cfg_batch",
                   timestep_cond=timestep_cond(m))
    return res.image.numpy()


def cpp_image(app: Path, bundle: Path, prompt: str, tmp: Path, noise: np.ndarray | None = None, *extra) -> np.ndarray:
    args = [bundle, prompt, "-o", tmp / "out.png", "--raw", tmp / "out.f32", *extra]
    if noise is not None:
        noise.astype(np.float32).tofile(tmp / "noise.f32")
        args += ["--noise", tmp / "noise.f32"]
    done = run(app, "lgc-generate", *args)
    assert done.returncode == 0, done.stderr
    return np.fromfile(tmp / "out.f32", dtype=np.float32)


@pytest.mark.parametrize("target", ["android-fp32", "android-int8"])
def test_images_equal_the_harness_on_every_golden_case(app, bundles, tmp_path, target):
    bundle = bundles[target][0]
    goldens = read_golden_dir(GOLDEN_ROOT / "reference-student")
    worst = 0.0
    for case in goldens.cases:
        want = harness_image(bundle, case.prompt, case.noise.unsqueeze(0) if case.noise.dim() == 3 else case.noise)
        got = cpp_image(app, bundle, case.prompt, tmp_path, case.noise.numpy()).reshape(want.shape)
        worst = max(worst, float(np.abs(got - want).max()))
    assert len(goldens.cases) == 16 and worst <= 1e-5, worst


def test_png_is_the_harness_image_in_8_bits(app, bundles, tmp_path):
    from PIL import Image

    from lgc.runtime_harness.loop import to_pil

    bundle = bundles["android-int8"][0]
    image = cpp_image(app, bundle, "a rainbow color wheel", tmp_path, None, "--seed", "5").reshape(1, 3, 128, 128)
    png = np.array(Image.open(tmp_path / "out.png"))
    assert png.shape == (128, 128, 3) and np.array_equal(png, np.array(to_pil(torch.from_numpy(image))))


# Run in a fresh interpreter with torch's portable CPU kernels (no AVX2 randn, whose polynomial
# log/sin/cos differ from libm's in the last bits), so torch's noise is the one a phone's torch draws.
PORTABLE_TORCH = """
import json, sys
import numpy as np, torch
from lgc.compiler.generate import LoadedBundle
from lgc.calibration.collect import initial_noise
from lgc.runtime_harness.loop import generate, tokenize
from lgc.runtime_harness.harness import timestep_cond
bundle, prompt, seed, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
b = LoadedBundle(bundle)
m = b.manifest
L = m["tokenizer"]["max_length"]
noise = initial_noise(seed, m["latent"]["shape"][1:])
res = generate(m["sampler"], b.fns["text_encoder"], b.fns["unet"], b.fns["vae_decoder"], tokenize(b.tokenizer, prompt, L),
               tokenize(b.tokenizer, m["tokenizer"]["uncond_prompt"], L), noise, m["guidance"]["mode"] == "cfg_batch",
               timestep_cond=timestep_cond(m), noise_seed=seed)
np.save(out, {"noise": noise.numpy(), "image": res.image.numpy()}, allow_pickle=True)
"""


def test_seed_and_step_noise_are_torchs(app, bundles, tmp_path):
    """An ancestral sampler (a noise draw every step) from a seed: the app's image is torch's, bit for bit."""
    import lgc

    bundle = tmp_path / "euler-a"
    shutil.copytree(bundles["android-fp32"][0], bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    config = json.loads((REPO / "compiler" / "reference" / "student" / "scheduler" / "scheduler_config.json").read_text())
    sampler = lgc.lower_sampler(config, steps=8, solver="euler_a", guidance_scale=5.0)
    assert any(sampler["noise_coef"])
    manifest["sampler"] = sampler  # the manifest is not under the files' hashes: the artifacts are unchanged
    (bundle / "manifest.json").write_text(json.dumps(manifest))

    prompt, seed = "a rocket on the launch pad", 11
    subprocess.run([sys.executable, "-c", PORTABLE_TORCH, bundle, prompt, str(seed), tmp_path / "ref.npy"], check=True,
                   env={**os.environ, "ATEN_CPU_CAPABILITY": "default"}, capture_output=True)
    ref = np.load(tmp_path / "ref.npy", allow_pickle=True).item()
    got = cpp_image(app, bundle, prompt, tmp_path, None, "--seed", seed, "--noise-out", tmp_path / "noise.f32")
    assert np.array_equal(np.fromfile(tmp_path / "noise.f32", dtype=np.float32), ref["noise"].ravel())
    assert float(np.abs(got - ref["image"].ravel()).max()) <= 1e-5
    # On this x86 host torch's default kernel is AVX2: its seed noise is the same to float rounding.
    avx2 = torch.randn(ref["noise"].shape, generator=torch.Generator().manual_seed(seed)).numpy()
    assert float(np.abs(avx2 - ref["noise"]).max()) < 1e-5


# --- AArch64 --------------------------------------------------------------------------------------------


def _arm64_missing() -> str | None:
    for tool, package in (("qemu-aarch64-static", "qemu-user-static"), ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: {package}; arm64/build.sh installs it)"
    if not Path("/usr/lib/aarch64-linux-gnu/libicuuc.so").exists():
        return "arm64 ICU/OpenSSL/libpng are not installed (arm64/build.sh installs them)"
    return None


@pytest.fixture(scope="module")
def arm64_app(tmp_path_factory) -> Path:
    why = _missing_prerequisite() or _arm64_missing()
    if why:
        pytest.skip(f"the arm64 app runtime cannot be built here: {why}")
    out = tmp_path_factory.mktemp("app-runtime-arm64")
    done = subprocess.run(["bash", str(SOURCE / "arm64" / "build.sh"), str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_arm64_kernels_score_like_x86_on_a_golden_case(app, arm64_app, bundles, tmp_path):
    """The bundles on XNNPACK's AArch64 kernels (qemu, dot-product CPU): fp32 the same image, int8 as good."""
    from lgc.runtime_harness.metrics import psnr_db

    case = read_golden_dir(GOLDEN_ROOT / "reference-student").cases[0]
    qemu = ["qemu-aarch64-static", "-cpu", "neoverse-n1", str(arm64_app / "lgc-generate")]
    images = {}
    for target in ("android-fp32", "android-int8"):
        bundle = bundles[target][0]
        case.noise.numpy().astype(np.float32).tofile(tmp_path / "noise.f32")
        done = subprocess.run(qemu + [str(bundle), case.prompt, "--noise", str(tmp_path / "noise.f32"), "--raw",
                                      str(tmp_path / "arm.f32"), "-o", str(tmp_path / "arm.png")], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        arm = np.fromfile(tmp_path / "arm.f32", dtype=np.float32)
        x86 = cpp_image(app, bundle, case.prompt, tmp_path, case.noise.numpy())
        images[target] = (torch.from_numpy(arm), torch.from_numpy(x86))
    arm, x86 = images["android-fp32"]
    assert float((arm - x86).abs().max()) <= 1e-4
    arm, x86 = images["android-int8"]
    golden = case.image.reshape(-1)
    # ARM's int8 kernels round differently from x86's: another image (34-36 dB apart), of the same quality
    # against the golden: within 1 dB of the bundle's worst x86 case, far above lgc check's gate (25 dB).
    assert float((arm - x86).abs().max()) > 1e-3
    assert psnr_db(arm, golden, data_range=1.0) >= bundles["android-int8"][1]["end_to_end"]["psnr_db_min"] - 1.0


# --- bad bundles and arguments -------------------------------------------------------------------------


def _tamper(bundle: Path, how: str) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    if how == "altered":
        with open(bundle / "unet.pte", "r+b") as f:
            f.seek(1000)
            byte = f.read(1)
            f.seek(1000)
            f.write(bytes([byte[0] ^ 1]))
    elif how == "unlisted":
        (bundle / "tokenizer" / "extra.txt").write_text("x")
    elif how == "newer":
        manifest["schema_version"] = 99
    elif how == "outside":
        manifest["components"]["vae_decoder"]["file"] = "../vae_decoder.pte"
    elif how == "tokenizer":
        manifest["files"]["tokenizer/tokenizer.json"] = "0" * 64
    elif how == "coreml":
        manifest["components"]["unet"]["runtime"] = "coreml"
    elif how == "truncated":
        (bundle / "manifest.json").write_text((bundle / "manifest.json").read_text()[:500])
        return
    (bundle / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("how,code,says", [
    ("altered", 2, "unet.pte was altered after build"),
    ("unlisted", 2, "tokenizer/extra.txt is not listed"),
    ("newer", 2, "schema_version 99 is newer"),
    ("outside", 2, "'../vae_decoder.pte' is not a plain relative path"),
    ("tokenizer", 2, "tokenizer/tokenizer.json was altered"),
    ("coreml", 4, "runs in 'coreml', not ExecuTorch"),
    ("truncated", 2, "not valid JSON"),
])
def test_bad_bundles_are_refused_in_one_line(app, bundles, tmp_path, how, code, says):
    bundle = tmp_path / "b"
    shutil.copytree(bundles["android-fp32"][0], bundle)
    _tamper(bundle, how)
    done = run(app, "lgc-generate", bundle, "a cat", "-o", tmp_path / "x.png")
    assert done.returncode == code and says in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("args,says", [
    ([], "expected BUNDLE and PROMPT"),
    (["{bundle}", "a cat", "--seed", "x"], "--seed takes a number"),
    (["{bundle}", "a cat", "-n", "0"], "-n must be"),
    (["{bundle}", "a cat", "-o", "cat.jpg"], "-o must name a .png"),
    (["{bundle}", "a cat", "--noise", "{bundle}/manifest.json"], "bytes; the latents are 1024 float32 values"),
    (["{bundle}", "a cat", "--wat"], "unknown option --wat"),
    (["/nonexistent", "a cat"], "bundle folder not found"),
])
def test_bad_arguments_are_refused_in_one_line(app, bundles, args, says):
    bundle = bundles["android-fp32"][0]
    done = run(app, "lgc-generate", *[a.format(bundle=bundle) for a in args])
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert done.stderr.startswith("lgc-generate: error: ")
