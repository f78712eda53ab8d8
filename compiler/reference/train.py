"""Train lgc's reference distilled latent-diffusion pipeline on scikit-image's photographs.

No machine lgc runs on reaches a model hub, so the project trains its own
small but real text-to-image pipeline, on the photographs that ship inside
scikit-image, and commits it. Stages, each resumable (a finished stage is
skipped, an interrupted one restarts from its last checkpoint):

1. ``vae``      SD-style AutoencoderKL (factor 8, 4 latent channels, 128 px).
2. ``latents``  augmented crops encoded once, so U-Net training is cheap.
3. ``teacher``  UNet2DConditionModel with SD block types, trained jointly with
                a small CLIPTextModel (classifier-free dropout of the caption).
4. ``student``  BK-SDM-style U-Net (one ResNet/attention per block, no mid
                block), initialised from the teacher and trained by output and
                feature distillation.
5. ``tiny_vae`` TAESD-style AutoencoderTiny distilled from the KL VAE.
6. ``export``   two diffusers folders (teacher: KL VAE; student: tiny VAE),
                fp16 safetensors, plus evidence (sample grid, PSNR figures).

Run: ``python -m lgc.compiler.reference.train --out compiler/reference``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lgc.compiler.reference.data import (
    CAPTIONS,
    HELDOUT_IMAGES,
    build_tokenizer,
    load_photo,
    random_crop,
)
from lgc.compiler.reference.progress import StepLogger

IMAGE_SIZE = 128
LATENT_SIZE = IMAGE_SIZE // 8
TEXT_MAX_LEN = 16
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)
UNET_COMMON = dict(
    sample_size=LATENT_SIZE,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64, 64),
    cross_attention_dim=64,
    attention_head_dim=4,
    norm_num_groups=16,
)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 64, 128, 128),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=IMAGE_SIZE,
    )


def make_text_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TEXT_MAX_LEN,
        projection_dim=64,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    return CLIPTextModel(cfg)


def make_teacher():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(layers_per_block=2, **UNET_COMMON)


def make_student():
    from diffusers import UNet2DConditionModel

    # BK-SDM "small": one ResNet + attention per down block (two per up
    # block) and no mid block.
    return UNet2DConditionModel(layers_per_block=1, mid_block_type=None, **UNET_COMMON)


def make_tiny_vae():
    from diffusers import AutoencoderTiny

    return AutoencoderTiny(
        encoder_block_out_channels=(32, 32, 32, 32),
        decoder_block_out_channels=(32, 32, 32, 32),
        num_encoder_blocks=(1, 2, 2, 2),
        num_decoder_blocks=(2, 2, 2, 1),
        latent_channels=4,
        scaling_factor=1.0,
    )


class Checkpointed:
    """Saves model/optimizer/step every ``every`` steps so a stage can resume."""

    def __init__(self, path: Path, modules: dict, opt, every: int = 200):
        self.path, self.modules, self.opt, self.every = path, modules, opt, every

    def load(self) -> int:
        if not self.path.exists():
            return 0
        state = torch.load(self.path, weights_only=False)
        for k, m in self.modules.items():
            m.load_state_dict(state[k])
        self.opt.load_state_dict(state["opt"])
        torch.set_rng_state(state["rng"])
        random.setstate(state["py_rng"])
        return state["step"]

    def maybe_save(self, step: int, final: bool = False) -> None:
        if final or step % self.every == 0:
            state = {k: m.state_dict() for k, m in self.modules.items()}
            state.update(opt=self.opt.state_dict(), step=step, rng=torch.get_rng_state(), py_rng=random.getstate())
            tmp = self.path.with_suffix(".tmp")
            torch.save(state, tmp)
            tmp.replace(self.path)


def cosine_lr(opt, base: float, step: int, total: int, warmup: int = 50) -> None:
    lr = base * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / total)))
    for g in opt.param_groups:
        g["lr"] = lr


def train_stage(name, work: Path, modules: dict, params, steps: int, lr: float, step_fn, log_every=50):
    """Generic resumable loop: ``step_fn(step) -> (loss tensor, metrics dict)``."""
    done = work / f"{name}.done"
    if done.exists():
        print(f"[{name}] already trained, skipping")
        return
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    ckpt = Checkpointed(work / f"{name}.ckpt", modules, opt)
    start = ckpt.load()
    for m in modules.values():
        m.train()
    log = StepLogger(name, steps, start=start, every=log_every)
    for step in range(start, steps):
        cosine_lr(opt, lr, step, steps)
        loss, metrics = step_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        log.step(step + 1, loss=float(loss), **metrics)
        ckpt.maybe_save(step + 1, final=step + 1 == steps)
    log.close()
    done.write_text(str(time.time()))


def photo_tensor(name: str) -> torch.Tensor:
    return torch.from_numpy(load_photo(name)).permute(2, 0, 1).float() / 127.5 - 1.0


def crop_batch(photos, rng: random.Random, batch: int, min_frac=0.6):
    names, crops = [], []
    for _ in range(batch):
        name = rng.choice(list(photos))
        names.append(name)
        crops.append(random_crop(photos[name], IMAGE_SIZE, rng, min_frac=min_frac))
    return names, torch.stack(crops)


def sobel(x):
    k = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])
    kx = k.view(1, 1, 3, 3).repeat(x.shape[1], 1, 1, 1)
    ky = k.t().reshape(1, 1, 3, 3).repeat(x.shape[1], 1, 1, 1)
    return F.conv2d(x, kx, groups=x.shape[1]), F.conv2d(x, ky, groups=x.shape[1])


def stage_vae(work, photos, steps):
    seed_all(1)
    vae = make_vae()
    rng = random.Random(1)
    if (work / "vae.done").exists():
        vae.load_state_dict(torch.load(work / "vae.ckpt", weights_only=False)["vae"])
        return vae

    def step_fn(step):
        _, x = crop_batch(photos, rng, 8)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        l1 = (rec - x).abs().mean()
        gx, gy = sobel(rec)
        tx, ty = sobel(x)
        edge = (gx - tx).abs().mean() + (gy - ty).abs().mean()
        kl = post.kl().mean() / (4 * LATENT_SIZE * LATENT_SIZE)
        return l1 + 0.5 * edge + 1e-4 * kl, {"l1": float(l1)}

    train_stage("vae", work, {"vae": vae}, list(vae.parameters()), steps, 4e-4, step_fn)
    return vae


@torch.no_grad()
def stage_latents(work, photos, vae, per_image: int):
    path = work / "latents.pt"
    if path.exists():
        return torch.load(path)
    vae.eval()
    rng = random.Random(2)
    torch.manual_seed(2)
    names, lat, img = [], [], []
    log = StepLogger("latents", len(photos) * per_image, every=100)
    for name in photos:
        for i in range(per_image):
            x = random_crop(photos[name], IMAGE_SIZE, rng, min_frac=0.7)[None]
            names.append(name)
            img.append(x[0])
            lat.append(vae.encode(x).latent_dist.mean[0])
            log.step(len(names))
    log.close()
    lat = torch.stack(lat)
    scale = float(1.0 / lat.std())
    data = {"names": names, "latents": lat, "images": torch.stack(img), "scale": scale}
    torch.save(data, path)
    return data


def encode_text(tokenizer, text_encoder, prompts):
    ids = tokenizer(prompts, padding="max_length", max_length=TEXT_MAX_LEN, truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids)[0]


def stage_teacher(work, data, tokenizer, steps, batch=32):
    from diffusers import DDPMScheduler

    seed_all(3)
    sched = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k != "set_alpha_to_one" and k != "steps_offset"})
    unet, te = make_teacher(), make_text_encoder(len(tokenizer))
    latents = data["latents"] * data["scale"]
    prompts = [CAPTIONS[n] for n in data["names"]]
    rng = random.Random(3)

    def step_fn(step):
        idx = torch.randint(0, len(latents), (batch,))
        x0 = latents[idx]
        x0 = torch.where(torch.rand(batch, 1, 1, 1) < 0.5, x0, x0.flip(-1))
        text = [prompts[i] if rng.random() > 0.1 else "" for i in idx.tolist()]
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (batch,))
        xt = sched.add_noise(x0, noise, t)
        eps = unet(xt, t, encode_text(tokenizer, te, text)).sample
        return F.mse_loss(eps, noise), {}

    if not (work / "teacher.done").exists():
        params = list(unet.parameters()) + list(te.parameters())
        train_stage("teacher", work, {"unet": unet, "te": te}, params, steps, 1e-3, step_fn)
    state = torch.load(work / "teacher.ckpt", weights_only=False)
    unet.load_state_dict(state["unet"])
    te.load_state_dict(state["te"])
    return unet.eval(), te.eval()


def block_features(unet, store: list):
    """Forward hooks collecting each down/up block's output (BK-SDM feature KD)."""
    handles = []
    for blk in list(unet.down_blocks) + list(unet.up_blocks):
        def hook(_m, _i, out):
            store.append(out[0] if isinstance(out, tuple) else out)
        handles.append(blk.register_forward_hook(hook))
    return handles


