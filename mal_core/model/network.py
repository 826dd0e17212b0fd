"""MAL network (backbone + decoder) and the student/teacher pair with its EMA update."""

from __future__ import annotations

import copy

import torch
from torch import nn

from mal_core.config.experiment import ModelConfig
from mal_core.model.backbone import ViTBackbone
from mal_core.model.heads import ImageStem, MaskDecoder


class MALNetwork(nn.Module):
    """Image crop -> mask logits at crop_size / mask_stride (a quarter of the crop side by default)."""

    def __init__(self, cfg: ModelConfig, crop_size: int) -> None:
        super().__init__()
        self.backbone = ViTBackbone(cfg.arch, crop_size, cfg.vit_dpr, cfg.frozen_stages)
        self.decoder = MaskDecoder(
            in_channels=self.backbone.embed_dim,
            hidden=cfg.mask_head_hidden_channel,
            out_channels=cfg.mask_head_out_channel,
            num_convs=cfg.mask_head_num_convs,
            scale=cfg.mask_scale_ratio,
            scale_pre=cfg.mask_scale_ratio_pre,
            adjust_scale=not cfg.not_adjust_scale,
            mask_size=crop_size // cfg.mask_stride,
            stem_channels=cfg.image_stem_channels,
        )
        self.stem = ImageStem(cfg.image_stem_channels, cfg.mask_stride) if cfg.image_stem_channels > 0 else None

    def forward(self, images: torch.Tensor, box_areas: torch.Tensor) -> torch.Tensor:
        """images (B,3,S,S), original box areas (B,) -> logits (B,1,S/stride,S/stride)."""
        stem = self.stem(images) if self.stem is not None else None
        return self.decoder(self.backbone(images), box_areas, stem)


class StudentTeacher(nn.Module):
    """The trained student and its EMA teacher, initialised equal; the teacher never receives gradients."""

    def __init__(self, cfg: ModelConfig, crop_size: int) -> None:
        super().__init__()
        self.student = MALNetwork(cfg, crop_size)
        self.teacher = copy.deepcopy(self.student)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.momentum = float(cfg.teacher_momentum)

    def train(self, mode: bool = True) -> StudentTeacher:
        """Switch the student's mode; the teacher always stays in eval mode."""
        self.student.train(mode)
        self.teacher.eval()
        self.training = mode
        return self

    def sync_teacher(self) -> None:
        """Copy the student's weights into the teacher (after loading weights into the student)."""
        self.teacher.load_state_dict(self.student.state_dict())

    @torch.no_grad()
    def ema_update(self) -> None:
        """theta_t <- m * theta_t + (1 - m) * theta_s over all parameters (buffers are copied)."""
        s_params = [p.detach() for p in self.student.parameters()]
        t_params = list(self.teacher.parameters())
        torch._foreach_mul_(t_params, self.momentum)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - self.momentum)
        for tb, sb in zip(self.teacher.buffers(), self.student.buffers(), strict=True):
            tb.copy_(sb)

    def predict_logits(self, images: torch.Tensor, box_areas: torch.Tensor, *, use_teacher: bool = False,
                       use_mixed: bool = False, use_flip: bool = False) -> torch.Tensor:
        """Test-time logits: student, teacher, or their average (mixed wins), optionally averaged with a flip."""

        def run(x: torch.Tensor) -> torch.Tensor:
            if use_mixed:
                return 0.5 * (self.student(x, box_areas) + self.teacher(x, box_areas))
            return (self.teacher if use_teacher else self.student)(x, box_areas)

        logits = run(images)
        if use_flip:
            logits = 0.5 * (logits + run(images.flip(-1)).flip(-1))
        return logits
