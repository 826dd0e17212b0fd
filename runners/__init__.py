"""Generated per-action runner scripts (see codegen/runners.py); run them as ``python runners/<action>.py``."""
