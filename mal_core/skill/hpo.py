"""AutoML with Ray Tune: search space from the packaged train schema, Tuner run, trial records in ``job.json``.

Ray, torch and Lightning are imported only inside :func:`run_automl` and the trial function.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mal_core.checkpoint_files import METRIC
from mal_core.errors import MalError
from mal_core.utils.io import atomic_write_json

log = logging.getLogger(__name__)
#: File in each trial folder with the trial's engine warnings (collapse checks, clamps) as a JSON list.
TRIAL_WARNINGS = "warnings.json"
ALGORITHMS = ("bayesian", "hyperband", "asha", "random")


class AutomlError(MalError):
    """Invalid AutoML settings or search space."""

    code = "invalid_automl_settings"


class RangeOverride(BaseModel):
    """User range for one parameter; must stay inside the schema bounds."""

    model_config = ConfigDict(extra="forbid")
    min: float | None = None
    max: float | None = None
    options: list[Any] | None = None


class AutomlSettings(BaseModel):
    """``--automl-settings`` (TAO names where TAO has one)."""

    model_config = ConfigDict(extra="forbid")
    automl_algorithm: Literal["bayesian", "hyperband", "asha", "random"] = "bayesian"
    automl_max_recommendations: int = Field(10, ge=1)
    automl_max_concurrent: int = Field(1, ge=1)
    automl_hyperparameters: list[str] | None = None
    automl_range_override: dict[str, RangeOverride] = Field(default_factory=dict)
    automl_max_epochs: int | None = Field(None, ge=1)
    automl_reduction_factor: int = Field(3, ge=2)
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float | None = Field(None, ge=0)
    time_budget_s: float | None = Field(None, gt=0)

    @field_validator("automl_hyperparameters", mode="before")
    @classmethod
    def _list_from_string(cls, v: Any) -> Any:
        if isinstance(v, str):  # TAO passes a JSON string like "[\"train.lr\"]"
            try:
                return json.loads(v)
            except ValueError:
                return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @field_validator("automl_range_override", mode="before")
    @classmethod
    def _ranges_from_list(cls, v: Any) -> Any:
        if isinstance(v, list):  # TAO ParameterRange list
            out = {}
            for item in v:
                item = dict(item)
                name = item.pop("parameter", None)
                if not name:
                    raise ValueError("each automl_range_override item needs 'parameter'")
                out[name] = {"min": item.get("valid_min"), "max": item.get("valid_max"),
                             "options": item.get("valid_options")}
            return out
        return v


def parse_settings(raw: str | dict[str, Any] | None) -> AutomlSettings:
    """Validate ``--automl-settings`` JSON; errors name the offending setting."""
    if raw is None or raw == "":
        return AutomlSettings()
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise AutomlError(f"--automl-settings is not valid JSON: {exc}", field="automl_settings") from exc
    if not isinstance(raw, dict):
        raise AutomlError("--automl-settings must be a JSON object", field="automl_settings")
    if raw.get("automl_algorithm") in ("b", "h"):
        raw = {**raw, "automl_algorithm": {"b": "bayesian", "h": "hyperband"}[raw["automl_algorithm"]]}
    try:
        return AutomlSettings.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise AutomlError(f"--automl-settings {loc}: {err['msg']}", field=f"automl_settings.{loc}") from exc


def flatten_schema(schema: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    """Dotted leaf properties of a JSON schema (deprecated aliases skipped)."""
    out: dict[str, dict[str, Any]] = {}
    for name, prop in schema.get("properties", {}).items():
        key = f"{prefix}{name}"
        if "properties" in prop:
            out.update(flatten_schema(prop, key + "."))
        elif not prop.get("deprecated"):
            out[key] = prop
    return out


def _type(prop: dict[str, Any]) -> str:
    t = prop.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), None)
    return str(t)


def build_search_space(schema: dict[str, Any], settings: AutomlSettings,
                       spec_values: dict[str, Any]) -> list[dict[str, Any]]:
    """Search-space rows ``{key, kind, low, high, log, step, options, weights, depends_on, math_cond}``.

    Floats spanning a decade or more with a positive lower bound are log-uniform; ``math_cond "/ k"`` makes ints
    multiples of k; ``< depends_on`` / ``> depends_on`` bound a parameter by its (fixed or sampled) parent.
    """
    props = flatten_schema(schema)
    names = settings.automl_hyperparameters or list(schema.get("automl_default_parameters") or [])
    if not names:
        raise AutomlError("the train schema lists no automl_default_parameters; pass automl_hyperparameters",
                          field="automl_settings.automl_hyperparameters")
    unknown_ranges = sorted(set(settings.automl_range_override) - set(names))
    if unknown_ranges:
        raise AutomlError(f"automl_range_override names {unknown_ranges}, which are not searched",
                          field="automl_settings.automl_range_override")
    rows = []
    for key in names:
        prop = props.get(key)
        if prop is None:
            raise AutomlError(f"automl_hyperparameters: {key!r} is not a train spec key",
                              field="automl_settings.automl_hyperparameters")
        rows.append(_row(key, prop, settings.automl_range_override.get(key), spec_values))
    searched = {r["key"] for r in rows}
    for r in rows:
        if r["depends_on"] and r["depends_on"] not in searched:
            _bound_by_fixed_parent(r, spec_values.get(r["depends_on"], props.get(r["depends_on"], {}).get("default")))
    rows.sort(key=lambda r: r["depends_on"] in searched)
    return rows


def _row(key: str, prop: dict[str, Any], rng: RangeOverride | None, spec: dict[str, Any]) -> dict[str, Any]:
    field = f"automl_settings.automl_range_override.{key}"
    kind = _type(prop)
    row: dict[str, Any] = {"key": key, "kind": kind, "low": None, "high": None, "log": False, "step": None,
                           "options": None, "weights": None, "depends_on": prop.get("depends_on"),
                           "math_cond": prop.get("math_cond")}
    if "enum" in prop or kind == "boolean":
        options = list(prop.get("enum", [False, True]))
        weights = prop.get("option_weights")
        if rng is not None and rng.options is not None:
            bad = [o for o in rng.options if o not in options]
            if bad or not rng.options:
                raise AutomlError(f"{key}: options {bad or rng.options} are not allowed by the schema {options}",
                                  field=field)
            weights = [weights[options.index(o)] for o in rng.options] if weights else None
            options = list(rng.options)
        row.update(kind="choice", options=options, weights=weights)
        return row
    if kind not in ("number", "integer"):
        raise AutomlError(f"{key} ({kind}) cannot be searched; searchable types are numbers, ints, enums, booleans",
                          field="automl_settings.automl_hyperparameters")
    lo, hi = prop.get("minimum"), prop.get("maximum")  # hard bounds: an explicit range must stay inside them
    default = spec.get(key, prop.get("default"))
    if lo is None or hi is None:  # TAO fallback: a decade around the default
        d = float(default or 0.0)
        lo = lo if lo is not None else (d / 10 if d > 0 else (-1.0 if d == 0 else d * 10))
        hi = hi if hi is not None else (d * 10 if d > 0 else 1.0)
    search_lo, search_hi = prop.get("x_automl_range") or (lo, hi)  # the default interval, maybe narrower
    if rng is not None:
        if rng.min is not None:
            if rng.min < lo:
                raise AutomlError(f"{key}: range min {rng.min} is below the schema minimum {lo}", field=field)
            lo = rng.min
        if rng.max is not None:
            if rng.max > hi:
                raise AutomlError(f"{key}: range max {rng.max} is above the schema maximum {hi}", field=field)
            hi = rng.max
        # a one-sided range keeps the default interval on the other side unless that would leave nothing to search
        if rng.min is None and search_lo < hi:
            lo = max(lo, search_lo)
        if rng.max is None and search_hi > lo:
            hi = min(hi, search_hi)
        if lo > hi:
            raise AutomlError(f"{key}: range min {lo} is above max {hi}", field=field)
    else:
        lo, hi = search_lo, search_hi
    if kind == "integer":
        step = 1
        m = re.fullmatch(r"\s*/\s*(\d+)\s*", str(row["math_cond"] or ""))
        if m:
            step = int(m.group(1))
            lo = int(math.ceil(lo / step) * step)
            hi = int(math.floor(hi / step) * step)
            if lo > hi:
                raise AutomlError(f"{key}: no multiple of {step} in [{lo}, {hi}]", field=field)
        row.update(kind="int", low=int(lo), high=int(hi), step=step)
    else:
        row.update(kind="float", low=float(lo), high=float(hi), log=bool(lo > 0 and hi / lo >= 10))
    return row


def _bound_by_fixed_parent(row: dict[str, Any], parent_value: Any) -> None:
    if not isinstance(parent_value, (int, float)) or row["kind"] not in ("int", "float"):
        return
    cond = str(row["math_cond"] or "")
    if "<" in cond:
        limit = parent_value - 1 if row["kind"] == "int" else parent_value
        row["high"] = min(row["high"], limit)
    elif ">" in cond:
        limit = parent_value + 1 if row["kind"] == "int" else parent_value
        row["low"] = max(row["low"], limit)
    if row["low"] > row["high"]:
        raise AutomlError(f"{row['key']}: no value satisfies '{cond}' with {row['depends_on']}={parent_value}",
                          field=f"automl_settings.automl_range_override.{row['key']}")
    if row["kind"] == "float" and row["low"] > 0:
        row["log"] = row["high"] / row["low"] >= 10


def repair_dependencies(config: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Clamp sampled values whose ``depends_on`` parent was sampled too (e.g. warmup < epochs)."""
    out = dict(config)
    for r in rows:
        parent = r["depends_on"]
        if parent in out and r["key"] in out:
            cond = str(r["math_cond"] or "")
            eps = 1 if r["kind"] == "int" else 1e-6
            if "<" in cond and out[r["key"]] >= out[parent]:
                out[r["key"]] = out[parent] - eps
            elif ">" in cond and out[r["key"]] <= out[parent]:
                out[r["key"]] = min(out[parent] + eps, r["high"])
    return out


