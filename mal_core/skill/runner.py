"""``runners/<action>.py`` and ``mal <action>``: resolve policy, route, job, parent, data sources and spec, run, and
print one JSON object as the last line of stdout (human logs go to stderr).

Exit codes: 0 success (or a dry-run plan), 2 bad input (nothing ran), 1 runtime failure.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from mal_core.config.actions import action_decl
from mal_core.config.resolved import ResolvedSpec
from mal_core.engine.result import EngineResult
from mal_core.errors import MalError, SpecError
from mal_core.utils.io import json_safe
from mal_core.utils.safe_paths import disk_full_error, is_disk_full
from mal_core.utils.stop import Interrupted, catch_stop_signals, raise_if_stopped, restore_signals

log = logging.getLogger("mal.runner")
SKILL_ROOT = Path(__file__).resolve().parents[2]
#: The job id a run hands to the DDP worker processes Lightning starts by re-running its command line.
DDP_JOB_ENV = "MAL_DDP_JOB_ID"


def ddp_worker_job() -> str | None:
    """The running job's id when this process is a DDP worker that Lightning started for it (``LOCAL_RANK`` > 0
    and the job id handed down); None for an ordinary run. A worker takes no job lock and writes no record or
    result line: the run that started it holds the job."""
    if os.environ.get("LOCAL_RANK", "0") not in ("", "0"):
        return os.environ.get(DDP_JOB_ENV) or None
    return None
OOM_HINT = "lower dataset.crop_size (512 -> 384 -> 256) or use a smaller model.arch (e.g. vit-mae-base/16 " \
           "instead of large)"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise MalError(f"bad arguments: {message}", field="argv", hint=f"see `{self.prog} --help`")


def _shorthand_keys(root: Path) -> dict[str, str]:
    try:
        data = yaml.safe_load((root / "references" / "skill_info.yaml").read_text())
        keys = data.get("spec_shorthand_keys", {}) if isinstance(data, dict) else {}
        return {str(k): str(v) for k, v in keys.items()} if isinstance(keys, dict) else {}
    except (OSError, yaml.YAMLError):
        return {}


def build_parser(action: str, root: Path = SKILL_ROOT) -> argparse.ArgumentParser:
    """Argument parser of one action (``prog`` is ``mal <action>``)."""
    p = _Parser(prog=f"mal {action}", description=f"Run the MAL {action} action as a job; the last stdout line is "
                "a JSON result. Exit codes: 0 success, 2 bad input, 1 runtime failure.")
    p.add_argument("--spec", "-e", help="experiment spec YAML (default: references/spec_template_<action>.yaml)")
    p.add_argument("--spec-overrides", help='JSON object of dotted keys, e.g. \'{"train.num_epochs": 5}\'')
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one dotted spec key (repeatable; value read as YAML)")
    p.add_argument("--automl-policy", choices=["auto", "on", "off"], help="per-run AutoML override (train)")
    p.add_argument("--request", help="the user's ask in free text (read for AutoML on/off phrases)")
    p.add_argument("--automl-settings", help="JSON: automl_algorithm, automl_max_recommendations, ...")
    parents = action_decl(action).parents
    p.add_argument("--parent-job-id", help=f"{' or '.join(parents) or 'no'} job (a train job may be AutoML) whose "
                   "output (checkpoint, ONNX file, ...) feeds this action")
    p.add_argument("--parent-checkpoint", help="best (default), latest, epoch:N, or a file name in the parent")
    p.add_argument("--job-id", help="job id (default: generated); reusing a train job id resumes it")
    p.add_argument("--jobs-root", help="jobs folder (default: $MAL_JOBS_ROOT or ./mal_jobs)")
    p.add_argument("--skill-root", default=None, help=argparse.SUPPRESS)
    p.add_argument("--dry-run", action="store_true", help="resolve and validate, print the plan, run nothing")
    group = p.add_argument_group("shorthand keys (from skill_info.yaml spec_shorthand_keys)")
    for short, key in _shorthand_keys(root).items():
        group.add_argument(f"--{short}", dest=f"short__{short}", metavar="VALUE", help=f"same as --set {key}=VALUE")
    return p


# ----- spec assembly -----------------------------------------------------------------------------------------------


def collect_overrides(args: argparse.Namespace, shorthand: dict[str, str]) -> list[tuple[str, Any]]:
    """Ordered (dotted key, value): --spec-overrides, then --set, then shorthand flags (later wins).

    Two names of one key (a shorthand or alias and its dotted key) with different values are an error naming both.
    """
    from mal_core.config.loader import check_alias_conflicts, check_json_depth, load_yaml_bounded, parse_override

    named: list[tuple[str, str, Any]] = []  # (name as given, dotted key, value)
    if args.spec_overrides:
        try:
            data = json.loads(args.spec_overrides)
        except RecursionError as exc:
            raise SpecError("--spec-overrides is nested too deeply", field="spec_overrides") from exc
        except ValueError as exc:
            raise SpecError(f"--spec-overrides is not valid JSON: {exc}", field="spec_overrides") from exc
        check_json_depth(data, "--spec-overrides", "spec_overrides")
        if not isinstance(data, dict):
            raise SpecError("--spec-overrides must be a JSON object of dotted keys", field="spec_overrides")
        named += [(k, shorthand.get(k, k), v) for k, v in data.items()]
    named += [(k, k, v) for k, v in (parse_override(o) for o in args.overrides)]
    for name, value in vars(args).items():
        if name.startswith("short__") and value is not None:
            short = name[len("short__"):]
            parsed = load_yaml_bounded(value, f"--{short}", shorthand[short]) if value.strip() else ""
            named.append((f"--{short}", shorthand[short], parsed))
    check_alias_conflicts(named)
    return [(k, v) for _, k, v in named]


def assemble_spec(action: str, spec_path: str | None, overrides: list[tuple[str, Any]],
                  root: Path) -> tuple[dict[str, Any], set[str]]:
    """The canonical spec tree and its explicit keys (overrides, and spec-file values that differ from defaults)."""
    from mal_core.config import ExperimentConfig, parse_spec, spec_to_dict
    from mal_core.config.experiment import KEY_ALIASES
    from mal_core.config.loader import get_field, read_yaml

    base = read_yaml(spec_path) if spec_path else read_yaml(root / "references" / f"spec_template_{action}.yaml")
    file_cfg, file_keys = parse_spec(base)
    defaults = ExperimentConfig()
    explicit = {k for k in file_keys if get_field(file_cfg, k) != get_field(defaults, k)} if spec_path else set()
    cfg, _ = parse_spec(base, dict(overrides))
    explicit |= {KEY_ALIASES.get(k, k) for k, _ in overrides}
    return spec_to_dict(cfg), explicit


def validate_against_schema(tree: dict[str, Any], action: str, root: Path) -> None:
    """Validate the resolved spec against ``schemas/<action>.schema.json`` (when packaged)."""
    path = root / "schemas" / f"{action}.schema.json"
    if not path.is_file():
        return
    import jsonschema

    schema = json.loads(path.read_text())
    doc = {k: v for k, v in tree.items() if k in schema.get("properties", {})}
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.absolute_path) or "spec"
        raise SpecError(f"resolved spec fails {path.name} at {key}: {err.message}", field=key)


# ----- running -----------------------------------------------------------------------------------------------------


def run_direct(action: str, spec: ResolvedSpec, report: Callable[[dict[str, Any]], None] | None = None
               ) -> EngineResult:
    """Run the action's engine entry point (from the action table) on the resolved spec; ``report`` receives the
    progress of an action that reports it."""
    decl = action_decl(action)
    extra = {"report": report} if decl.reports_progress and report is not None else {}
    return decl.engine()(spec.cfg, explicit_keys=set(spec.explicit), **extra)


def _is_oom(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def _runtime_error(exc: BaseException) -> dict[str, Any]:
    if _is_oom(exc):
        return {"code": "cuda_oom", "message": f"CUDA out of memory: {str(exc).splitlines()[0][:300]}",
                "field": "dataset.crop_size", "hint": OOM_HINT}
    return {"code": "runtime_error", "message": f"{type(exc).__name__}: {str(exc)[:500]}", "field": None,
            "hint": "see the job log under logs/"}


def _setup_logging() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return handler


def main(action: str, argv: list[str] | None = None) -> int:
    """Run ``action`` from command-line arguments; prints the JSON result line; returns the exit code."""
    real_stdout = sys.stdout
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        root = Path(os.environ.get("MAL_SKILL_ROOT") or SKILL_ROOT)
        try:
            build_parser(action, root).parse_args(["--help"])
        except SystemExit as exc:
            return int(exc.code or 0)
    out: dict[str, Any] = {"action": action, "job_id": None, "status": "failure", "route": None,
                           "automl_policy": None, "automl_policy_reason": None, "route_reason": None,
                           "message": None, "results_dir": None, "spec_path": None, "artifacts": {},
                           "metrics": {}, "error": None, "warnings": []}
    handlers = [_setup_logging()]
    t0 = time.time()
    code = 0
    previous = catch_stop_signals()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            code = _main(action, argv, out, handlers)
    except Interrupted as exc:  # a signal before or after the job's own handling: still an honest record
        out.update(status="interrupted", error=exc.to_dict())
        code = exc.exit_code
    finally:
        restore_signals(previous)
        for h in handlers:
            logging.getLogger().removeHandler(h)
            h.close()
    out["seconds"] = round(time.time() - t0, 2)
    if ddp_worker_job() is None:  # one result line per run: the DDP workers' run reports for them
        print(json.dumps(json_safe(out), default=str), file=real_stdout, flush=True)
    return code


def _main(action: str, argv: list[str], out: dict[str, Any], handlers: list[logging.Handler]) -> int:
    from mal_core.skill.jobs import Job, default_jobs_root

    job: Job | None = None
    ran = False
    try:
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--skill-root")
        known, _ = pre.parse_known_args(argv)
        root = Path(known.skill_root or os.environ.get("MAL_SKILL_ROOT") or SKILL_ROOT).resolve()
        args = build_parser(action, root).parse_args(argv)
        plan, spec = _resolve(action, args, root, out)
        if args.dry_run:
            out.update(status="planned", plan=plan)
            return 0
        if ddp_worker_job() is not None:  # the job, its lock and its record belong to the run that started us
            run_direct(action, spec)
            out.update(status="success")
            return 0
        from mal_core.skill.preflight import preflight

        jobs_root = default_jobs_root(args.jobs_root)
        try:
            checked = preflight(action, spec)  # bad input stops here: no new job, no Ray, no worker
        except MalError as exc:  # a re-run of an existing job records its refused attempt
            from mal_core.skill.jobs import record_refused_attempt

            record_refused_attempt(jobs_root, action, out["job_id"], args.parent_job_id, exc.to_dict())
            raise
        key_fn = action_decl(action).resume_key_fn()
        job = Job.create(jobs_root, action, out["job_id"], parent_id=args.parent_job_id,
                         resume_key=key_fn(spec.cfg) if key_fn is not None else None)
        handlers.append(job.log_handler())
        logging.getLogger().addHandler(handlers[-1])
        os.environ[DDP_JOB_ENV] = job.job_id  # the DDP workers Lightning may start re-run this command for this job
        spec_file = job.dir / "spec.yaml"
        from mal_core.utils.io import atomic_write_text

        atomic_write_text(spec_file, yaml.safe_dump(plan["spec"], sort_keys=False))
        out["spec_path"] = str(spec_file)
        job.update(route=out["route"], automl_policy=out["automl_policy"], route_reason=out["route_reason"],
                   spec_path=str(spec_file), parent=plan.get("parent"), data_sources=plan.get("data_sources"),
                   mappings=plan.get("mappings"), request=args.request, preflight=checked)
        job.transition("running")
        ran = True
        report = job.update_progress
        result = _run_automl(job, plan, root) if out["route"] == "automl" else run_direct(action, spec, report)
        raise_if_stopped()  # a signal the engine's libraries swallowed still ends the run as interrupted
        # the engine's own warnings (collapse checks, clamps it applied) join the plan's in the result JSON
        out["warnings"] = list(dict.fromkeys(out.get("warnings", []) + result.warnings))
        out.update(artifacts=result.artifacts, metrics=result.metrics, status="success")
        decl = action_decl(action)
        ckpt_dir = decl.results_dir(spec.tree) if decl.hands_on_checkpoints else None
        job.finish(True, artifacts=result.artifacts, metrics=result.metrics, checkpoint_dir=ckpt_dir,
                   warnings=out["warnings"])
        return 0
    except Interrupted as exc:
        log.error("%s: %s", action, exc.to_dict()["message"])
        out.update(status="interrupted", error=exc.to_dict())
        if job is not None:
            with contextlib.suppress(Interrupted):  # a second signal must not cut the record short
                _record_end(job, error=out["error"], state="interrupted")
        return exc.exit_code
    except MalError as exc:
        out.update(status="failure", error=exc.to_dict())
        log.error("%s%s", exc.message, f" (field: {exc.field})" if exc.field else "")
        if exc.hint:
            log.error("hint: %s", exc.hint)
        if job is not None:
            _record_end(job, error=out["error"])
        return 2 if not ran or exc.code != "automl_failed" else 1
    except Exception as exc:  # runtime failure: record it and exit 1
        full = is_disk_full(exc)
        if full is not None:  # out of space in a write that did not name its file itself: still exit 2
            err = disk_full_error(full.filename or "a file of the job", full)
            log.error("%s", err.message)
            out.update(status="failure", error=err.to_dict())
            if job is not None:
                _record_end(job, error=out["error"])
            return 2
        log.exception("%s failed", action)
        out.update(status="failure", error=_runtime_error(exc))
        if job is not None:
            _record_end(job, error=out["error"])
        return 1
    finally:
        if job is not None:
            job.close()


def _record_end(job: Any, *, error: dict[str, Any], state: str | None = None) -> None:
    """Record a failed or interrupted end in ``job.json``; a record that cannot be written (a full disk, a link
    planted at it) is logged, never raised: the exit code and the JSON line still tell the outcome."""
    try:
        job.finish(False, error=error, state=state)
    except (MalError, OSError) as exc:
        log.error("could not record the outcome in %s: %s", job.dir / "job.json", getattr(exc, "message", exc))


def _resolve(action: str, args: argparse.Namespace, root: Path,
             res: dict[str, Any]) -> tuple[dict[str, Any], ResolvedSpec]:
    """Everything a run needs, without side effects: fills ``res`` as it goes and returns the plan (JSON form) and
    the spec resolved once for the run."""
    from mal_core.config import check_for_action
    from mal_core.config.checks import check_checkpoint_conflicts, clamp_for_action
    from mal_core.config.experiment import KEY_ALIASES
    from mal_core.config.skill_info import load_skill_info
    from mal_core.skill.datasources import default_cache_dir, resolve_data_sources
    from mal_core.skill.jobs import check_job_id, default_jobs_root, new_job_id
    from mal_core.skill.mappings import apply_mappings, get_dotted, set_dotted
    from mal_core.skill.parents import parent_fills, parent_spec, resolve_parent
    from mal_core.skill.policy import decide_route, resolve_policy
    from mal_core.skill.preflight import confine_outputs, confine_results_dirs

    decl = action_decl(action)
    info = load_skill_info(root / "references" / "skill_info.yaml")
    decision = resolve_policy(args.automl_policy, args.request)
    res.update(automl_policy=decision.policy, automl_policy_reason=decision.reason)
    route = decide_route(action, decision, info, root)
    res.update(route=route.route, route_reason=route.reason, message=route.message)
    if route.message:
        log.warning("%s", route.message)
    overrides = collect_overrides(args, decl.shorthand(info.spec_shorthand_keys))
    tree, explicit = assemble_spec(action, args.spec, overrides, root)
    jobs_root = default_jobs_root(args.jobs_root)
    job_id = ddp_worker_job() or (check_job_id(args.job_id) if args.job_id is not None  # "" is refused
                                  else new_job_id(action))
    results_dir = jobs_root / job_id
    res.update(job_id=job_id, results_dir=str(results_dir), spec_path=str(results_dir / "spec.yaml"))
    given = {KEY_ALIASES.get(k, k) for k, _ in overrides}
    if "results_dir" in explicit and "results_dir" not in given:
        # a spec file or recipe describes the experiment, not where this job lives: the job folder wins
        log.warning("results_dir %r of the spec file is not used: job %s writes in its own folder %s",
                    tree["results_dir"], job_id, results_dir)
        explicit.discard("results_dir")
        tree["results_dir"] = ""
    confine_results_dirs(action, tree, given, results_dir)
    parent = None
    if args.parent_job_id is not None:
        if not decl.parents:
            raise SpecError(f"{action} takes no parent job", field="parent_job_id", hint="drop --parent-job-id")
        parent = resolve_parent(jobs_root, args.parent_job_id, args.parent_checkpoint, decl.parents)
        stored = parent_spec(jobs_root, args.parent_job_id) if decl.parent_fixes_model else None
        if stored:
            check_checkpoint_conflicts(tree, explicit, stored, parent.path)
    if parent is not None and decl.parent_fills:  # e.g. the labelled file's images, a review loop's training file
        for key, value in parent_fills(jobs_root, parent.job_id, decl.parent_fills).items():
            if key not in explicit:
                set_dotted(tree, key, value)
    sources = resolve_data_sources(info, action, {k: get_dotted(tree, k) for k in info.data_sources[action]},
                                   default_cache_dir(jobs_root), dry_run=args.dry_run)
    if not args.dry_run:
        for src in sources:
            set_dotted(tree, src.key, src.local_path)
    if parent is not None and decl.parent_key not in explicit:
        set_dotted(tree, decl.parent_key, parent.path)  # e.g. the checkpoint to score, the weights to fine-tune
    mappings = apply_mappings(info, action, tree, explicit, results_dir, parent)
    spec = ResolvedSpec.from_tree(tree, explicit)
    # the engine applies the same clamps (and logs them) when it runs; the resolved config stays as given
    res["warnings"] = clamp_for_action(copy.deepcopy(spec.cfg), action)
    if args.dry_run or route.route == "automl":
        for warning in res["warnings"]:
            log.warning("%s", warning)
    check_for_action(spec.cfg, action)
    validate_against_schema(tree, action, root)
    confine_outputs(action, tree, results_dir)
    plan: dict[str, Any] = {"spec": tree, "explicit_keys": sorted(explicit), "mappings": mappings,
                            "data_sources": [s.to_dict() for s in sources],
                            "parent": parent.to_dict() if parent else None, "schema_valid": True}
    if route.route == "automl":
        plan["automl"] = _automl_plan(args.automl_settings, tree, root)
    elif args.automl_settings:
        plan["automl_settings_ignored"] = "route is direct"
    return plan, spec


def _automl_plan(raw: str | None, tree: dict[str, Any], root: Path) -> dict[str, Any]:
    from mal_core.skill.hpo import build_search_space, epochs_for, parse_settings

    settings = parse_settings(raw)
    schema = json.loads((root / "schemas" / "train.schema.json").read_text())
    epochs = epochs_for(settings, int(tree["train"]["num_epochs"]))
    flat = _flatten(tree)
    flat["train.num_epochs"] = epochs
    rows = build_search_space(schema, settings, flat)
    return {"settings": settings.model_dump(), "search_space": rows, "epochs_per_trial": epochs, "metric": "mIoU",
            "mode": "max", "ray_address": os.environ.get("RAY_ADDRESS") or "local"}


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _run_automl(job: Any, plan: dict[str, Any], root: Path) -> EngineResult:
    from mal_core.skill.hpo import parse_settings, run_automl

    auto = plan["automl"]
    settings = parse_settings(auto["settings"])
    job.update(automl={**auto, "trials": [], "best_trial": None})
    res = run_automl(base_tree=plan["spec"], rows=auto["search_space"], settings=settings, exp_dir=job.dir,
                     skill_root=root)
    best = res["best_trial"]
    job.update(automl={**auto, **res})
    if best is None:
        errors = [t["error"] for t in res["trials"] if t.get("error")]
        if any("out of memory" in (e or "").lower() for e in errors):
            raise _AutomlFailed("every AutoML trial failed: CUDA out of memory", field="dataset.crop_size",
                                hint=OOM_HINT)
        raise _AutomlFailed(f"every AutoML trial failed or reported no finite mIoU ({len(res['trials'])} trials)"
                            + (f"; first error: {errors[0]}" if errors else ""), hint="see job.json automl.trials")
    arts = {"best_checkpoint": best["checkpoint"], "best_trial": best["trial_id"],
            "best_trial_results_dir": best["results_dir"], "experiment_path": res["experiment_path"],
            "trials": [{k: t[k] for k in ("trial_id", "status", "mIoU", "checkpoint")} for t in res["trials"]]}
    metrics = {"mIoU": best["mIoU"]} if best["mIoU"] is not None and math.isfinite(best["mIoU"]) else {}
    warnings = [f"best trial {best['trial_id']}: {w}" for w in best.get("warnings") or []]
    return EngineResult(results_dir=str(job.dir), artifacts=arts, metrics=metrics, warnings=warnings)


class _AutomlFailed(MalError):
    code = "automl_failed"
