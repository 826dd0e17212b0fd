"""Command line: ``mal train|evaluate|inference --spec FILE.yaml [--set dotted.key=value ...]``, ``mal demo``,
``mal codegen``. The actions run through :func:`mal_core.skill.runner.main` (same code as ``runners/<action>.py``;
``mal <action> --help`` lists every option).

Exit codes: 0 success, 2 bad input (nothing ran or the input was rejected), 1 runtime failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from mal_core.errors import MalError
from mal_core.utils.io import json_safe

ACTIONS = ("train", "evaluate", "inference")


def _action_parser(sub: argparse._SubParsersAction, action: str) -> None:
    p = sub.add_parser(action, help=f"run the {action} action as a job (see `mal {action} --help`)")
    p.add_argument("--spec", "-e", dest="spec", required=True, help="experiment spec YAML (TAO layout)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one spec value with a dotted key, e.g. --set train.num_epochs=5 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``mal`` argument parser."""
    parser = argparse.ArgumentParser(prog="mal", description="MAL: instance masks from box annotations.")
    sub = parser.add_subparsers(dest="command", required=True)
    for action in ACTIONS:
        _action_parser(sub, action)
    demo = sub.add_parser("demo", help="synthetic data -> train tiny model on CPU -> evaluate -> label")
    demo.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    demo.add_argument("--spec", "-e", default=None, help="recipe to train with (default: examples/cpu_tiny.yaml)")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    cg = sub.add_parser("codegen", help="regenerate schemas, templates, skill_info, runners and skill.md tables")
    cg.add_argument("--check", action="store_true", help="only report stale files; exit 1 if any")
    return parser


def run_action(action: str, spec_path: str, overrides: list[str]) -> dict:
    """Load the spec and run one action; returns the action's result dict."""
    from mal_core.config import check_for_action, parse_spec
    from mal_core.config.loader import read_yaml

    cfg, explicit = parse_spec(read_yaml(spec_path), overrides)
    check_for_action(cfg, action)
    if action == "train":
        from mal_core.engine.train import run_train

        return run_train(cfg)
    if action == "evaluate":
        from mal_core.engine.evaluate import run_evaluate

        return run_evaluate(cfg, explicit_keys=explicit)
    from mal_core.engine.inference import run_inference

    return run_inference(cfg, explicit_keys=explicit)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mal`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ACTIONS:
        from mal_core.skill.runner import main as skill_main

        return skill_main(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.command == "codegen":
            from codegen.__main__ import main as codegen_main

            return codegen_main(["--check"] if args.check else [])
        if args.command == "demo":
            from mal_core.demo import run_demo

            run_demo(args.out, spec_path=args.spec, overrides=args.overrides)
            return 0
        result = run_action(args.command, args.spec, args.overrides)
        print(json.dumps(json_safe(result), default=str))
        return 0
    except MalError as exc:
        print(f"error: {exc.message}" + (f" (field: {exc.field})" if exc.field else ""), file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