def to_ray_space(rows: list[dict[str, Any]], algorithm: str) -> dict[str, Any]:
    """Ray Tune distributions (weighted choices expand options by weight except for Optuna's TPE)."""
    from ray import tune  # lazy

    space: dict[str, Any] = {}
    for r in rows:
        if r["kind"] == "choice":
            opts = r["options"]
            if r["weights"] and algorithm != "bayesian":
                total = sum(r["weights"]) or 1.0
                opts = [o for o, w in zip(r["options"], r["weights"], strict=True)
                        for _ in range(max(1, round(20 * w / total)))]
            space[r["key"]] = tune.choice(opts)
        elif r["kind"] == "int":
            space[r["key"]] = (tune.qrandint(r["low"], r["high"], r["step"]) if r["step"] > 1
                               else tune.randint(r["low"], r["high"] + 1))
        else:
            space[r["key"]] = (tune.loguniform(r["low"], r["high"]) if r["log"]
                               else tune.uniform(r["low"], r["high"]))
    return space


def epochs_for(settings: AutomlSettings, spec_epochs: int) -> int:
    """Per-trial epochs: ``automl_max_epochs`` when given, else the spec's ``train.num_epochs``."""
    return int(settings.automl_max_epochs or spec_epochs)


# ---------------------------------------------------------------------------------------------------------------
# Running


