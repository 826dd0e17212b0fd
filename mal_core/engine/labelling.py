"""The labelling core: a batch of box crops -> pasted masks, quality terms and scores, in plain torch.

One pipeline for every route that turns crops into labels: Lightning's validation and predict steps
(:class:`~mal_core.engine.module.MALModule`), the inference and evaluate jobs (in this process or in Ray workers),
the ONNX route (an :class:`~mal_core.engine.onnx_model.OnnxStudentTeacher` in place of the torch networks) and
``bench/``. The steps: the network's logits (student, teacher or both, optionally with the flip) -> the test-time
colour model -> mean-field refinement -> paste into the image (threshold per size bucket, never outside the box)
-> the ground-truth-free quality terms -> the label score (:mod:`mal_core.engine.quality`) -> the box/mask
consistency terms and flags (:mod:`mal_core.engine.consistency`, on the pasted region).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from mal_core.config.experiment import ExperimentConfig
from mal_core.data.crops import box_pixel_span
from mal_core.engine.colour_model import colour_agreement, colour_refine
from mal_core.engine.consistency import consistency_terms
from mal_core.engine.postprocess import PastedMask, box_fill, paste_masks, region_iou
from mal_core.engine.quality import QUALITY_REFINE_ITERS, confidence_margin, mask_agreement, quality_score
from mal_core.losses.crf import mean_field_refine
from mal_core.losses.mil import resize_to


class LabelNetwork(Protocol):
    """What the core needs of a network pair: the torch :class:`~mal_core.model.network.StudentTeacher` or the
    onnxruntime :class:`~mal_core.engine.onnx_model.OnnxStudentTeacher`."""

    def student(self, crops: torch.Tensor, box_areas: torch.Tensor) -> torch.Tensor: ...

    def teacher(self, crops: torch.Tensor, box_areas: torch.Tensor) -> torch.Tensor: ...

    def predict_logits(self, images: torch.Tensor, box_areas: torch.Tensor, *, use_teacher: bool = False,
                       use_mixed: bool = False, use_flip: bool = False) -> torch.Tensor: ...


@dataclass(frozen=True)
class TestTimeSettings:
    """Everything that decides a label besides the weights: which network, refinement, thresholds."""

    use_teacher: bool = False
    use_mixed: bool = False
    use_flip: bool = False
    mask_thres: tuple[float, ...] = (0.5,)
    refine_iters: int = 0
    colour_weight: float = 0.0
    colour_iters: int = 0
    crf_kernel_size: int = 3
    crf_zeta: float = 0.1

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, test_mode: dict[str, bool] | None = None) -> TestTimeSettings:
        """The settings of ``cfg`` (``postprocess.*``; the refinement uses the training CRF's
        ``train.crf_kernel_size`` / ``crf_zeta``) with the network choice of ``test_mode`` (``use_teacher``,
        ``use_mixed``, ``use_flip``)."""
        p, t, mode = cfg.postprocess, cfg.train, dict(test_mode or {})
        return cls(use_teacher=bool(mode.get("use_teacher")), use_mixed=bool(mode.get("use_mixed")),
                   use_flip=bool(mode.get("use_flip")), mask_thres=tuple(float(v) for v in p.mask_thres),
                   refine_iters=int(p.refine_iters), colour_weight=float(p.colour_weight),
                   colour_iters=int(p.colour_iters), crf_kernel_size=int(t.crf_kernel_size),
                   crf_zeta=float(t.crf_zeta))

    def network_mode(self) -> dict[str, bool]:
        """The keyword arguments of ``predict_logits``."""
        return {"use_teacher": self.use_teacher, "use_mixed": self.use_mixed, "use_flip": self.use_flip}


@dataclass
class BoxLabel:
    """One box's label: its pasted mask, score in [0, 1], the quality terms and (with a GT mask) its IoU."""

    index: int
    mask: PastedMask
    score: float
    quality: dict[str, float] = field(default_factory=dict)
    iou: float | None = None
    box_iou: float | None = None  # with a GT mask: the box itself as the mask (the box-fill baseline)
    fill: float | None = None  # with a GT mask: the fraction of its box the mask covers (collapse checks)
    consistency: dict[str, float] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)


