"""Test modules in tests/ and e2e/ have distinct names.

Neither folder is a package, so pytest imports each test file under its bare name: two `test_x.py`, one in
each folder, make a run of both (the README's `python -m pytest`) stop at collection ("import file
mismatch"). A run of one folder alone never shows it; this does.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_test_module_name_is_in_both_folders():
    names = {folder: {p.name for p in (ROOT / folder).glob("*.py")} for folder in ("tests", "e2e")}
    assert not names["tests"] & names["e2e"], f"rename one of each: {sorted(names['tests'] & names['e2e'])}"
