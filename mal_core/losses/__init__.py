"""Losses: MIL box-projection Dice loss and CRF mean-field self-training loss."""
