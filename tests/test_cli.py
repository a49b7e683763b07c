"""The pyro-vae command end to end, in temporary directories."""

import json
import subprocess
import sys

import pytest

from pyro_vae.cli import build_parser, compare_config, evaluate_config, main, train_config
from pyro_vae.commands.configs import (
    ESTIMATOR_NAMES,
    LIKELIHOOD_NAMES,
    MATMUL_NAMES,
    MODELS,
    CompareConfig,
    EvaluateConfig,
    TrainConfig,
)
from pyro_vae.data import FASHION_MNIST_DIR
from pyro_vae.errors import InputError
from pyro_vae.infer.onednn_matmul import onednn_available

TINY = ["--epochs", "2", "--hidden", "16", "--latent-dim", "2", "--quiet", "--eval-particles", "2"]


@pytest.mark.slow
def test_train_writes_a_complete_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "test ELBO" in printed and str(out) in printed
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "metrics.csv",
        "checkpoint.pt",
        "summary.json",
        "curves.png",
        "reconstructions.png",
        "samples.png",
        "latent.png",
    } <= names
    assert not [n for n in names if n.endswith(".tmp")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_elbo"] < 0 and summary["num_test"] == 180
    lines = (out / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,step,kl_weight,train_objective") and len(lines) == 3
    for png in ("curves.png", "latent.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_resume_trains_longer_and_existing_runs_are_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY]) == 0
    config_before = (out / "config.json").read_bytes()
    assert main(["train", "--out", str(out), *TINY]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "config.json").read_bytes() == config_before
    resumed = [a if a != "2" else "3" for a in TINY]
    assert main(["train", "--out", str(out), "--resume", *resumed]) == 0
    assert len((out / "metrics.csv").read_text().splitlines()) == 4


@pytest.mark.slow
def test_conditional_gaussian_run_on_a_csv_file(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    rows = np.c_[rng.normal(size=(60, 5)), rng.integers(0, 3, size=60)]
    np.savetxt(tmp_path / "d.csv", rows, delimiter=",")
    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(tmp_path / "d.csv"),
        "--label-column",
        "-1",
        "--likelihood",
        "gaussian",
        "--binarization",
        "none",
        "--conditional",
        "--batch-size",
        "16",
        "--out",
        str(out),
        *TINY,
    ]
    assert main(args) == 0
    assert json.loads((out / "config.json").read_text())["conditional"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--beta", "-1"], "beta must be"),
        (["--latent-dim", "0"], "latent dim"),
        (["--batch-size", "0"], "batch size"),
        (["--likelihood", "poisson", "--binarization", "static"], "binarization applies"),
        (["--likelihood", "poisson"], "non-integer values"),
        (["--data", "/nonexistent/file.npy"], "does not exist"),
        (["--resume"], "--resume needs --out"),
    ],
)
def test_user_errors_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    extra = [] if "--resume" in args else ["--out", str(out)]
    assert main(["train", *extra, *args, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyro-vae: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_count_data_errors_name_rows_and_columns(tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "c.npy", np.array([[1.0, 2.0], [0.5, 3.0]] * 10))
    code = main(
        [
            "train",
            "--data",
            str(tmp_path / "c.npy"),
            "--likelihood",
            "nb",
            "--binarization",
            "none",
            "--out",
            str(tmp_path / "run"),
            "--quiet",
        ]
    )
    assert code == 2
    assert "non-integer" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["train"], ["evaluate"], ["compare"]])
def test_help_for_every_command(command):
    result = subprocess.run(
        [sys.executable, "-m", "pyro_vae", *command, "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and "usage: pyro-vae" in result.stdout


HEAVY = ("torch", "pyro", "numpy", "matplotlib", "sklearn", "arviz")

# builds every parser and prints every help, in a fresh interpreter; prints what got imported
_HELP_SCRIPT = f"""
import contextlib, io, json, sys
import pyro_vae
after_import = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
from pyro_vae.cli import build_parser, main
for command in ([], ["train"], ["evaluate"], ["compare"]):
    for call in (build_parser().parse_args, main):
        with contextlib.redirect_stdout(io.StringIO()) as out:
            try:
                call([*command, "--help"])
            except SystemExit:
                pass
        assert "usage: pyro-vae" in out.getvalue()
print(json.dumps([after_import, sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})]))
"""


def test_help_imports_neither_torch_nor_matplotlib():
    result = subprocess.run([sys.executable, "-c", _HELP_SCRIPT], capture_output=True, text=True, check=True)
    after_import, after_help = json.loads(result.stdout)
    assert after_import == [], "import pyro_vae loaded heavy modules"
    assert after_help == [], "building the parsers or printing help loaded heavy modules"


LIBRARY = (
    "pyro_vae.train",
    "pyro_vae.bounds",
    "pyro_vae.estimators",
    "pyro_vae.diagnostics",
    "pyro_vae.comparison",
    "pyro_vae.data",
    "pyro_vae.commands.train",
    "pyro_vae.commands.evaluate",
    "pyro_vae.commands.compare",
)


def test_library_imports_matplotlib_sklearn_and_arviz_only_when_used():
    script = (
        f"import sys\nimport {', '.join(LIBRARY)}\n"
        "print(','.join(m for m in ('matplotlib', 'sklearn', 'arviz') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_light_names_equal_the_registries():
    from pyro_vae.commands.compare import LATENT_CODES
    from pyro_vae.estimators import ESTIMATORS
    from pyro_vae.infer.onednn_matmul import MATMULS
    from pyro_vae.likelihoods import LIKELIHOODS

    assert tuple(LIKELIHOODS) == LIKELIHOOD_NAMES
    assert ESTIMATORS == ESTIMATOR_NAMES
    assert tuple(LATENT_CODES) == MODELS
    assert MATMULS == MATMUL_NAMES
    assert TrainConfig().likelihood in LIKELIHOODS
    assert set(CompareConfig().estimators) <= set(ESTIMATORS)
    assert CompareConfig().model in LATENT_CODES


def test_parser_defaults_are_the_config_defaults():
    parser = build_parser()
    assert train_config(parser.parse_args(["train"])) == TrainConfig()
    assert evaluate_config(parser.parse_args(["evaluate", "run"])) == EvaluateConfig()
    assert compare_config(parser.parse_args(["compare"])) == CompareConfig()


def test_evaluate_compiles_long_bounds_by_default_and_the_flags_choose(monkeypatch):
    parser = build_parser()
    parse = lambda *flags: evaluate_config(parser.parse_args(["evaluate", "run", *flags]))  # noqa: E731
    assert parse().compile is None  # decided per bound from its chunks
    assert parse("--compile").compile is True and parse("--no-compile").compile is False
    with pytest.raises(InputError, match="matmul='blas'"):
        EvaluateConfig(compile=True, matmul="blas").validate()
    assert parse().matmul == "auto"  # the machine's kernels, compiled or not

    def no_compiler(compile):
        raise InputError("no compiler")

    monkeypatch.setattr("pyro_vae.infer.captured.check_compile", no_compiler)
    with pytest.raises(InputError, match="no compiler"):
        EvaluateConfig(compile=True).validate()
    EvaluateConfig().validate()  # the default asks for no compiler


def test_no_capture_makes_every_training_step_eager(tmp_path):
    parser = build_parser()
    assert train_config(parser.parse_args(["train", "--no-capture"])).capture is False
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--no-capture", *TINY]) == 0
    assert '"capture": false' in (out / "config.json").read_text()


def test_the_default_train_imports_no_library_it_does_not_use(tmp_path):
    """The default ``pyro-vae train`` (the digits, replayed steps, figures) in a fresh process:
    scikit-learn and SciPy (the digits' loader, the latent plot's PCA: 0.8 s), TorchDynamo
    (torch.optim's wrappers: 0.5-0.7 s) and SymPy (autograd's shape check: 0.2 s) are never
    imported; docs/benchmarks.md has the times."""
    code = (
        "import sys, torch, pyro, matplotlib.pyplot; from pyro_vae.cli import main; "
        "names = ('sklearn', 'scipy', 'torch._dynamo', 'sympy'); "
        "before = {m for m in names if m in sys.modules}; "  # what those libraries import themselves
        f"assert main(['train', '--out', {str(tmp_path / 'run')!r}, '--epochs', '2', '--quiet']) == 0; "
        "print(sorted(m for m in names if m in sys.modules and m not in before))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_run_saves_the_kernels_auto_resolved_to_and_an_older_run_resumes_on_pytorchs(tmp_path):
    """``--matmul auto`` (the default) is saved as the kernels it resolves to here, so a resume
    (on any machine) replays on the kernels the run ran on; a run directory written before
    the default became ``"auto"`` has no ``matmul`` and ran PyTorch's: it resumes on them."""
    from pyro_vae.commands.train import read_config
    from pyro_vae.infer.onednn_matmul import resolve_matmul

    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--epochs", "1", *TINY]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["matmul"] == resolve_matmul("auto") != "auto"
    del saved["matmul"]
    (out / "config.json").write_text(json.dumps(saved))
    assert read_config(out).matmul == "aten"
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--quiet"]) == 0


@pytest.mark.slow
def test_evaluate_prints_ordered_bounds_and_writes_results(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    args = [
        "evaluate",
        str(out),
        "--ks",
        "1,10,100",
        "--num-points",
        "40",
        "--gap-points",
        "3",
        "--gap-steps",
        "20",
        "--elbo-particles",
        "20",
        "--quiet",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "L_100" in printed and "amortization gap" in printed and "active units" in printed
    results = json.loads((out / "evaluation.json").read_text())
    bounds = [r["bound"] for r in results["bounds"]]
    assert results["elbo"] < bounds[1] < bounds[2]  # ELBO < L_10 < L_100 on these 40 points
    for name in ("bounds.csv", "bounds_vs_k.png", "k_hat.png", "kl_per_dim.png"):
        assert (out / name).is_file()
    assert main(["evaluate", str(tmp_path / "nope"), "--quiet"]) == 2
    assert "not a run directory" in capsys.readouterr().err


COMPARE_TINY = [
    "--variables",
    "2",
    "--categories",
    "3",
    "--hidden",
    "16",
    "--epochs",
    "1",
    "--grad-samples",
    "3",
    "--warmup",
    "2",
    "--eval-particles",
    "2",
    "--quiet",
]


@pytest.mark.slow
def test_compare_prints_the_table_and_writes_results(tmp_path, capsys):
    out = tmp_path / "cmp"
    estimators = "score,score-avg,nvil,vimco,gumbel,st-gumbel,enum"
    assert main(["compare", "--out", str(out), "--estimators", estimators, *COMPARE_TINY]) == 0
    printed = capsys.readouterr().out
    assert "bias against: exact gradients by enumeration" in printed and "ms/step" in printed
    for name in estimators.split(","):
        assert f"\n{name} " in printed
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "comparison.csv",
        "comparison.json",
        "gradient_variance.png",
        "training_curves.png",
    }
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert len(rows) == 14 and all(r["bias"] == r["bias"] for r in rows)  # exact: no NaN bias
    assert json.loads((out / "config.json").read_text())["estimators"] == estimators.split(",")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--estimators", "score,reinforce"], "unknown estimator 'reinforce'"),
        (["--estimators", "score,score"], "repeated"),
        (["--model", "bernoulli", "--units", "0"], "num units"),
        (["--temperature", "0.1"], "below the minimum temperature"),
        (["--particles", "1"], "vimco needs"),
        (["--grad-samples", "1"], "gradient samples"),
        (["--estimators", "score,arm"], "arm estimator is for Bernoulli codes"),
        (["--estimators", "score,enum"], "enum sums over every code"),
    ],
)
def test_compare_user_errors_exit_2_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "cmp"
    assert main(["compare", "--out", str(out), *args, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyro-vae: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_compare_refuses_a_non_empty_directory(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["compare", "--out", str(tmp_path), *COMPARE_TINY]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_compare_on_fashion_mnist(tmp_path, capsys):
    args = ["--data", "fashion-mnist", "--estimators", "score,gumbel", "--epochs", "1", "--batch-size", "500"]
    tiny = ["--hidden", "32", "--grad-samples", "2", "--warmup", "1", "--eval-particles", "1", "--quiet"]
    assert main(["compare", "--out", str(tmp_path / "cmp"), *args, *tiny]) == 0
    assert "gumbel" in capsys.readouterr().out


def test_compile_is_for_the_captured_step_and_checked_before_work():
    from pyro_vae.errors import InputError
    from pyro_vae.train.step import COMPILE_STEPS

    parser = build_parser()
    assert train_config(parser.parse_args(["train", "--compile"])).compile is True
    assert train_config(parser.parse_args(["train", "--no-compile"])).compile is False
    assert train_config(parser.parse_args(["train"])).compile is None
    train_help = parser._subparsers._group_actions[0].choices["train"].format_help()
    assert f"{COMPILE_STEPS:,} steps" in " ".join(train_help.split())
    config = train_config(parser.parse_args(["train", "--compile", "--no-capture"]))
    with pytest.raises(InputError, match="--no-capture captures nothing"):
        config.validate()
    config = train_config(parser.parse_args(["train", "--compile", "--matmul", "onednn"]))
    if onednn_available():  # compiled on oneDNN's products
        config.validate()
    else:
        with pytest.raises(InputError, match="no oneDNN"):
            config.validate()