def stage_student(work, data, tokenizer, teacher, te, steps, batch=32):
    from diffusers import DDPMScheduler

    seed_all(4)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    student = make_student()
    # BK-SDM initialisation: every student tensor whose name and shape exist
    # in the teacher starts from the teacher's weights.
    t_state = teacher.state_dict()
    s_state = student.state_dict()
    copied = {k: t_state[k] for k, v in s_state.items() if k in t_state and t_state[k].shape == v.shape}
    student.load_state_dict(copied, strict=False)
    latents = data["latents"] * data["scale"]
    prompts = [CAPTIONS[n] for n in data["names"]]
    rng = random.Random(4)
    feats_t, feats_s = [], []
    block_features(teacher, feats_t)
    block_features(student, feats_s)
    for p in list(teacher.parameters()) + list(te.parameters()):
        p.requires_grad_(False)

    def step_fn(step):
        idx = torch.randint(0, len(latents), (batch,))
        x0 = latents[idx]
        text = [prompts[i] if rng.random() > 0.1 else "" for i in idx.tolist()]
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (batch,))
        xt = sched.add_noise(x0, noise, t)
        with torch.no_grad():
            emb = encode_text(tokenizer, te, text)
            feats_t.clear()
            eps_t = teacher(xt, t, emb).sample
        feats_s.clear()
        eps_s = student(xt, t, emb).sample
        out_kd = F.mse_loss(eps_s, eps_t)
        feat_kd = sum(F.mse_loss(a, b) for a, b in zip(feats_s, feats_t)) / len(feats_s)
        task = F.mse_loss(eps_s, noise)
        return task + out_kd + feat_kd, {"out_kd": float(out_kd), "feat_kd": float(feat_kd)}

    if not (work / "student.done").exists():
        train_stage("student", work, {"unet": student}, list(student.parameters()), steps, 5e-4, step_fn)
    student.load_state_dict(torch.load(work / "student.ckpt", weights_only=False)["unet"])
    for m in (teacher, student):
        for blk in list(m.down_blocks) + list(m.up_blocks):
            blk._forward_hooks.clear()
    return student.eval()


