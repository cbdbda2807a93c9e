"""Model conformance across open_clip's families (scripts/conformance.py measures; this asserts): every backend auto
may choose agrees with torch fp32 in eval mode, a vector does not depend on its batch-mates, the torch-free
preprocessing and tokenizer equal open_clip's, and a first index run agrees with a later query. Seeded random
weights with the recipe of a published tag; Hugging Face files from stand-ins (tests/standins.py). Each family runs
in its own process: huggingface_hub reads its cache location once, at import."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import COCO_MINI

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "conformance.py"
sys.path.insert(0, str(SCRIPT.parent))
import conformance  # noqa: E402

NEEDS = {
    "timm": ("ConvNeXt", "EVA", "MobileCLIP", "MobileCLIP2", "SigLIP", "SigLIP2"),
    "transformers": ("SigLIP", "SigLIP2", "multilingual"),
}


def _params():
    for family in conformance.FAMILIES:
        marks = [pytest.mark.e2e]  # each builds a model and exports it: minutes apiece
        for package, families in NEEDS.items():
            if family.family in families:
                marks.append(
                    pytest.mark.skipif(
                        importlib.util.find_spec(package) is None, reason=f"{family.model} needs {package}"
                    )
                )
        yield pytest.param(family, marks=marks, id=family.model)


@pytest.mark.skipif(not COCO_MINI.exists(), reason="needs the shared photos")
@pytest.mark.parametrize("family", list(_params()))
def test_family_conforms(family, tmp_path):
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), IMGSEARCH_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), family.model, "--photos", "48", "--per-photo", "1", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.stdout.strip(), proc.stderr[-3000:]
    (row,) = json.loads(proc.stdout)
    assert row["problems"] == [] and proc.returncode == 0, json.dumps(row, indent=1)
    assert row["agreement"] and row["batch"] and row["tokenizer_mismatches"] == 0 and row["chosen"]
