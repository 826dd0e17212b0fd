"""Losses: MIL box-projection Dice loss, CRF mean-field self-training loss, pairwise colour-affinity loss."""

from mal_core.losses.crf import crf_loss, mean_field_refine
from mal_core.losses.dice import dice_loss
from mal_core.losses.mil import mil_loss
from mal_core.losses.pairwise import normalised_to_lab, pairwise_loss

__all__ = ["crf_loss", "dice_loss", "mean_field_refine", "mil_loss", "normalised_to_lab", "pairwise_loss"]
