"""Spec loading: types, bounds, aliases, unknown keys and per-action checks."""

from __future__ import annotations

import pytest

from mal_core.config import check_for_action, leaf_fields, load_spec, parse_spec
from mal_core.config.checks import clamp_for_action
from mal_core.errors import SpecError


def test_defaults_match_tao_names_and_values():
    cfg, explicit = parse_spec({})
    assert explicit == set()
    assert cfg.model.arch == "vit-mae-base/16"
    assert cfg.train.lr == 1e-6
    assert cfg.dataset.crop_size == 512
    assert cfg.dataset.load_mask is True
    assert cfg.train.warmup_epochs == 1
    assert cfg.postprocess.mask_thres == [0.1]
    assert cfg.inference.label_dump_path == "instances_val2017_mal.json"
    for key in ("train.num_gpus", "train.gpu_ids", "train.num_nodes", "train.checkpoint_interval",
                "train.validation_interval", "train.pretrained_model_path", "evaluate.checkpoint",
                "inference.checkpoint", "train.resume_training_checkpoint_path"):
        assert key in leaf_fields()


def test_every_leaf_has_title_and_description():
    for key, f in leaf_fields().items():
        assert f.metadata.get("title"), key
        assert f.metadata.get("description"), key


def test_overrides_are_typed_and_tracked():
    cfg, explicit = parse_spec({"train": {"num_epochs": 3}}, ["train.lr=2e-6", "train.gpu_ids=[0, 1]",
                                                              "train.resume_training_checkpoint_path=null"])
    assert cfg.train.lr == 2e-6 and cfg.train.gpu_ids == [0, 1]
    assert cfg.train.resume_training_checkpoint_path is None
    assert explicit == {"train.num_epochs", "train.lr", "train.gpu_ids", "train.resume_training_checkpoint_path"}
    cfg2, _ = parse_spec({}, {"train.num_epochs": 7})
    assert cfg2.train.num_epochs == 7


def test_seed_aliases_map_to_canonical_keys():
    cfg, explicit = parse_spec({"model": {"crop_size": 384, "load_mask": False}})
    assert cfg.dataset.crop_size == 384 and cfg.dataset.load_mask is False
    cfg, explicit = parse_spec({}, ["model.crop_size=256"])
    assert cfg.dataset.crop_size == 256 and "dataset.crop_size" in explicit


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["train.num_epochs=ten"], "train.num_epochs"),
        (["train.num_epochs=2.5"], "train.num_epochs"),
        (["train.use_amp=maybe"], "train.use_amp"),
        (["train.lr=1.0"], "train.lr"),
        (["model.arch=vit-foo/16"], "model.arch"),
        (["train.lrr=1e-6"], "train.lrr"),
        (["dataset.crop_size=32"], "dataset.crop_size"),
        (["train.gpu_ids=[a]"], "train.gpu_ids[0]"),
    ],
)
def test_bad_values_name_the_field(overrides, field):
    with pytest.raises(SpecError) as err:
        parse_spec({}, overrides)
    assert err.value.field == field
    assert field.split("[")[0] in str(err.value)


def test_unknown_key_suggests_close_match():
    with pytest.raises(SpecError, match="did you mean 'train.lr'"):
        parse_spec({"train": {"lrr": 1e-6}})


def test_yaml_file_errors(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)


def test_action_checks():
    cfg, _ = parse_spec({"results_dir": "/tmp/x"})
    with pytest.raises(SpecError) as err:
        check_for_action(cfg, "train")
    assert err.value.field == "dataset.train_ann_path"
    cfg, _ = parse_spec({"results_dir": "/tmp/x", "dataset": {"train_ann_path": "a", "train_img_dir": "b"},
                         "train": {"num_epochs": 1, "warmup_epochs": 1, "checkpoint_interval": 10}})
    check_for_action(cfg, "train")  # TAO accepts both: the warmup is clamped, the last epoch always saves
    assert clamp_for_action(cfg, "train") == ["train.warmup_epochs (1) is not below train.num_epochs (1); "
                                              "clamped to 0"]
    assert cfg.train.warmup_epochs == 0 and clamp_for_action(cfg, "train") == []
    cfg, _ = parse_spec({"results_dir": "/tmp/x"})
    with pytest.raises(SpecError) as err:
        check_for_action(cfg, "evaluate")
    assert err.value.field == "evaluate.checkpoint"
    cfg, _ = parse_spec({"results_dir": "/tmp/x", "train": {"mask_thres": [0.1, 0.2]}})  # the deprecated name
    with pytest.raises(SpecError) as err:
        check_for_action(cfg, "inference")
    assert err.value.field == "postprocess.mask_thres"
