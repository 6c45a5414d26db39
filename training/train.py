"""Train the 3D landmark transformer: ``python -m training.train --config training/configs/x.toml
[--out runs/x] [--resume]``.

AdamW + linear warmup / cosine decay, bf16 autocast on CUDA (fp16 + GradScaler if bf16 is missing),
fp32 on CPU. Checkpoints (``<out>/checkpoints/last.pt``, written atomically) every ``ckpt_every``
steps, at the end and when ``max_minutes`` runs out; ``--resume`` restores model, optimiser, scheduler,
scaler, RNG states and the data position, so an interrupted run ends with bit-identical weights (same
device). TensorBoard logs in ``<out>/tb``; the latest validation figures in ``<out>/val.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import random
import time
import tomllib
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import DataLoader
from tqdm import tqdm

from plugins.landmarks.transformer import LandmarkTransformerConfig, create_model
from training.data import MF, MV, DataConfig, FaceCrops, ResumableSampler, index_dataset, split_refs
from training.losses import LossConfig, LossScales, facelift_loss, geodesic

log = logging.getLogger(__name__)


class OptimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 500
    max_steps: int = 50_000
    max_minutes: float | None = None  # stop (with a checkpoint) after this much wall time in this run
    grad_clip: float = 1.0
    # a later stage (e.g. different loss weights) or a smaller model: start from the weights of a checkpoint
    # (.pt), bundle folder or .safetensors file whose names and shapes match, with a fresh optimiser and
    # schedule (relative to the working directory); --resume of this run takes precedence
    init_from: str | None = None
    # initialise the encoder from a local weights file (safetensors; never a download): a path relative
    # to the config's folder, or "shared:<path>" under the shared assets folder (FACELIFT_SHARED), e.g.
    # "shared:teacher_3ddfa_v2/mb05_120x120.safetensors" for the face-trained 3DDFA_V2 MobileNet
    init_backbone: str | None = None
    backbone_lr_scale: float = 1.0  # the encoder's learning rate relative to ``lr`` (pretrained: < 1)
    amp: str = "auto"  # auto: bf16 on CUDA when supported, else fp16; never on CPU. "off" disables
    ckpt_every: int = 1000
    val_every: int = 1000
    val_batches: int = 20
    log_every: int = 50


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: LandmarkTransformerConfig = Field(default_factory=LandmarkTransformerConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    data: DataConfig
    train: OptimConfig = Field(default_factory=OptimConfig)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``["loss.loss_2d=l1", "train.max_steps=400"]`` -> values set in the raw TOML dict (TOML syntax,
    bare words taken as strings), like mmengine's ``--cfg-options``."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected section.key=value")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        *tables, leaf = key.split(".")
        node = raw
        for t in tables:
            node = node.setdefault(t, {})
        node[leaf] = value
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    path = Path(path)
    with open(path, "rb") as f:
        raw = apply_overrides(tomllib.load(f), overrides or [])
    cfg = TrainConfig.model_validate(raw)
    # dataset paths are relative to the config file's folder
    base = path.resolve().parent
    cfg.data.train = [str((base / p).resolve()) for p in cfg.data.train]
    cfg.data.val = [str((base / p).resolve()) for p in cfg.data.val]
    ib = cfg.train.init_backbone
    if ib and not ib.startswith("shared:"):
        cfg.train.init_backbone = str((base / ib).resolve())
    return cfg


def resolve_weights(spec: str) -> Path:
    """``shared:<path>`` -> the shared assets file; anything else is a path. Raises a one-line error."""
    if spec.startswith("shared:"):
        from engine.assets import shared_asset

        first, _, rest = spec[len("shared:"):].partition("/")
        path = shared_asset(first) / rest
    else:
        path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"train.init_backbone: {path} does not exist (a local safetensors file; "
                                "set FACELIFT_SHARED for shared: paths)")
    return path


def init_backbone(model, spec: str) -> None:
    """Load encoder weights from a local safetensors file (train.init_backbone)."""
    from safetensors.torch import load_file

    path = resolve_weights(spec)
    state = load_file(str(path))
    net = model.backbone.net
    if hasattr(net, "load_trunk"):
        unused = net.load_trunk(state)
    else:
        result = net.load_state_dict(state, strict=False)
        if result.missing_keys:
            raise KeyError(f"{path}: lacks {len(result.missing_keys)} encoder tensors, e.g. {result.missing_keys[:3]}")
        unused = result.unexpected_keys
    log.info("encoder initialised from %s (%d tensors, %d unused: %s)", path, len(state), len(unused), unused[:4])


def resample_grid(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A position embedding of a square token grid (1, g*g, C) resized (bicubic, timm's
    ``resample_abs_pos_embed``) to another square grid of the same channels, so a model at another input
    size keeps its source's learned positions; any other tensor comes back as it is."""
    from timm.layers import resample_abs_pos_embed

    if tensor.shape == shape or tensor.ndim != 3 or len(shape) != 3 or tensor.shape[0] != 1 or shape[0] != 1:
        return tensor
    old, new = math.isqrt(tensor.shape[1]), math.isqrt(shape[1])
    if tensor.shape[2] != shape[2] or old * old != tensor.shape[1] or new * new != shape[1]:
        return tensor
    return resample_abs_pos_embed(tensor.float(), [new, new], [old, old], num_prefix_tokens=0).to(tensor.dtype)


