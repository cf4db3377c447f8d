"""A fast end-to-end subset on every CPython 3.10 or newer found here, each in a venv of its own
(``make test-pythons``).

The subset: the documented API's first run (``test_smoke``), the run modes, parallel trials, final
statuses, and the typing file (``tests/typing/check_api.py`` under ``mypy --strict`` for that
version). The interpreters are looked for on ``PATH`` (``python3.10`` and up) and under pyenv
(``$PYENV_ROOT/versions``, by default ``~/.pyenv/versions``). Each venv lives under
``.venv-pythons/`` and is named after the version and a hash of ``pyproject.toml``, so it is built
once and rebuilt when the dependencies change. Exits 1 if the subset fails on any of them, or if
none is found.

Usage: ``python tools/test_pythons.py [--list] [--skip-current]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / ".venv-pythons"
OLDEST = (3, 10)
NEWEST_MINOR = 20  # python3.10 ... python3.20 on PATH
TESTS = (
    "tests/test_smoke.py",
    "tests/test_run_modes.py",
    "tests/test_concurrency.py",
    "tests/test_status.py",
)
TYPING_FILE = "tests/typing/check_api.py"
_PROBE = "import platform, sys; print(platform.python_implementation(), *sys.version_info[:3])"


def _version(python: Path) -> tuple[int, int, int] | None:
    """The version of ``python`` if it is a CPython that runs, else ``None``."""
    try:
        out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    name, *numbers = out.stdout.split()
    if name != "CPython":
        return None
    major, minor, micro = (int(n) for n in numbers)
    return major, minor, micro


def candidates() -> list[Path]:
    """Every interpreter that might be a CPython 3.10 or newer: under pyenv, then on ``PATH``."""
    found: list[Path] = []
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if pyenv.is_dir():
        found += sorted(p / "bin" / "python" for p in pyenv.iterdir() if (p / "bin" / "python").exists())
    for minor in range(OLDEST[1], NEWEST_MINOR + 1):
        where = shutil.which(f"python3.{minor}")
        if where:
            found.append(Path(where))
    return found


def pythons() -> dict[tuple[int, int, int], Path]:
    """One interpreter per CPython version (3.10 or newer), oldest first; the first one found wins."""
    by_version: dict[tuple[int, int, int], Path] = {}
    for python in candidates():
        version = _version(python)
        if version is not None and version[:2] >= OLDEST and version not in by_version:
            by_version[version] = python
    return dict(sorted(by_version.items()))


def pyproject_key() -> str:
    """A short hash of ``pyproject.toml``: a venv named with it is rebuilt when the dependencies change."""
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:12]


def build_venv(python: Path, venvs: Path, name: str, requirements: list[str]) -> Path:
    """The venv ``venvs/<name>-<pyproject key>``, built once with ``requirements`` by ``python``.

    A venv of the same name built for another ``pyproject.toml`` is removed first. The venv counts as
    built only once everything is installed, so an interrupted build is redone.
    """
    venv = venvs / f"{name}-{pyproject_key()}"
    stamp = venv / ".installed"
    if stamp.exists():
        return venv
    for stale in venvs.glob(f"{name}-*"):
        shutil.rmtree(stale)
    subprocess.run([python, "-m", "venv", venv], check=True)
    # -qq: errors only (this machine's index warns once per name); bytecode is compiled when imported
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-qq", "--no-compile"]
    subprocess.run([*pip, *requirements], check=True, cwd=ROOT)
    stamp.touch()
    return venv


def venv_for(python: Path, version: tuple[int, int, int]) -> Path:
    """The venv for ``version``, built (once per ``pyproject.toml``) with the package and the tools."""
    return build_venv(python, VENVS, ".".join(map(str, version)), ["-e", f"{ROOT}[pythons]"])


def run_in(venv: Path, *args: str, log: IO[str] | None = None) -> bool:
    """Run ``venv``'s Python with ``args`` in the project's root (importable, for ``tests``), its output
    to ``log`` (else to ours); whether it succeeded."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("VIRTUAL_ENV", None)
    command = [str(venv / "bin" / "python"), *args]
    if log is not None:
        log.flush()
    done = subprocess.run(
        command, cwd=ROOT, env=env, check=False, stdout=log, stderr=subprocess.STDOUT if log else None
    )
    return done.returncode == 0


def check(venv: Path, version: tuple[int, int, int]) -> list[str]:
    """Run the subset with ``venv``'s Python; return what failed."""
    failed: list[str] = []
    if not run_in(venv, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS):
        failed.append("pytest")
    typing = [
        "-m", "mypy", "--python-version", f"{version[0]}.{version[1]}",
        "--cache-dir", str(venv / ".mypy_cache"), TYPING_FILE,
    ]  # fmt: skip
    if not run_in(venv, *typing):
        failed.append("mypy")
    return failed


def main(argv: list[str]) -> int:
    """Run the subset on every CPython 3.10 or newer found; 1 if any fails or none is found."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the interpreters found, then stop")
    parser.add_argument(
        "--skip-current",
        action="store_true",
        help="leave out the version of the Python running this script (make test runs the whole suite there)",
    )
    args = parser.parse_args(argv)
    found = pythons()
    if args.skip_current:
        found = {v: p for v, p in found.items() if v != tuple(sys.version_info[:3])}
    if args.list or not found:
        for version, python in found.items():
            print(f"{'.'.join(map(str, version))}: {python}")
        if not found:
            print(
                "no other CPython 3.10 or newer found"
                if args.skip_current
                else "no CPython 3.10 or newer found"
            )
        return 0 if found or args.skip_current else 1
    results: dict[str, str] = {}
    started = time.monotonic()
    # Venvs are built two at a time, while the subset runs on those already built.
    with ThreadPoolExecutor(max_workers=2) as pool:
        venvs = {version: pool.submit(venv_for, python, version) for version, python in found.items()}
        for version, python in found.items():
            name = ".".join(map(str, version))
            try:
                venv = venvs[version].result()
            except subprocess.CalledProcessError as e:
                results[name] = f"failed: venv set-up ({e})"
                continue
            began = time.monotonic()
            print(f"--- Python {name} ({python})", flush=True)
            failed = check(venv, version)
            took = time.monotonic() - began
            results[name] = f"{'failed: ' + ', '.join(failed) if failed else 'passed'} in {took:.0f}s"
            print(f"--- Python {name}: {results[name]}", flush=True)
    for name, result in results.items():
        print(f"Python {name}: {result}")
    print(f"{len(results)} Python(s) in {time.monotonic() - started:.0f}s, venvs included")
    return 1 if any(not r.startswith("passed") for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
