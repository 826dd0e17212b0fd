"""Quality score terms and the review page that orders labels worst first."""

from __future__ import annotations

import json
import re

import numpy as np
import torch
from PIL import Image

from mal_core.data.coco import encode_rle, load_coco
from mal_core.data.decisions import DECISIONS, DECISIONS_FILE, decisions_document
from mal_core.engine.quality import confidence_margin, mask_agreement, quality_score
from mal_core.engine.review import write_review_page


def test_agreement_and_margin_terms():
    box = torch.zeros(3, 1, 8, 8)
    box[..., 2:6, 2:6] = 1
    a = torch.full((3, 1, 8, 8), -9.0)
    a[0, :, 2:6, 2:4] = 9.0  # left half of the box
    a[1, :, 2:6, 2:6] = 9.0
    b = a.clone()
    b[0] = -9.0
    b[0, :, 2:6, 4:6] = 9.0  # right half: disjoint from a[0]
    agree = mask_agreement(a, b, box)
    assert agree.tolist() == [0.0, 1.0, 1.0]  # disjoint, identical, both empty
    margin = confidence_margin(torch.stack([a[1], torch.zeros(1, 8, 8), a[1]]), box)
    assert margin[0] > 0.99 and margin[1] == 0.0
    ones = torch.ones(3)
    terms = {"flip": agree, "teacher": torch.tensor([1.0, 0.5, 1.0]), "margin": torch.tensor([1.0, 1.0, 0.5]),
             "crf": ones, "colour": torch.tensor([0.5, 1.0, 0.5]), "mean_probability": torch.tensor([1.0, 0.5, 0.5])}
    assert quality_score(terms).tolist() == [0.5, 0.5, 0.25]  # colour x mean probability; the others are reported


def test_review_page_lists_the_lowest_scores_first(tmp_path):
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(img_dir / "a.png")
    mask = np.zeros((48, 64), bool)
    mask[10:20, 10:30] = True
    anns = [{"id": i, "image_id": 1, "category_id": 3, "bbox": [8.0, 8.0, 24.0, 14.0], "iscrowd": 0,
             "segmentation": encode_rle(mask), "area": int(mask.sum()), "score": s,
             "quality": {"flip": s, "teacher": 1.0, "margin": 1.0}}
            for i, s in ((11, 0.9), (12, 0.1), (13, 0.5))]
    coco_json = {"images": [{"id": 1, "file_name": "a.png", "height": 48, "width": 64}],
                 "annotations": [{k: v for k, v in a.items() if k not in ("score", "quality")} for a in anns],
                 "categories": [{"id": 3, "name": "cup"}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco_json))
    coco = load_coco(tmp_path / "ann.json", img_dir)
    anns[1]["flags"], anns[1]["expected_iou"] = ["empty", "partial_box"], 0.25
    page = write_review_page(coco, anns, tmp_path / "review", limit=2, labels_file="out</script>.json",
                             header_lines=["mean IoU <b>0.71</b>"])
    text = page.read_text()
    data = json.loads(re.search(r'<script type="application/json" id="review-data">(.*?)</script>', text).group(1))
    assert [d["id"] for d in data] == [12, 13] and [d["rank"] for d in data] == [1, 2]  # ascending, limited to 2
    assert data[0]["score"] == 0.1 and data[0]["category"] == "cup" and data[0]["file"] == "a.png"
    assert data[0]["flags"] == ["empty", "partial_box"] and data[0]["expected_iou"] == 0.25
    assert data[1]["flags"] == [] and data[1]["expected_iou"] is None and data[1]["quality"].startswith("flip 0.50")
    assert "of 3 labels" in text and "mean IoU &lt;b&gt;0.71&lt;/b&gt;" in text  # header lines are escaped
    config = json.loads(re.search(r'id="review-config">(.*?)</script>', text).group(1))
    assert config["labels"] == "out</script>.json" and text.count("</script>") == 3  # the name cannot close it
    assert (config["decisions"], config["file"]) == (list(DECISIONS), DECISIONS_FILE)
    doc = decisions_document("x", {})
    assert (config["kind"], config["version"]) == (doc["kind"], doc["version"])
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # self-contained: nothing external
    assert sorted(p.name for p in (tmp_path / "review" / "thumbs").iterdir()) == ["12.png", "13.png"]
    with Image.open(tmp_path / "review" / "thumbs" / "12.png") as im:
        px = np.asarray(im.convert("RGB")).astype(int)
    assert max(px.shape[:2]) == 160
    # crop = box [8, 8, 24, 14] + 25% margin -> pixels x 2..37, y 4..25 scaled by 160/36: the mask (x 10..29,
    # y 10..19) is red in the middle of the thumbnail, the margin around the box is the plain grey image
    red = px[..., 0] - px[..., 2]
    assert red[int(15 - 4) * 160 // 36, int(20 - 2) * 160 // 36] > 60  # inside the mask
    assert abs(red[2, 2]) < 10 and abs(red[-3, -3]) < 10  # corners: outside the mask