def init_from(model, scales, spec: str) -> None:
    """Start from another model's weights (train.init_from): a training checkpoint (``.pt``), a bundle
    folder or a ``.safetensors`` file. Every tensor whose name and shape match is copied, so a smaller
    or reshaped architecture keeps what it shares with the source (e.g. a trained encoder) and the rest
    keeps its fresh initialisation; both counts are logged. Position embeddings of another input size are
    resized to this model's token grid first (``resample_grid``)."""
    from safetensors.torch import load_file

    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"train.init_from: {path} does not exist (a training checkpoint .pt, a bundle "
                                "folder or a .safetensors file; a later stage needs its first stage's output, "
                                "see the config's comments)")
    ck: dict = {}
    if path.is_dir():
        state = load_file(str(path / "model.safetensors"))
    elif path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        ck = torch.load(path, map_location="cpu", weights_only=False)
        state = ck["model"]
    own = model.state_dict()
    state = {k: resample_grid(v, own[k].shape) if k in own else v for k, v in state.items()}
    matching = {k: v.to(own[k].dtype) for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matching:
        raise ValueError(f"train.init_from: {path} shares no tensor (name and shape) with this model")
    model.load_state_dict(matching, strict=False)
    fresh = [k for k in own if k not in matching and not k.endswith("num_batches_tracked")]
    if scales is not None and "loss_scales" in ck:
        scales.load_state_dict(ck["loss_scales"])
    log.info("initialised %d of %d tensors from %s (%d fresh, e.g. %s)", len(matching), len(own), path,
             len(fresh), fresh[:3])


def param_groups(model, scales, tc: "OptimConfig") -> list[dict]:
    """AdamW groups: encoder (lr x backbone_lr_scale), the rest, and the loss scales (no decay)."""
    enc = list(model.backbone.parameters())
    enc_ids = {id(p) for p in enc}
    rest = [p for p in model.parameters() if id(p) not in enc_ids]
    groups = [{"params": enc, "lr": tc.lr * tc.backbone_lr_scale}, {"params": rest, "lr": tc.lr}]
    if scales is not None:
        # 10x: a log-scale must move by ~2 within a few hundred steps to follow the errors as they shrink
        groups.append({"params": list(scales.parameters()), "lr": tc.lr * 10, "weight_decay": 0.0})
    return groups


def data_manifest_hash(paths: list[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        m = Path(p) / "manifest.json"
        h.update(m.read_bytes() if m.exists() else p.encode())
    return h.hexdigest()


def lr_lambda(cfg: OptimConfig):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return f


def amp_dtype(cfg: OptimConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or cfg.amp == "off":
        return None
    if cfg.amp in ("auto", "bf16") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def normals_tensor() -> torch.Tensor:
    from training.masks import normals_template

    return torch.tensor(np.array(normals_template()), dtype=torch.float32)


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def validate(model, loader, device, max_batches: int) -> dict[str, float]:
    """NME (% of sqrt(w h) of the GT landmark box), 3D error (cm), pose error (deg) on held-out MV;
    NME vs the teacher on held-out MF frames."""
    model.eval()
    sums: dict[str, list[float]] = {"mv_nme": [], "mv_3d_cm": [], "mv_pose_deg": [], "mv_tilt_deg": [], "mf_nme": []}
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        batch = _to(batch, device)
        pred = model(batch["image"])
        err = (pred["landmarks_2d"] - batch["landmarks_2d"]).norm(dim=-1).mean(-1) / batch["norm"] * 100
        mv, mf = batch["kind"] == MV, batch["kind"] == MF
        sums["mv_nme"] += err[mv].tolist()
        sums["mf_nme"] += err[mf].tolist()
        e3 = (pred["landmarks_3d"] - batch["landmarks_3d"]).norm(dim=-1).mean(-1)
        sums["mv_3d_cm"] += e3[mv].tolist()
        sums["mv_pose_deg"] += torch.rad2deg(geodesic(pred["rotation"], batch["rotation"]))[mv].tolist()
        if mv.any():
            sums["mv_tilt_deg"] += canonical_tilt_deg(pred["landmarks_3d"][mv], batch["landmarks_3d"][mv]).tolist()
    model.train()
    return {k: float(np.mean(v)) for k, v in sums.items() if v}


def canonical_tilt_deg(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """(B,) angle of the rotation that best aligns the true canonical 3D landmarks with the predicted
    ones (Kabsch, centred): a tilted canonical shape explains 2D with the shape instead of the pose."""
    p = pred.double() - pred.double().mean(1, keepdim=True)
    q = true.double() - true.double().mean(1, keepdim=True)
    u, _, vt = torch.linalg.svd(q.transpose(1, 2) @ p)
    d = torch.sign(torch.linalg.det(u @ vt))
    u = torch.cat([u[..., :2], u[..., 2:] * d[:, None, None]], dim=-1)
    r = (u @ vt).transpose(1, 2)
    cos = ((r.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.rad2deg(torch.acos(cos)).float()


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, **payload) -> None:
    """Atomic: a run killed mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def train(cfg: TrainConfig, out: str | Path, resume: bool = False, stop_after: int | None = None) -> Path:
    """Run (or continue) training; returns the checkpoint path. ``stop_after``: stop at this step
    (with a checkpoint) as if the run had been cut off, without changing the schedule."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoints" / "last.pt"
    tc = cfg.train
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    random.seed(tc.seed)
    np.random.seed(tc.seed)
    torch.manual_seed(tc.seed)

    refs = [r for p in cfg.data.train for r in index_dataset(p)]
    train_refs, val_refs = split_refs(refs, cfg.data, cfg.loss.mode)
    val_refs += [r for p in cfg.data.val for r in index_dataset(p)]
    # a fixed shuffle, so that the first ``val_batches`` batches hold both MV and MF samples
    val_refs = [val_refs[i] for i in np.random.default_rng(0).permutation(len(val_refs))]
    m = cfg.model
    train_ds = FaceCrops(train_refs, m.img_size, m.k0(), m.mean, m.std, cfg.data.augment, seed=tc.seed)
    val_ds = FaceCrops(val_refs, m.img_size, m.k0(), m.mean, m.std) if val_refs else None
    # the same held-out samples cropped from their label landmarks, as the engine crops while tracking
    val_lm_ds = FaceCrops(val_refs, m.img_size, m.k0(), m.mean, m.std, landmark_crops=True) if val_refs else None
    log.info("train samples %d, val samples %d, device %s", len(train_ds), len(val_refs), device)

    model = create_model(m).to(device)
    scales = LossScales().to(device) if cfg.loss.balance == "learned" else None
    if tc.init_backbone and not (resume and ckpt_path.exists()) and not tc.init_from:
        init_backbone(model, tc.init_backbone)
    opt = torch.optim.AdamW(param_groups(model, scales, tc), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc))
    dtype = amp_dtype(tc, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    normals = normals_tensor().to(device)
    step, elapsed, val_figures = 0, 0.0, {}
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        if scales is not None and "loss_scales" in ck:
            scales.load_state_dict(ck["loss_scales"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        set_rng_state(ck["rng"])
        step, elapsed, val_figures = ck["step"], ck["elapsed_s"], ck.get("validation", {})
        log.info("resumed %s at step %d", ckpt_path, step)
    elif tc.init_from:
        init_from(model, scales, tc.init_from)
    if resume and not ckpt_path.exists():
        log.info("--resume: no checkpoint at %s; starting a new run", ckpt_path)

    sampler = ResumableSampler(len(train_ds), tc.seed, start=step * tc.batch_size)
    loader = DataLoader(
        train_ds, batch_size=tc.batch_size, sampler=sampler, num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda", persistent_workers=cfg.data.num_workers > 0,
    )
    val_loader, val_lm_loader = (
        (DataLoader(ds, batch_size=tc.batch_size, shuffle=False, num_workers=cfg.data.num_workers) for ds in (val_ds, val_lm_ds))
        if val_ds else (None, None)
    )
    writer = _summary_writer(out / "tb")
    data_hash = data_manifest_hash(cfg.data.train + cfg.data.val)
    target = min(tc.max_steps, stop_after) if stop_after is not None else tc.max_steps

    def checkpoint() -> None:
        save_checkpoint(
            ckpt_path, model=model.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict(),
            scaler=scaler.state_dict(), rng=rng_state(), step=step, elapsed_s=elapsed + time.time() - t0,
            config=cfg.model_dump(mode="json"), validation=val_figures, data_manifest_hash=data_hash,
            loss_scales=scales.state_dict() if scales is not None else None,
            hardware=_hardware(device),
        )

    t0 = time.time()
    start_step = step
    model.train()
    it = iter(loader)
    bar = tqdm(total=target, initial=step, desc="train", dynamic_ncols=True, disable=None)
    while step < target:
        batch = _to(next(it), device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            pred = model(batch["image"])
        loss, terms = facelift_loss(pred, batch, normals, cfg.loss, m.img_size, m.nominal_depth_cm, scales)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        scaler.step(opt)
        scaler.update()
        sched.step()
        step += 1
        bar.update(1)
        if step % tc.log_every == 0 or step == target:
            bar.set_postfix(loss=f"{terms['total']:.4f}")
            rate = (step - start_step) * tc.batch_size / max(time.time() - t0, 1e-6)
            writer.add_scalar("train/images_per_s", rate, step)
            for k, v in terms.items():
                writer.add_scalar(f"loss/{k}", v, step)
            writer.add_scalar("lr", sched.get_last_lr()[0], step)
        if val_loader is not None and (step % tc.val_every == 0 or step == tc.max_steps):
            val_figures = {"step": step, **validate(model, val_loader, device, tc.val_batches)}
            lm = validate(model, val_lm_loader, device, tc.val_batches)
            val_figures.update({f"{k}_lmcrop": lm[k] for k in ("mv_nme", "mf_nme") if k in lm})
            for k, v in val_figures.items():
                writer.add_scalar(f"val/{k}", v, step)
            (out / "val.json").write_text(json.dumps(val_figures, indent=1))
            log.info("step %d validation %s", step, val_figures)
        out_of_time = tc.max_minutes is not None and time.time() - t0 > tc.max_minutes * 60
        if step % tc.ckpt_every == 0 or step == target or out_of_time:
            checkpoint()
        if out_of_time:
            log.info("max_minutes reached at step %d; --resume continues", step)
            break
    bar.close()
    writer.close()
    return ckpt_path


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _summary_writer(path: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(path))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="training TOML (see training/configs/)")
    p.add_argument("--out", help="run folder (default runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoints/last.pt")
    p.add_argument("--stop-after", type=int, help="stop at this step (checkpointed) without changing the schedule")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set loss.loss_2d=l1 --set train.max_steps=400")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = load_config(args.config, args.set)
    except ValueError as exc:  # a malformed --set, or a value the config schema rejects (names the key)
        p.error(str(exc))
    out = args.out or f"runs/{Path(args.config).stem}"
    ckpt = train(cfg, out, resume=args.resume, stop_after=args.stop_after)
    print(f"checkpoint: {ckpt}")


if __name__ == "__main__":
    main()
