"""The code shown in docs/evaluating-likelihoods.md runs."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "evaluating-likelihoods.md"


def test_the_code_block_runs(capsys):
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    code = code.replace("num_steps=1000", "num_steps=20").replace("num_steps=500", "num_steps=10")
    exec(compile(code, str(DOC), "exec"), {})
    assert "AIS" in capsys.readouterr().out


def test_the_page_is_linked_from_the_index():
    assert "evaluating-likelihoods.md" in (DOC.parent / "index.md").read_text()
