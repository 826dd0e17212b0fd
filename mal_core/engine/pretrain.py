"""The pretrain action: MAE self-supervised pretraining of the ViT backbone on the user's images (no labels).

Writes ``pretrained_model/`` (a Hugging Face ViT-MAE folder that ``train.pretrained_model_path`` accepts),
``reconstruction.png`` (masked input / reconstruction / original rows) and ``pretrain_history.jsonl`` (mean loss per
epoch) into the results folder, plus checkpoints that a re-run resumes from.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler
from transformers.utils import logging as hf_logging

from mal_core.config.actions import action_decl
from mal_core.config.checks import clamp_for_action
from mal_core.config.experiment import ExperimentConfig
from mal_core.config.loader import dump_spec
from mal_core.data.augment import denormalise
from mal_core.data.loading import list_images, load_pretrain_boxes
from mal_core.data.pretrain_images import PretrainImages, boxes_by_image
from mal_core.engine.checkpoints import LATEST_NAME, MALCheckpoint, find_resume_checkpoint
from mal_core.engine.pretrain_module import PRETRAIN_RECORD, MAEPretrainModule
from mal_core.engine.result import EngineResult
from mal_core.engine.trainer import build_trainer, device_settings
from mal_core.errors import CheckpointError
from mal_core.model.mae import MAEDecoderSize, build_mae
from mal_core.model.weights import load_mae_weights, torch_load
from mal_core.utils.stop import deferred_stop

log = logging.getLogger(__name__)

#: Output names inside the pretrain results folder.
PRETRAINED_DIR = "pretrained_model"
RECONSTRUCTION_PNG = "reconstruction.png"
HISTORY_FILE = "pretrain_history.jsonl"


def _resume_path(cfg: ExperimentConfig, results_dir: Path) -> Path | None:
    field = "pretrain.resume_training_checkpoint_path"
    explicit = cfg.pretrain.resume_training_checkpoint_path
    path = Path(explicit) if explicit else find_resume_checkpoint(results_dir)
    if path is None:
        return None
    obj = torch_load(path) if path.is_file() else None
    record = obj.get(PRETRAIN_RECORD) if isinstance(obj, dict) else None
    if not isinstance(record, dict):
        raise CheckpointError(f"{str(path)!r} is not a pretrain checkpoint (no {PRETRAIN_RECORD} record)", field=field)
    want = (cfg.model.arch, cfg.dataset.crop_size)
    have = (record.get("arch"), record.get("crop_size"))
    if have != want:
        raise CheckpointError(f"cannot resume {path}: it was pretrained with model.arch, dataset.crop_size = {have}, "
                              f"the spec says {want}", field=field, hint="use a fresh job or the same settings")
    return path


def _dataset(cfg: ExperimentConfig) -> PretrainImages:
    p = cfg.pretrain
    images = [f.resolve() for f in list_images(p.img_dir)]
    boxes = None
    coco = load_pretrain_boxes(cfg)
    if coco is not None:
        boxes = {path.resolve(): b for path, b in boxes_by_image(coco).items()}
        log.info("pretrain: %d images, %d boxes from %s (box crops with p=%.2f)", len(images),
                 sum(map(len, boxes.values())), p.ann_path, p.box_crop_prob)
    else:
        log.info("pretrain: %d images (whole-image crops only)", len(images))
    margin = cfg.train.margin_rate
    return PretrainImages(images, cfg.dataset.crop_size, min_crop_scale=p.min_crop_scale, hflip=p.hflip,
                          boxes=boxes, box_crop_prob=p.box_crop_prob, margin_rate=(margin[0], margin[1]))


def _loader(ds: PretrainImages, batch_size: int, workers: int, views_per_epoch: int) -> DataLoader:
    kwargs: dict[str, Any] = {"persistent_workers": True} if workers > 0 else {}
    if views_per_epoch > 0:
        kwargs["sampler"] = RandomSampler(ds, replacement=True, num_samples=views_per_epoch)
    else:
        kwargs["shuffle"] = True
    size = views_per_epoch or len(ds)
    return DataLoader(ds, batch_size=min(batch_size, size), num_workers=workers, drop_last=True, **kwargs)


def save_pretrained_folder(network: torch.nn.Module, folder: Path, arch: str, crop_size: int) -> Path:
    """Write ``network`` as a Hugging Face folder at ``folder``, replacing an older one only once the new one is
    complete (written next to it, then renamed)."""
    network.config.mal_arch = arch  # extra config.json fields: what MAL built it for
    network.config.mal_crop_size = int(crop_size)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    tmp.chmod(0o755)
    hf_logging.disable_progress_bar()  # a one-file save needs no progress bar
    try:
        network.save_pretrained(str(tmp), safe_serialization=True)
    finally:
        hf_logging.enable_progress_bar()
    old = folder.with_name(f".{folder.name}.old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


@torch.no_grad()
def reconstruction_grid(network: torch.nn.Module, ds: PretrainImages, count: int, path: Path,
                        seed: int = 0) -> tuple[Path, float]:
    """PNG with one row per image: masked input, reconstruction (visible patches kept), original; returns the path
    and the masked-patch loss on these fixed views (same noise every time, so runs compare)."""
    network.eval()
    n = min(count, len(ds))
    pixels = torch.stack([ds.fixed_view(i) for i in range(n)])
    gen = torch.Generator().manual_seed(seed)
    num_patches = (network.config.image_size // network.config.patch_size) ** 2
    noise = torch.rand(n, num_patches, generator=gen)
    out = network(pixel_values=pixels, noise=noise)
    pred = out.logits
    if network.config.norm_pix_loss:  # back from per-patch normalised values to pixel values
        target = network.patchify(pixels)
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        pred = pred * (var + 1.0e-6) ** 0.5 + mean
    recon = network.unpatchify(pred)
    p = network.config.patch_size
    mask = out.mask.unsqueeze(-1).expand(-1, -1, p * p * 3)
    mask = network.unpatchify(mask)  # 1 where hidden
    masked = pixels * (1 - mask) + mask * pixels.amin()  # hidden patches shown dark
    pasted = pixels * (1 - mask) + recon * mask
    rows = [np.concatenate([denormalise(t[i]) for t in (masked, pasted, pixels)], axis=1) for i in range(n)]
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(np.concatenate(rows, axis=0)).save(tmp, format="PNG")
    tmp.replace(path)
    return path, float(out.loss)


def _last_history_loss(path: Path) -> float | None:
    lines = path.read_text().splitlines() if path.is_file() else []
    return float(json.loads(lines[-1])["loss"]) if lines else None


def run_pretrain(cfg: ExperimentConfig, explicit_keys: set[str] | None = None) -> EngineResult:
    """MAE-pretrain the ``model.arch`` encoder on ``pretrain.img_dir``; returns the pretrained folder, the
    reconstruction grid, the final loss and timing (``explicit_keys`` is unused: every setting comes from ``cfg``)."""
    t0 = time.time()
    cfg = copy.deepcopy(cfg)
    warnings = clamp_for_action(cfg, "pretrain")
    for warning in warnings:
        log.warning("%s", warning)
    p = cfg.pretrain
    results_dir = Path(action_decl("pretrain").results_dir(cfg))
    ds = _dataset(cfg)
    if p.seed >= 0:
        pl.seed_everything(p.seed, workers=True, verbose=False)
    results_dir.mkdir(parents=True, exist_ok=True)
    resume = _resume_path(cfg, results_dir)
    network = build_mae(cfg.model.arch, cfg.dataset.crop_size, mask_ratio=p.mask_ratio,
                        norm_pix_loss=p.norm_pix_loss,
                        decoder=MAEDecoderSize(p.decoder_hidden_size, p.decoder_num_layers, p.decoder_num_heads))
    start = None
    if resume is None and p.pretrained_model_path:
        start = load_mae_weights(network, p.pretrained_model_path, cfg.model.arch)
    elif resume is not None:
        log.info("resuming pretraining from %s (pretrain.pretrained_model_path ignored)", resume)
    dump_spec(cfg, results_dir / "pretrain_spec.yaml")
    module = MAEPretrainModule(network, p, arch=cfg.model.arch, crop_size=cfg.dataset.crop_size,
                               history_path=results_dir / HISTORY_FILE)
    loader = _loader(ds, p.batch_size, p.num_workers, p.views_per_epoch)
    trainer = build_trainer(
        results_dir, device_settings(p.num_gpus, p.gpu_ids, p.num_nodes, "pretrain"), use_amp=p.use_amp,
        callbacks=[MALCheckpoint(results_dir, p.checkpoint_interval)], max_epochs=p.num_epochs,
        steps_per_epoch=len(loader),
    )
    with deferred_stop():  # SIGTERM/SIGINT: the checkpoint callback saves a resumable checkpoint, then stops
        trainer.fit(module, train_dataloaders=loader, ckpt_path=str(resume) if resume else None, weights_only=True)
    artifacts: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    if trainer.is_global_zero:
        network.cpu()
        artifacts["pretrained_model"] = str(save_pretrained_folder(network, results_dir / PRETRAINED_DIR,
                                                                   cfg.model.arch, cfg.dataset.crop_size))
        png, fixed_loss = reconstruction_grid(network, ds, p.num_vis_images, results_dir / RECONSTRUCTION_PNG,
                                              seed=max(p.seed, 0))
        artifacts["reconstruction_png"] = str(png)
        metrics["fixed_view_loss"] = round(fixed_loss, 6)
    last = module.last_loss if module.last_loss is not None else _last_history_loss(results_dir / HISTORY_FILE)
    if last is not None:
        metrics["loss"] = round(last, 6)
    latest = results_dir / f"{LATEST_NAME}.pth"
    artifacts.update(history=str(results_dir / HISTORY_FILE), latest_checkpoint=str(latest) if latest.exists()
                     else None)
    return EngineResult(results_dir=str(results_dir), artifacts=artifacts, metrics=metrics, warnings=warnings, details={
        "num_images": len(ds), "resumed_from": str(resume) if resume else None,
        "started_from": start.summary() if start else None, "seconds": round(time.time() - t0, 2)})
