"""The boundary levers of the CPU recipe: pairwise colour loss, image stem in the decoder, collapse checks."""

from __future__ import annotations

import torch

from mal_core.config.experiment import ModelConfig, TrainConfig
from mal_core.engine.diagnostics import collapse_warnings
from mal_core.losses.objective import mal_objective
from mal_core.losses.pairwise import colour_similarity, pairwise_loss, rgb_to_lab
from mal_core.model.network import MALNetwork


def test_rgb_to_lab_matches_reference_values():
    rgb = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).T.reshape(1, 3, 3, 1)
    lab = rgb_to_lab(rgb)[0, :, :, 0].T
    assert torch.allclose(lab[0], torch.tensor([100.0, 0.0, 0.0]), atol=0.1)
    assert torch.allclose(lab[1], torch.tensor([0.0, 0.0, 0.0]), atol=0.1)
    assert torch.allclose(lab[2], torch.tensor([53.24, 80.09, 67.20]), atol=0.3)  # sRGB red, D65


def _two_colour_lab(size: int = 16, edge: int = 8) -> torch.Tensor:
    rgb = torch.zeros(1, 3, size, size)
    rgb[:, 0, :, :edge] = 1.0  # red left half
    rgb[:, 2, :, edge:] = 1.0  # blue right half
    return rgb_to_lab(rgb)


def test_similarity_is_high_within_a_colour_and_low_across_the_edge():
    sim = colour_similarity(_two_colour_lab(), dilation=1).view(1, 8, 16, 16)
    assert float(sim[0, :, 4, 2].min()) > 0.99  # all neighbours of a left-half pixel are red
    assert float(sim[0, 4, 4, 7]) < 1e-3  # right neighbour of the last red column is blue
    assert float(sim[0, :, 0, 0].min()) == 0.0  # out-of-image neighbours are no edges


def test_pairwise_loss_prefers_masks_that_follow_colour_edges():
    lab = _two_colour_lab()
    box = torch.ones(1, 1, 16, 16)
    on_edge = torch.full((1, 1, 16, 16), -6.0)
    on_edge[..., :8] = 6.0
    off_edge = torch.full((1, 1, 16, 16), -6.0)
    off_edge[..., :4] = 6.0
    good = float(pairwise_loss(on_edge, lab, box, dilation=1))
    bad = float(pairwise_loss(off_edge, lab, box, dilation=1))
    assert good < 0.01 < bad


def test_pairwise_loss_only_counts_pixels_inside_the_box():
    lab = rgb_to_lab(torch.full((1, 3, 16, 16), 0.5))
    logits = torch.randn(1, 1, 16, 16) * 4
    box = torch.zeros(1, 1, 16, 16)
    assert float(pairwise_loss(logits, lab, box, dilation=1)) == 0.0
    box[..., 4:12, 4:12] = 1
    inside_only = logits.clone()
    inside_only[..., :2, :] = -logits[..., :2, :]  # change pixels far from the box: no effect
    assert torch.isclose(pairwise_loss(logits, lab, box, dilation=1), pairwise_loss(inside_only, lab, box, dilation=1))


def test_image_stem_changes_the_network_and_gets_gradients():
    plain = MALNetwork(ModelConfig(arch="vit-mae-nano/8", mask_head_hidden_channel=16, mask_head_out_channel=16,
                                   not_adjust_scale=True), 64)
    assert plain.stem is None and plain.decoder.fusion is None  # the MAL head unchanged by default
    net = MALNetwork(ModelConfig(arch="vit-mae-nano/8", mask_head_hidden_channel=16, mask_head_out_channel=16,
                                 not_adjust_scale=True, image_stem_channels=8), 64)
    x = torch.randn(2, 3, 64, 64)
    out = net(x, torch.tensor([100.0, 5000.0]))
    assert out.shape == (2, 1, 16, 16)
    out.sum().backward()
    assert net.stem.body[0].weight.grad is not None and float(net.stem.body[0].weight.grad.abs().sum()) > 0
    adaptive = MALNetwork(ModelConfig(arch="vit-mae-nano/8", mask_head_hidden_channel=16, mask_head_out_channel=16,
                                      image_stem_channels=8), 64)
    assert adaptive(x, torch.tensor([100.0, 20000.0])).shape == (2, 1, 16, 16)  # scale-adaptive path too


def test_objective_adds_the_pairwise_term_only_when_weighted():
    torch.manual_seed(0)
    logits, t_logits = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    image, box = torch.randn(2, 3, 32, 32), torch.zeros(2, 1, 32, 32)
    box[..., 8:24, 8:24] = 1
    base = mal_objective(TrainConfig(crf_num_iter=2), logits, t_logits, image, image, box, 1, 0)
    assert set(base.terms) == {"mil", "crf"}
    withp = mal_objective(TrainConfig(crf_num_iter=2, loss_pairwise_weight=2.0), logits, t_logits, image, image,
                          box, 1, 0)
    assert set(withp.terms) == {"mil", "crf", "pairwise"}
    assert torch.isclose(withp.loss, base.loss + 2.0 * withp.terms["pairwise"])


