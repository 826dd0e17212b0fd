"""Command line: ``mal <action> --spec FILE.yaml [--set dotted.key=value ...]`` for every action of the table
(:data:`mal_core.config.actions.ACTIONS`), ``mal demo``,
``mal codegen``, ``mal evals``. The actions run through :func:`mal_core.skill.runner.main` (same code as
``runners/<action>.py``; ``mal <action> --help`` lists every option).

Exit codes: 0 success, 2 bad input (nothing ran or the input was rejected), 1 runtime failure.
"""

from __future__ import annotations

import argparse
import logging
import sys

from mal_core.config.actions import ACTIONS
from mal_core.errors import MalError


def _action_parser(sub: argparse._SubParsersAction, action: str) -> None:
    # listed for `mal --help` only: `mal <action> ...` is handed to the skill runner before parsing
    sub.add_parser(action, help=f"run the {action} action as a job (options: `mal {action} --help`)")


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
    cg = sub.add_parser("codegen", help="regenerate schemas, templates, skill_info, runners and the tables of "
                        "skill.md and references/*.md")
    cg.add_argument("--check", action="store_true", help="only report stale files; exit 1 if any")
    sub.add_parser("evals", help="run the agent evals of evals/evals.json as dry runs (options: `mal evals --help`)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mal`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ACTIONS:
        from mal_core.skill.runner import main as skill_main

        return skill_main(argv[0], argv[1:])
    if argv and argv[0] == "evals":
        from mal_core.skill.evals import main as evals_main

        return evals_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.command == "codegen":
            from codegen.__main__ import main as codegen_main

            return codegen_main(["--check"] if args.check else [])
        from mal_core.demo import run_demo

        run_demo(args.out, spec_path=args.spec, overrides=args.overrides)
        return 0
    except MalError as exc:
        print(f"error: {exc.message}" + (f" (field: {exc.field})" if exc.field else ""), file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
