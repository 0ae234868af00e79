"""The README is a front door to docs/ that stays inside the repository, and the docs say
what the code does where they list it."""

from __future__ import annotations

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*path):
    with open(os.path.join(ROOT, *path)) as f:
        return f.read()


def _markdown_files():
    yield "README.md"
    for name in sorted(os.listdir(os.path.join(ROOT, "docs"))):
        if name.endswith(".md"):
            yield os.path.join("docs", name)


def test_the_readme_is_short_and_links_only_to_what_the_clone_has():
    readme = _read("README.md")
    assert len(readme.splitlines()) <= 250
    for md in _markdown_files():
        folder = os.path.dirname(os.path.join(ROOT, md))
        for target in re.findall(r"\]\(([^)#]+)\)", _read(md)):
            if re.match(r"[a-z]+://", target):
                continue
            path = os.path.normpath(os.path.join(folder, target))
            assert path.startswith(ROOT + os.sep), f"{md} links outside the repository: {target}"
            assert os.path.exists(path), f"{md} links to a missing file: {target}"
    for page in ("model", "training", "segmentation", "cluster", "performance"):
        assert f"docs/{page}.md" in readme


def test_the_segment_jobs_exit_statuses_as_documented():
    from samadapter.segment.run import EXIT_STATUSES

    rows = dict(re.findall(r"^\| (\d) \| (.+) \|$", _read("docs", "segmentation.md"), re.M))
    assert {int(k): v for k, v in rows.items()} == EXIT_STATUSES