def test_collapse_warnings_name_the_failure_and_the_hint():
    assert collapse_warnings({"mIoU": 0.8, "mIoU_box_fill": 0.55, "mask_box_fill": 0.6}) == []
    filled = collapse_warnings({"mIoU": 0.56, "mIoU_box_fill": 0.55, "mask_box_fill": 0.97})
    assert len(filled) == 2 and "fill 97%" in filled[0] and "box-fill level" in filled[1]
    assert all("train.lr" in w for w in filled)
    empty = collapse_warnings({"mIoU": 0.01, "mIoU_box_fill": 0.55, "mask_box_fill": 0.0})
    assert "empty" in empty[0]


def test_post_processing_may_be_set_on_any_checkpoint_but_architecture_may_not(caplog):
    import pytest

    from mal_core.config.loader import parse_spec, spec_to_dict
    from mal_core.engine.restore import merge_checkpoint_spec
    from mal_core.errors import SpecError

    stored, _ = parse_spec({"model": {"arch": "vit-mae-nano/8"}, "postprocess": {"mask_thres": [0.5]}})
    cfg, explicit = parse_spec({"model": {"arch": "vit-mae-nano/8"}},
                               ["postprocess.refine_iters=7", "postprocess.colour_weight=6",
                                "postprocess.colour_iters=2"])
    p = merge_checkpoint_spec(cfg, spec_to_dict(stored), explicit, "ckpt.pth").postprocess
    assert (p.refine_iters, p.colour_weight, p.colour_iters) == (7, 6, 2)  # given for this run
    assert p.mask_thres == [0.5]  # not given: the checkpoint's, which its validation used
    # a checkpoint written before the postprocess section: its old key names are read, without a warning
    old_spec = {**spec_to_dict(stored), "model": {**spec_to_dict(stored)["model"], "test_refine_iters": 4},
                "train": {**spec_to_dict(stored)["train"], "mask_thres": [0.3]}}
    old_spec.pop("postprocess")
    cfg, explicit = parse_spec({"model": {"arch": "vit-mae-nano/8"}})
    caplog.clear()
    p = merge_checkpoint_spec(cfg, old_spec, explicit, "c").postprocess
    assert (p.refine_iters, p.mask_thres) == (4, [0.3]) and "deprecated" not in caplog.text
    # the old names in a user's spec still work, with a deprecation warning naming the new key
    cfg, explicit = parse_spec({"model": {"test_colour_weight": 3.0}}, ["train.mask_thres=[0.4]"])
    assert (cfg.postprocess.colour_weight, cfg.postprocess.mask_thres) == (3.0, [0.4])
    assert {"postprocess.colour_weight", "postprocess.mask_thres"} <= explicit
    cfg, explicit = parse_spec({"model": {"arch": "vit-mae-nano/8"}}, ["model.mask_head_num_convs=2"])
    with pytest.raises(SpecError, match="model.mask_head_num_convs=2 conflicts with the checkpoint"):
        merge_checkpoint_spec(cfg, spec_to_dict(stored), explicit, "ckpt.pth")


def test_deprecated_key_names_warn_once_naming_the_new_key(caplog):
    import logging

    from mal_core.config import loader

    loader._warned.clear()
    with caplog.at_level(logging.WARNING, logger="mal_core.config.loader"):
        loader.parse_spec({"train": {"test_margin_rate": [0.5, 0.5]}}, ["model.test_refine_iters=3"])
        loader.parse_spec({"train": {"test_margin_rate": [0.5, 0.5]}})
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs.count("train.test_margin_rate is deprecated (it still works): use postprocess.margin_rate") == 1
    assert "model.test_refine_iters is deprecated (it still works): use postprocess.refine_iters" in msgs


def test_test_time_refinement_pulls_the_mask_onto_the_colour_edge():
    from mal_core.config.experiment import ExperimentConfig
    from mal_core.data.augment import to_normalised_tensor
    from mal_core.engine.module import MALModule

    cfg = ExperimentConfig()
    cfg.model.arch, cfg.dataset.crop_size, cfg.train.crf_zeta = "vit-mae-nano/8", 64, 0.5
    module = MALModule(cfg, [{"id": 1, "name": "thing"}])
    img = torch.zeros(64, 64, 3, dtype=torch.uint8)
    img[:, :32] = torch.tensor([220, 30, 30], dtype=torch.uint8)  # red object on the left half of the crop
    img[:, 32:] = torch.tensor([30, 30, 220], dtype=torch.uint8)
    image = to_normalised_tensor(img.numpy())[None]
    box = torch.ones(1, 1, 64, 64)
    logits = torch.full((1, 1, 16, 16), -3.0)
    logits[..., :, 2:11] = 3.0  # a mask that spills 3 columns past the edge (column 8) and misses 2 on the left
    refined = module.labeller.refined(logits, image, box, 10)
    fg = refined[0, 0] > 0
    want = torch.zeros(16, 16, dtype=torch.bool)
    want[:, :8] = True
    assert (fg == want).float().mean() > (logits[0, 0] > 0).eq(want).float().mean()
    assert not fg[:, 11:].any()  # the blue side stays background
