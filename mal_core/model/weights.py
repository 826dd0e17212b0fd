"""Loading weights: Hugging Face ViT-MAE folders, original MAE ``.pth`` checkpoints (timm keys) and MAL checkpoints.

All files load with ``torch.load(weights_only=True)``. A load reports what matched, what was missing and what was
left over; it fails with :class:`CheckpointError` naming the keys when shapes do not fit or nothing matched.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mal_core.errors import CheckpointError

log = logging.getLogger(__name__)

POS_KEY = "embeddings.position_embeddings"
#: Keys of MAE pre-training checkpoints that belong to the reconstruction decoder, which MAL does not use.
MAE_DECODER_PREFIXES = ("decoder_", "decoder.", "mask_token")
#: Key prefix of the network in pretrain checkpoints (``MAEPretrainModule.mae``).
PRETRAIN_PREFIX = "mae."
#: Weight files of a Hugging Face model folder, in the order they are looked for.
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

_TIMM_RULES: list[tuple[str, str]] = [
    (r"^cls_token$", "embeddings.cls_token"),
    (r"^pos_embed$", POS_KEY),
    (r"^patch_embed\.proj\.(weight|bias)$", r"embeddings.patch_embeddings.projection.\1"),
    (r"^blocks\.(\d+)\.norm1\.(weight|bias)$", r"layers.\1.layernorm_before.\2"),
    (r"^blocks\.(\d+)\.norm2\.(weight|bias)$", r"layers.\1.layernorm_after.\2"),
    (r"^blocks\.(\d+)\.attn\.proj\.(weight|bias)$", r"layers.\1.attention.o_proj.\2"),
    (r"^blocks\.(\d+)\.mlp\.fc1\.(weight|bias)$", r"layers.\1.mlp.fc1.\2"),
    (r"^blocks\.(\d+)\.mlp\.fc2\.(weight|bias)$", r"layers.\1.mlp.fc2.\2"),
    (r"^(?:norm|fc_norm)\.(weight|bias)$", r"layernorm.\1"),
]
_HF4_RULES: list[tuple[str, str]] = [
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.query\.", r"layers.\1.attention.q_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.key\.", r"layers.\1.attention.k_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.value\.", r"layers.\1.attention.v_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attention.o_proj."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.mlp.fc2."),
    (r"^encoder\.layer\.(\d+)\.(layernorm_before|layernorm_after)\.", r"layers.\1.\2."),
]


@dataclass
class LoadReport:
    """What a weight load did: counts and key lists (missing = left at initialisation)."""

    source: str
    kind: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    interpolated: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the log."""
        return (f"loaded {len(self.loaded)} tensors from {self.kind} {self.source}; {len(self.missing)} left at "
                f"init, {len(self.unexpected)} unused" + (f", interpolated {self.interpolated}" if self.interpolated
                                                            else ""))


