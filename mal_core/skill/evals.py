"""``mal evals``: run the agent evals shipped in ``evals/evals.json`` as dry runs and check each plan.

Each case is a user request as an agent receives it, the runner arguments an agent following ``skill.md`` passes,
and the plan it must get: exit code, route, ``automl_policy``, resolved data-source keys, the parent checkpoint, spec
values, or the error field of an exit 2. Cases run in this process through :func:`mal_core.skill.runner.main` with
``--dry-run`` (no training, no job folder), against fixtures built in a temporary folder:

* ``{data}``: a data root laid out like the bucket of skill.md's examples (``train/``, ``eval/``, ``infer/``, each
  with ``images.tar.gz`` and ``annotations.json``);
* ``{jobs}``: a jobs root holding the fixture jobs (train jobs with checkpoints and a validation history, an AutoML
  job with a best trial, an export job with an ``.onnx`` file);
* ``skill_root.drop``: a case may run against a copy of the skill root without some packaged files.

``{data}`` and ``{jobs}`` are substituted in arguments and expectations. One line per case, then
``N passed, M failed``; the exit code is 1 when any case fails.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mal_core.errors import MalError

SKILL_ROOT = Path(__file__).resolve().parents[2]
EVALS_FILE = "evals/evals.json"
#: Keys a case's ``expect`` may hold.
EXPECT_KEYS = ("exit", "status", "route", "automl_policy", "message", "data_sources", "parent", "spec",
               "error_field", "error_code")
#: Top-level result fields compared for equality.
_PLAIN = ("status", "route", "automl_policy")


class EvalsError(MalError):
    """``evals.json`` is missing or malformed."""

    code = "invalid_evals"


@dataclass
class CaseResult:
    """Outcome of one case: the failed checks (empty when it passed)."""

    case_id: str
    action: str
    problems: list[str]
    result: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        """Whether every check held."""
        return not self.problems


# ----- fixtures ------------------------------------------------------------------------------------------------------


def _write_dataset(folder: Path) -> None:
    """``images.tar.gz`` (one small PNG) and ``annotations.json`` (one box with a mask) in ``folder``."""
    from mal_core.skill.testing import minimal_coco

    staging = folder / "_staging"
    files = minimal_coco(staging)
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / "images.tar.gz", "w:gz") as tar:
        for img in sorted(Path(files["img"]).iterdir()):
            tar.add(img, arcname=img.name)
    shutil.copyfile(files["ann"], folder / "annotations.json")
    shutil.rmtree(staging)


def _join(base: Path, rel: str) -> Path:
    """``base / rel``, refused (:class:`EvalsError`) unless it resolves inside ``base`` (links included)."""
    target = base / rel
    real_base, real = os.path.realpath(base), os.path.realpath(target)
    if Path(rel).is_absolute() or not real.startswith(real_base.rstrip(os.sep) + os.sep):
        raise EvalsError(f"evals fixture path {rel!r} leaves its folder {base}", field="fixtures",
                         hint="everything an evals file names stays inside the eval's own temp folder")
    return target


def _write_checkpoints(folder: Path, spec: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in spec.get("checkpoints", []):
        _join(folder, name).write_bytes(b"fixture checkpoint: dry runs never open it")
    for name in spec.get("files", []):
        _join(folder, name).parent.mkdir(parents=True, exist_ok=True)
        _join(folder, name).write_bytes(b"fixture file: dry runs never open it")
    for name in spec.get("folders", []):  # e.g. a pretrain job's pretrained_model/
        _join(folder, name).mkdir(parents=True, exist_ok=True)
        (_join(folder, name) / "config.json").write_text("{}")
    history = spec.get("history")
    if history:
        (folder / "validation_history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))


def _write_job(jobs: Path, job_id: str, spec: dict[str, Any]) -> None:
    job_dir = _join(jobs, job_id)
    _write_checkpoints(job_dir, spec)
    record: dict[str, Any] = {"job_id": job_id, "action": spec.get("action", "train"), "status": "success",
                              "route": spec.get("route", "direct"), "results_dir": str(job_dir)}
    trial = spec.get("best_trial")
    if trial:
        trial_dir = _join(job_dir / "trials", trial["trial_id"])
        _write_checkpoints(trial_dir, trial)
        record["automl"] = {"best_trial": {"trial_id": trial["trial_id"], "results_dir": str(trial_dir)}}
    if spec.get("artifacts"):  # name -> a file of the job folder, recorded with its full path
        record["artifacts"] = {name: str(_join(job_dir, rel)) for name, rel in spec["artifacts"].items()}
    (job_dir / "job.json").write_text(json.dumps(record))
    if spec.get("spec"):  # the resolved spec the job ran with (a child job may copy keys of it)
        import yaml

        (job_dir / "spec.yaml").write_text(yaml.safe_dump(spec["spec"]))


def _skill_copy(root: Path, dest: Path, drop: list[str]) -> Path:
    for name in ("references", "schemas"):
        shutil.copytree(root / name, dest / name)
    for rel in drop:
        _join(dest, rel).unlink(missing_ok=True)
    return dest


def build_fixtures(fixtures: dict[str, Any], workdir: Path) -> dict[str, str]:
    """Create the data root and the jobs root of ``fixtures`` under ``workdir``; returns the placeholders."""
    data, jobs = workdir / "data", workdir / "jobs"
    data.mkdir(parents=True, exist_ok=True)
    for name in fixtures.get("data", []):
        _write_dataset(_join(data, name))
    jobs.mkdir(parents=True, exist_ok=True)
    for job_id, spec in fixtures.get("jobs", {}).items():
        _write_job(jobs, job_id, _subst(spec, {"{data}": str(data)}))
    return {"{data}": str(data), "{jobs}": str(jobs)}


def _subst(obj: Any, places: dict[str, str]) -> Any:
    if isinstance(obj, str):
        for key, value in places.items():
            obj = obj.replace(key, value)
        return obj
    if isinstance(obj, list):
        return [_subst(v, places) for v in obj]
    if isinstance(obj, dict):
        return {k: _subst(v, places) for k, v in obj.items()}
    return obj


# ----- loading -------------------------------------------------------------------------------------------------------

#: Fixture keys of a job (and of its best trial) that name files or folders to create, relative to its folder.
_NAME_LISTS = ("checkpoints", "files", "folders")
#: Types of the optional ``expect`` values (``exit`` is an int).
_EXPECT_TYPES: dict[str, type | tuple[type, ...]] = {
    "status": str, "route": str, "automl_policy": str, "message": str, "error_field": (str, type(None)),
    "error_code": str, "data_sources": dict, "parent": dict, "spec": dict}


def _bad(path: Path, where: str, what: str) -> EvalsError:
    return EvalsError(f"evals file {str(path)!r}: {where} {what}", field=where,
                      hint="fix the evals file; everything it names stays inside the eval's own temp folder")


def _check_name(path: Path, where: str, name: Any, *, single: bool = False) -> None:
    """``name`` is a relative path that stays inside the folder it is joined to (one plain name when ``single``)."""
    if not isinstance(name, str) or not name.strip():
        raise _bad(path, where, f"must be a non-empty string, got {name!r}")
    parts = Path(name).parts
    if (Path(name).is_absolute() or "\0" in name or any(p in ("..", ".") for p in parts) or (single and len(parts) != 1)
            or name.startswith("~")):
        raise _bad(path, where, f"{name!r} must be a {'plain name' if single else 'relative path'} without '..' "
                   "(absolute paths and paths leaving the eval's temp folder are refused)")


def _check_list(path: Path, where: str, value: Any, *, names: bool = True) -> list[Any]:
    if not isinstance(value, list):
        raise _bad(path, where, f"must be a list, got {type(value).__name__}")
    if names:
        for i, name in enumerate(value):
            _check_name(path, f"{where}[{i}]", name)
    return value


def _check_job_files(path: Path, where: str, spec: Any) -> None:
    if not isinstance(spec, dict):
        raise _bad(path, where, f"must be an object, got {type(spec).__name__}")
    for key in _NAME_LISTS:
        if key in spec:
            _check_list(path, f"{where}.{key}", spec[key])
    if "history" in spec:
        for i, row in enumerate(_check_list(path, f"{where}.history", spec["history"], names=False)):
            if not isinstance(row, dict):
                raise _bad(path, f"{where}.history[{i}]", "must be an object")


def _check_fixtures(path: Path, fixtures: Any) -> None:
    """Every name a fixture creates is a relative path inside the temp folder; :class:`EvalsError` naming it."""
    if not isinstance(fixtures, dict):
        raise _bad(path, "fixtures", f"must be an object, got {type(fixtures).__name__}")
    for i, name in enumerate(_check_list(path, "fixtures.data", fixtures.get("data", []))):
        _check_name(path, f"fixtures.data[{i}]", name)
    jobs = fixtures.get("jobs", {})
    if not isinstance(jobs, dict):
        raise _bad(path, "fixtures.jobs", f"must be an object of job id -> job, got {type(jobs).__name__}")
    for job_id, spec in jobs.items():
        where = f"fixtures.jobs.{job_id}"
        _check_name(path, where, job_id, single=True)
        _check_job_files(path, where, spec)
        for key in ("action", "route"):
            if key in spec and not isinstance(spec[key], str):
                raise _bad(path, f"{where}.{key}", "must be a string")
        if "spec" in spec and not isinstance(spec["spec"], dict):
            raise _bad(path, f"{where}.spec", "must be an object (the job's resolved spec tree)")
        for name, rel in (spec.get("artifacts") or {}).items():
            _check_name(path, f"{where}.artifacts.{name}", rel)
        if spec.get("best_trial") is not None:
            _check_job_files(path, f"{where}.best_trial", spec["best_trial"])
            _check_name(path, f"{where}.best_trial.trial_id", spec["best_trial"].get("trial_id"), single=True)


def _check_case_types(path: Path, where: str, case: dict[str, Any]) -> None:
    """Field types of one case, its ``skill_root.drop`` paths and its ``expect`` values."""
    _check_name(path, f"{where}.id", case["id"], single=True)
    if not isinstance(case["request"], str):
        raise _bad(path, f"{where}.request", "must be a string")
    if not isinstance(case["expect"], dict):
        raise _bad(path, f"{where}.expect", f"must be an object, got {type(case['expect']).__name__}")
    exit_code = case["expect"].get("exit")
    if not isinstance(exit_code, int) or isinstance(exit_code, bool):
        raise _bad(path, f"{where}.expect.exit", f"must be an integer exit code, got {exit_code!r}")
    for key, kind in _EXPECT_TYPES.items():
        if key in case["expect"] and not isinstance(case["expect"][key], kind):
            raise _bad(path, f"{where}.expect.{key}", f"has the wrong type ({type(case['expect'][key]).__name__})")
    root = case.get("skill_root", {})
    if not isinstance(root, dict):
        raise _bad(path, f"{where}.skill_root", "must be an object")
    _check_list(path, f"{where}.skill_root.drop", root.get("drop", []))


def load_evals(path: Path) -> dict[str, Any]:
    """Read and check ``evals.json``; :class:`EvalsError` naming the file and the bad case/key."""
    from mal_core.config.actions import ACTIONS

    if not path.is_file():
        raise EvalsError(f"evals file {str(path)!r} does not exist", field="evals")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise EvalsError(f"evals file {str(path)!r} cannot be read: {exc.strerror}", field="evals") from exc
    except RecursionError as exc:
        raise EvalsError(f"evals file {str(path)!r} is nested too deeply", field="evals") from exc
    except ValueError as exc:
        raise EvalsError(f"evals file {str(path)!r} is not valid JSON: {exc}", field="evals") from exc
    cases = doc.get("cases") if isinstance(doc, dict) else None
    if not isinstance(cases, list) or not cases:
        raise EvalsError(f"evals file {str(path)!r} needs a non-empty list 'cases'", field="cases")
    seen: set[str] = set()
    for i, case in enumerate(cases):
        where = f"cases[{i}]"
        if not isinstance(case, dict):
            raise EvalsError(f"{path}: {where} must be an object", field=where)
        for key in ("id", "request", "action", "args", "expect"):
            if key not in case:
                raise EvalsError(f"{path}: {where} lacks {key!r}", field=f"{where}.{key}")
        _check_case_types(path, where, case)
        if case["id"] in seen:
            raise EvalsError(f"{path}: {where} repeats the id {case['id']!r}", field=f"{where}.id")
        seen.add(case["id"])
        if case["action"] not in ACTIONS:
            raise EvalsError(f"{path}: {where} has unknown action {case['action']!r}; expected one of "
                             f"{list(ACTIONS)}", field=f"{where}.action")
        if not isinstance(case["args"], list) or not all(isinstance(a, str) for a in case["args"]):
            raise EvalsError(f"{path}: {where}.args must be a list of strings", field=f"{where}.args")
        unknown = sorted(set(case["expect"]) - set(EXPECT_KEYS))
        if unknown or "exit" not in case["expect"]:
            raise EvalsError(f"{path}: {where}.expect needs 'exit' and only {list(EXPECT_KEYS)} (got {unknown})",
                             field=f"{where}.expect")
    _check_fixtures(path, doc.get("fixtures", {}))
    return doc


# ----- checking ------------------------------------------------------------------------------------------------------


def _check_values(label: str, want: dict[str, Any], have: dict[str, Any]) -> list[str]:
    """``want`` values compared with ``have``; a string value starting with ``...`` only has to end the same."""
    problems = []
    for key, value in want.items():
        got = have.get(key)
        if isinstance(value, str) and value.startswith("...") and isinstance(got, str):
            if not got.endswith(value[3:]):
                problems.append(f"{label} {key}: expected ...{value[3:]!r}, got {got!r}")
        elif got != value:
            problems.append(f"{label} {key}: expected {value!r}, got {got!r}")
    return problems


def check_result(expect: dict[str, Any], code: int, out: dict[str, Any]) -> list[str]:
    """Every way ``out`` (the runner's JSON line) and ``code`` differ from ``expect``."""
    from mal_core.config.loader import get_dotted

    problems = [] if code == expect["exit"] else [f"exit: expected {expect['exit']}, got {code}"]
    problems += _check_values("result", {k: expect[k] for k in _PLAIN if k in expect}, out)
    error = out.get("error") or {}
    if "error_field" in expect and error.get("field") != expect["error_field"]:
        problems.append(f"error field: expected {expect['error_field']!r}, got {error.get('field')!r} "
                        f"({error.get('message')})")
    if "error_code" in expect and error.get("code") != expect["error_code"]:
        problems.append(f"error code: expected {expect['error_code']!r}, got {error.get('code')!r}")
    if "message" in expect and expect["message"] not in str(out.get("message") or error.get("message") or ""):
        problems.append(f"message: expected to contain {expect['message']!r}, got {out.get('message')!r}")
    plan = out.get("plan") or {}
    if "data_sources" in expect:
        resolved = {s["key"]: s["uri"] for s in plan.get("data_sources", [])}
        if set(resolved) != set(expect["data_sources"]):
            problems.append(f"data sources: expected keys {sorted(expect['data_sources'])}, got {sorted(resolved)}")
        problems += _check_values("data source", expect["data_sources"], resolved)
    if "parent" in expect:
        parent = plan.get("parent")
        if parent is None:
            problems.append("parent: expected a parent checkpoint, the plan has none")
        else:
            problems += _check_values("parent", expect["parent"], parent)
    if "spec" in expect:
        tree = plan.get("spec") or {}
        problems += _check_values("spec", expect["spec"], {k: get_dotted(tree, k) for k in expect["spec"]})
    return problems


def run_case(case: dict[str, Any], places: dict[str, str], skill_root: Path) -> CaseResult:
    """Run one case as a dry run and check it."""
    from mal_core.skill.runner import main as runner_main
    from mal_core.skill.testing import last_json_line

    args = _subst(case["args"], places) + ["--dry-run", "--jobs-root", places["{jobs}"]]
    if skill_root != SKILL_ROOT:
        args += ["--skill-root", str(skill_root)]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = runner_main(case["action"], args)
    try:
        out = last_json_line(stdout.getvalue())
    except (AssertionError, ValueError):
        return CaseResult(case["id"], case["action"], [f"no JSON result line (exit {code})"], None)
    return CaseResult(case["id"], case["action"], check_result(_subst(case["expect"], places), code, out), out)


def run_evals(path: Path, skill_root: Path = SKILL_ROOT, echo: Any = print) -> list[CaseResult]:
    """Build the fixtures of ``path``, run every case, ``echo`` one line per case and the closing line."""
    doc = load_evals(path)
    results: list[CaseResult] = []
    with tempfile.TemporaryDirectory(prefix="mal_evals_") as tmp:
        work = Path(tmp)
        places = build_fixtures(doc.get("fixtures", {}), work)
        for case in doc["cases"]:
            drop = case.get("skill_root", {}).get("drop", [])
            root = _skill_copy(skill_root, _join(work / "skill", case["id"]), drop) if drop else skill_root
            res = run_case(case, places, root)
            results.append(res)
            echo(f"{'PASS' if res.ok else 'FAIL'} {res.case_id} ({res.action}): {case['request']}")
            for problem in res.problems:
                echo(f"    {problem}")
    failed = sum(not r.ok for r in results)
    echo(f"{len(results) - failed} passed, {failed} failed")
    return results


def main(argv: list[str] | None = None) -> int:
    """``mal evals [--file evals/evals.json]``; 0 when every case passes, 1 otherwise, 2 for a bad evals file."""
    p = argparse.ArgumentParser(prog="mal evals", description="Run the agent evals (dry runs) and check each plan.")
    p.add_argument("--file", type=Path, default=SKILL_ROOT / EVALS_FILE, help=f"evals file (default: {EVALS_FILE})")
    p.add_argument("--skill-root", type=Path, default=SKILL_ROOT, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        results = run_evals(args.file, args.skill_root.resolve())
    except MalError as exc:
        print(f"error: {exc.message}" + (f" (field: {exc.field})" if exc.field else ""), file=sys.stderr)
        return 2
    return 0 if all(r.ok for r in results) else 1
