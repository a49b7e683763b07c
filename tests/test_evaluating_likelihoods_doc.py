"""The code shown in docs/evaluating-likelihoods.md runs."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "evaluating-likelihoods.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_capture_block_runs_and_replays(capsys):
    (code,) = [b for b in _blocks() if "CapturedLogWeights" in b]
    code = code.replace("num_particles=1000", "num_particles=100")
    exec(compile(code, str(DOC), "exec"), {})
    out = capsys.readouterr().out
    assert "epoch 2: L_1000" in out
    replayed = int(re.search(r"(\d+) chunks replayed", out).group(1))
    assert replayed > 0, out


def test_the_ais_block_runs(capsys):
    (code,) = [b for b in _blocks() if "ais(" in b]
    code = code.replace("num_steps=1000", "num_steps=20").replace("num_steps=500", "num_steps=10")
    exec(compile(code, str(DOC), "exec"), {})
    assert "AIS" in capsys.readouterr().out


def test_the_page_is_linked_from_the_index():
    assert "evaluating-likelihoods.md" in (DOC.parent / "index.md").read_text()