def torch_load(path: str | Path) -> Any:
    """``torch.load`` on CPU with ``weights_only=True``; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint file {str(p)!r} does not exist", field=str(p))
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a file we cannot use
        raise CheckpointError(
            f"{str(p)!r} is not a loadable weights-only PyTorch checkpoint: {exc}", field=str(p)
        ) from exc


def convert_timm_vit(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Original MAE / timm ViT keys -> ``ViTMAEModel`` keys. Returns (converted, ignored keys)."""
    out: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, value in state.items():
        m = re.match(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", key)
        if m:
            q, k, v = value.chunk(3, dim=0)
            for name, part in zip(("q", "k", "v"), (q, k, v), strict=True):
                out[f"layers.{m.group(1)}.attention.{name}_proj.{m.group(2)}"] = part.clone()
            continue
        for pattern, repl in _TIMM_RULES:
            if re.match(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            ignored.append(key)
    return out, ignored


def convert_hf_vit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flat Hugging Face ViT-MAE keys (v4 ``encoder.layer`` or v5 ``layers`` layout, optional ``vit.``) -> v5."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("vit.")
        for pattern, repl in _HF4_RULES:
            if re.match(pattern, key):
                key = re.sub(pattern, repl, key)
                break
        out[key] = value
    return out


def hf_encoder_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder tensors of a flat Hugging Face ViT-MAE state dict, in ``ViTMAEModel`` keys (decoder and mask
    token dropped)."""
    return {k: v for k, v in convert_hf_vit(state).items() if not k.startswith(MAE_DECODER_PREFIXES)}


def strip_pretrain_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A pretrain checkpoint's state dict (``mae.vit.*``, ``mae.decoder.*``) in ``ViTMAEForPreTraining`` keys."""
    return {k[len(PRETRAIN_PREFIX):]: v for k, v in state.items() if k.startswith(PRETRAIN_PREFIX)}


def interpolate_pos_embed(pos: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Resize a (1, 1+g*g, C) position table (class token first) to ``num_patches`` grid positions (bicubic)."""
    cls, grid = pos[:, :1], pos[:, 1:]
    old = int(round(grid.shape[1] ** 0.5))
    new = int(round(num_patches**0.5))
    if old * old != grid.shape[1] or new * new != num_patches:
        raise CheckpointError(f"position embeddings {tuple(pos.shape)} are not a square grid", field=POS_KEY)
    grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new * new, -1).to(pos.dtype)
    return torch.cat([cls, grid], dim=1)


def load_into(module: nn.Module, state: dict[str, torch.Tensor], report: LoadReport,
              expected_unused: tuple[str, ...] = (), field: str = "train.pretrained_model_path") -> LoadReport:
    """Copy matching tensors into ``module`` (position tables are interpolated); raise on shape mismatch."""
    target = module.state_dict()
    bad: list[str] = []
    loadable: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in target:
            if not key.startswith(expected_unused):
                report.unexpected.append(key)
            continue
        if key.endswith(POS_KEY) and value.shape != target[key].shape and value.dim() == 3:
            value = interpolate_pos_embed(value, target[key].shape[1] - 1)
            report.interpolated.append(key)
        if value.shape != target[key].shape:
            bad.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(target[key].shape)}")
            continue
        loadable[key] = value
    if bad:
        raise CheckpointError(
            f"{report.source}: {len(bad)} tensors do not fit the model (wrong model.arch?): " + "; ".join(bad[:8]),
            field=field,
            hint="check that model.arch matches the architecture the weights were trained for",
        )
    if not loadable:
        raise CheckpointError(
            f"{report.source}: no tensor matched the model; this is not a {report.kind} for it "
            f"(first keys: {list(state)[:5]})",
            field=field,
        )
    module.load_state_dict(loadable, strict=False)
    report.loaded = sorted(loadable)
    report.missing = sorted(k for k in target if k not in loadable)
    return report


def _unwrap(obj: Any, source: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module"):
            if key in obj and isinstance(obj[key], dict):
                return _unwrap(obj[key], source)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CheckpointError(f"{source} holds no tensor state dict", field="train.pretrained_model_path")


def load_pretrained(student: nn.Module, path: str | Path, field: str = "train.pretrained_model_path") -> LoadReport:
    """Initialise a :class:`MALNetwork` from ``path``: a Hugging Face ViT-MAE folder (e.g. ``pretrained_model/`` of a
    pretrain job), an MAE ``.pth``, a pretrain checkpoint or a MAL checkpoint."""
    p = Path(path)
    source = str(p)
    if p.is_dir():
        report = LoadReport(source, "Hugging Face ViT-MAE folder")
        state = read_hf_folder(p, student.backbone.arch, field)
        load_into(student.backbone.vit, hf_encoder_state(state), report, field=field)
    else:
        state = _unwrap(torch_load(p), source)
        if any(k.startswith(PRETRAIN_PREFIX) for k in state):
            report = LoadReport(source, "mal pretrain checkpoint")
            load_into(student.backbone.vit, hf_encoder_state(strip_pretrain_prefix(state)), report, field=field)
        elif any(".student." in f".{k}" for k in state):
            sub = {k.split("student.", 1)[1]: v for k, v in state.items() if "student." in k}
            report = LoadReport(source, "MAL checkpoint")
            load_into(student, sub, report)
        elif any(k.startswith(("blocks.", "patch_embed.")) for k in state):
            converted, ignored = convert_timm_vit(state)
            report = LoadReport(source, "MAE/timm checkpoint")
            report.unexpected.extend(k for k in ignored if not k.startswith(MAE_DECODER_PREFIXES))
            load_into(student.backbone.vit, converted, report)
        else:
            report = LoadReport(source, "ViT-MAE state dict")
            load_into(student.backbone.vit, convert_hf_vit(state), report, expected_unused=MAE_DECODER_PREFIXES)
    log.info(report.summary())
    if report.unexpected:
        log.warning("unused keys in %s: %s", source, report.unexpected[:10])
    return report


def read_hf_folder(folder: str | Path, arch: str, field: str) -> dict[str, torch.Tensor]:
    """The flat state dict of a Hugging Face ViT(-MAE) folder, after checking its ``config.json`` fits ``arch``."""
    from safetensors.torch import load_file

    from mal_core.checkpoint_files import check_hf_folder

    p = Path(folder)
    check_hf_folder(p, arch, field)
    for name in HF_WEIGHT_FILES:
        f = p / name
        if f.is_file():
            try:
                return load_file(str(f)) if name.endswith(".safetensors") else _unwrap(torch_load(f), str(f))
            except CheckpointError:
                raise
            except Exception as exc:  # noqa: BLE001 - a corrupt weight file
                raise CheckpointError(f"cannot read weights {str(f)!r}: {exc}", field=field) from exc
    raise CheckpointError(f"{str(p)!r} has no weight file (looked for {', '.join(HF_WEIGHT_FILES)})", field=field)


def load_mae_weights(network: nn.Module, path: str | Path, arch: str,
                     field: str = "pretrain.pretrained_model_path") -> LoadReport:
    """Start a ViT-MAE pretraining network from ``path`` (continued pretraining): the encoder always, the decoder
    too when the source has one of the same size (Hugging Face folder or pretrain checkpoint)."""
    p = Path(path)
    source = str(p)
    if p.is_dir():
        state, kind = read_hf_folder(p, arch, field), "Hugging Face ViT-MAE folder"
    else:
        state, kind = _unwrap(torch_load(p), source), "weights file"
        if any(k.startswith(PRETRAIN_PREFIX) for k in state):
            state, kind = strip_pretrain_prefix(state), "mal pretrain checkpoint"
    report = LoadReport(source, kind)
    if any(k.startswith(("blocks.", "patch_embed.")) for k in state):
        encoder, _ = convert_timm_vit(state)
        report.kind = "MAE/timm checkpoint"
    else:
        encoder = hf_encoder_state(state)
    load_into(network.vit, encoder, report, field=field)
    decoder = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
    target = network.decoder.state_dict()
    if decoder and all(k in target and target[k].shape == v.shape for k, v in decoder.items()):
        network.decoder.load_state_dict(decoder, strict=False)
        report.loaded += [f"decoder.{k}" for k in sorted(decoder)]
    elif decoder:
        log.info("decoder of %s does not fit pretrain.decoder_* (kept at init)", source)
    log.info(report.summary())
    return report
