"""From the label ``score`` to an expected IoU, and how much of a labelled set a person must check.

The score ranks errors but is not an IoU. A monotone (isotonic) fit score -> IoU on labels with ground-truth masks
turns it into one: each label's ``expected_iou``. Everything here works on fixed-size histograms, so memory never
grows with the number of boxes: :class:`LabelStats` counts labels per class and score bin (:data:`SCORE_BINS`
equal bins on [0, 1]), with the IoU sums of the labels that have a GT mask, the score sums and the consistency
flags; one is stored in each shard file's header and they add up (:meth:`LabelStats.merge`).

Where a calibration comes from (:func:`calibration_for`):

* an inference run with ``inference.load_mask: true`` and GT masks fits it on its own labels and writes it as
  ``calibration.json`` into its job folder (:data:`CALIBRATION_FILE`); so does ``evaluate`` on the validation set;
* an inference run without GT uses the ``calibration.json`` found beside its checkpoint file (the folder of the path
  given, then of the file it links to), if that file names the same checkpoint content (sha256): copy the
  calibration of an evaluate (or GT inference) job of that checkpoint there. A calibration is fitted under the
  test-time settings of the run that made it; it is stored with them, and is only meaningful for the same ones.

The fit: the bins' mean IoU, weighted by their label counts, through :func:`scipy.optimize.isotonic_regression`
(non-decreasing in the score), linearly interpolated between the bins' centres and flat beyond the first and last.

The review curve (:func:`review_curve`): reviewing the k lowest-scored labels, and assuming a reviewed label becomes
correct (IoU 1), raises the expected mean IoU of the delivered set from a = mean expected IoU to
b = (sum of the others' expected IoU + k) / n; labels inside one score bin are taken as equal. The expected
calibration error (:func:`calibration_error`) is sum over :data:`ECE_BINS` score groups of
(labels in group / labels) x |mean expected IoU - mean actual IoU|.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mal_core.engine.consistency import CONSISTENCY_FLAGS

#: Equal-width score bins of the histograms (on [0, 1]).
SCORE_BINS = 200
#: Score groups of the expected calibration error.
ECE_BINS = 10
#: Fractions of the labels the review curve reports.
REVIEW_FRACTIONS = (0.01, 0.05, 0.10, 0.25)
#: The calibration file an inference run with GT (or evaluate) writes into its job folder.
CALIBRATION_FILE = "calibration.json"
CALIBRATION_KIND = "mal-score-calibration"
CALIBRATION_VERSION = 1


def score_bin(score: float) -> int:
    """The histogram bin (0 .. :data:`SCORE_BINS` - 1) of a score in [0, 1]."""
    return min(max(int(float(score) * SCORE_BINS), 0), SCORE_BINS - 1)


def bin_centres() -> np.ndarray:
    """The score at the centre of every bin."""
    return (np.arange(SCORE_BINS) + 0.5) / SCORE_BINS


@dataclass
class LabelStats:
    """Per class (category index) and score bin: labels, labels with GT and their IoU sum; per class the score sum
    and the flag counts. Fixed size: (classes + 1) x :data:`SCORE_BINS` arrays."""

    num_categories: int
    count: np.ndarray = field(init=False)
    gt_count: np.ndarray = field(init=False)
    iou_sum: np.ndarray = field(init=False)
    score_sum: np.ndarray = field(init=False)
    flags: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        shape = (self.num_categories + 1, SCORE_BINS)
        self.count, self.gt_count, self.iou_sum = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        self.score_sum = np.zeros(self.num_categories + 1)
        self.flags = {f: np.zeros(self.num_categories + 1) for f in CONSISTENCY_FLAGS}

    def add(self, category: int, score: float, flags: list[str], iou: float | None = None) -> None:
        """Count one label (``iou``: against its GT mask, when there is one)."""
        b = score_bin(score)
        self.count[category, b] += 1
        self.score_sum[category] += float(score)
        for f in flags:
            self.flags[f][category] += 1
        if iou is not None:
            self.gt_count[category, b] += 1
            self.iou_sum[category, b] += float(iou)

    def state(self) -> dict[str, Any]:
        """The sparse JSON form (a shard header's ``label_stats``): only the classes and bins with labels."""
        cats: dict[str, Any] = {}
        for c in np.flatnonzero(self.count.sum(1)):
            bins = np.flatnonzero(self.count[c])
            cats[str(c)] = {"score_sum": float(self.score_sum[c]),
                            "flags": {f: int(v[c]) for f, v in self.flags.items() if v[c]},
                            "bins": [[int(b), int(self.count[c, b]), int(self.gt_count[c, b]),
                                      float(self.iou_sum[c, b])] for b in bins]}
        return {"bins": SCORE_BINS, "classes": cats}

    def merge(self, state: dict[str, Any] | None) -> None:
        """Add a :meth:`state` (e.g. one shard's, read back from its header)."""
        if not state:
            return
        if int(state.get("bins", SCORE_BINS)) != SCORE_BINS:
            raise ValueError(f"label stats with {state.get('bins')} score bins, expected {SCORE_BINS}")
        for key, cat in state["classes"].items():
            c = int(key)
            self.score_sum[c] += float(cat["score_sum"])
            for f, n in cat["flags"].items():
                self.flags[f][c] += n
            for b, n, n_gt, iou in cat["bins"]:
                self.count[c, b] += n
                self.gt_count[c, b] += n_gt
                self.iou_sum[c, b] += iou

    @property
    def num_labels(self) -> int:
        """Labels counted."""
        return int(self.count.sum())

    @property
    def num_with_gt(self) -> int:
        """Labels counted with a GT IoU."""
        return int(self.gt_count.sum())


@dataclass(frozen=True)
class Calibration:
    """A fitted non-decreasing curve score -> expected IoU: values ``iou`` at scores ``score`` (increasing)."""

    score: tuple[float, ...]
    iou: tuple[float, ...]
    num_labels: int
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def expected(self, scores: np.ndarray | float) -> np.ndarray:
        """Expected IoU at ``scores`` (linear between the fitted points, flat beyond them)."""
        return np.interp(np.asarray(scores, dtype=float), self.score, self.iou)

    def to_json(self) -> dict[str, Any]:
        """The file form (:data:`CALIBRATION_FILE`)."""
        return {"kind": CALIBRATION_KIND, "version": CALIBRATION_VERSION, "num_labels": self.num_labels,
                "score": list(self.score), "expected_iou": list(self.iou), **self.meta}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        """Read the file form; ValueError when it is not one."""
        if not isinstance(data, dict) or data.get("kind") != CALIBRATION_KIND or \
                data.get("version") != CALIBRATION_VERSION:
            raise ValueError(f"not a {CALIBRATION_KIND} file of version {CALIBRATION_VERSION}")
        score, iou = [float(v) for v in data["score"]], [float(v) for v in data["expected_iou"]]
        if not score or len(score) != len(iou) or np.any(np.diff(score) <= 0) or np.any(np.diff(iou) < 0) \
                or not all(math.isfinite(v) for v in (*score, *iou)):
            raise ValueError("a calibration needs increasing scores and non-decreasing expected IoUs")
        meta = {k: v for k, v in data.items() if k not in ("kind", "version", "num_labels", "score", "expected_iou")}
        return cls(tuple(score), tuple(iou), int(data["num_labels"]), meta)


def fit_calibration(stats: LabelStats, meta: dict[str, Any] | None = None) -> Calibration | None:
    """The isotonic fit score -> IoU on the bins of every class with GT labels, weighted by their counts; None
    without any GT label."""
    from scipy.optimize import isotonic_regression  # only a fit needs scipy (labelling start-up stays light)

    n = stats.gt_count.sum(0)
    used = np.flatnonzero(n)
    if not used.size:
        return None
    fitted = isotonic_regression(stats.iou_sum.sum(0)[used] / n[used], weights=n[used], increasing=True).x
    return Calibration(tuple(float(v) for v in bin_centres()[used]), tuple(float(np.clip(v, 0.0, 1.0))
                                                                           for v in fitted),
                       int(n.sum()), dict(meta or {}))


def calibration_error(calibration: Calibration, stats: LabelStats, groups: int = ECE_BINS) -> float:
    """Expected calibration error of ``calibration`` on the GT labels of ``stats``: the |mean expected IoU - mean
    actual IoU| of ``groups`` equal score groups, weighted by their share of the labels (NaN without GT)."""
    n = stats.gt_count.sum(0)
    if not n.sum():
        return float("nan")
    expected = calibration.expected(bin_centres()) * n
    actual = stats.iou_sum.sum(0)
    group = np.arange(SCORE_BINS) * groups // SCORE_BINS
    err = 0.0
    for g in range(groups):
        sel = group == g
        if n[sel].sum():
            err += abs(expected[sel].sum() - actual[sel].sum())
    return float(err / n.sum())


def review_curve(calibration: Calibration, stats: LabelStats,
                 fractions: tuple[float, ...] = REVIEW_FRACTIONS) -> list[dict[str, float]]:
    """For each fraction f: reviewing the k = round(f n) lowest-scored labels (a reviewed label taken as correct,
    IoU 1) raises the expected mean IoU of all n labels from ``before`` to ``after``. With GT for every label,
    ``actual_before`` / ``actual_after`` are the same with the true IoUs."""
    n_bin = stats.count.sum(0)
    total = n_bin.sum()
    if not total:
        return []
    exp_bin = calibration.expected(bin_centres())
    with_gt = stats.num_with_gt == stats.num_labels
    act_bin = np.divide(stats.iou_sum.sum(0), n_bin, out=np.zeros(SCORE_BINS), where=n_bin > 0)
    out = []
    for f in fractions:
        k = int(round(f * total))
        taken = np.clip(k - (np.cumsum(n_bin) - n_bin), 0, n_bin)  # labels reviewed from each bin, lowest first
        row = {"fraction": f, "labels": k, "before": float((n_bin * exp_bin).sum() / total),
               "after": float(((n_bin - taken) * exp_bin).sum() + k) / total}
        if with_gt:
            row.update(actual_before=float((n_bin * act_bin).sum() / total),
                       actual_after=float(((n_bin - taken) * act_bin).sum() + k) / total)
        out.append({key: round(v, 4) if isinstance(v, float) and key != "fraction" else v for key, v in row.items()})
    return out


def class_summaries(stats: LabelStats, categories: list[dict[str, Any]],
                    calibration: Calibration | None) -> dict[str, dict[str, Any]]:
    """Per class with labels (keyed by its name, else its id): count, mean score, flag counts, mIoU over its GT
    labels and (with a calibration) its mean expected IoU."""
    exp_bin = calibration.expected(bin_centres()) if calibration is not None else None
    out: dict[str, dict[str, Any]] = {}
    for c in np.flatnonzero(stats.count.sum(1)):
        cat = categories[c - 1] if 0 < c <= len(categories) else {"id": int(c)}
        n = float(stats.count[c].sum())
        row: dict[str, Any] = {"category_id": cat.get("id"), "count": int(n),
                               "mean_score": round(float(stats.score_sum[c]) / n, 4),
                               "flags": {f: int(v[c]) for f, v in stats.flags.items() if v[c]}}
        n_gt = float(stats.gt_count[c].sum())
        if n_gt:
            row["mIoU"] = round(float(stats.iou_sum[c].sum()) / n_gt, 4)
        if exp_bin is not None:
            row["expected_mIoU"] = round(float((stats.count[c] * exp_bin).sum() / n), 4)
        out[str(cat.get("name", cat.get("id")))] = row
    return out


def summarize(stats: LabelStats, categories: list[dict[str, Any]], calibration: Calibration | None,
              source: str | None = None) -> dict[str, Any]:
    """The result JSON's ``label_summary``: flag counts, per-class summaries and, with a calibration, the expected
    mean IoU (instance mean and class mean), the review curve and where the calibration came from."""
    out: dict[str, Any] = {"labels": stats.num_labels,
                           "flags": {f: int(v.sum()) for f, v in stats.flags.items()},
                           "classes": class_summaries(stats, categories, calibration)}
    if calibration is not None and stats.num_labels:
        exp = calibration.expected(bin_centres())
        per_class = [r["expected_mIoU"] for r in out["classes"].values()]
        out["calibration"] = {"source": source, "fitted_on_labels": calibration.num_labels,
                              "expected_mIoU_instance": round(float((stats.count.sum(0) * exp).sum()
                                                                    / stats.num_labels), 4),
                              "expected_mIoU": round(float(np.mean(per_class)), 4),
                              "review_curve": review_curve(calibration, stats),
                              "review_assumption": "a reviewed label is corrected to IoU 1"}
    return out


def review_lines(summary: dict[str, Any]) -> list[str]:
    """Plain-text lines for the review page's header: flag counts and, with a calibration, the review curve."""
    flags = ", ".join(f"{n} {f}" for f, n in summary["flags"].items() if n) or "none"
    lines = [f"{summary['labels']} labels; box/mask consistency flags: {flags}."]
    cal = summary.get("calibration")
    if cal:
        lines.append(f"Expected mean IoU {cal['expected_mIoU_instance']:.3f} over labels, {cal['expected_mIoU']:.3f} "
                     f"over classes (score calibrated on {cal['fitted_on_labels']} labels with GT: {cal['source']}).")
        for row in cal["review_curve"]:
            lines.append(f"Reviewing the {row['labels']} lowest-scored labels ({row['fraction']:.0%}) raises the "
                         f"expected mean IoU from {row['before']:.3f} to {row['after']:.3f} (a reviewed label "
                         "taken as correct).")
    return lines


def load_calibration(path: Path) -> Calibration:
    """Read a :data:`CALIBRATION_FILE`; ValueError when it is not one."""
    try:
        return Calibration.from_json(json.loads(Path(path).read_text()))
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def beside_checkpoint(checkpoint: str | Path, digest: str) -> tuple[Calibration, Path] | None:
    """The calibration file beside ``checkpoint`` (its folder, then the folder of the file it links to) whose
    ``checkpoint_sha256`` is ``digest``, or None."""
    ckpt = Path(checkpoint)
    folders = [ckpt.parent] + ([ckpt.resolve().parent] if ckpt.is_symlink() else [])
    for folder in folders:
        path = folder / CALIBRATION_FILE
        if path.is_file():
            try:
                cal = load_calibration(path)
            except ValueError:
                continue
            if cal.meta.get("checkpoint_sha256") == digest:
                return cal, path
    return None


def job_calibration(stats: LabelStats, categories: list[dict[str, Any]], checkpoint: str | Path, results_dir: Path,
                    meta: dict[str, Any]) -> tuple[Calibration | None, dict[str, Any]]:
    """A labelling job's calibration and ``label_summary``. With GT labels: fitted on them and written as
    ``results_dir/``:data:`CALIBRATION_FILE` (with the checkpoint's sha256 and ``meta``); a calibration beside the
    checkpoint is then only scored on them (``checkpoint_calibration_error``). Without GT: the one beside the
    checkpoint, if any."""
    from mal_core.engine.shards import file_digest
    from mal_core.utils.io import atomic_write_json

    digest = file_digest(checkpoint)
    found = beside_checkpoint(checkpoint, digest)
    extra: dict[str, Any] = {}
    fitted = fit_calibration(stats, {"checkpoint": str(checkpoint), "checkpoint_sha256": digest, **meta})
    if fitted is not None:
        cal, path = fitted, results_dir / CALIBRATION_FILE
        atomic_write_json(path, cal.to_json())
        source = f"fitted on this run's {stats.num_with_gt} labels with GT masks, written to {path}"
        if found is not None:
            extra = {"checkpoint_calibration": str(found[1]),
                     "checkpoint_calibration_error": round(calibration_error(found[0], stats), 4)}
    elif found is not None:
        cal, source = found[0], f"{found[1]} (fitted on {found[0].num_labels} labels with GT masks)"
    else:
        cal, source = None, None
    summary = summarize(stats, categories, cal, source)
    if "calibration" in summary:
        summary["calibration"].update(extra)
    return cal, summary
