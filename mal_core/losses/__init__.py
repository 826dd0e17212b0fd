"""Losses: MIL box-projection Dice loss and CRF mean-field self-training loss."""

from mal_core.losses.crf import crf_loss, mean_field_refine
from mal_core.losses.dice import dice_loss
from mal_core.losses.mil import mil_loss

__all__ = ["crf_loss", "dice_loss", "mean_field_refine", "mil_loss"]
