"""Checks made once, before a job folder is touched and before any Ray trial or data-loader worker starts.

* :func:`confine_outputs` (torch-free, also in dry runs): every place a job writes lies inside its own folder.
  ``results_dir`` and ``<action>.results_dir`` are taken relative to the job folder when relative and must resolve
  inside it; ``inference.label_dump_path`` must resolve inside the action's results folder and may neither be an
  input nor replace one of the job's own files (``job.json``, ``spec.yaml``, ``logs/``, ...); an
  evaluate/inference input may not lie inside the job folder (a re-run moves that folder's files aside).
* :func:`preflight` (real runs): parse every annotation file the action reads, with the engine's own rules (missing
  or malformed JSON, unknown categories, missing images, no box left, ...) and check the checkpoint paths exist.
  Bad input fails here with exit 2 in seconds on every route, instead of inside each AutoML trial.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mal_core.checkpoint_files import check_hf_folder
from mal_core.config.actions import ActionDecl, action_decl
from mal_core.config.experiment import ExperimentConfig
from mal_core.config.loader import get_dotted, get_field, set_dotted
from mal_core.config.resolved import ResolvedSpec
from mal_core.engine.shards import SHARDS_DIR
from mal_core.errors import CheckpointError, DataError, SpecError
from mal_core.skill.jobs import JOB_OWN_NAMES, LOG_DIR, SPEC_FILE

#: Names in the job folder that no output may replace.
RESERVED_NAMES = (*JOB_OWN_NAMES, SPEC_FILE, LOG_DIR)
#: Folders of a results folder that labelling fills (overlays, the review page): never a place for the label file.
LABELLING_DIRS = ("overlays", "review", SHARDS_DIR)


def _real(path: str | Path) -> str:
    return os.path.realpath(os.fspath(path))


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it, after resolving ``..`` and symbolic links."""
    p, f = _real(path), _real(folder)
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)


