"""MAL core: box-supervised instance mask auto-labelling (data, model, losses, engine)."""

__version__ = "0.1.0"
