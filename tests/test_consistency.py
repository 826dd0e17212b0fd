"""Box/mask consistency terms and flags on hand-made masks (exact values)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mal_core.engine.consistency import consistency_terms
from mal_core.engine.labelling import region_consistency


def _mask(h: int, w: int, *rects: tuple[int, int, int, int]) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in rects:
        m[y0:y1, x0:x1] = True
    return m


def test_a_ring_has_one_part_and_its_hole() -> None:
    ring = _mask(10, 10, (2, 2, 8, 8))
    ring[4:6, 4:6] = False  # a 2x2 hole inside a 6x6 square: 32 mask pixels, 4 hole pixels
    terms, flags = consistency_terms(ring, (2, 2, 8, 8))
    assert terms == {"box_iou": 1.0, "parts": 1, "fill": round(32 / 36, 4), "holes": round(4 / 36, 4)}
    assert flags == []


def test_a_gap_open_to_the_border_is_no_hole_but_a_diagonally_closed_one_is() -> None:
    c_shape = _mask(10, 10, (2, 2, 8, 8))
    c_shape[4:6, 4:8] = False  # the notch reaches the square's right side
    assert consistency_terms(c_shape, (2, 2, 8, 8))[0]["holes"] == 0.0
    diamond = np.zeros((5, 5), dtype=bool)
    for y, x in ((0, 2), (1, 1), (1, 3), (2, 0), (2, 4), (3, 1), (3, 3), (4, 2)):
        diamond[y, x] = True  # 8-connected ring around (2, 2) and its 4 neighbours inside
    terms, _ = consistency_terms(diamond, (0, 0, 5, 5))
    assert terms["parts"] == 1
    assert terms["holes"] == round(5 / 13, 4)


def test_two_parts_and_a_one_pixel_part() -> None:
    two = _mask(4, 10, (0, 0, 3, 4), (7, 0, 10, 4))
    terms, flags = consistency_terms(two, (0, 0, 10, 4))
    assert terms == {"box_iou": 1.0, "parts": 2, "fill": 0.6, "holes": 0.0}
    assert flags == []
    speck = _mask(10, 10, (0, 0, 10, 5), (9, 9, 10, 10))
    terms, flags = consistency_terms(speck, (0, 0, 10, 10))
    assert terms == {"box_iou": 1.0, "parts": 2, "fill": 0.51, "holes": 0.0}
    assert flags == []


def test_fragmented_counts_parts_of_real_size_only() -> None:
    three = _mask(4, 14, (0, 0, 3, 4), (5, 0, 8, 4), (11, 0, 14, 4))
    assert consistency_terms(three, (0, 0, 14, 4))[1] == ["fragmented"]
    specks = _mask(20, 20, (0, 0, 20, 8), (0, 12, 20, 20), (2, 10, 3, 11), (6, 10, 7, 11), (12, 10, 13, 11))
    terms, flags = consistency_terms(specks, (0, 0, 20, 20))
    assert terms["parts"] == 5 and flags == []  # two halves and three 1-pixel specks


def test_an_empty_mask() -> None:
    terms, flags = consistency_terms(np.zeros((6, 6), dtype=bool), (1, 1, 5, 5))
    assert terms == {"box_iou": 0.0, "parts": 0, "fill": 0.0, "holes": 0.0}
    assert flags == ["empty"]


def test_a_mask_filling_half_its_box_and_one_filling_all_of_it() -> None:
    half = _mask(12, 12, (1, 1, 6, 11))  # left half of the 10x10 box at (1, 1)
    terms, flags = consistency_terms(half, (1, 1, 11, 11))
    assert terms == {"box_iou": 0.5, "parts": 1, "fill": 0.5, "holes": 0.0}
    assert flags == ["partial_box"]
    full = _mask(12, 12, (1, 1, 11, 11))
    terms, flags = consistency_terms(full, (1, 1, 11, 11))
    assert terms == {"box_iou": 1.0, "parts": 1, "fill": 1.0, "holes": 0.0}
    assert flags == ["box_filled"]


def test_on_a_pasted_region_the_box_is_moved_into_it_and_cut_to_it() -> None:
    region = (100, 50, 112, 62)  # a 12x12 region of the image
    mask = torch.from_numpy(_mask(12, 12, (1, 1, 6, 11)))
    box = torch.tensor([101.0, 51.0, 111.0, 61.0])
    assert region_consistency(mask, region, box)[0] == {"box_iou": 0.5, "parts": 1, "fill": 0.5, "holes": 0.0}
    beyond = torch.tensor([101.0, 51.0, 131.0, 61.0])  # reaches past the region (the image's edge): cut to it
    terms, _ = region_consistency(mask, region, beyond)
    assert terms["fill"] == pytest.approx(round(50 / 110, 4))
