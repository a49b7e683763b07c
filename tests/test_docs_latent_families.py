"""The code shown in the pages on priors, hierarchical VAEs and flow guides runs."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("page", ["priors.md", "hierarchical.md", "flow-guides.md"])
def test_the_page_is_linked_and_its_code_runs(page, capsys):
    assert f"]({page})" in (DOCS / "index.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)
    exec(compile(code, page, "exec"), {})
