"""The MAE pretraining network: ``transformers``' ViT-MAE encoder + light decoder, sized from the same architecture
table as the MAL backbone so its encoder weights load into :class:`~mal_core.model.backbone.ViTBackbone` as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import ViTMAEForPreTraining

from mal_core.errors import SpecError
from mal_core.model.backbone import vit_mae_config


@dataclass(frozen=True)
class MAEDecoderSize:
    """Width, depth and heads of the reconstruction decoder (thrown away after pretraining)."""

    hidden_size: int = 512
    num_layers: int = 8
    num_heads: int = 16


def build_mae(arch: str, image_size: int, *, mask_ratio: float = 0.75, norm_pix_loss: bool = True,
              decoder: MAEDecoderSize | None = None) -> ViTMAEForPreTraining:
    """A randomly initialised ViT-MAE pretraining model of ``arch`` for square crops of side ``image_size``."""
    decoder = decoder or MAEDecoderSize()
    if decoder.hidden_size % decoder.num_heads:
        raise SpecError(f"pretrain.decoder_num_heads ({decoder.num_heads}) must divide pretrain.decoder_hidden_size "
                        f"({decoder.hidden_size})", field="pretrain.decoder_num_heads")
    config = vit_mae_config(arch, image_size)
    config.mask_ratio = float(mask_ratio)
    config.norm_pix_loss = bool(norm_pix_loss)
    config.decoder_hidden_size = decoder.hidden_size
    config.decoder_num_hidden_layers = decoder.num_layers
    config.decoder_num_attention_heads = decoder.num_heads
    config.decoder_intermediate_size = 4 * decoder.hidden_size
    return ViTMAEForPreTraining(config)
