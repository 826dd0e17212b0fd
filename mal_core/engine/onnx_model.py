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
    _check_ops(model, p, field)
    spec = _metadata_json(meta, META_SPEC, dict, p, field)
    categories = _metadata_json(meta, META_CATEGORIES, list, p, field)
    for cat in categories:
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or isinstance(cat.get("id"), bool):
            raise CheckpointError(f"{str(p)!r}: metadata {META_CATEGORIES} holds {str(cat)[:80]!r}, expected "
                                  "objects with an integer 'id'", field=field, hint=_HINT)
    _check_shapes(model, spec, p, field)
    return model, spec, categories


_HINT = "export the checkpoint again with `mal export` (the file is damaged or was not written by mal-skill)"
#: Operator domains of the standard ONNX operator sets (all an export uses).
_STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")


def _metadata_json(meta: dict[str, str], key: str, kind: type, p: Path, field: str) -> Any:
    try:
        value = json.loads(meta[key])
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{str(p)!r}: metadata {key} is not valid JSON ({str(exc)[:120]})", field=field,
                              hint=_HINT) from exc
    if not isinstance(value, kind):
        raise CheckpointError(f"{str(p)!r}: metadata {key} is a JSON {type(value).__name__}, expected "
                              f"{'an object' if kind is dict else 'a list'}", field=field, hint=_HINT)
    return value


def _check_ops(model: Any, p: Path, field: str) -> None:
    """Every node of the graph (and its subgraphs) uses a standard operator: a custom op is refused naming it."""
    custom = sorted({f"{n.domain}::{n.op_type}" for n in _nodes(model.graph) if n.domain not in _STANDARD_DOMAINS})
    if custom:
        raise CheckpointError(f"{str(p)!r} uses custom operators {custom[:5]} that onnxruntime cannot run (an export "
                              "holds standard ONNX operators only)", field=field, hint=_HINT)


def _nodes(graph: Any) -> Any:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g.node:
                yield from _nodes(attr.g)
            for sub in attr.graphs:
                yield from _nodes(sub)