def _report_callback() -> Any:
    import pytorch_lightning as pl  # lazy
    from ray import tune

    class TuneReport(pl.Callback):
        """Report the validation mIoU to Ray Tune at every validation; a non-finite value fails the trial."""

        def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.sanity_checking:
                return
            value = getattr(pl_module, "last_metrics", {}).get(METRIC)
            if value is None or not math.isfinite(float(value)):
                raise FloatingPointError(f"validation {METRIC} is {value!r} (not finite); trial failed")
            tune.report({METRIC: float(value), "epoch": int(trainer.current_epoch), "step": int(trainer.global_step)})

    return TuneReport()


def trial_dir(exp_dir: Path, trial_id: str) -> Path:
    """Results folder of one trial."""
    return exp_dir / "trials" / trial_id


def _trainable(config: dict[str, Any], *, base: dict[str, Any], rows: list[dict[str, Any]], exp_dir: str,
               epochs: int) -> None:
    import copy

    from ray import tune

    from mal_core.config import check_for_action, parse_spec
    from mal_core.engine.train import run_train
    from mal_core.skill.mappings import set_dotted

    os.environ.setdefault("MAL_PROGRESS_BAR", "0")
    trial_id = tune.get_context().get_trial_id()
    tree = copy.deepcopy(base)
    set_dotted(tree, "train.num_epochs", epochs)
    set_dotted(tree, "results_dir", str(trial_dir(Path(exp_dir), trial_id)))
    set_dotted(tree, "train.results_dir", None)
    for key, value in repair_dependencies(config, rows).items():
        set_dotted(tree, key, value)
    if (tree.get("train", {}).get("warmup_epochs") or 0) >= epochs:
        set_dotted(tree, "train.warmup_epochs", max(0, epochs - 1))
    cfg, _ = parse_spec(tree)
    check_for_action(cfg, "train")
    result = run_train(cfg, callbacks=[_report_callback()])
    atomic_write_json(trial_dir(Path(exp_dir), trial_id) / TRIAL_WARNINGS, result.warnings)


