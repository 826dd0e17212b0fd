"""What a delivery holds: the labelled COCO file after the score thresholds and the reviewer's decisions.

Every format writer reads a :class:`Delivery`: its images (COCO image records), categories, and per image the
labels to deliver, each with what it is delivered as (a mask, or a box only) and whether a reviewer asked for it to
be fixed. Masks are decoded one image at a time (:meth:`Delivery.by_image`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from mal_core.data.coco import decode_segmentation
from mal_core.errors import DataError


@dataclass
class Label:
    """One annotation to deliver. ``box_only``: no mask is delivered (a rejected label kept as its box);
    ``needs_fixing``: a reviewer marked it for fixing (review-tool formats show it first, training formats leave it
    out or keep its box)."""

    ann: dict[str, Any]
    box_only: bool = False
    needs_fixing: bool = False

    def mask(self, height: int, width: int) -> np.ndarray:
        """The label's mask (H, W) bool."""
        return decode_segmentation(self.ann.get("segmentation") or [], height, width)

    @property
    def score(self) -> float | None:
        """The label's quality score, when it has one."""
        value = self.ann.get("score")
        return float(value) if isinstance(value, (int, float)) else None


@dataclass
class Delivery:
    """The labels of one labelled COCO file to deliver, grouped by image (images in file order)."""

    source: Path
    img_dir: Path | None
    images: list[dict[str, Any]]
    categories: list[dict[str, Any]]
    labels: dict[Any, list[Label]] = field(default_factory=dict)  # image id -> labels
    counts: dict[str, int] = field(default_factory=dict)
    decisions: dict[int, str] = field(default_factory=dict)  # annotation id -> a reviewer's decision

    def by_image(self) -> Iterator[tuple[dict[str, Any], list[Label]]]:
        """(image record, its labels) for every image, in file order."""
        for image in self.images:
            yield image, self.labels.get(image["id"], [])

    def category_names(self) -> dict[Any, str]:
        """Category id -> name (the id as text when a category has no name)."""
        return {c["id"]: str(c.get("name", c["id"])) for c in self.categories}

    def review_order(self) -> list[dict[str, Any]]:
        """Images holding a label marked needs_fixing first, then the rest, each group in file order."""
        first = [im for im in self.images if any(lb.needs_fixing for lb in self.labels.get(im["id"], []))]
        seen = {id(im) for im in first}
        return first + [im for im in self.images if id(im) not in seen]


def image_relpath(image: dict[str, Any], where: str) -> PurePosixPath:
    """The image's ``file_name`` as a relative path that stays inside its folder; :class:`DataError` otherwise."""
    name = str(image.get("file_name", ""))
    rel = PurePosixPath(name.replace("\\", "/"))
    if not name or rel.is_absolute() or ".." in rel.parts:
        raise DataError(f"{where}: image {image.get('id')!r} has file_name {name!r}; expected a relative path "
                        "inside the image folder", field="convert.ann_path")
    return rel


def mask_area(mask: np.ndarray) -> int:
    """The mask's pixel count (COCO ``area`` of a mask, in every format)."""
    return int(np.count_nonzero(mask))
