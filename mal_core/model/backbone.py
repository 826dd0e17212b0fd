"""ViT-MAE image encoder built with ``transformers``, returning the last-layer patch tokens as a spatial map."""

from __future__ import annotations

import torch
from torch import nn
from transformers import ViTMAEConfig, ViTMAEModel

from mal_core.config.archs import ARCHS, ArchSpec
from mal_core.errors import SpecError


def arch_spec(arch: str) -> ArchSpec:
    """Look up an architecture name; the error lists the known ones."""
    try:
        return ARCHS[arch]
    except KeyError:
        raise SpecError(f"model.arch {arch!r} is not one of {sorted(ARCHS)}", field="model.arch") from None


def vit_mae_config(arch: str, image_size: int) -> ViTMAEConfig:
    """Hugging Face config of ``arch`` for square inputs of side ``image_size`` with masking disabled."""
    spec = arch_spec(arch)
    return ViTMAEConfig(
        hidden_size=spec.embed_dim,
        num_hidden_layers=spec.depth,
        num_attention_heads=spec.num_heads,
        intermediate_size=int(spec.embed_dim * spec.mlp_ratio),
        image_size=image_size,
        patch_size=spec.patch_size,
        qkv_bias=True,
        layer_norm_eps=1e-6,
        mask_ratio=0.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


class DropPath(nn.Module):
    """Per-sample stochastic depth of a residual branch (identity at eval or rate 0)."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = float(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate <= 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class ViTBackbone(nn.Module):
    """ViT-MAE encoder. ``forward`` maps images (B,3,S,S) to features (B,C,S/p,S/p) in spatial (row-major) order.

    ``ViTMAEModel`` shuffles patch tokens even at mask ratio 0; the tokens are put back in place with its
    ``ids_restore`` before reshaping, so features line up with image positions.
    """

    def __init__(self, arch: str, image_size: int, drop_path_rate: float = 0.0,
                 frozen_stages: list[int] | None = None) -> None:
        super().__init__()
        self.arch = arch
        self.spec = arch_spec(arch)
        self.image_size = int(image_size)
        self.vit = ViTMAEModel(vit_mae_config(arch, self.image_size))
        self.embed_dim = self.spec.embed_dim
        self.patch_size = self.spec.patch_size
        depth = len(self.vit.layers)
        for i, layer in enumerate(self.vit.layers):
            rate = drop_path_rate * i / max(depth - 1, 1)
            if rate > 0:
                layer.dropout = DropPath(rate)  # applied to each residual branch before the add
        self.frozen_stages = list(frozen_stages or [-1])
        self._freeze()

    def _freeze(self) -> None:
        stages = self.frozen_stages
        if len(stages) != 2 or stages[0] < 0:
            return
        first, last = stages
        if first == 0 and last > 0:
            for p in self.vit.embeddings.parameters():
                p.requires_grad_(False)
        for idx in range(max(first, 1), last + 1):
            if idx - 1 < len(self.vit.layers):
                for p in self.vit.layers[idx - 1].parameters():
                    p.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B,3,H,W) -> features (B,C,H/p,W/p); other sizes than ``image_size`` interpolate positions."""
        b, _, h, w = images.shape
        resize = (h, w) != (self.image_size, self.image_size)
        out = self.vit(pixel_values=images, interpolate_pos_encoding=resize)
        tokens = out.last_hidden_state[:, 1:, :]
        index = out.ids_restore.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
        tokens = torch.gather(tokens, 1, index)
        gh, gw = h // self.patch_size, w // self.patch_size
        return tokens.transpose(1, 2).reshape(b, tokens.shape[-1], gh, gw)
