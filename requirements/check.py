"""Check that this Python environment holds exactly what a lock names, and that ``pip check`` is clean apart from the
dependencies a lock deliberately leaves out.

    python requirements/check.py requirements-dev.txt --excludes requirements/excludes-dev.txt
    python requirements/check.py requirements.txt

Exit status 0 when the environment equals the lock: every requirement whose marker applies here is installed at the
pinned version (``==`` in PEP 440's sense, so ``torch==2.13.0`` in the app lock is met by the ``2.13.0+cpu`` build),
nothing else is installed apart from pip (the installer itself) and the project (installed from the working tree for
its entry point), and every complaint of ``pip check`` names a package listed in the excludes file (none without one).
Otherwise it prints each difference and exits 1. ``.ci/run`` runs it on the README's two venvs; tests/test_lock.py
runs the same functions.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "prunescope"
NOT_LOCKED = {"pip", PROJECT}  # the installer that made the venv, and the project itself


def lock_entries(path: Path) -> dict[str, str]:
    """``{name: pinned version}`` of the lock's requirements whose markers apply to this interpreter (hash and
    comment lines are skipped; a requirement continued over several lines with ``\\`` is joined first)."""
    text = re.sub(r"\\\n", " ", Path(path).read_text())
    pins = {}
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        line = re.sub(r"\s--hash=\S+", "", line).strip()
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            raise ValueError(f"{path}: {line!r} is not pinned with == (a lock pins every package exactly)")
        pins[canonicalize_name(req.name)] = specs[0].version
    return pins


def input_pins(path: Path) -> dict[str, str]:
    """``{name: version}`` of the ``==`` pins in an input file (``-r`` includes followed), for the requirements whose
    markers apply here."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            pins.update(input_pins(Path(path).parent / line[3:].strip()))
        elif line:
            req = Requirement(line)
            if (req.marker is None or req.marker.evaluate()) and len(req.specifier) == 1:
                spec = next(iter(req.specifier))
                if spec.operator == "==":
                    pins[canonicalize_name(req.name)] = spec.version
    return pins


def installed() -> dict[str, str]:
    """``{name: version}`` of every distribution importlib.metadata sees in this environment."""
    return {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}


def differences(pins: dict[str, str], have: dict[str, str]) -> list[str]:
    """What keeps ``have`` from equalling the lock ``pins``, one sentence each (empty: equal)."""
    said = []
    for name, version in sorted(pins.items()):
        if name not in have:
            said.append(f"{name}=={version} is locked but not installed")
        elif not Requirement(f"{name}=={version}").specifier.contains(have[name], prereleases=True):
            said.append(f"{name} {have[name]} is installed, the lock says =={version}")
    for name in sorted(set(have) - set(pins) - NOT_LOCKED):
        said.append(f"{name} {have[name]} is installed but the lock does not name it")
    return said


def excluded(path: Path | None) -> set[str]:
    if path is None:
        return set()
    lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines())
    return {canonicalize_name(line) for line in lines if line}


_MISSING = re.compile(r"^(\S+) \S+ requires (\S+), which is not installed\.$")


def pip_check_complaints(output: str, allowed: set[str]) -> list[str]:
    """The lines of ``pip check``'s output that the excludes file does not explain."""
    left = []
    for line in output.splitlines():
        line = line.strip()
        if not line or line == "No broken requirements found.":
            continue
        m = _MISSING.match(line)
        if m is None or canonicalize_name(m.group(2)) not in allowed:
            left.append(line)
    return left


def run_pip_check() -> str:
    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    return proc.stdout + proc.stderr


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("lock", type=Path)
    ap.add_argument("--excludes", type=Path, default=None,
                    help="the lock's excludes file: pip check may name only these as missing")
    args = ap.parse_args(argv)
    said = differences(lock_entries(args.lock), installed())
    said += [f"pip check: {line}" for line in pip_check_complaints(run_pip_check(), excluded(args.excludes))]
    for line in said:
        print(f"{args.lock}: {line}")
    if not said:
        print(f"{args.lock}: this environment ({sys.prefix}) holds exactly the locked packages; pip check is clean"
              + (f" apart from {args.excludes}" if args.excludes else ""))
    return 1 if said else 0


if __name__ == "__main__":
    sys.exit(main())
