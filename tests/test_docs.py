"""The code shown in the README and the docs runs."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("doc", "index"),
    [
        ("README.md", 0),
        ("docs/writing-a-model.md", 1),
        ("docs/writing-a-model.md", 2),
        ("docs/estimators.md", 0),
    ],
)
def test_code_block_runs(doc, index, capsys):
    code = _blocks(ROOT / doc)[index]
    code = code.replace("epochs=50", "epochs=2").replace("epochs=20", "epochs=2")
    code = code.replace('result.save("runs/my-comparison")', "")
    exec(compile(code, f"{doc}[{index}]", "exec"), {})
