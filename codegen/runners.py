"""``runners/<action>.py``: thin generated scripts that call :func:`mal_core.skill.runner.main` for one action.

``python runners/train.py --spec FILE.yaml --set train.num_epochs=5`` is ``mal train --spec FILE.yaml --set ...``;
the last stdout line is a JSON result (see ``mal_core/skill/runner.py``).
The scripts put the skill root on ``sys.path`` (so they work from a plain checkout) and drop their own folder from it
(so ``runners/evaluate.py`` can never shadow a package named ``evaluate``).
"""

from __future__ import annotations

from string import Template

from codegen import header_text

_TEMPLATE = Template('''\
# $header
"""Run the MAL $action action: ``python runners/$action.py --spec FILE.yaml [--spec-overrides JSON] [--dry-run]``.

Same as ``mal $action``; ``--help`` lists the options. The last stdout line is one JSON object (action, job_id,
status, route, automl_policy, results_dir, spec_path, artifacts, metrics, error). Exit codes: 0 success, 2 bad input,
1 runtime failure.
"""

from __future__ import annotations

import sys
from pathlib import Path

ACTION = "$action"
_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent


def main(argv: list[str] | None = None) -> int:
    """Run the $action action with ``argv`` (default: the command-line arguments); returns the exit code."""
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
    if str(_ROOT) not in sys.path:
        sys.path.insert(0, str(_ROOT))
    from mal_core.skill.runner import main as run_action

    return run_action(ACTION, sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
''')


def render_runner(action: str) -> str:
    """Source of ``runners/<action>.py``."""
    return _TEMPLATE.substitute(header=header_text("codegen/runners.py"), action=action)