def stage_tiny_vae(work, data, vae, steps, batch=8):
    seed_all(5)
    tiny = make_tiny_vae()
    scale = data["scale"]
    latents, images = data["latents"], data["images"]
    vae.eval()
    for p in vae.parameters():
        p.requires_grad_(False)

    def step_fn(step):
        idx = torch.randint(0, len(latents), (batch,))
        z = latents[idx]
        with torch.no_grad():
            target = vae.decode(z).sample.clamp(-1, 1)
        # TAESD convention: both halves work on the *scaled* latents the
        # U-Net produces (scaling_factor 1.0 in the tiny VAE's config).
        dec = tiny.decode(z * scale).sample
        enc = tiny.encode(images[idx]).latents
        l_dec = (dec - target).abs().mean()
        l_enc = F.mse_loss(enc, z * scale)
        return l_dec + l_enc, {"dec_l1": float(l_dec), "enc_mse": float(l_enc)}

    if not (work / "tiny_vae.done").exists():
        train_stage("tiny_vae", work, {"tiny": tiny}, list(tiny.parameters()), steps, 1e-3, step_fn)
    tiny.load_state_dict(torch.load(work / "tiny_vae.ckpt", weights_only=False)["tiny"])
    return tiny.eval()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two image batches in [-1, 1] (peak-to-peak 2)."""
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(b.clamp(-1, 1).numpy(), a.clamp(-1, 1).numpy(), data_range=2.0))


@torch.no_grad()
def evidence(out: Path, vae, tiny, scale, sample_fn) -> dict:
    """Numbers and a sample grid showing the pipeline is a real model."""
    from PIL import Image

    rng = random.Random(99)
    figs = {}
    held = {n: photo_tensor(n) for n in HELDOUT_IMAGES}
    train_names = list(CAPTIONS)
    for label, pool in (("unseen_images", held), ("training_images_new_crops", {n: photo_tensor(n) for n in train_names})):
        _, x = crop_batch(pool, rng, 16, min_frac=0.5)
        z = vae.encode(x).latent_dist.mean
        figs[f"vae_recon_psnr_db_{label}"] = psnr(vae.decode(z).sample, x)
        figs[f"tiny_vae_recon_psnr_db_{label}"] = psnr(tiny.decode(tiny.encode(x).latents).sample, x)
        figs[f"tiny_vs_kl_decoder_psnr_db_{label}"] = psnr(tiny.decode(z * scale).sample, vae.decode(z).sample)
    teacher_imgs, student_imgs, agree = [], [], []
    for i, name in enumerate(train_names):
        t_img, s_img = sample_fn(CAPTIONS[name], seed=i)
        teacher_imgs.append(t_img)
        student_imgs.append(s_img)
        agree.append(psnr(s_img[None], t_img[None]))
    figs["student_vs_teacher_psnr_db_mean"] = float(np.mean(agree))
    figs["student_vs_teacher_psnr_db_min"] = float(np.min(agree))

    def to_uint8(t):
        return ((t.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()

    rows = []
    for imgs in (
        [photo_tensor(n) for n in train_names],
        teacher_imgs,
        student_imgs,
    ):
        tiles = []
        for img in imgs:
            if img.shape[-1] != IMAGE_SIZE:
                img = F.interpolate(img[None], size=(IMAGE_SIZE, IMAGE_SIZE), mode="area")[0]
            tiles.append(to_uint8(img))
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    Image.fromarray(grid).save(out / "samples.png", optimize=True)
    return figs


def set_text_encoder_load_dtype(config_path: Path) -> None:
    """Weights are stored in fp16 to stay small, but load in fp32 by default.

    transformers loads a model in the ``dtype`` its config names, diffusers in
    fp32: left as saved, a plain ``from_pretrained`` would give an fp16 text
    encoder beside an fp32 U-Net, which fails on CPU.
    """
    cfg = json.loads(config_path.read_text())
    cfg["dtype"] = "float32"
    config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def export(out: Path, work: Path, tokenizer, te, teacher, student, vae, tiny, scale, timings, steps_cfg):
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    vae.register_to_config(scaling_factor=scale)
    # The folders ship the scheduler they are sampled with (lgc's default is the folder's own):
    # DPM-Solver++(2M) over the training noise schedule, "leading" timesteps as SD-1.x ships them.
    sched = DPMSolverMultistepScheduler.from_config(SCHEDULER_CONFIG, timestep_spacing="leading")
    common = dict(text_encoder=te, tokenizer=tokenizer, scheduler=sched, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipes = {
        "teacher": StableDiffusionPipeline(unet=teacher, vae=vae, **common),
        "student": StableDiffusionPipeline(unet=student, vae=tiny, **common),
    }
    for name, pipe in pipes.items():
        dest = out / name
        tmp = out / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
        pipe.to(torch.float32)
        set_text_encoder_load_dtype(tmp / "text_encoder" / "config.json")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.replace(dest)

    def sample_fn(prompt, seed):
        imgs = []
        for name in ("teacher", "student"):
            g = torch.Generator().manual_seed(seed)
            img = pipes[name](prompt, num_inference_steps=25, guidance_scale=4.0, generator=g, output_type="pt", height=IMAGE_SIZE, width=IMAGE_SIZE).images[0]
            imgs.append(img * 2 - 1)
        return imgs

    for p in pipes.values():
        p.set_progress_bar_config(disable=True)
    figs = evidence(out, vae, tiny, scale, sample_fn)
    report = {"figures": figs, "stage_seconds": timings, "steps": steps_cfg, "latent_scale": scale, "torch": torch.__version__}
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent, help="where teacher/ and student/ are written")
    ap.add_argument("--work", type=Path, default=Path("build/reference-training"), help="checkpoints (resumable)")
    ap.add_argument("--vae-steps", type=int, default=600)
    ap.add_argument("--teacher-steps", type=int, default=2500)
    ap.add_argument("--student-steps", type=int, default=1200)
    ap.add_argument("--tiny-steps", type=int, default=800)
    ap.add_argument("--crops-per-image", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    a.work.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(TEXT_MAX_LEN)
    photos = {n: photo_tensor(n) for n in CAPTIONS}
    timings = {}

    def timed(name, fn, *args, **kw):
        t0 = time.perf_counter()
        r = fn(*args, **kw)
        timings[name] = round(time.perf_counter() - t0, 1)
        return r

    vae = timed("vae", stage_vae, a.work, photos, a.vae_steps)
    data = timed("latents", stage_latents, a.work, photos, vae, a.crops_per_image)
    teacher, te = timed("teacher", stage_teacher, a.work, data, tokenizer, a.teacher_steps)
    student = timed("student", stage_student, a.work, data, tokenizer, teacher, te, a.student_steps)
    tiny = timed("tiny_vae", stage_tiny_vae, a.work, data, vae, a.tiny_steps)
    steps_cfg = {k: getattr(a, k) for k in ("vae_steps", "teacher_steps", "student_steps", "tiny_steps", "crops_per_image")}
    timed("export", export, a.out, a.work, tokenizer, te, teacher, student, vae, tiny, data["scale"], timings, steps_cfg)
    print(f"total {sum(timings.values()):.0f} s: {timings}")


if __name__ == "__main__":
    main()
