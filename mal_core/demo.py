"""``mal demo``: synthetic boxed data -> train the CPU recipe -> evaluate -> label with overlays and a review page
-> score the same model on a held-out shape family it never saw -> summary with the time of each stage.

The demo's training is bounded by time (:data:`DEMO_TRAIN_BUDGET_S`, ``train.time_budget_s``), not by an epoch
count: the same demo takes the same few minutes on any machine, and a faster one trains more epochs (up to the
recipe's ``train.num_epochs``)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mal_core.baselines import score_baselines
from mal_core.config import check_for_action, parse_spec
from mal_core.config.loader import read_yaml
from mal_core.data.heldout_shapes import generate_family
from mal_core.data.synthetic import generate_synthetic_dataset
from mal_core.errors import SpecError

log = logging.getLogger(__name__)

DEFAULT_RECIPE = Path(__file__).resolve().parents[1] / "examples" / "cpu_tiny.yaml"
DEMO_TRAIN_IMAGES = 120
DEMO_VAL_IMAGES = 30
#: The held-out family the demo scores (drawn by another generator; no recipe decision was made on it).
HELDOUT_FAMILY = "touching"
#: The file a demo leaves in its ``--out`` folder: a later demo may reuse (and clear) only a folder marked so.
DEMO_MARKER = ".mal_demo_output"
#: What a demo writes at the top of ``--out`` (the only entries a later demo replaces).
DEMO_ENTRIES = ("data", "data_heldout", "train", "eval", "inference", "heldout_eval")
#: Wall-clock seconds the demo's training may take (the whole demo then stays within about five minutes on two
#: cores); ``--set train.time_budget_s=...`` changes it, 0 trains the recipe's full epoch count.
DEMO_TRAIN_BUDGET_S = 200


@contextmanager
def _stage(times: dict[str, float], name: str) -> Iterator[None]:
    """Records the wall time of one demo stage in ``times``."""
    t0 = time.time()
    yield
    times[name] = time.time() - t0


def claim_output_folder(out: str | Path) -> Path:
    """The absolute ``--out`` folder once it is safe to write: a new or empty folder (marked as the demo's own
    here), or one an earlier demo marked. Anything else, including ``--out ""``, is a :class:`SpecError` (exit 2)
    raised before anything is created or deleted."""
    if not str(out).strip():
        raise SpecError("--out '' names no folder (it would mean the current folder); the demo writes only into a "
                        "new or empty folder, or one an earlier demo made", field="out",
                        hint="give a folder name, e.g. --out demo_output")
    path = Path(out).absolute()
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise SpecError(f"--out {str(path)!r} is an existing file or link, expected a folder (the demo writes its "
                        "data, checkpoints and labels there)", field="out", hint="pick another --out")
    marker = path / DEMO_MARKER
    if path.is_dir() and any(path.iterdir()) and not (marker.is_file() and not marker.is_symlink()):
        raise SpecError(f"--out {str(path)!r} is a folder that holds files and was not made by `mal demo` (no "
                        f"{DEMO_MARKER} in it); the demo never writes into or deletes from such a folder",
                        field="out", hint="give a new or empty folder (an output of an older demo without the "
                        "marker: delete it yourself)")
    links = [path / name for name in DEMO_ENTRIES if (path / name).is_symlink()]
    if links:
        raise SpecError(f"--out {str(path)!r}: {links[0]} is a symbolic link; the demo does not write or delete "
                        "through links", field="out", hint="remove the link or pick another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not marker.exists():
            marker.write_text("made by `mal demo`: a later demo may replace "
                              f"{', '.join(DEMO_ENTRIES)} in this folder\n")
    except OSError as exc:
        raise SpecError(f"--out {str(path)!r}: cannot create the folder: {exc.strerror}", field="out") from exc
    return path.resolve()


def run_demo(out: str | Path = "demo_output", spec_path: str | None = None, overrides: list[str] | None = None,
             train_images: int = DEMO_TRAIN_IMAGES, val_images: int = DEMO_VAL_IMAGES) -> dict:
    """Run the whole pipeline on a fresh synthetic dataset under ``out`` and print where everything is."""
    from mal_core.engine.evaluate import run_evaluate
    from mal_core.engine.inference import run_inference
    from mal_core.engine.train import run_train

    os.environ.setdefault("MAL_PROGRESS_BAR", "1")
    recipe = Path(spec_path) if spec_path else DEFAULT_RECIPE
    if not recipe.is_file():
        raise SpecError(f"recipe {recipe} not found", field="spec")
    raw = read_yaml(recipe)
    parse_spec(raw, list(overrides or []))  # a bad --set is refused before the output folder is touched
    out = claim_output_folder(out)
    for sub in DEMO_ENTRIES[2:]:
        shutil.rmtree(out / sub, ignore_errors=True)
    t0 = time.time()
    times: dict[str, float] = {}
    with _stage(times, "synthetic data"):
        data = generate_synthetic_dataset(out / "data", num_train_images=train_images, num_val_images=val_images,
                                          difficulty="medium", seed=0)
    base = {
        "dataset.train_ann_path": data.train_ann_path, "dataset.train_img_dir": data.train_img_dir,
        "dataset.val_ann_path": data.val_ann_path, "dataset.val_img_dir": data.val_img_dir,
    }
    sets = ([f"{k}={v}" for k, v in base.items()] + [f"train.time_budget_s={DEMO_TRAIN_BUDGET_S}"]
            + list(overrides or []))
    cfg, _ = parse_spec(raw, sets + [f"results_dir={out / 'train'}"])
    check_for_action(cfg, "train")
    budget = (f"within {cfg.train.time_budget_s:.0f} s (at most {cfg.train.num_epochs} epochs)"
              if cfg.train.time_budget_s else f"for {cfg.train.num_epochs} epochs")
    print(f"[demo] training {cfg.model.arch} at crop {cfg.dataset.crop_size} {budget} on CPU "
          f"({data.train_ann_path}) ...", flush=True)
    with _stage(times, "train"):
        train = run_train(cfg)
    ckpt = train.artifacts["latest_checkpoint"]
    ecfg, explicit = parse_spec(raw, sets + [f"results_dir={out / 'eval'}", f"evaluate.checkpoint={ckpt}"])
    with _stage(times, "evaluate"):
        ev = run_evaluate(ecfg, explicit)
    icfg, explicit = parse_spec(raw, sets + [
        f"results_dir={out / 'inference'}", f"inference.checkpoint={ckpt}", f"inference.ann_path={data.val_ann_path}",
        f"inference.img_dir={data.val_img_dir}", "inference.save_overlays=true", "inference.load_mask=true",
        "inference.label_dump_path=val_labels_mal.json"])
    with _stage(times, "label (overlays, review page)"):
        inf = run_inference(icfg, explicit)
    box_fill = score_baselines(data.val_ann_path, data.val_img_dir, methods=("box_fill",))["box_fill"]
    miou = ev.metrics["mIoU"]
    with _stage(times, "held-out data"):
        held = generate_family(out / "data_heldout", HELDOUT_FAMILY, train_images=0, val_images=val_images, seed=0)
    held_sets = sets + [f"results_dir={out / 'heldout_eval'}", f"evaluate.checkpoint={ckpt}",
                        f"dataset.val_ann_path={held / 'val' / 'annotations.json'}",
                        f"dataset.val_img_dir={held / 'val' / 'images'}"]
    hcfg, explicit = parse_spec(raw, held_sets)
    with _stage(times, "held-out evaluate"):
        held_ev = run_evaluate(hcfg, explicit)
    held_box = score_baselines(held / "val" / "annotations.json", held / "val" / "images",
                               methods=("box_fill",))["box_fill"]
    print("\n==================== MAL demo ====================")
    print(f"data (synthetic, boxes only for training): {data.root}")
    print(f"checkpoints:  {train.results_dir} (latest: {ckpt})")
    print(f"metrics:      {ev.artifacts['metrics_json']}")
    print(f"labels:       {inf.artifacts['label_dump']} ({inf.artifacts['num_labelled']} masks, COCO RLE)")
    print(f"overlays:     {inf.artifacts.get('overlays')}")
    print(f"review page:  {inf.artifacts.get('review_page')} (lowest quality score first)")
    print(f"val mIoU:     MAL {miou:.3f}   vs box-fill baseline {box_fill['mIoU']:.3f}   "
          f"({int(ev.metrics['num_instances'])} instances, the generator the recipe was tuned on)")
    print(f"held-out:     MAL {held_ev.metrics['mIoU']:.3f}   vs box-fill baseline {held_box['mIoU']:.3f}   "
          f"({int(held_ev.metrics['num_instances'])} instances of the untuned '{HELDOUT_FAMILY}' family, "
          "same model, never trained on)")
    plan = train.artifacts.get("time_budget") or {}
    epochs = plan.get("epochs_run")
    print(f"trained:      {epochs if epochs is not None else cfg.train.num_epochs} epochs "
          f"({train.details['num_train_instances']} boxes)"
          + (f", fitted to train.time_budget_s={cfg.train.time_budget_s:.0f}" if plan else ""))
    print("stage times:  " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in times.items()))
    print(f"wall time:    {time.time() - t0:.0f} s")
    return {"train": train.flat(), "evaluate": ev.flat(), "inference": inf.flat(), "box_fill": box_fill,
            "heldout_evaluate": held_ev.flat(), "heldout_box_fill": held_box, "stage_seconds": times}