class Labeller:
    """Runs the labelling pipeline of :class:`TestTimeSettings` on a network (see the module docstring)."""

    def __init__(self, network: LabelNetwork, settings: TestTimeSettings) -> None:
        self.network = network
        self.settings = settings

    # ----- the steps ---------------------------------------------------------------------------------------
    def raw_logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """The network's logits (B,1,M,M) of the chosen test-time mode."""
        return self.network.predict_logits(batch["image"], batch["box_area"], **self.settings.network_mode())

    def final_logits(self, raw: torch.Tensor, images: torch.Tensor, box_mask: torch.Tensor) -> torch.Tensor:
        """``raw`` after the test-time colour model and refinement (each when switched on)."""
        s = self.settings
        if s.colour_weight > 0:
            raw = colour_refine(raw, images, box_mask, weight=s.colour_weight, iters=s.colour_iters)
        return self.refined(raw, images, box_mask, s.refine_iters) if s.refine_iters > 0 else raw

    def refined(self, logits: torch.Tensor, images: torch.Tensor, box_mask: torch.Tensor, iters: int) -> torch.Tensor:
        """Mean-field refinement of the mask probabilities with the crop's colours, as logits."""
        s, size = self.settings, tuple(logits.shape[-2:])
        probs = mean_field_refine(resize_to(images.float(), size), torch.sigmoid(logits.float()),
                                  resize_to(box_mask.float(), size), kernel_size=s.crf_kernel_size,
                                  zeta=s.crf_zeta, num_iter=iters, low=0.01, high=0.99)
        return torch.logit(probs)

    def paste(self, batch: dict[str, Any], logits: torch.Tensor) -> list[PastedMask]:
        """Final logits -> thresholded masks in image coordinates."""
        return paste_masks(logits, batch["box_mask"], batch["ext_box"], batch["image_size"], batch["box_area"],
                           list(self.settings.mask_thres), batch["box"])

    def masks(self, batch: dict[str, Any]) -> list[PastedMask]:
        """Pasted masks of a batch, without the quality terms (validation)."""
        raw = self.raw_logits(batch)
        return self.paste(batch, self.final_logits(raw, batch["image"], batch["box_mask"]))

    def quality_terms(self, batch: dict[str, Any], raw: torch.Tensor, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Ground-truth-free quality terms of the final logits ``logits`` (``raw`` = the network's, before any
        test-time refinement). The flip and teacher agreements compare the networks' own outputs, before
        refinement (which would pull both masks towards the same image edges and colours)."""
        s, net = self.settings, self.network
        images, areas, box = batch["image"], batch["box_area"], batch["box_mask"]
        mode = {"use_teacher": s.use_teacher, "use_mixed": s.use_mixed}
        unflipped = net.predict_logits(images, areas, **mode) if s.use_flip else raw
        flipped = net.predict_logits(images.flip(-1), areas, **mode).flip(-1)
        plain = s.use_teacher or s.use_mixed or s.use_flip
        student = net.student(images, areas) if plain else raw
        teacher = net.teacher(images, areas)
        thr = float(s.mask_thres[0])
        coarse = resize_to(logits.float(), tuple(raw.shape[-2:]))  # the CRF term at the network's mask resolution
        return {"flip": mask_agreement(unflipped, flipped, box, thr),
                "teacher": mask_agreement(student, teacher, box, thr),
                "margin": confidence_margin(logits, box),
                "crf": mask_agreement(coarse, self.refined(coarse, images, box, QUALITY_REFINE_ITERS), box, thr),
                "colour": colour_agreement(logits, images, box, thr)}

    # ----- the whole pipeline ------------------------------------------------------------------------------
    def label(self, batch: dict[str, Any]) -> list[BoxLabel]:
        """Labels of one batch of crops (the keys :class:`~mal_core.data.datasets.BoxCropDataset` gives at test
        time, on the network's device); masks come back on the host. With ``gt_region``/``gt_area`` in the batch
        each label carries its IoU with the ground truth."""
        raw = self.raw_logits(batch)
        logits = self.final_logits(raw, batch["image"], batch["box_mask"])
        pasted = self.paste(batch, logits)
        terms = self.quality_terms(batch, raw, logits)
        terms["mean_probability"] = torch.tensor([p.score for p in pasted], dtype=torch.float32,
                                                 device=terms["flip"].device)
        scores = quality_score(terms).float().cpu()
        terms_host = {k: v.float().cpu() for k, v in terms.items()}
        gts: list[tuple[float | None, ...]] = (gt_scores(pasted, batch) if "gt_region" in batch
                                                else [(None, None, None)] * len(pasted))
        out = []
        for i, (p, (iou, box_iou, fill)) in enumerate(zip(pasted, gts, strict=True)):
            mask = p.mask.cpu()
            consistency, flags = region_consistency(mask, p.region, batch["box"][i])
            out.append(BoxLabel(index=int(batch["index"][i]), mask=PastedMask(p.region, mask, p.score),
                                score=float(scores[i]) if bool(mask.any()) else 0.0,
                                quality={k: round(float(v[i]), 4) for k, v in terms_host.items()},
                                iou=iou, box_iou=box_iou, fill=fill, consistency=consistency, flags=flags))
        return out


def region_consistency(mask: torch.Tensor, region: tuple[int, int, int, int],
                       box: torch.Tensor) -> tuple[dict[str, float], list[str]]:
    """The consistency terms and flags of a pasted mask (its region's pixels) against its box (x0/y0/x1/y1 image
    pixels)."""
    bx0, bx1 = box_pixel_span(float(box[0]), float(box[2]))
    by0, by1 = box_pixel_span(float(box[1]), float(box[3]))
    x0, y0 = region[0], region[1]
    return consistency_terms(mask.numpy(), (bx0 - x0, by0 - y0, bx1 - x0, by1 - y0))


def gt_scores(pasted: list[PastedMask], batch: dict[str, Any]) -> list[tuple[float, float, float]]:
    """Per mask, against the batch's ground truth (``gt_region``, ``gt_area``): its IoU, the IoU of the box itself
    (the box-fill baseline) and the fraction of its box the mask fills (the collapse checks' figures)."""
    out = []
    for i, p in enumerate(pasted):
        gt, area = batch["gt_region"][i], int(batch["gt_area"][i])
        box = box_fill(p, batch["box"][i])
        out.append((region_iou(p, gt, area), region_iou(box, gt, area),
                    float(p.mask.sum()) / max(float(box.mask.sum()), 1.0)))
    return out


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors on ``device`` (lists such as GT regions stay on the host)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def autocast_for(device: torch.device, use_amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on a CUDA device when ``use_amp`` (fp16 where bf16 is unsupported); nothing on CPU."""
    if device.type != "cuda" or not use_amp:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)
