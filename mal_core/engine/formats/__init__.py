"""Delivery format writers, one module per format, each ``(delivery, folder, opts, top) -> info``.

The names are :data:`mal_core.config.experiment.DELIVERY_FORMATS`; :data:`WRITERS` maps each to its writer.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

from mal_core.config.experiment import DELIVERY_FORMATS

#: Format name -> "module:function" of its writer (imported when used).
WRITERS: dict[str, str] = {
    "coco_rle": "mal_core.engine.formats.coco_formats:write_coco_rle",
    "coco_polygon": "mal_core.engine.formats.coco_formats:write_coco_polygon",
    "yolo_seg": "mal_core.engine.formats.yolo_seg:write_yolo_seg",
    "label_studio": "mal_core.engine.formats.label_studio:write_label_studio",
    "cvat": "mal_core.engine.formats.cvat:write_cvat",
    "train_masks": "mal_core.engine.formats.train_masks:write_train_masks",
}
assert tuple(WRITERS) == DELIVERY_FORMATS, "every delivery format has one writer"


def writer(name: str) -> Callable[..., dict[str, Any]]:
    """The writer function of format ``name``."""
    module, _, func = WRITERS[name].partition(":")
    return getattr(import_module(module), func)
