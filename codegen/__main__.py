"""``python -m codegen [--check] [--root DIR]``: regenerate (or check) every generated artifact.

Exit codes: 0 = written / up to date; 1 = ``--check`` found stale or missing files, or the sources are inconsistent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from codegen import COMMAND, REPO_ROOT, CodegenError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=COMMAND, description="Regenerate schemas, templates, skill_info, runners and "
                                "the generated tables of skill.md and references/*.md from the config dataclasses.")
    p.add_argument("--check", action="store_true", help="write nothing; list stale or missing files and exit 1")
    p.add_argument("--root", type=Path, default=REPO_ROOT, help="skill root to write/check (default: this repo)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run codegen; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        from codegen.writer import render_all, stale_files, write_outputs

        outputs = render_all(args.root)
    except (CodegenError, ValueError) as exc:
        print(f"codegen: error: {exc}", file=sys.stderr)
        return 1
    if args.check:
        problems = stale_files(outputs, args.root)
        for status, rel in problems:
            print(f"{status}: {rel}")
        if problems:
            print(f"codegen: {len(problems)} file(s) out of date; run `{COMMAND}`", file=sys.stderr)
            return 1
        print(f"codegen: {len(outputs)} files up to date")
        return 0
    written = write_outputs(outputs, args.root)
    for rel in written:
        print(f"wrote: {rel}")
    print(f"codegen: {len(written)} file(s) written, {len(outputs) - len(written)} unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
