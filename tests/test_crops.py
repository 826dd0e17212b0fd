"""Box-crop geometry: expansion formula, margins, wrap-around fill and box masks in crop coordinates."""

from __future__ import annotations

import numpy as np

from mal_core.data.crops import box_mask_in_crop, clip_to_image, crop_wrap, eval_margins, expand_box, train_margins


def test_expand_box_matches_formula():
    # box 10..30 x 20..60, centre (20, 40); margins 0.5 left, 0 top, 1.0 right, 0.25 bottom
    ext = expand_box((10.0, 20.0, 30.0, 60.0), (0.5, 0.0, 1.0, 0.25))
    assert ext == (5, 20, 41, 66)  # 20-10*1.5=5; 40-20=20; ceil(20+10*2+1)=41; ceil(40+20*1.25+1)=66


def test_test_margins_are_half_the_rate_on_every_side():
    assert eval_margins([0.6, 0.6]) == (0.3, 0.3, 0.3, 0.3)
    x0, y0, x1, y1 = expand_box((40.0, 40.0, 60.0, 80.0), eval_margins([0.6]))
    assert (x0, y0, x1, y1) == (37, 34, 64, 87)


def test_train_margins_gate_splits_the_expansion():
    ml, mt, mr, mb = train_margins([1.0, 1.0, 1.0, 1.0, 0.25, 0.75], 0.0, 1.2)
    assert np.isclose(ml, 0.3) and np.isclose(mr, 0.9)
    assert np.isclose(mt, 0.9) and np.isclose(mb, 0.3)
    lo = train_margins([0.0] * 4 + [0.5, 0.5], 0.2, 1.2)
    assert all(np.isclose(m, 0.1) for m in lo)


def test_crop_wrap_inside_is_a_plain_slice_and_outside_wraps_around():
    img = np.arange(5 * 6).reshape(5, 6)
    assert np.array_equal(crop_wrap(img, (1, 1, 4, 3)), img[1:3, 1:4])
    wrapped = crop_wrap(img, (-2, -1, 2, 2))  # 2 columns left and 1 row above the image
    expected = np.pad(img, ((1, 0), (2, 0)), mode="wrap")[0:3, 0:4]
    assert np.array_equal(wrapped, expected)
    big = crop_wrap(img, (-7, 0, 8, 1))  # wider than the image: wraps more than once
    assert np.array_equal(big[0], img[0][np.arange(-7, 8) % 6])


def test_box_mask_in_crop_scales_the_box():
    # expanded box 0..40 mapped to a 20-pixel crop: the box 10..30 becomes 5..15
    mask = box_mask_in_crop((10.0, 10.0, 30.0, 30.0), (0, 0, 40, 40), 20)
    assert mask.sum() == 100
    assert mask[5:15, 5:15].all() and mask[:5].sum() == 0 and mask[:, 15:].sum() == 0


def test_clip_to_image():
    assert clip_to_image((-3, -2, 50, 40), 30, 45) == (0, 0, 45, 30)
