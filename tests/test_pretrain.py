"""MAE pretraining engine on tiny images the test draws: outputs, loading into MAL, box crops, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTMAEModel

from mal_core.config import parse_spec
from mal_core.config.archs import hf_config_mismatches
from mal_core.data.loading import list_images
from mal_core.data.pretrain_images import PretrainImages
from mal_core.engine.pretrain import run_pretrain
from mal_core.errors import CheckpointError, DataError
from mal_core.model.network import MALNetwork
from mal_core.model.weights import load_pretrained

ARCH = "vit-mae-nano/8"
CROP = 64


def _images(folder, n=6, size=(48, 40)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = np.full((size[1], size[0], 3), 40, np.uint8)
        x0, y0 = rng.integers(0, 20, 2)
        arr[y0:y0 + 16, x0:x0 + 20] = rng.integers(100, 255, 3)
        Image.fromarray(arr).save(folder / f"im{i}.png")
    return folder


def _cfg(tmp_path, **pretrain):
    tree = {"results_dir": str(tmp_path / "out"), "model": {"arch": ARCH}, "dataset": {"crop_size": CROP},
            "pretrain": {"img_dir": str(tmp_path / "images"), "num_epochs": 2, "batch_size": 4, "lr": 1e-3,
                         "warmup_epochs": 1, "decoder_hidden_size": 32, "decoder_num_layers": 1,
                         "decoder_num_heads": 4, "num_workers": 0, "checkpoint_interval": 1, "num_vis_images": 3,
                         **pretrain}}
    return parse_spec(tree)[0]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("MAL_PROGRESS_BAR", "0")


def test_pretrain_writes_a_hf_folder_that_mal_loads_exactly(tmp_path):
    _images(tmp_path / "images")
    res = run_pretrain(_cfg(tmp_path)).flat()
    folder = tmp_path / "out" / "pretrained_model"
    assert res["pretrained_model"] == str(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["mal_arch"] == ARCH and config["mal_crop_size"] == CROP
    hf = ViTMAEModel.from_pretrained(str(folder), local_files_only=True)  # the Hugging Face path users take
    mal_cfg, _ = parse_spec({"model": {"arch": ARCH, "mask_head_hidden_channel": 8, "mask_head_out_channel": 8}})
    net = MALNetwork(mal_cfg.model, CROP)
    report = load_pretrained(net, folder)
    assert not report.unexpected and not [k for k in report.missing if k.startswith("layers.")]
    ours = net.backbone.vit.state_dict()
    for key, value in hf.state_dict().items():
        assert torch.equal(ours[key], value), key
    history = [json.loads(line) for line in open(res["history"])]
    assert [h["epoch"] for h in history] == [0, 1] and all(np.isfinite(h["loss"]) for h in history)
    png = Image.open(res["reconstruction_png"])
    assert png.size == (3 * CROP, 3 * CROP)  # masked | reconstruction | original, one row per image
    assert np.isfinite(res["metrics"]["loss"]) and np.isfinite(res["metrics"]["fixed_view_loss"])
    assert not list((tmp_path / "out").glob(".pretrained_model*")), "temporary folders left behind"


def test_pretraining_lowers_the_reconstruction_loss(tmp_path):
    _images(tmp_path / "images", n=8)
    cfg = _cfg(tmp_path, num_epochs=30, views_per_epoch=16, checkpoint_interval=30, warmup_epochs=2)
    res = run_pretrain(cfg).flat()
    losses = [json.loads(line)["loss"] for line in open(res["history"])]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3]), losses


def test_rerun_resumes_and_continued_pretraining_starts_from_given_weights(tmp_path):
    _images(tmp_path / "images")
    first = run_pretrain(_cfg(tmp_path)).flat()
    again = run_pretrain(_cfg(tmp_path, num_epochs=3)).flat()
    assert again["resumed_from"] and again["resumed_from"].endswith(".pth")
    assert len(open(again["history"]).read().splitlines()) == 3  # only the missing epoch ran
    cfg = _cfg(tmp_path, pretrained_model_path=first["pretrained_model"], num_epochs=1)
    cfg.results_dir = str(tmp_path / "continued")
    cont = run_pretrain(cfg).flat()
    assert cont["started_from"] and "loaded" in cont["started_from"] and cont["resumed_from"] is None


def test_box_crops_show_the_annotated_object(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[20:40, 24:44] = (255, 0, 0)
    Image.fromarray(arr).save(folder / "a.png")
    box = (24.0, 20.0, 44.0, 40.0)
    ds = PretrainImages(list_images(folder), 32, boxes={(folder / "a.png"): [box]}, box_crop_prob=1.0,
                        margin_rate=(0.0, 0.0), hflip=False)
    view = np.asarray(ds.view(ds.read(0), 0))
    assert (view[..., 0] > 200).mean() > 0.8  # the crop is the red box, not the whole (mostly black) image
    whole = PretrainImages(list_images(folder), 32, min_crop_scale=1.0, hflip=False)
    assert (np.asarray(whole.view(whole.read(0), 0))[..., 0] > 200).mean() < 0.3


def test_no_images_names_the_field(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="holds no image files") as exc:
        run_pretrain(_cfg(tmp_path))
    assert exc.value.field == "pretrain.img_dir"


def test_unreadable_image_is_named(tmp_path):
    _images(tmp_path / "images", n=4)
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    ds = PretrainImages(list_images(tmp_path / "images"), CROP)
    broken = [i for i, p in enumerate(ds.images) if p.name == "broken.png"][0]
    with pytest.raises(DataError, match="broken.png"):
        ds[broken]


def test_pretrained_folder_of_another_arch_is_refused_naming_the_field(tmp_path):
    _images(tmp_path / "images")
    res = run_pretrain(_cfg(tmp_path, num_epochs=1)).flat()
    cfg, _ = parse_spec({"model": {"arch": "vit-deit-tiny/16", "mask_head_hidden_channel": 8,
                                   "mask_head_out_channel": 8}})
    net = MALNetwork(cfg.model, CROP)
    with pytest.raises(CheckpointError, match="another architecture") as exc:
        load_pretrained(net, res["pretrained_model"])
    assert exc.value.field == "train.pretrained_model_path"
    assert "hidden_size: 128 vs 192" in exc.value.message


def test_hf_config_mismatch_sees_depth_alone():
    config = {"hidden_size": 128, "num_hidden_layers": 12, "num_attention_heads": 4, "patch_size": 8}
    assert hf_config_mismatches(config, ARCH) == ["num_hidden_layers: 12 vs 4"]
    assert hf_config_mismatches({**config, "num_hidden_layers": 4}, ARCH) == []


def test_resume_refuses_a_checkpoint_of_another_crop(tmp_path):
    _images(tmp_path / "images")
    run_pretrain(_cfg(tmp_path, num_epochs=1))
    cfg = _cfg(tmp_path, num_epochs=2)
    cfg.dataset.crop_size = 96
    with pytest.raises(CheckpointError, match="dataset.crop_size") as exc:
        run_pretrain(cfg)
    assert exc.value.field == "pretrain.resume_training_checkpoint_path"
    assert os.path.isdir(tmp_path / "out" / "pretrained_model")  # the earlier output is untouched


def test_layer_decay_scales_the_backbone_by_depth_and_keeps_heads_at_full_rate():
    from mal_core.engine.optim import build_optimizer

    cfg, _ = parse_spec({"model": {"arch": ARCH, "mask_head_hidden_channel": 8, "mask_head_out_channel": 8},
                         "train": {"layer_decay": 0.5}})
    net = MALNetwork(cfg.model, CROP)
    opt = build_optimizer(net, cfg.train, lr=1.0)
    by_param = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    named = dict(net.named_parameters())
    depth = 4  # vit-mae-nano/8
    assert by_param[id(named["backbone.vit.embeddings.patch_embeddings.projection.weight"])] == 0.5 ** (depth + 1)
    assert by_param[id(named["backbone.vit.layers.0.mlp.fc1.weight"])] == 0.5 ** depth
    assert by_param[id(named["backbone.vit.layers.3.mlp.fc1.weight"])] == 0.5
    head = next(n for n in named if not n.startswith("backbone."))
    assert by_param[id(named[head])] == 1.0
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(p.requires_grad for p in net.parameters())
    cfg.train.layer_decay = 1.0
    assert len(build_optimizer(net, cfg.train, lr=1.0).param_groups) == 1
