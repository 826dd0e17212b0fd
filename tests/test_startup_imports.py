"""Start-up: a labelling job (inference, evaluate, export) does not import Lightning or torchmetrics, which only
training needs; their imports cost seconds before a labelling run can start (bench/latency.py measures them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAINING_ONLY = ("pytorch_lightning", "lightning_fabric", "torchmetrics")


def test_the_labelling_engine_imports_no_training_framework() -> None:
    probe = ("import json, sys\n"
             "import mal_core.engine.inference, mal_core.engine.evaluate, mal_core.engine.export\n"
             "import mal_core.engine.label_workers, mal_core.baselines\n"
             f"print(json.dumps([m for m in {TRAINING_ONLY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    probe_train = probe.replace("mal_core.engine.export\n", "mal_core.engine.export, mal_core.engine.train\n")
    out = subprocess.run([sys.executable, "-c", probe_train], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == list(TRAINING_ONLY)  # the probe itself sees them
