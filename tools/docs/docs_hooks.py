"""MkDocs hook: publish the repository files that the docs link to, such as ``../examples/hpo.py``.

The pages are also read on the repository's web page, where ``../examples/hpo.py`` is the right link.
On the site that path leaves the docs, so MkDocs cannot resolve it. This hook rewrites each such
link to the same file copied into the site (``examples/hpo.py``, relative to the page), and adds the
file to the build. A link to a file that does not exist is left alone, so the strict build still
reports it.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

_LINK = re.compile(r"\]\((?P<target>\.\./[^)#\s]+)(?P<anchor>#[^)\s]*)?\)")


def _repo_files(config: MkDocsConfig, page_uri: str, markdown: str) -> dict[str, str]:
    """Map each link target in ``markdown`` that names a repository file outside the docs to its path."""
    docs = Path(config.docs_dir).resolve()
    root = docs.parent
    found: dict[str, str] = {}
    for match in _LINK.finditer(markdown):
        target = match["target"]
        path = (docs / posixpath.dirname(page_uri) / target).resolve()
        if path.is_file() and path.is_relative_to(root) and not path.is_relative_to(docs):
            found[target] = path.relative_to(root).as_posix()
    return found


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files, **kwargs: Any) -> str:
    """Point links to repository files at their copies in the site, and add those copies to the build."""
    page_uri = page.file.src_uri
    targets = _repo_files(config, page_uri, markdown)
    root = str(Path(config.docs_dir).resolve().parent)
    for repo_path in targets.values():
        if files.get_file_from_path(repo_path) is None:
            files.append(File(repo_path, root, config.site_dir, config.use_directory_urls))

    def rewrite(match: re.Match[str]) -> str:
        repo_path = targets.get(match["target"])
        if repo_path is None:
            return match.group(0)
        relative = posixpath.relpath(repo_path, posixpath.dirname(page_uri) or ".")
        return f"]({relative}{match['anchor'] or ''})"

    return _LINK.sub(rewrite, markdown)
