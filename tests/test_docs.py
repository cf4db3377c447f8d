"""The docs' Python snippets pass ``mypy --strict``, and the checker catches a wrong one.

The rule (also in README.md, "Writing the docs"): every ```` ```python ```` block of a page in
``docs/`` and of ``README.md`` is type-checked. A page's blocks are joined, in order, into one module,
so a later block may use what an earlier block on the same page defined or imported. A line
``<!-- snippets: new module -->`` starts a fresh module for the blocks after it (for alternatives
shown side by side, which define the same names). Console output, shell commands and other
languages go in other fences (```` ```text ````, ```` ```bash ````, ...), which are not checked.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import attrs
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]

NEW_MODULE = "<!-- snippets: new module -->"
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\s]*)")


@attrs.frozen
class Module:
    """One module built from a page's snippets, and where each of its lines came from."""

    name: str
    lines: tuple[str, ...]
    origins: tuple[tuple[str, int], ...]  # (page, line number) for each line


def modules_of(page: str, text: str) -> list[Module]:
    """The modules that a page's ```python blocks make, following the rule in the module docstring."""
    groups: list[tuple[list[str], list[tuple[str, int]]]] = [([], [])]
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == NEW_MODULE:
            groups.append(([], []))
        opening = _FENCE.match(line)
        if opening is None:
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        is_python = opening["info"].lower() in ("python", "py")
        i += 1
        body_start = i
        while i < len(lines) and not lines[i].strip().startswith(fence):
            i += 1
        if is_python:
            code, origins = groups[-1]
            for number in range(body_start, i):
                code.append(lines[number][indent:])
                origins.append((page, number + 1))
            code.append("")
            origins.append((page, i + 1))
        i += 1
    stem = re.sub(r"\W", "_", Path(page).stem.lower())
    return [
        Module(f"snippets_{stem}_{n}", tuple(code), tuple(origins))
        for n, (code, origins) in enumerate(groups)
        if code
    ]


def check_pages(pages: dict[str, str], workdir: Path) -> list[str]:
    """Run ``mypy --strict`` (the project's settings) on the pages' snippets; its errors, as page:line."""
    modules = [module for page, text in pages.items() for module in modules_of(page, text)]
    if not modules:
        return []
    workdir.mkdir(parents=True, exist_ok=True)
    for module in modules:
        (workdir / f"{module.name}.py").write_text("\n".join(module.lines) + "\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            "--no-error-summary",
            "--hide-error-context",
            *(f"{module.name}.py" for module in modules),
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    by_name = {module.name: module for module in modules}
    errors: list[str] = []
    for line in result.stdout.splitlines():
        match = re.match(r"(?P<name>\w+)\.py:(?P<line>\d+): error: (?P<message>.*)", line)
        if match is not None and match["name"] in by_name:
            page, number = by_name[match["name"]].origins[int(match["line"]) - 1]
            errors.append(f"{page}:{number}: error: {match['message']}")
        elif ": error: " in line:
            errors.append(line)  # in a module that is not a snippet (mypy follows imports)
    if result.returncode != 0 and not errors:
        errors.append(f"mypy failed without reporting an error: {result.stdout}{result.stderr}")
    return errors


def site_pages() -> dict[str, str]:
    """Every page on the site, and the README."""
    pages = {f"docs/{p.name}": p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))}
    pages["README.md"] = (ROOT / "README.md").read_text()
    return pages


def test_every_snippet_on_the_site_type_checks(tmp_path: Path) -> None:
    """mypy --strict finds nothing wrong in any page's ```python blocks (one module per page)."""
    pages = site_pages()
    assert "docs/index.md" in pages and "README.md" in pages
    assert sum(len(modules_of(page, text)) for page, text in pages.items()) >= 6, "too few snippets found"
    errors = check_pages(pages, tmp_path)
    assert errors == [], "snippets that do not type-check:\n" + "\n".join(errors)


def test_the_quickstart_runs_as_written(tmp_path: Path) -> None:
    """The home page's snippets, run as one script, track a parent run with three nested trial runs."""
    (module,) = modules_of("docs/index.md", (ROOT / "docs" / "index.md").read_text())
    script = tmp_path / "quickstart.py"
    script.write_text("\n".join(module.lines) + "\n")
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, check=False, timeout=240
    )
    assert result.returncode == 0, result.stdout + result.stderr
    parent_id = result.stdout.split("parent run:")[1].split()[0]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("quickstart")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if r.info.run_id != parent_id]
    assert {r.data.tags.get("mlflow.parentRunId") for r in trials} == {parent_id}
    assert sorted(r.data.params["learning_rate"] for r in trials) == ["0.1", "0.2", "0.3"]
    assert all(r.info.status == "FINISHED" for r in runs) and len(runs) == 4
    parent = client.get_run(parent_id)
    assert parent.data.metrics["best_loss"] == min(r.data.metrics["loss"] for r in trials)


def test_a_wrong_snippet_fails_the_check(tmp_path: Path) -> None:
    """A page whose second snippet misuses the first one's function fails, at that page line only."""
    page = "\n".join(
        [
            "# A page",  # 1
            "",  # 2
            "```python",  # 3
            "def double(x: int) -> int:",  # 4
            "    return 2 * x",  # 5
            "```",  # 6
            "",  # 7
            "```text",  # 8
            "this is output, not Python: double(",  # 9
            "```",  # 10
            "",  # 11
            "```python",  # 12
            "ok: int = double(2)",  # 13: uses the first snippet's function
            'wrong: int = double("two")',  # 14: the mistake
            "```",  # 15
        ]
    )
    errors = check_pages({"docs/wrong.md": page}, tmp_path)
    assert len(errors) == 1, errors
    assert errors[0].startswith("docs/wrong.md:14: error:"), errors
    assert "incompatible type" in errors[0]


def test_a_new_module_marker_separates_alternatives() -> None:
    """Blocks after the new-module marker form a module of their own; non-Python fences are skipped."""
    page = "```python\nx = 1\n```\n\n```bash\nls\n```\n" + NEW_MODULE + "\n~~~python\nx = 'a'\n~~~\n"
    modules = modules_of("docs/two.md", page)
    assert [m.lines for m in modules] == [("x = 1", ""), ("x = 'a'", "")]
    assert modules[1].origins[0] == ("docs/two.md", 10)
