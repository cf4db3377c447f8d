"""Check the wheel this project builds, installed the way a user installs it (``make wheel-check``).

1. Builds the wheel with ``pip wheel . --no-deps`` (hatchling, in pip's isolated build environment).
2. Checks what it holds against the source tree as it is now: every module and ``py.typed`` under
   ``flyteplugins/mlflow`` (so every subpackage, whatever the layout), no ``flyteplugins/__init__.py``
   (the ``flyteplugins`` namespace is shared with Flyte's other plugins), and nothing else but its
   ``.dist-info``.
3. Makes a fresh venv in a temporary directory away from the source tree and installs the wheel
   into it; its dependencies come from the package index, through pip's cache. The venv gets no pip
   of its own: this venv's pip installs into it (``pip --python``).
4. Copies ``tests/`` next to the venv and runs the smoke test (``tests/test_smoke.py``) there with
   the venv's Python, after checking that ``flyteplugins.mlflow`` is imported from the venv.

Exits 1 if any step fails. The temporary directory is removed in the background afterwards. Usage:
``python tools/wheel_check.py [--keep]`` (``--keep`` leaves it in place and prints where it is).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path("flyteplugins", "mlflow")
SMOKE = "tests/test_smoke.py"
# What tests/conftest.py and tests/helpers/support.py import besides the package and its dependencies.
TEST_REQUIREMENTS = ("pytest>=8", "playwright>=1.40", "trustme>=1.1")

# Run with the venv's Python in the temporary directory: where the package comes from, then the test.
_SMOKE_RUN = """
import importlib.util
import sys
from pathlib import Path

import pytest

spec = importlib.util.find_spec("flyteplugins.mlflow")  # found, not imported: pytest imports it
assert spec is not None and spec.origin is not None, "flyteplugins.mlflow is not installed"
where = Path(spec.origin).resolve()
venv = Path(sys.argv[1]).resolve()
if venv not in where.parents:
    sys.exit(f"flyteplugins.mlflow was imported from {where}, not from the venv {venv}")
print(f"flyteplugins.mlflow imported from {where}", flush=True)
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", sys.argv[2]]))
"""


def expected_files(root: Path = ROOT) -> set[str]:
    """The package's files the wheel must hold, as wheel paths: every module and ``py.typed``."""
    package = root / PACKAGE
    return {
        path.relative_to(root).as_posix()
        for path in package.rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and (path.suffix == ".py" or path.name == "py.typed")
    }


def problems(names: set[str], expected: set[str]) -> list[str]:
    """What is wrong with a wheel holding ``names``, given the files it must hold."""
    found: list[str] = []
    missing = sorted(expected - names)
    if missing:
        packages = sorted({str(Path(name).parent).replace("/", ".") for name in missing})
        found.append(f"missing {len(missing)} file(s), of the packages {', '.join(packages)}: {missing}")
    if "flyteplugins/__init__.py" in names:
        found.append("flyteplugins/__init__.py would shadow the namespace Flyte's other plugins share")
    prefix = PACKAGE.as_posix() + "/"
    stray = sorted(n for n in names if not n.startswith(prefix) and ".dist-info/" not in n)
    if stray:
        found.append(f"files outside {prefix} and the .dist-info: {stray}")
    return found


def _step(name: str, command: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    """Run one step; return its seconds, or exit 1 with its name if it fails."""
    print(f"--- {name}", flush=True)
    started = time.monotonic()
    if subprocess.run(command, cwd=cwd, env=env, check=False).returncode != 0:
        sys.exit(f"wheel check failed: {name}")
    return time.monotonic() - started


def check(work: Path) -> dict[str, float]:
    """Build, inspect, install and smoke-test the wheel in ``work``; return each step's seconds."""
    times: dict[str, float] = {}
    dist = work / "dist"
    pip = [sys.executable, "-m", "pip"]
    times["build"] = _step(
        "build the wheel", [*pip, "wheel", str(ROOT), "--no-deps", "-qq", "-w", str(dist)], ROOT
    )
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    expected = expected_files()
    wrong = problems(names, expected)
    if wrong:
        sys.exit("wheel check failed: " + "; ".join(wrong))
    packages = sorted({str(Path(n).parent).replace("/", ".") for n in expected})
    print(f"{wheel.name}: {len(expected)} files of {', '.join(packages)}, py.typed included", flush=True)

    venv = work / "venv"
    python = venv / "bin" / "python"
    times["venv"] = _step(
        "make a fresh venv", [sys.executable, "-m", "venv", "--without-pip", str(venv)], work
    )
    install = [
        *pip,
        "--python",
        str(python),
        "install",
        "-qq",
        "--no-compile",
        str(wheel),
        *TEST_REQUIREMENTS,
    ]
    times["install"] = _step("install the wheel and the test tools into it", install, work)

    shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    smoke = [str(python), "-c", _SMOKE_RUN, str(venv), SMOKE]
    times["smoke"] = _step(f"run {SMOKE} against the installed wheel", smoke, work, env)
    return times


def main(argv: list[str]) -> int:
    """Check the wheel in a temporary directory; print each step's time."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="wheel-check-"))
    started = time.monotonic()
    times: dict[str, float] = {}
    try:
        times.update(check(work))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            # The venv holds MLflow's dependencies, about 900 MB in small files: deleting them took 40 s
            # here, so it goes on in the background, in a session of its own, after the check returns.
            subprocess.Popen(["rm", "-rf", str(work)], start_new_session=True)
            print(f"removing {work} in the background")
    steps = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in times.items())
    print(f"wheel check passed in {time.monotonic() - started:.0f}s ({steps})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
