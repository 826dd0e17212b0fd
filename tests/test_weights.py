"""Pretrained weight loading from tiny weights written by the test: HF folder, original MAE .pth, MAL checkpoint."""

from __future__ import annotations

import pytest
import torch
from transformers import ViTMAEForPreTraining

from mal_core.config import parse_spec
from mal_core.errors import CheckpointError
from mal_core.model.backbone import vit_mae_config
from mal_core.model.network import MALNetwork
from mal_core.model.weights import load_pretrained

ARCH = "vit-mae-nano/8"


def _net(crop=32, arch=ARCH):
    cfg, _ = parse_spec({"model": {"arch": arch, "mask_head_hidden_channel": 8, "mask_head_out_channel": 8}})
    torch.manual_seed(123)
    return MALNetwork(cfg.model, crop).eval()


def _to_timm(vit_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Write our ViT weights with the original MAE (timm) key names, fusing q/k/v."""
    out = {"cls_token": vit_state["embeddings.cls_token"], "pos_embed": vit_state["embeddings.position_embeddings"],
           "patch_embed.proj.weight": vit_state["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": vit_state["embeddings.patch_embeddings.projection.bias"],
           "norm.weight": vit_state["layernorm.weight"], "norm.bias": vit_state["layernorm.bias"],
           "mask_token": torch.zeros(1, 1, 8), "decoder_embed.weight": torch.zeros(8, 8)}
    i = 0
    while f"layers.{i}.attention.q_proj.weight" in vit_state:
        p = f"layers.{i}."
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(
                [vit_state[p + f"attention.{n}_proj.{kind}"] for n in "qkv"], 0)
            out[f"blocks.{i}.attn.proj.{kind}"] = vit_state[p + f"attention.o_proj.{kind}"]
            out[f"blocks.{i}.norm1.{kind}"] = vit_state[p + f"layernorm_before.{kind}"]
            out[f"blocks.{i}.norm2.{kind}"] = vit_state[p + f"layernorm_after.{kind}"]
            out[f"blocks.{i}.mlp.fc1.{kind}"] = vit_state[p + f"mlp.fc1.{kind}"]
            out[f"blocks.{i}.mlp.fc2.{kind}"] = vit_state[p + f"mlp.fc2.{kind}"]
        i += 1
    return out


def _features_equal(a: MALNetwork, b: MALNetwork) -> bool:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        return torch.allclose(a.backbone(x), b.backbone(x), atol=1e-5)


def test_hf_folder_with_other_image_size_loads_and_interpolates(tmp_path):
    torch.manual_seed(0)
    hf = ViTMAEForPreTraining(vit_mae_config(ARCH, 64)).eval()  # pre-training model, 8x8 grid
    hf.save_pretrained(tmp_path / "hf")
    net = _net(crop=32)  # 4x4 grid
    report = load_pretrained(net, tmp_path / "hf")
    assert report.interpolated == ["embeddings.position_embeddings"]
    assert not report.missing or all(not k.startswith("layers.") for k in report.missing)
    ref = hf.vit.state_dict()
    assert torch.equal(net.backbone.vit.state_dict()["layers.0.attention.q_proj.weight"],
                       ref["layers.0.attention.q_proj.weight"])


def test_original_mae_pth_with_timm_keys(tmp_path):
    src = _net()
    torch.save({"model": _to_timm(src.backbone.vit.state_dict())}, tmp_path / "mae.pth")
    dst = _net()
    torch.manual_seed(999)
    for p in dst.backbone.parameters():
        torch.nn.init.normal_(p)
    report = load_pretrained(dst, tmp_path / "mae.pth")
    assert report.kind == "MAE/timm checkpoint"
    assert report.unexpected == []  # decoder_* and mask_token are expected leftovers
    assert _features_equal(src, dst)


def test_mal_checkpoint_restores_backbone_and_heads(tmp_path):
    src = _net()
    state = {f"model.student.{k}": v for k, v in src.state_dict().items()}
    state.update({f"model.teacher.{k}": v for k, v in src.state_dict().items()})
    torch.save({"state_dict": state, "mal": {"spec": {}}}, tmp_path / "mal.pth")
    dst = _net()
    for p in dst.parameters():
        torch.nn.init.zeros_(p)
    report = load_pretrained(dst, tmp_path / "mal.pth")
    assert report.kind == "MAL checkpoint" and report.missing == []
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(dst(x, torch.tensor([500.0])), src(x, torch.tensor([500.0])), atol=1e-5)


def test_wrong_arch_reports_mismatching_keys(tmp_path):
    big = _net(arch="vit-deit-tiny/16")
    torch.save({"model": _to_timm(big.backbone.vit.state_dict())}, tmp_path / "tiny.pth")
    with pytest.raises(CheckpointError, match=r"do not fit the model.*layers\.0\.") as err:
        load_pretrained(_net(), tmp_path / "tiny.pth")
    assert err.value.field == "train.pretrained_model_path"


def test_unrelated_or_corrupt_files_are_rejected(tmp_path):
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="no tensor matched"):
        load_pretrained(_net(), tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a loadable"):
        load_pretrained(_net(), tmp_path / "junk.pth")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_pretrained(_net(), tmp_path / "emptydir")
