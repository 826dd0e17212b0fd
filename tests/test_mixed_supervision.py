"""Mixed box + mask supervision: the mask loss on exactly the instances with a mask, box-only training unchanged,
the review loop's training file, and bad masks in a training file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mal_core.config.experiment import ConvertConfig, TrainConfig
from mal_core.config.loader import load_spec
from mal_core.data.coco import decode_segmentation, encode_rle, load_coco
from mal_core.data.datasets import BoxCropDataset
from mal_core.data.decisions import decisions_document
from mal_core.engine.convert import deliver
from mal_core.errors import DataError
from mal_core.losses.objective import mal_objective, mask_loss
from mal_core.skill.testing import TINY_OVERRIDES, tiny_dataset


def _batch(b: int = 3, s: int = 32, m: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    box = torch.zeros(b, 1, s, s)
    box[..., 8:24, 6:26] = 1
    gt = torch.zeros(b, 1, s, s)
    gt[..., 10:22, 8:20] = 1
    return {"logits": torch.randn(b, 1, m, m, generator=g, requires_grad=True),
            "t_logits": torch.randn(b, 1, m, m, generator=g), "image": torch.randn(b, 3, s, s, generator=g),
            "timage": torch.randn(b, 3, s, s, generator=g), "box": box, "gt": gt}


def _objective(t: TrainConfig, x: dict[str, torch.Tensor], gt: Any = None, has: Any = None) -> Any:
    return mal_objective(t, x["logits"], x["t_logits"], x["image"], x["timage"], x["box"], 1, 0, gt, has)


def test_mask_loss_is_used_exactly_for_annotated_instances() -> None:
    t = TrainConfig(loss_mask_weight=2.0)
    x = _batch()
    has = torch.tensor([True, False, True])
    box_only = _objective(t, x)
    mixed = _objective(t, x, x["gt"], has)
    expected = float(mask_loss(x["logits"][has], x["gt"][has]).mean().detach())
    assert float(mixed.terms["mask"].detach()) == pytest.approx(expected)
    assert float(mixed.loss.detach()) == pytest.approx(float(box_only.loss.detach()) + 2.0 * expected)
    # the mask term's gradient reaches only the instances with a mask
    (grad_box,) = torch.autograd.grad(box_only.loss, x["logits"])
    (grad_mixed,) = torch.autograd.grad(mixed.loss, x["logits"])
    assert torch.equal(grad_box[1], grad_mixed[1])
    assert not torch.allclose(grad_box[0], grad_mixed[0]) and not torch.allclose(grad_box[2], grad_mixed[2])
    # no instance with a mask: the box-only objective, bit for bit, and no mask term
    none = _objective(t, x, x["gt"], torch.zeros(3, dtype=torch.bool))
    assert torch.equal(none.loss, box_only.loss) and "mask" not in none.terms
    # a perfect prediction costs less than its opposite
    sure = torch.where(x["gt"][:, :, ::2, ::2] > 0, 20.0, -20.0)
    assert float(mask_loss(sure, x["gt"]).max()) < 0.05 < float(mask_loss(-sure, x["gt"]).min())


def _data_with_masks(tmp_path: Path, keep_masks: set[int] | None) -> dict[str, str]:
    """The tiny dataset, training on its full annotations (with masks) or masks only for ``keep_masks`` ids."""
    data = tiny_dataset(tmp_path / "data")
    full = json.loads(Path(data["dataset.val_ann_path"]).parent.parent.joinpath("train", "annotations_gt.json")
                      .read_text())
    if keep_masks is not None:
        full["annotations"] = [a if a["id"] in keep_masks else {k: v for k, v in a.items() if k != "segmentation"}
                               for a in full["annotations"]]
    path = tmp_path / "train_masks.json"
    path.write_text(json.dumps(full))
    return {**data, "dataset.train_ann_path": str(path)}


def test_training_samples_carry_the_mask_cut_and_flipped_like_the_crop(tmp_path: Path) -> None:
    data = _data_with_masks(tmp_path, keep_masks=None)
    coco = load_coco(data["dataset.train_ann_path"], data["dataset.train_img_dir"], check_masks=True)
    ds = BoxCropDataset(coco, 64, train=True, margin_rate=[0.2, 0.6], train_masks=True)
    torch.manual_seed(0)
    for i in range(len(ds)):
        sample = ds[i]
        gt, box = sample["gt_mask"][0], sample["box_mask"][0]
        assert bool(sample["has_mask"]) and gt.sum() > 0
        assert float((gt * (1 - box)).sum()) <= 0.05 * float(gt.sum())  # the object lies in its box, both flips
    plain = BoxCropDataset(coco, 64, train=True, margin_rate=[0.2, 0.6])
    assert "gt_mask" not in plain[0] and "has_mask" not in plain[0]


def _train(tmp_path: Path, name: str, data: dict[str, str], **over: Any) -> tuple[dict[str, torch.Tensor], Any]:
    from mal_core.engine.train import run_train

    spec = {**TINY_OVERRIDES, **data, "results_dir": str(tmp_path / name), "train.seed": 7, "train.num_epochs": 1,
            **over}
    cfg = load_spec(None, spec)
    result = run_train(cfg)
    ckpt = torch.load(result.artifacts["checkpoints"][-1], map_location="cpu", weights_only=False)
    return ckpt["state_dict"], result


def test_box_only_training_is_bit_for_bit_unchanged(tmp_path: Path) -> None:
    with_masks = _data_with_masks(tmp_path, keep_masks=None)
    boxes_file = Path(with_masks["dataset.val_ann_path"]).parent.parent / "train" / "annotations_boxes.json"
    no_masks = {**with_masks, "dataset.train_ann_path": str(boxes_file)}
    off, r_off = _train(tmp_path, "off", with_masks, **{"train.use_gt_masks": False})
    boxes, r_boxes = _train(tmp_path, "boxes", no_masks)
    assert r_off.artifacts["mask_supervision"]["instances_with_masks"] == 0
    assert r_boxes.artifacts["mask_supervision"]["instances_with_masks"] == 0
    assert off.keys() == boxes.keys() and all(torch.equal(off[k], boxes[k]) for k in off)
    mixed, r_mixed = _train(tmp_path, "mixed", with_masks)
    n = r_mixed.artifacts["mask_supervision"]
    assert n["instances_with_masks"] == n["instances"] > 0
    assert any(not torch.equal(off[k], mixed[k]) for k in off if k.startswith("model.student"))


def test_bad_mask_in_a_training_file_names_the_annotation(tmp_path: Path) -> None:
    data = _data_with_masks(tmp_path, keep_masks=None)
    doc = json.loads(Path(data["dataset.train_ann_path"]).read_text())
    bad_id = doc["annotations"][1]["id"]
    doc["annotations"][1]["segmentation"] = {"size": [5, 5], "counts": "abc"}  # not this image's size
    Path(data["dataset.train_ann_path"]).write_text(json.dumps(doc))
    with pytest.raises(DataError, match=f"annotation.*{bad_id}.*segmentation") as err:
        load_coco(data["dataset.train_ann_path"], data["dataset.train_img_dir"], check_masks=True)
    assert err.value.field.endswith(":segmentation")
    load_coco(data["dataset.train_ann_path"], data["dataset.train_img_dir"])  # box-only training never reads it


def test_decisions_and_corrections_become_the_training_file(tmp_path: Path) -> None:
    h, w = 40, 50
    masks = {i: np.zeros((h, w), bool) for i in (1, 2, 3, 4, 5)}
    for i, m in masks.items():
        m[5:5 + 4 * i, 5:20] = True
    anns = [{"id": i, "image_id": 1, "category_id": 1, "bbox": [5, 5, 15, 4 * i], "iscrowd": 0,
             "segmentation": encode_rle(m), "score": 0.1 * i} for i, m in masks.items()]
    doc = {"images": [{"id": 1, "file_name": "a.png", "height": h, "width": w}], "annotations": anns,
           "categories": [{"id": 1, "name": "cup"}]}
    labelled = tmp_path / "labelled.json"
    labelled.write_text(json.dumps(doc))
    decisions = tmp_path / "decisions.json"
    decisions.write_text(json.dumps(decisions_document("labelled.json", {1: "accepted", 2: "rejected",
                                                                         3: "needs_fixing", 4: "needs_fixing"})))
    fixed = np.zeros((h, w), bool)
    fixed[30:38, 30:45] = True
    corrections = tmp_path / "fixed.json"
    corrections.write_text(json.dumps({"annotations": [{"id": 3, "image_id": 1, "segmentation": encode_rle(fixed)},
                                                       {"id": 2, "image_id": 1, "segmentation": encode_rle(fixed)}]}))
    opts = ConvertConfig(formats=["train_masks"], decisions_path=str(decisions), corrections_path=str(corrections))
    out = deliver(opts, labelled, None, tmp_path / "out")["formats"]["train_masks"]
    assert (out["accepted"], out["corrected"], out["boxes_only"]) == (1, 1, 3)
    got = {a["id"]: a for a in json.loads(Path(out["file"]).read_text())["annotations"]}
    assert got[1]["mask_source"] == "accepted" and np.array_equal(
        decode_segmentation(got[1]["segmentation"], h, w), masks[1])
    assert got[3]["mask_source"] == "corrected" and np.array_equal(
        decode_segmentation(got[3]["segmentation"], h, w), fixed) and got[3]["area"] == int(fixed.sum())
    for box_only in (2, 4, 5):  # rejected (its correction ignored), needs fixing without a correction, unreviewed
        assert "segmentation" not in got[box_only] and got[box_only]["bbox"] == anns[box_only - 1]["bbox"]
    coco = load_coco(out["file"], tmp_path, check_masks=True, check_images=False)
    assert sorted(i.ann_id for i in coco.instances if i.has_segmentation) == [1, 3]
    corrections.write_text(json.dumps({"annotations": [{"id": 3, "image_id": 1, "segmentation": [[1, 2, 3]]}]}))
    with pytest.raises(DataError, match="annotation 3: segmentation") as err:
        deliver(opts, labelled, None, tmp_path / "out2")
    assert err.value.field == "convert.corrections_path"
