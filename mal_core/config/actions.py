"""The action table: one :class:`ActionDecl` per action, read by the CLI, the runner, the spec checks, preflight,
``SKILL_INFO`` and codegen (importable without torch: engine entry points are ``"module:function"`` strings).

Adding an action = one entry in :data:`ACTIONS`, its config section in :mod:`mal_core.config.experiment` and its
engine file (a function ``(cfg, explicit_keys) -> EngineResult``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from mal_core.config.io_specs import DataSource, InputSpec, OutputSpec, annotations, images
from mal_core.config.loader import get_dotted, get_field, leaf_fields
from mal_core.errors import SpecError


@dataclass(frozen=True)
class Need:
    """A spec key that must be non-empty before the action runs, and what it is (for the error message)."""

    key: str
    what: str


@dataclass(frozen=True)
class HandsOn:
    """What a job of this action gives a child job that names it with ``--parent-job-id``: the numbered checkpoints
    (chosen with ``--parent-checkpoint``) when ``artifact`` is empty, else the file or folder recorded under
    ``artifact`` in the job record (or the one entry of the job folder matching ``pattern``)."""

    artifact: str = ""
    pattern: str = ""


@dataclass(frozen=True)
class ActionDecl:
    """Everything the skill knows about one action."""

    name: str
    section: str  # config section (``ExperimentConfig.<section>``), also the schema's kept top-level key
    entry: str  # engine entry point "module:function", called with (cfg, explicit_keys) -> EngineResult
    required: tuple[Need, ...]
    inputs: Mapping[str, InputSpec]
    outputs: Mapping[str, OutputSpec]
    parents: tuple[str, ...]  # actions whose jobs may be this action's --parent-job-id (none: it takes no parent)
    parent_key: str  # spec key the parent's file or folder fills (unless given explicitly)
    parent_fixes_model: bool = False  # the parent's stored spec fixes the model: explicit model keys must agree
    data_sources: Mapping[str, DataSource] = field(default_factory=dict)
    spec_params: Mapping[str, str] = field(default_factory=dict)  # spec key -> skill_info spec_param_functions
    example_overrides: Mapping[str, Any] = field(default_factory=dict)
    hands_on: HandsOn | None = None  # None: a job of this action is never a parent
    automl: bool = False  # whether AutoML may route it
    own_results_dir_suffices: bool = False  # ``<section>.results_dir`` alone satisfies the results_dir need
    resumes: bool = False  # a re-run of the job continues it (else the previous attempt's files are moved aside)
    preflight: str = ""  # "module:function" reading the action's data before a job starts: (cfg) -> counts
    output_example: str = ""  # example value of the output file key (hint of preflight errors)
    shorthand_section: str = "train"  # the section that shorthand flags (--num_epochs, --lr, ...) set for this action
    resume_key: str = ""  # "module:function" (cfg) -> str: a re-run with the same key continues the kept files
    keeps_on_rerun: tuple[str, ...] = ()  # names in the job folder a re-run with the same resume key keeps in place
    reports_progress: bool = False  # the engine entry point takes ``report`` (progress for the job record)
    # spec key -> what it copies from the parent job: a key of its spec, or ``artifacts.<name>`` of its record
    parent_fills: Mapping[str, str] = field(default_factory=dict)

    @property
    def results_key(self) -> str:
        """The per-action results folder key; it wins over ``results_dir`` for what the action writes."""
        return f"{self.section}.results_dir"

    @property
    def hands_on_checkpoints(self) -> bool:
        """Whether a job of this action hands on numbered checkpoints (its record names their folder)."""
        return self.hands_on is not None and not self.hands_on.artifact

    @property
    def output_file_key(self) -> str | None:
        """The spec key naming the single file the action writes inside its results folder, if any."""
        return next((k for k, o in self.outputs.items() if o.type == "file"), None)

    def results_dir(self, spec: Any) -> str:
        """Where the action writes: ``<section>.results_dir`` when set, else the top-level ``results_dir`` (``spec``
        is an :class:`~mal_core.config.experiment.ExperimentConfig` or its tree)."""
        if isinstance(spec, Mapping):
            return get_dotted(spec, self.results_key) or spec.get("results_dir") or ""
        return get_field(spec, self.results_key) or spec.results_dir

    def shorthand(self, keys: Mapping[str, str]) -> dict[str, str]:
        """Shorthand name -> spec key for this action: a ``train.<x>`` target becomes ``<shorthand_section>.<x>``
        when that section has the field (``mal pretrain --num_epochs 50`` sets ``pretrain.num_epochs``)."""
        if self.shorthand_section == "train":
            return dict(keys)
        known = leaf_fields()
        out = {}
        for short, key in keys.items():
            moved = f"{self.shorthand_section}.{key[len('train.'):]}" if key.startswith("train.") else key
            out[short] = moved if moved in known else key
        return out

    def engine(self) -> Callable[..., Any]:
        """The engine entry point (imported now: it pulls in torch)."""
        return _resolve(self.entry)

    def resume_key_fn(self) -> Callable[..., str] | None:
        """The function computing the resume key, if the action declares one."""
        return _resolve(self.resume_key) if self.resume_key else None

    def preflight_fn(self) -> Callable[..., dict[str, int]] | None:
        """The data preflight function, if the action declares one."""
        return _resolve(self.preflight) if self.preflight else None


def _resolve(ref: str) -> Callable[..., Any]:
    module, _, name = ref.partition(":")
    return getattr(import_module(module), name)


_RESULTS = "every output of the action"
#: The folder of a labelling job's shard files (:mod:`mal_core.engine.shards`), kept by a re-run that continues it.
SHARDS_DIR = "shards"
_OUTPUT_DIR = {"results_dir": "output_dir"}

ACTIONS: dict[str, ActionDecl] = {
    "train": ActionDecl(
        name="train", section="train", entry="mal_core.engine.train:run_train",
        required=(Need("dataset.train_ann_path", "COCO JSON of the training boxes"),
                  Need("dataset.train_img_dir", "training image folder")),
        inputs={
            "dataset.train_img_dir": InputSpec(type="folder", description="training images"),
            "dataset.train_ann_path": InputSpec(type="file", description="COCO JSON with the training boxes"),
            "dataset.val_img_dir": InputSpec(type="folder", optional=True, description="validation images"),
            "dataset.val_ann_path": InputSpec(type="file", optional=True,
                                              description="COCO JSON with validation boxes and GT masks"),
            "train.pretrained_model_path": InputSpec(type="path", optional=True,
                                                     description="ViT-MAE weights (Hugging Face folder or .pth)"),
            "train.resume_training_checkpoint_path": InputSpec(type="file", optional=True,
                                                               description="MAL checkpoint to resume from"),
        },
        outputs={"results_dir": OutputSpec(
            type="folder", description=f"{_RESULTS}; checkpoints go to train.results_dir when that is set",
            files=["model_epoch_<EEE>_step_<SSSSS>.pth", "mal_model_latest.pth"])},
        data_sources={
            "dataset.train_img_dir": images("train_datasets"),
            "dataset.train_ann_path": annotations("train_datasets"),
            "dataset.val_img_dir": images("eval_dataset", optional=True),
            "dataset.val_ann_path": annotations("eval_dataset", optional=True),
        },
        spec_params={**_OUTPUT_DIR, "train.resume_training_checkpoint_path": "resume_model",
                     "train.pretrained_model_path": "ptm_if_no_resume_model"},
        example_overrides={"train.num_gpus": 1, "train.gpu_ids": [0], "train.num_epochs": 5,
                           "train.checkpoint_interval": 5, "train.validation_interval": 5},
        parents=("train", "pretrain", "convert"), parent_key="train.pretrained_model_path", hands_on=HandsOn(),
        parent_fills={"dataset.train_ann_path": "artifacts.training_file", "dataset.train_img_dir": "convert.img_dir"},
        automl=True, own_results_dir_suffices=True, resumes=True,
        preflight="mal_core.skill.preflight:read_train_data",
    ),
    "evaluate": ActionDecl(
        name="evaluate", section="evaluate", entry="mal_core.engine.evaluate:run_evaluate",
        required=(Need("evaluate.checkpoint", "the MAL checkpoint to score"),
                  Need("dataset.val_ann_path", "COCO JSON with GT masks"),
                  Need("dataset.val_img_dir", "validation image folder")),
        inputs={
            "dataset.val_img_dir": InputSpec(type="folder", description="validation images"),
            "dataset.val_ann_path": InputSpec(type="file", description="COCO JSON with boxes and GT masks"),
            "evaluate.checkpoint": InputSpec(type="file", description="MAL checkpoint (.pth) to score"),
        },
        outputs={"results_dir": OutputSpec(type="folder", description=_RESULTS, files=["metrics.json"])},
        data_sources={"dataset.val_img_dir": images("eval_dataset"),
                      "dataset.val_ann_path": annotations("eval_dataset")},
        spec_params={**_OUTPUT_DIR, "evaluate.checkpoint": "parent_model"},
        parents=("train", "export"), parent_key="evaluate.checkpoint", parent_fixes_model=True,
        preflight="mal_core.skill.preflight:read_eval_data",
        resume_key="mal_core.engine.evaluation_spec:evaluate_resume_key", keeps_on_rerun=(SHARDS_DIR,),
        reports_progress=True,
    ),
    "inference": ActionDecl(
        name="inference", section="inference", entry="mal_core.engine.inference:run_inference",
        required=(Need("inference.checkpoint", "the MAL checkpoint or ONNX file to label with"),
                  Need("inference.ann_path", "COCO JSON of the boxes to label"),
                  Need("inference.img_dir", "image folder"),
                  Need("inference.label_dump_path", "output file name")),
        inputs={
            "inference.img_dir": InputSpec(type="folder", description="images of the boxes to label"),
            "inference.ann_path": InputSpec(type="file", description="COCO JSON whose boxes get masks"),
            "inference.checkpoint": InputSpec(type="file",
                                              description="MAL checkpoint (.pth) or exported ONNX file to label with"),
        },
        outputs={"results_dir": OutputSpec(type="folder", description=_RESULTS),
                 "inference.label_dump_path": OutputSpec(type="file",
                                                         description="COCO JSON with masks, relative to results_dir")},
        data_sources={"inference.img_dir": images("inference_dataset"),
                      "inference.ann_path": annotations("inference_dataset")},
        spec_params={**_OUTPUT_DIR, "inference.checkpoint": "parent_model",
                     "inference.label_dump_path": "create_inference_result_file_mal"},
        parents=("train", "export"), parent_key="inference.checkpoint", parent_fixes_model=True,
        preflight="mal_core.skill.preflight:read_inference_data", output_example="inference.json",
        resume_key="mal_core.engine.shards:resume_key", keeps_on_rerun=(SHARDS_DIR,), reports_progress=True,
        hands_on=HandsOn(artifact="label_dump", pattern="inference.json"),
    ),
    "convert": ActionDecl(
        name="convert", section="convert", entry="mal_core.engine.convert:run_convert",
        required=(Need("convert.ann_path", "the labelled COCO JSON to deliver"),),
        inputs={
            "convert.ann_path": InputSpec(type="file", description="labelled COCO JSON (an inference job's output)"),
            "convert.img_dir": InputSpec(type="folder", optional=True, description="its images (yolo_seg needs them)"),
            "convert.decisions_path": InputSpec(type="file", optional=True,
                                                description="decisions.json downloaded from the review page"),
        },
        outputs={"results_dir": OutputSpec(
            type="folder", description=f"{_RESULTS}: one folder per format",
            files=["coco_rle/annotations.json", "coco_polygon/annotations.json", "yolo_seg/dataset.yaml",
                   "label_studio/tasks.json", "cvat/annotations.xml"])},
        spec_params=dict(_OUTPUT_DIR),
        parents=("inference",), parent_key="convert.ann_path",
        parent_fills={"convert.img_dir": "inference.img_dir", "convert.model_checkpoint": "inference.checkpoint"},
        hands_on=HandsOn(artifact="model_checkpoint", pattern="*.pth"),
    ),
    "export": ActionDecl(
        name="export", section="export", entry="mal_core.engine.export:run_export",
        required=(Need("export.checkpoint", "the MAL checkpoint to export"),
                  Need("export.onnx_file", "output file name")),
        inputs={"export.checkpoint": InputSpec(type="file", description="MAL checkpoint (.pth) to export")},
        outputs={"results_dir": OutputSpec(type="folder", description=_RESULTS),
                 "export.onnx_file": OutputSpec(
                     type="file", description="ONNX model (student and teacher logits), relative to results_dir")},
        spec_params={**_OUTPUT_DIR, "export.checkpoint": "parent_model"},
        parents=("train",), parent_key="export.checkpoint", parent_fixes_model=True,
        hands_on=HandsOn(artifact="onnx_file", pattern="*.onnx"),
        output_example="model.onnx",
    ),
    "pretrain": ActionDecl(
        name="pretrain", section="pretrain", entry="mal_core.engine.pretrain:run_pretrain",
        required=(Need("pretrain.img_dir", "the images to pretrain on"),),
        inputs={
            "pretrain.img_dir": InputSpec(type="folder", description="images to pretrain on (no labels needed)"),
            "pretrain.ann_path": InputSpec(type="file", optional=True,
                                           description="COCO JSON of boxes in those images (adds box crops)"),
            "pretrain.pretrained_model_path": InputSpec(
                type="path", optional=True, description="ViT-MAE weights to continue pretraining from"),
            "pretrain.resume_training_checkpoint_path": InputSpec(
                type="file", optional=True, description="pretrain checkpoint to resume from"),
        },
        outputs={"results_dir": OutputSpec(
            type="folder", description=_RESULTS,
            files=["pretrained_model/config.json", "pretrained_model/model.safetensors", "reconstruction.png",
                   "pretrain_history.jsonl", "model_epoch_<EEE>_step_<SSSSS>.pth"])},
        data_sources={"pretrain.img_dir": images("train_datasets"),
                      "pretrain.ann_path": annotations("train_datasets", optional=True)},
        spec_params={**_OUTPUT_DIR, "pretrain.resume_training_checkpoint_path": "resume_model",
                     "pretrain.pretrained_model_path": "ptm_if_no_resume_model"},
        example_overrides={"pretrain.num_epochs": 25, "pretrain.views_per_epoch": 1024},
        parents=("pretrain",), parent_key="pretrain.pretrained_model_path",
        hands_on=HandsOn(artifact="pretrained_model", pattern="pretrained_model"),
        own_results_dir_suffices=True, resumes=True, shorthand_section="pretrain",
        preflight="mal_core.skill.preflight:read_pretrain_data",
    ),
}


def action_decl(action: str) -> ActionDecl:
    """The declaration of ``action``; :class:`SpecError` naming ``action`` when there is none."""
    try:
        return ACTIONS[action]
    except KeyError:
        raise SpecError(f"unknown action {action!r}; expected one of {tuple(ACTIONS)}", field="action") from None
