"""Backbone spatial order, position interpolation, heads for any depth/ratio, EMA teacher."""

from __future__ import annotations

import pytest
import torch

from mal_core.config import parse_spec
from mal_core.model.backbone import ViTBackbone
from mal_core.model.heads import MaskDecoder
from mal_core.model.network import StudentTeacher


def _tiny_model_cfg(**model):
    cfg, _ = parse_spec({"model": {"arch": "vit-mae-nano/8", "mask_head_hidden_channel": 16,
                                   "mask_head_out_channel": 16, **model}})
    return cfg.model


def test_backbone_features_come_back_in_spatial_order():
    torch.manual_seed(0)
    bb = ViTBackbone("vit-mae-nano/8", 32).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = bb(x)
    assert feats.shape == (2, 128, 4, 4)
    # identity "noise" makes ViTMAEModel keep tokens in order: the reference layout
    noise = torch.arange(16, dtype=torch.float32).expand(2, 16)
    ref = bb.vit(pixel_values=x, noise=noise).last_hidden_state[:, 1:]
    ref = ref.transpose(1, 2).reshape(2, 128, 4, 4)
    assert torch.allclose(feats, ref, atol=1e-5)
    # and a local change of the image changes the features at that location most
    y = x.clone()
    y[..., 24:32, 0:8] += 5.0  # patch at grid row 3, column 0
    diff = (bb(y) - feats).abs().sum(1)[0]
    assert diff.argmax().item() == 3 * 4 + 0


def test_backbone_other_input_size_interpolates_positions():
    bb = ViTBackbone("vit-mae-nano/8", 32).eval()
    assert bb(torch.randn(1, 3, 48, 48)).shape == (1, 128, 6, 6)


def test_frozen_stages():
    bb = ViTBackbone("vit-mae-nano/8", 32, frozen_stages=[0, 2])
    assert not any(p.requires_grad for p in bb.vit.embeddings.patch_embeddings.parameters())
    assert not any(p.requires_grad for p in bb.vit.layers[1].parameters())
    assert all(p.requires_grad for p in bb.vit.layers[2].parameters())


@pytest.mark.parametrize(("num_convs", "ratio"), [(1, 2.0), (2, 1.0), (4, 2.0), (5, 3.0)])
def test_scale_adaptive_decoder_any_depth_and_ratio(num_convs, ratio):
    dec = MaskDecoder(32, 8, 8, num_convs, ratio, 1, adjust_scale=True, mask_size=32)
    areas = torch.tensor([10.0, 32.0**2, 32.0**2 + 1, 96.0**2, 1e6])  # edges go to the lower bucket
    out = dec(torch.randn(5, 32, 8, 8), areas)
    assert out.shape == (5, 1, 32, 32)
    assert (out.abs().flatten(1).sum(1) > 0).all()  # no bucket left at zero (the original edge bug)


def test_fixed_scale_decoder_shape():
    dec = MaskDecoder(32, 8, 8, 4, 2.0, 1, adjust_scale=False, mask_size=32)
    assert dec(torch.randn(2, 32, 8, 8), torch.tensor([1.0, 1e5])).shape == (2, 1, 32, 32)


def test_teacher_starts_equal_and_follows_by_ema():
    st = StudentTeacher(_tiny_model_cfg(teacher_momentum=0.9), 32)
    for ps, pt in zip(st.student.parameters(), st.teacher.parameters(), strict=True):
        assert torch.equal(ps, pt) and not pt.requires_grad
    p_s = next(st.student.parameters())
    p_t = next(st.teacher.parameters())
    before = p_t.detach().clone()
    with torch.no_grad():
        p_s.add_(1.0)
    st.ema_update()
    assert torch.allclose(p_t, before + 0.1, atol=1e-6)  # 0.9*t + 0.1*(t+1)
    st.train()
    assert st.student.training and not st.teacher.training


def test_prediction_modes_shapes_and_flip():
    st = StudentTeacher(_tiny_model_cfg(), 32).eval()
    x, a = torch.randn(2, 3, 32, 32), torch.tensor([100.0, 5000.0])
    plain = st.predict_logits(x, a)
    assert plain.shape == (2, 1, 8, 8)
    flip = st.predict_logits(x, a, use_flip=True)
    assert torch.allclose(flip, 0.5 * (plain + st.predict_logits(x.flip(-1), a).flip(-1)), atol=1e-5)
    assert torch.allclose(st.predict_logits(x, a, use_mixed=True), plain, atol=1e-5)  # teacher == student at init


def test_mask_stride_sets_logit_resolution():
    from mal_core.model.network import MALNetwork

    net = MALNetwork(_tiny_model_cfg(mask_stride=2, not_adjust_scale=True, mask_scale_ratio=4.0), 64).eval()
    assert net(torch.randn(1, 3, 64, 64), torch.tensor([500.0])).shape == (1, 1, 32, 32)