def _init_ray(num_cpus: int | None, skill_root: Path) -> None:
    import ray

    if ray.is_initialized():
        return
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(skill_root), os.environ.get("PYTHONPATH")) if p),
           "MAL_PROGRESS_BAR": "0"}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        log.info("attaching to the Ray cluster at %s", address)
        ray.init(address=address, runtime_env={"env_vars": env})
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False)


def run_automl(*, base_tree: dict[str, Any], rows: list[dict[str, Any]], settings: AutomlSettings, exp_dir: Path,
               skill_root: Path, on_update: Any = None) -> dict[str, Any]:
    """Run (or resume) the experiment under ``exp_dir``; returns ``{trials, best_trial, experiment_path}``."""
    from ray import tune

    from mal_core.checkpoint_files import best_checkpoint

    _init_ray(None, skill_root)
    epochs = epochs_for(settings, int(base_tree.get("train", {}).get("num_epochs") or 10))
    gpus = settings.gpus_per_trial
    if gpus is None:
        import torch

        gpus = 1.0 if torch.cuda.is_available() else 0.0
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, base=base_tree, rows=rows, exp_dir=str(exp_dir), epochs=epochs),
        {"cpu": settings.cpus_per_trial, "gpu": gpus})
    storage = exp_dir / "ray"
    name = "experiment"
    exp_path = storage / name
    if tune.Tuner.can_restore(str(exp_path)):
        log.info("resuming the interrupted experiment at %s", exp_path)
        tuner = tune.Tuner.restore(str(exp_path), trainable=trainable, resume_errored=False, restart_errored=False)
    else:
        search_alg, scheduler = None, None
        algo = settings.automl_algorithm
        if algo == "bayesian":
            from ray.tune.search import ConcurrencyLimiter
            from ray.tune.search.optuna import OptunaSearch

            search_alg = ConcurrencyLimiter(OptunaSearch(), max_concurrent=settings.automl_max_concurrent)
        elif algo in ("hyperband", "asha"):
            from ray.tune.schedulers import ASHAScheduler

            val_every = int(base_tree.get("train", {}).get("validation_interval") or 1)
            scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max(1, epochs // val_every),
                                      grace_period=1, reduction_factor=settings.automl_reduction_factor)
        tuner = tune.Tuner(
            trainable,
            param_space=to_ray_space(rows, algo),
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", search_alg=search_alg, scheduler=scheduler,
                                        num_samples=settings.automl_max_recommendations,
                                        max_concurrent_trials=None if search_alg else settings.automl_max_concurrent,
                                        time_budget_s=settings.time_budget_s),
            run_config=tune.RunConfig(name=name, storage_path=str(storage.absolute()),
                                      failure_config=tune.FailureConfig(max_failures=0), verbose=0),
        )
    grid = tuner.fit()
    trials = []
    for result in grid:
        trial_id = str((result.metrics or {}).get("trial_id") or Path(result.path).name)
        df = result.metrics_dataframe
        scores = [float(v) for v in (df[METRIC].tolist() if df is not None and METRIC in df else [])
                  if v is not None and math.isfinite(float(v))]
        folder = trial_dir(exp_dir, trial_id)
        ckpt = best_checkpoint(folder)
        warned = folder / TRIAL_WARNINGS
        trials.append({
            "trial_id": trial_id,
            "params": {k: v for k, v in (result.config or {}).items()},
            METRIC: max(scores) if scores else None,
            "last_" + METRIC: scores[-1] if scores else None,
            "validations": len(scores),
            "status": "failure" if result.error else "success",
            "error": str(result.error).strip().splitlines()[-1][:500] if result.error else None,
            "results_dir": str(folder),
            "checkpoint": ckpt,
            "warnings": json.loads(warned.read_text()) if warned.is_file() else [],
        })
    ok = [t for t in trials if t[METRIC] is not None and t["checkpoint"]]
    best = max(ok, key=lambda t: (t[METRIC], t["trial_id"])) if ok else None  # ties: deterministic
    return {"trials": trials, "best_trial": best, "experiment_path": str(exp_path), "epochs_per_trial": epochs}