def _dims(value_info: Any) -> list[int | str | None]:
    """A graph input's or output's dimensions: an int when fixed, the name of a symbolic one, None when unknown."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def expected_shapes(spec: dict[str, Any]) -> tuple[int, int]:
    """(crop size, mask size) a model with the stored training ``spec`` reads and writes."""
    from mal_core.config.loader import parse_spec

    model = spec.get("model", {})
    dataset = spec.get("dataset", {})
    crop = dataset.get("crop_size", 512) if isinstance(dataset, dict) else None
    if not isinstance(model, dict) or not isinstance(crop, int) or isinstance(crop, bool):
        raise ValueError("its model must be an object and dataset.crop_size an integer")
    cfg, _ = parse_spec({"model": model, "dataset": {"crop_size": crop}})
    return cfg.dataset.crop_size, cfg.dataset.crop_size // cfg.model.mask_stride


def _check_shapes(model: Any, spec: dict[str, Any], p: Path, field: str) -> None:
    """The graph reads crops (B,3,S,S) and writes logits (B,1,M,M) of the crop and mask size of its stored spec, with
    one batch axis (fixed or not) shared by every input and output."""
    from mal_core.errors import MalError

    try:
        crop, mask = expected_shapes(spec)
    except (MalError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{str(p)!r}: metadata {META_SPEC} is not a usable training spec "
                              f"({getattr(exc, 'message', exc)})", field=field, hint=_HINT) from exc
    ins = {i.name: _dims(i) for i in model.graph.input}
    outs = {o.name: _dims(o) for o in model.graph.output}
    wanted = {"crops": ["B", 3, crop, crop], **{name: ["B", 1, mask, mask] for name in OUTPUTS}}
    for name, dims in {**ins, **outs}.items():
        want = wanted.get(name, ["B"])
        if dims and (len(dims) != len(want) or any(w != "B" and isinstance(d, int) and d != w
                                                   for d, w in zip(dims, want, strict=True))):
            shown = ["B" if w == "B" else w for w in want]
            raise CheckpointError(f"{str(p)!r}: {name} has shape {dims}, expected {shown} (crop size {crop} and mask "
                                  f"size {mask} of the spec it carries)", field=field, hint=_HINT)
    batch = {dims[0] for dims in (*ins.values(), *outs.values()) if dims and isinstance(dims[0], int)}
    if len(batch) > 1 or any(b <= 0 for b in batch):
        raise CheckpointError(f"{str(p)!r}: the inputs and outputs disagree on the batch size ({sorted(batch)})",
                              field=field, hint=_HINT)


def fixed_batch(session: Any) -> int | None:
    """The batch size a model was exported with (``export.batch_size``), or None when its batch axis is dynamic."""
    dim = session.get_inputs()[0].shape[0]
    return dim if isinstance(dim, int) and dim > 0 else None


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

    def __init__(self, path: str | Path, field: str = "checkpoint", mask_size: int | None = None) -> None:
        super().__init__()
        self.path = str(path)
        self.field = field
        #: the logits' side the stored spec promises (checked on every run when given)
        self.mask_size = mask_size
        try:
            self.session = ort_session(path)
        except Exception as exc:  # onnxruntime's own error types: unknown ops, bad graphs
            raise CheckpointError(f"{str(path)!r} cannot be loaded by onnxruntime: {str(exc).splitlines()[0][:300]}",
                                  field=field, hint=_HINT) from exc
        #: the batch size of a model exported with a fixed one (``export.batch_size``), else None
        self.fixed_batch = fixed_batch(self.session)
        self._cache: list[tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = []

    def _run(self, crops: torch.Tensor, box_areas: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """One graph run, its outputs checked: (n,1,M,M) for n crops."""
        try:
            student, teacher = run_session(self.session, crops, box_areas)
        except Exception as exc:
            raise CheckpointError(f"{self.path!r} fails to run on a batch of {crops.shape[0]} crops "
                                  f"{list(crops.shape[1:])}: {str(exc).splitlines()[0][:300]}", field=self.field,
                                  hint=_HINT) from exc
        n = crops.shape[0]
        for name, out in zip(OUTPUTS, (student, teacher), strict=True):
            m = self.mask_size or (out.shape[-1] if out.ndim == 4 else -1)
            if out.ndim != 4 or tuple(out.shape) != (n, 1, m, m):
                raise CheckpointError(f"{self.path!r}: output {name} has shape {list(out.shape)} for {n} crops, "
                                      f"expected {[n, 1, m, m] if self.mask_size else [n, 1, 'M', 'M']}",
                                      field=self.field, hint=_HINT)
        return student, teacher

    def _run_batch(self, crops: torch.Tensor, box_areas: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The outputs of any number of crops; a model with a fixed batch size runs chunks of that size, the last
        one padded by repeating its last crop (the padding's outputs are dropped)."""
        size, n = self.fixed_batch, crops.shape[0]
        if size is None or n == size:
            return self._run(crops, box_areas)
        students, teachers = [], []
        for start in range(0, n, size):
            c, a = crops[start:start + size], box_areas[start:start + size]
            k = c.shape[0]
            if k < size:
                c = torch.cat([c, c[-1:].expand(size - k, *c.shape[1:])])
                a = torch.cat([a, a[-1:].expand(size - k)])
            student, teacher = self._run(c, a)
            students.append(student[:k])
            teachers.append(teacher[:k])
        if not students:  # no crops: nothing to run
            return self._run_empty()
        return np.concatenate(students), np.concatenate(teachers)

    def _run_empty(self) -> tuple[np.ndarray, np.ndarray]:
        empty = np.zeros((0, 1, self.mask_size or 0, self.mask_size or 0), dtype=np.float32)
        return empty, empty.copy()

    def _outputs(self, crops: torch.Tensor, box_areas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the cache holds the input tensors themselves, so an identical object is the same, unchanged batch
        for c, a, value in self._cache:
            if c is crops and a is box_areas:
                return value
        student, teacher = self._run_batch(crops, box_areas)
        value = (torch.from_numpy(student).to(crops.device), torch.from_numpy(teacher).to(crops.device))
        self._cache = [*self._cache[-1:], (crops, box_areas, value)]
        return value

    def student(self, crops: torch.Tensor, box_areas: torch.Tensor) -> torch.Tensor:
        """Student logits (B,1,M,M)."""
        return self._outputs(crops, box_areas)[0]

    def teacher(self, crops: torch.Tensor, box_areas: torch.Tensor) -> torch.Tensor:
        """EMA teacher logits (B,1,M,M)."""
        return self._outputs(crops, box_areas)[1]
