"""Per-instance colour models: the quality term that compares a mask with its own colours, and the test-time
refinement that uses them (mal_core.engine.colour_model)."""

from __future__ import annotations

import torch

from mal_core.data.augment import to_normalised_tensor
from mal_core.engine.colour_model import colour_agreement, colour_index, colour_refine

RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 40)


def _ring_scene() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 64x64 crop: blue background, a box at [12, 52) holding a red ring (a square with a blue hole in it).

    Returns the normalised image (1,3,64,64), the box mask (1,1,64,64) and the true object mask (64,64)."""
    img = torch.zeros(64, 64, 3, dtype=torch.uint8)
    img[:] = torch.tensor(BLUE, dtype=torch.uint8)
    obj = torch.zeros(64, 64, dtype=torch.bool)
    obj[12:52, 12:52] = True
    obj[20:44, 20:44] = False  # the hole shows the background
    img[obj] = torch.tensor(RED, dtype=torch.uint8)
    box = torch.zeros(1, 1, 64, 64)
    box[..., 12:52, 12:52] = 1.0
    return to_normalised_tensor(img.numpy())[None], box, obj


def _logits(mask: torch.Tensor, size: int = 64) -> torch.Tensor:
    """Confident logits (1,1,size,size) of a boolean mask (64,64)."""
    out = torch.where(mask, 2.0, -2.0)[None, None]
    return torch.nn.functional.interpolate(out, size=(size, size), mode="bilinear", align_corners=False)


def test_colour_index_separates_the_colours_and_recovers_them_from_the_normalised_crop():
    image, _, obj = _ring_scene()
    index = colour_index(image)[0]
    assert index[obj].unique().numel() == 1
    assert index[~obj].unique().numel() == 1
    assert index[obj][0] != index[~obj][0]
    r, g, b = (c * 16 // 256 for c in RED)
    assert int(index[obj][0]) == (r * 16 + g) * 16 + b


def test_agreement_is_high_for_the_true_mask_and_low_for_a_mask_that_fills_its_box():
    image, box, obj = _ring_scene()
    right = colour_agreement(_logits(obj), image, box)
    filled = colour_agreement(_logits(box[0, 0] > 0), image, box)
    assert float(right) > 0.95
    # the hole's pixels have the background's colour: the colour model calls only the ring object
    assert abs(float(filled) - float(obj.sum()) / 1600.0) < 0.02


def test_refinement_cuts_the_background_coloured_hole_out_of_a_filled_mask():
    image, box, obj = _ring_scene()
    filled = _logits(box[0, 0] > 0, size=32)
    refined = colour_refine(filled, image, box, weight=6.0, iters=3)
    assert refined.shape == (1, 1, 64, 64)  # at the crop's resolution
    up = torch.nn.functional.interpolate(filled, size=(64, 64), mode="bilinear", align_corners=False)
    before = ((up[0, 0] > 0) == obj).float().mean()
    after = ((refined[0, 0] > 0) == obj).float().mean()
    assert before < 0.87 and after > 0.98
    assert not (refined[0, 0] > 0)[:5].any()  # nothing outside the box


def test_refinement_keeps_a_mask_whose_colours_do_not_tell_object_from_background():
    image, box, obj = _ring_scene()
    grey = torch.zeros_like(image)  # every pixel the same colour: the colour model has nothing to say
    mask = _logits(obj, size=32)
    refined = colour_refine(mask, grey, box, weight=6.0, iters=3)
    up = torch.nn.functional.interpolate(mask, size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.equal(refined[0, 0] > 0, (up[0, 0] > 0) & (box[0, 0] > 0))
