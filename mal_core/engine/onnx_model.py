"""The ONNX form of a trained MAL model: the traceable student/teacher graph that ``export`` writes, and the
onnxruntime adapter that evaluate and inference run in place of the PyTorch networks.

Graph: inputs ``crops`` (B,3,S,S; normalised box crops as the data pipeline makes them) and ``box_areas`` (B,; the
original box areas, which pick the scale-adaptive decoder path; absent from the graph of a fixed-scale decoder
(``model.not_adjust_scale``), which does not read them), outputs ``student_logits`` and ``teacher_logits``
(B,1,M,M), M = crop_size / mask_stride; the batch axis is dynamic unless ``export.batch_size`` fixes it. The file's
metadata holds the training spec and categories (``mal_spec``, ``mal_categories``) and ``mal_onnx_format``, so a
``.onnx`` goes wherever a checkpoint goes and a file that is not ours is refused naming it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mal_core.errors import CheckpointError
from mal_core.model.heads import box_size_bucket
from mal_core.model.network import MALNetwork, StudentTeacher

ONNX_FORMAT = "1"
INPUTS = ("crops", "box_areas")
OUTPUTS = ("student_logits", "teacher_logits")
META_FORMAT, META_SPEC, META_CATEGORIES = "mal_onnx_format", "mal_spec", "mal_categories"


def is_onnx_path(path: str | Path | None) -> bool:
    """Whether a checkpoint value names an ONNX file."""
    return bool(path) and str(path).lower().endswith(".onnx")


class TraceableNetwork(nn.Module):
    """A :class:`MALNetwork` with a forward free of data-dependent control flow (for ``torch.onnx`` tracing).

    The scale-adaptive decoder runs each size bucket's path only on the instances of that bucket; here every path
    runs on the whole batch and each instance keeps its bucket's logits (the same values, per instance, as the
    PyTorch decoder). Feature-map sizes come from the static crop size, not from traced shapes.
    """

    def __init__(self, net: MALNetwork, crop_size: int) -> None:
        super().__init__()
        self.net = net
        self.grid = int(crop_size) // net.backbone.patch_size

    def forward(self, crops: torch.Tensor, box_areas: torch.Tensor) -> torch.Tensor:
        feats = self.net.backbone(crops)
        stem = self.net.stem(crops) if self.net.stem is not None else None
        dec = self.net.decoder
        if not dec.adjust_scale:
            return dec(feats, box_areas, stem)
        k = dec.instance_head(feats)
        buckets = box_size_bucket(box_areas).view(-1, 1, 1, 1)
        grid = (self.grid, self.grid)
        out = dec.bucket_logits(feats, k, stem, 0, grid)
        for b in (1, 2):
            out = torch.where(buckets == b, dec.bucket_logits(feats, k, stem, b, grid), out)
        return out


class TraceablePair(nn.Module):
    """Student and teacher in one graph: (crops, box_areas) -> (student_logits, teacher_logits)."""

    def __init__(self, pair: StudentTeacher, crop_size: int) -> None:
        super().__init__()
        self.student = TraceableNetwork(pair.student, crop_size)
        self.teacher = TraceableNetwork(pair.teacher, crop_size)

    def forward(self, crops: torch.Tensor, box_areas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.student(crops, box_areas), self.teacher(crops, box_areas)


def read_onnx(path: str | Path, field: str) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    """Load and check a MAL ONNX file; returns (onnx model, training spec, categories). :class:`CheckpointError`
    naming the file and ``field`` when it is unreadable, corrupt, or not a MAL export."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{field} {str(p)!r} does not exist", field=field)
    try:
        model = onnx.load(str(p))
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf decode errors and checker failures alike
        raise CheckpointError(f"{str(p)!r} is not a valid ONNX file: {str(exc).splitlines()[0][:300]}",
                              field=field) from exc
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs not in (list(INPUTS), list(INPUTS[:1])) or outputs != list(OUTPUTS):
        raise CheckpointError(f"{str(p)!r} is not a MAL export: inputs {inputs}, outputs {outputs} (expected "
                              f"{list(INPUTS)} -> {list(OUTPUTS)})", field=field,
                              hint="export a MAL checkpoint with `mal export`")
    meta = {m.key: m.value for m in model.metadata_props}
    if meta.get(META_FORMAT) != ONNX_FORMAT or META_SPEC not in meta or META_CATEGORIES not in meta:
        raise CheckpointError(f"{str(p)!r} lacks the MAL metadata ({META_FORMAT}, {META_SPEC}, {META_CATEGORIES}); "
                              "it was not written by mal-skill", field=field)
    return model, json.loads(meta[META_SPEC]), json.loads(meta[META_CATEGORIES])


def providers() -> list[str]:
    """onnxruntime execution providers: CUDA first when both onnxruntime and torch see a GPU, then CPU."""
    import onnxruntime as ort

    out = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        out.insert(0, "CUDAExecutionProvider")
    return out


def ort_session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime session on :func:`providers`."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers())


def run_session(session: Any, crops: torch.Tensor, box_areas: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(student, teacher) logits of one batch as float32 arrays."""
    feeds = {"crops": crops.detach().float().cpu().numpy(), "box_areas": box_areas.detach().float().cpu().numpy()}
    feeds = {i.name: feeds[i.name] for i in session.get_inputs()}  # a fixed-scale decoder has no box_areas input
    student, teacher = session.run(list(OUTPUTS), feeds)
    return student, teacher


class OnnxStudentTeacher(nn.Module):
    """Stands in for :class:`StudentTeacher` at evaluate/inference time: ``student``, ``teacher`` and
    ``predict_logits`` (the same test-time modes) run the exported graph with onnxruntime. The last two input
    batches are remembered, so asking for the student and then the teacher of one batch runs the graph once."""

    predict_logits = StudentTeacher.predict_logits

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = str(path)
        self.session = ort_session(path)
        self._cache: list[tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = []

    def _outputs(self, crops: torch.Tensor, box_areas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the cache holds the input tensors themselves, so an identical object is the same, unchanged batch
        for c, a, value in self._cache:
            if c is crops and a is box_areas:
                return value
        student, teacher = run_session(self.session, crops, box_areas)
        value = (torch.from_numpy(student).to(crops.device), torch.from_numpy(teacher).to(crops.device))
        self._cache = [*self._cache[-1:], (crops, box_areas, value)]
        return value

    def student(self, crops: torch.Tensor, box_areas: torch.Tensor) -> torch.Tensor:
        """Student logits (B,1,M,M)."""
        return self._outputs(crops, box_areas)[0]

    def teacher(self, crops: torch.Tensor, box_areas: torch.Tensor) -> torch.Tensor:
        """EMA teacher logits (B,1,M,M)."""
        return self._outputs(crops, box_areas)[1]
