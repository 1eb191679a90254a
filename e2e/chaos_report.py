"""The chaos tests' figures: printed, and merged into the JSON file IPOOL_CHAOS_REPORT names (never asserted on)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def report(fault: str, figures: dict) -> None:
    print(json.dumps({fault: figures}, indent=1))
    path = os.environ.get("IPOOL_CHAOS_REPORT")
    if path:
        known = json.loads(Path(path).read_text()) if Path(path).exists() else {}
        Path(path).write_text(json.dumps({**known, fault: figures}, indent=1))