def _check_not_a_file(key: str, path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise SpecError(f"{key} {str(path)!r} is an existing file, expected a folder", field=key,
                        hint="give a folder path (a job's outputs all go inside its job folder)")


def confine_results_dirs(action: str, tree: dict[str, Any], given: set[str], job_dir: Path) -> None:
    """Make ``results_dir`` (when ``given`` on the command line) and ``<action>.results_dir`` absolute folders
    inside ``job_dir`` (relative values are relative to the job folder); :class:`SpecError` naming the key when one
    resolves outside it or is an existing file. Call before the spec_params mappings."""
    for key in ("results_dir", action_decl(action).results_key):
        value = get_dotted(tree, key)
        if not value or (key == "results_dir" and key not in given):
            continue
        path = Path(os.path.normpath(Path(value) if Path(value).is_absolute() else job_dir / value))
        _check_not_a_file(key, path)
        if not is_inside(path, job_dir):
            raise SpecError(f"{key} {value!r} resolves to {_real(path)}, outside the job folder {job_dir}: a job "
                            "writes only inside its own folder", field=key,
                            hint="leave it unset, give a folder relative to the job folder, or choose where the "
                                 "job folder goes with --jobs-root / --job-id")
        first = (Path(os.path.relpath(_real(path), _real(job_dir))).parts or ("",))[0]
        if first in RESERVED_NAMES:  # e.g. previous_attempts/1: an archived attempt is never rewritten
            raise SpecError(f"{key} {value!r} lies in the job's own {first!r} (job records, logs and archived "
                            "attempts are never written by an action)", field=key,
                            hint="leave it unset or give another folder relative to the job folder")
        set_dotted(tree, key, str(path))


def confine_outputs(action: str, tree: dict[str, Any], job_dir: Path) -> None:
    """Checks once the spec is final (after the mappings): results folders are folders, the label file stays in its
    results folder and away from inputs and job files, evaluate/inference inputs lie outside the job folder."""
    decl = action_decl(action)
    results_dirs = [(k, get_dotted(tree, k)) for k in ("results_dir", decl.results_key)]
    for key, value in results_dirs:
        if value:
            _check_not_a_file(key, Path(value))
    inputs = [(k, v) for k in decl.inputs if (v := get_dotted(tree, k))]
    if not decl.resumes:
        for key, value in inputs:
            if is_inside(value, job_dir):
                raise SpecError(f"{key} {value!r} lies inside this job's own folder {job_dir}; a re-run moves "
                                "that folder's files aside, so it cannot read its input from there", field=key,
                                hint="copy the file elsewhere, or use another --job-id for this run")
    if decl.output_file_key is not None:
        _check_output_file(decl, decl.output_file_key, tree, job_dir, inputs)


def _check_output_file(decl: ActionDecl, key: str, tree: dict[str, Any], job_dir: Path,
                       inputs: list[tuple[str, Any]]) -> None:
    value = get_dotted(tree, key)
    if not value:
        return  # check_for_action names the missing key
    base = Path(decl.results_dir(tree) or job_dir)
    target = Path(os.path.normpath(base / value))
    hint = f"give a file name relative to the results folder, e.g. {decl.output_example}"
    action = decl.name
    if not is_inside(target, base) or _real(target) == _real(base):
        raise SpecError(f"{key} {value!r} resolves to {_real(target)}, outside the results folder {base}: "
                        f"the {action} output is written inside the job's results folder only", field=key,
                        hint=hint)
    if target.is_dir():
        raise SpecError(f"{key} {value!r} is an existing folder ({target}), expected a file name",
                        field=key, hint=hint)
    for in_key, path in inputs:
        if _real(target) == _real(path):
            raise SpecError(f"{key} {value!r} ({_real(target)}) is the input {in_key}; an input is never "
                            "overwritten", field=key, hint=hint)
    if is_inside(target, job_dir):
        first = Path(os.path.relpath(_real(target), _real(job_dir))).parts[0]
        if first in RESERVED_NAMES:
            raise SpecError(f"{key} {value!r} would overwrite the job's own {first!r}", field=key,
                            hint=hint)
    for folder in LABELLING_DIRS:
        if is_inside(target, base / folder):
            raise SpecError(f"{key} {value!r} lies in the {folder} folder of the results (labelling writes "
                            "that folder after the labels, and would overwrite them)", field=key, hint=hint)


def _need_path(value: str | None, key: str, *, folder_ok: bool) -> None:
    if not value:
        return
    p = Path(value)
    if not p.exists():
        raise CheckpointError(f"{key} {value!r} does not exist", field=key)
    if not folder_ok and not p.is_file():
        raise CheckpointError(f"{key} {value!r} is a folder, expected a checkpoint file (.pth)", field=key)


def preflight(action: str, spec: ResolvedSpec) -> dict[str, int]:
    """Read every annotation file of ``action`` as the engine will (the action's declared data preflight), and
    check that its non-data inputs (checkpoints, weights) exist; raises a :class:`~mal_core.errors.MalError` naming
    the file or key. Returns instance counts (for the job record)."""
    decl = action_decl(action)
    read = decl.preflight_fn()
    counts = read(spec.cfg) if read is not None else {}
    for key, spec_in in decl.inputs.items():
        if key not in decl.data_sources:
            _need_path(get_field(spec.cfg, key), key, folder_ok=spec_in.type != "file")
            value = get_field(spec.cfg, key)
            if value and Path(value).is_dir():  # a Hugging Face weights folder must fit model.arch
                check_hf_folder(value, spec.cfg.model.arch, key, required=False)
    return counts


def read_pretrain_data(cfg: ExperimentConfig) -> dict[str, int]:
    """The images to pretrain on (and the boxes of ``pretrain.ann_path``, when given)."""
    from mal_core.data.loading import list_images, load_pretrain_boxes

    counts = {"images": len(list_images(cfg.pretrain.img_dir))}
    coco = load_pretrain_boxes(cfg)
    if coco is not None:
        counts["boxes"] = len(coco.instances)
    return counts


def read_train_data(cfg: ExperimentConfig) -> dict[str, int]:
    """Training (and validation) boxes after the engine's filters; :class:`DataError` when none is left."""
    from mal_core.data.loading import load_eval_coco, load_train_coco

    d = cfg.dataset
    coco = load_train_coco(cfg)
    if not coco.instances:
        raise DataError(f"no training box of {d.train_ann_path} is left after the filters "
                        f"(dataset.min_obj_size={d.min_obj_size}, dataset.max_obj_size={d.max_obj_size}; crowd "
                        "regions are not trained on)", field="dataset.min_obj_size")
    counts = {"train_instances": len(coco.instances)}
    if cfg.train.use_gt_masks:  # mixed supervision: these also get the mask loss
        counts["train_instances_with_masks"] = sum(i.has_segmentation for i in coco.instances)
    if d.val_ann_path:
        counts["val_instances"] = len(load_eval_coco(d.val_ann_path, d.val_img_dir, d.load_mask).instances)
    return counts


def read_eval_data(cfg: ExperimentConfig) -> dict[str, int]:
    """Validation instances with their ground-truth masks."""
    from mal_core.data.loading import load_eval_coco

    d = cfg.dataset
    if not d.load_mask:
        raise DataError("evaluate needs ground-truth masks: set dataset.load_mask to true", field="dataset.load_mask")
    return {"val_instances": len(load_eval_coco(d.val_ann_path, d.val_img_dir, load_mask=True).instances)}


def read_inference_data(cfg: ExperimentConfig) -> dict[str, int]:
    """Boxes to label."""
    from mal_core.data.loading import load_eval_coco

    inf = cfg.inference
    return {"instances": len(load_eval_coco(inf.ann_path, inf.img_dir, load_mask=inf.load_mask).instances)}
