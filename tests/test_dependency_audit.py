"""The dependency gate CI runs (.ci/run → make audit → .ci/audit.py) really fails on a known hole."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _audit_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ci_audit", ROOT / ".ci" / "audit.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ci_audit"] = mod  # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    return mod


def test_ci_runs_the_audit() -> None:
    assert "make audit" in (ROOT / ".ci" / "run").read_text()
    assert ".ci/audit.py" in (ROOT / "Makefile").read_text()


def test_snapshot_flags_the_starlette_range_dos_and_clears_the_floor() -> None:
    audit = _audit_module()
    snapshot = audit.load_snapshot(ROOT / ".ci" / "advisories.json")
    findings, _ = audit.audit(snapshot, {"starlette": "0.47.0"})
    ids = {a for f in findings for a in (f.advisory_id, *f.aliases)}
    assert "CVE-2025-62727" in ids
    findings, _ = audit.audit(snapshot, {"starlette": "1.3.1"})
    assert findings == []


def test_the_installed_set_has_no_known_vulnerability() -> None:
    r = subprocess.run([sys.executable, str(ROOT / ".ci" / "audit.py"), "--offline"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 known vulnerabilities" in r.stdout
