"""Resolve ``--parent-job-id`` to one checkpoint file in the parent's results (best by mIoU, latest, or epoch N).

Only numbered ``model_epoch_<EEE>_step_<SSSSS>.pth`` regular files count: never ``.ckpt`` leftovers, anything under
``lightning_logs`` or ``*_latest*`` links, unless a file name is asked for explicitly. An AutoML parent resolves to
its best trial's folder.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mal_core.checkpoint_files import checkpoint_metric, list_checkpoints, read_history
from mal_core.config.actions import ACTIONS, ActionDecl
from mal_core.errors import MalError
from mal_core.skill.jobs import check_job_id, read_job


class ParentError(MalError):
    """The parent job or a checkpoint in it cannot be found."""

    code = "invalid_parent"


@dataclass(frozen=True)
class ParentCheckpoint:
    """The chosen checkpoint and how it was chosen."""

    job_id: str
    path: str
    method: str
    epoch: int | None
    step: int | None
    metric: float | None
    lookup_dir: str
    trial_id: str | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def lookup_folder(jobs_root: Path, parent_id: str, parent_actions: tuple[str, ...] = ("train",)
                  ) -> tuple[Path, dict[str, Any] | None, str | None]:
    """The folder holding the parent's checkpoints (best trial for an AutoML parent), its record, the trial id.
    The parent job must have run one of ``parent_actions``."""
    check_job_id(parent_id, field="parent_job_id")
    job_dir = jobs_root / parent_id
    if not job_dir.is_dir():
        raise ParentError(f"parent job {parent_id!r} does not exist under {jobs_root}", field="parent_job_id",
                          hint="pass the job_id printed by the train run, and the same --jobs-root")
    record = read_job(job_dir)
    if record is None:
        return job_dir, None, None
    if record.get("action") not in (None, *parent_actions):
        raise ParentError(f"parent job {parent_id!r} ran {record.get('action')!r}; a parent here must be a "
                          f"{' or '.join(parent_actions)} job", field="parent_job_id")
    if record.get("status") != "success":  # e.g. running, interrupted, or killed before its output was checked
        raise ParentError(f"parent job {parent_id!r} has status {record.get('status')!r} in "
                          f"{job_dir / 'job.json'}, expected 'success': its outputs are not known to be complete",
                          field="parent_job_id", hint="wait for it to finish or re-run it to success; or pass the "
                          "checkpoint file itself (e.g. --set evaluate.checkpoint=PATH)")
    automl = record.get("automl")
    if record.get("route") == "automl" or automl:
        best = (automl or {}).get("best_trial")
        if not best:
            raise ParentError(f"AutoML parent {parent_id!r} has no best trial yet (status {record.get('status')})",
                              field="parent_job_id", hint="wait for the experiment to finish or resume it")
        return Path(best["results_dir"]), record, str(best.get("trial_id"))
    return Path(record.get("checkpoint_dir") or job_dir), record, None


def parse_method(text: str | None) -> tuple[str, int | None, str | None]:
    """``best`` (default), ``latest``, ``epoch:N`` / an integer, or a file name in the parent folder."""
    if not text or text == "best":
        return "best", None, None
    if text == "latest":
        return "latest", None, None
    m = re.fullmatch(r"(?:epoch[:=_]?)?(\d+)", text)
    if m:
        return "epoch", int(m.group(1)), None
    if "/" in text or text in (".", ".."):
        raise ParentError(f"--parent-checkpoint {text!r} must be best, latest, epoch:N or a file name",
                          field="parent_checkpoint")
    return "file", None, text


def _artifact_parent(folder: Path, record: dict[str, Any], parent_id: str, decl: ActionDecl) -> ParentCheckpoint:
    """The file or folder a job of ``decl`` hands on (its recorded artifact, else the one entry of its folder that
    matches the declared pattern, e.g. an export job's ``.onnx`` file)."""
    assert decl.hands_on is not None
    recorded = (record.get("artifacts") or {}).get(decl.hands_on.artifact)
    found = [Path(recorded)] if recorded and Path(recorded).exists() else sorted(folder.glob(decl.hands_on.pattern))
    if len(found) != 1:
        raise ParentError(f"{decl.name} job {parent_id!r} has {'no' if not found else 'more than one'} "
                          f"{decl.hands_on.pattern} in {folder}", field="parent_job_id",
                          hint=f"run the {decl.name} job (again) first")
    return ParentCheckpoint(job_id=parent_id, path=str(found[0].resolve()), method=decl.name, epoch=None, step=None,
                            metric=None, lookup_dir=str(folder))


def _artifact_producer(record: dict[str, Any] | None) -> ActionDecl | None:
    """The declaration of the parent's action when that job hands on a named artifact (not checkpoints)."""
    decl = ACTIONS.get(str(record.get("action"))) if record is not None else None
    return decl if decl is not None and decl.hands_on is not None and decl.hands_on.artifact else None


def resolve_parent(jobs_root: Path, parent_id: str, choose: str | None = None,
                   parent_actions: tuple[str, ...] = ("train",)) -> ParentCheckpoint:
    """Pick one checkpoint of job ``parent_id`` (for a parent whose action hands on a named artifact, where
    ``parent_actions`` allows one, that artifact: e.g. an export job's ONNX file); :class:`ParentError` when there
    is none."""
    method, epoch, name = parse_method(choose)
    folder, record, trial = lookup_folder(jobs_root, parent_id, parent_actions)
    producer = _artifact_producer(record)
    if producer is not None and record is not None:
        return _artifact_parent(folder, record, parent_id, producer)
    base = {"job_id": parent_id, "lookup_dir": str(folder), "trial_id": trial}
    if method == "file":
        path = folder / str(name)
        if not path.is_file():
            raise ParentError(f"{path} does not exist in parent job {parent_id!r}", field="parent_checkpoint")
        return ParentCheckpoint(path=str(path.resolve()), method="file", epoch=None, step=None, metric=None, **base)
    ckpts = list_checkpoints(folder)
    if not ckpts:
        raise ParentError(f"parent job {parent_id!r} has no model_epoch_*_step_*.pth checkpoint in {folder}",
                          field="parent_job_id", hint="train it first (or check train.checkpoint_interval)")
    if method == "epoch":
        hits = [c for c in ckpts if c[0] == epoch]
        if not hits:
            raise ParentError(f"parent job {parent_id!r} has no checkpoint of epoch {epoch}; epochs saved: "
                              f"{sorted({c[0] for c in ckpts})}", field="parent_checkpoint")
        e, s, p = hits[-1]
        return ParentCheckpoint(path=str(p), method="epoch", epoch=e, step=s, metric=None, **base)
    history = read_history(folder)
    scored = [(checkpoint_metric(e, s, p, history), e, s, p) for e, s, p in ckpts]
    if method == "best":
        finite = [t for t in scored if t[0] is not None]
        if finite:
            m, e, s, p = max(finite, key=lambda t: (t[0], t[2]))
            return ParentCheckpoint(path=str(p), method="best", epoch=e, step=s, metric=m, **base)
        note = "no checkpoint has a recorded mIoU; fell back to the latest"
    else:
        note = None
    m, e, s, p = scored[-1]
    return ParentCheckpoint(path=str(p), method="latest", epoch=e, step=s, metric=m, note=note, **base)


def parent_fills(jobs_root: Path, parent_id: str, fills: dict[str, str] | Any) -> dict[str, Any]:
    """Spec key -> value copied from the parent job: ``artifacts.<name>`` from its record, any other name from the
    spec it ran with (its ``spec.yaml``); keys whose source is missing or empty are left out."""
    from mal_core.config.loader import get_dotted

    spec = _spec_tree(jobs_root / parent_id / "spec.yaml") or {}
    artifacts = (read_job(jobs_root / parent_id) or {}).get("artifacts") or {}
    out = {}
    for key, source in fills.items():
        value = artifacts.get(source[len("artifacts."):]) if source.startswith("artifacts.") \
            else get_dotted(spec, source)
        if value not in (None, ""):
            out[key] = value
    return out


def parent_spec(jobs_root: Path, parent_id: str) -> dict[str, Any] | None:
    """The resolved spec the parent trained with (its ``spec.yaml``), for a torch-free model-setting check; None for
    a parent whose action hands on a named artifact (its spec did not train the model)."""
    folder, record, _trial = lookup_folder(jobs_root, parent_id, tuple(ACTIONS))
    if _artifact_producer(record) is not None:
        return None
    for path in (folder / "train_spec.yaml", jobs_root / parent_id / "spec.yaml"):
        tree = _spec_tree(path)
        if tree is not None:
            return tree
    return None


def _spec_tree(path: Path) -> dict[str, Any] | None:
    """The spec tree stored in a job's YAML file; None when the file is missing or holds no mapping."""
    import yaml

    data = yaml.safe_load(path.read_text()) if path.is_file() else None
    return data if isinstance(data, dict) else None
