"""What the Trainer we build prints: Lightning's facts stay, its product advertisements do not."""

from __future__ import annotations

import logging


def test_trainer_log_keeps_lightning_facts_and_drops_product_tips(tmp_path, caplog):
    from mal_core.engine.trainer import build_trainer, device_settings

    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    logger.addHandler(caplog.handler)  # Lightning's loggers do not propagate to the root logger
    try:
        with caplog.at_level(logging.INFO, logger="pytorch_lightning.utilities.rank_zero"):
            build_trainer(tmp_path, device_settings(1, [0], 1, "train"), use_amp=False)
    finally:
        logger.removeHandler(caplog.handler)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "GPU available" in text
    assert "litlogger" not in text and "Tip" not in text
