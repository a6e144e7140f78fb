"""Audit the installed distributions against a committed advisory snapshot (and PyPI when reachable).

CI here can reach package indexes only: pip-audit's PyPI service (per-release JSON) answers 404 and
api.osv.dev does not resolve, so pip-audit alone reports every package as "could not be audited" and
proves nothing. The snapshot (advisories.json, OSV ECOSYSTEM ranges) keeps the gate meaningful offline;
when the online service does answer, pip-audit runs as well and either failing fails the step.

Exit status: 0 clean, 1 known vulnerability (or pip-audit failure), 2 unusable snapshot.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

DEFAULT_SNAPSHOT = Path(__file__).with_name("advisories.json")
PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Finding:
    package: str
    version: str
    advisory_id: str
    aliases: tuple[str, ...]
    fixed: tuple[str, ...]
    summary: str


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_distributions() -> dict[str, str]:
    """Name -> version for every distribution visible to this interpreter (first one wins, as for imports)."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(normalize(name), dist.version)
    return found


def _bound(value: str) -> Version | None:
    # OSV's "0" means "from the first release"; None keeps that distinct from a real 0 version.
    return None if value == "0" else Version(value)


def in_range(version: Version, rng: dict[str, str]) -> bool:
    low = _bound(rng.get("introduced", "0"))
    if low is not None and version < low:
        return False
    if "fixed" in rng:
        return version < Version(rng["fixed"])
    if "last_affected" in rng:
        return version <= Version(rng["last_affected"])
    return True


def is_affected(version: Version, advisory: dict[str, Any]) -> bool:
    ranges: list[dict[str, str]] = advisory.get("ranges", [])
    if any(in_range(version, rng) for rng in ranges):
        return True
    listed: list[str] = advisory.get("versions", [])
    return any(_same_version(version, item) for item in listed)


def _same_version(version: Version, text: str) -> bool:
    try:
        return Version(text) == version
    except InvalidVersion:
        return False


def audit(snapshot: dict[str, Any], installed: dict[str, str]) -> tuple[list[Finding], list[str]]:
    findings: list[Finding] = []
    skipped: list[str] = []
    packages: dict[str, list[dict[str, Any]]] = snapshot["packages"]
    for name, raw_version in sorted(installed.items()):
        advisories = packages.get(name, [])
        if not advisories:
            continue
        try:
            version = Version(raw_version)
        except InvalidVersion:
            skipped.append(f"{name} {raw_version} (unparseable version, not checked)")
            continue
        for adv in advisories:
            if is_affected(version, adv):
                fixed = tuple(r["fixed"] for r in adv.get("ranges", []) if "fixed" in r)
                findings.append(
                    Finding(name, raw_version, adv["id"], tuple(adv.get("aliases", [])), fixed, adv.get("summary", ""))
                )
    return findings, skipped


def load_snapshot(path: Path) -> dict[str, Any]:
    data: Any = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("packages"), dict):
        raise TypeError(f"{path}: expected an object with a 'packages' mapping")
    return data


def pypi_answers(installed: dict[str, str]) -> bool:
    """Probe the per-release JSON endpoint pip-audit's PyPI service depends on."""
    version = installed.get("packaging", "26.0")
    url = f"https://pypi.org/pypi/packaging/{version}/json"
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, TimeoutError, OSError):
        return False


def run_pip_audit() -> int:
    # --skip-editable: the project itself is an editable install that is not on PyPI, and --strict would fail on it.
    cmd = [sys.executable, "-m", "pip_audit", "-s", "pypi", "--strict", "--skip-editable", "--progress-spinner", "off"]
    print("audit: running " + " ".join(cmd[1:]), flush=True)
    return subprocess.run(cmd, check=False).returncode


def report(findings: list[Finding]) -> None:
    for f in findings:
        also = f" ({', '.join(f.aliases)})" if f.aliases else ""
        fix = ", ".join(f.fixed) if f.fixed else "no fixed version"
        print(f"VULNERABLE {f.package} {f.version}: {f.advisory_id}{also}; fixed in {fix}; {f.summary}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--snapshot", type=Path, default=DEFAULT_SNAPSHOT, help="advisory snapshot (JSON)")
    parser.add_argument("--offline", action="store_true", help="do not probe PyPI or run pip-audit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        snapshot = load_snapshot(args.snapshot)
    except (OSError, ValueError, TypeError) as exc:
        print(f"audit: cannot use snapshot: {exc}", file=sys.stderr)
        return 2
    installed = installed_distributions()
    findings, skipped = audit(snapshot, installed)
    for line in skipped:
        print(f"audit: skipped {line}")
    report(findings)
    source, generated = snapshot.get("source", "?"), snapshot.get("generated", "?")
    vulnerable = len({(f.package, f.version) for f in findings})
    print(
        f"audit: {len(installed)} packages checked against {source} ({generated}): "
        f"{len(findings)} known vulnerabilities" + (f" in {vulnerable} package(s)" if findings else "")
    )
    status = 1 if findings else 0
    if args.offline:
        print("audit: --offline given; only the snapshot was used")
    elif importlib.util.find_spec("pip_audit") is None:
        print("audit: pip-audit is not installed; only the snapshot was used")
    elif not pypi_answers(installed):
        print("audit: PyPI vulnerability service unreachable (per-release JSON); only the snapshot was used")
    elif run_pip_audit() != 0:
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
