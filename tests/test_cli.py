"""The dra-kernels command end to end on the bundled sample, with the real default model."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import tracemalloc
from importlib.metadata import entry_points
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the default model is bundled; never the hub

from dra_kernels import adjust_rewards, cli, dra_advantages, group_advantages, smi_scores
from dra_kernels.analysis import diversity_quality
from dra_kernels.cli import main
from dra_kernels.data import sample_path
from dra_kernels.data.checker import check
from dra_kernels.embed import Embedder, EmbedStats
from dra_kernels.rollouts import CHUNK_CHARS, CHUNK_ROWS, read_rollouts, write_rows

SAMPLE = sample_path()


@pytest.fixture(scope="module")
def sample_embeddings() -> np.ndarray:
    rollouts = read_rollouts(SAMPLE)
    return Embedder(device="cpu").encode(rollouts.completions).double().numpy()


def test_sample_is_what_the_issue_asks_for() -> None:
    rollouts = read_rollouts(SAMPLE)
    groups: dict[str, list[dict]] = {}
    for row in rollouts.rows:
        groups.setdefault(row["prompt"], []).append(row)
    assert len(groups) >= 12
    for rows in groups.values():
        assert len(rows) >= 6
        assert len({row["completion"] for row in rows}) == len(rows)
        methods = [row["method"] for row in rows]
        assert any(m.startswith("wrong") for m in methods)
        assert any("paraphrase" in m for m in methods)
        distinct = {m for m in methods if not m.startswith("wrong") and "paraphrase" not in m}
        assert len(distinct) >= 2  # at least two genuinely different correct methods
        for row in rows:  # every reward is the bundled checker's verdict
            assert row["reward"] == check(row["completion"], row["answer"])
    assert "hand-written" in (SAMPLE.parent / "README.md").read_text()


def test_adjust_writes_what_the_library_computes(
    tmp_path: Path, sample_embeddings: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "adjusted.jsonl"
    assert main(["adjust", str(SAMPLE), "-o", str(out), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    stdout = captured.out
    assert "84 completions in 12 groups" in stdout and f"wrote 84 rows to {out}" in stdout
    assert "100.0% of tokens read" in captured.err and "cut" not in captured.err
    rollouts = read_rollouts(SAMPLE)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(written) == len(rollouts)
    for row, original in zip(written, rollouts.rows, strict=True):
        assert {k: row[k] for k in original} == original  # every input field passes through
        assert list(row)[-4:] == ["smi", "reward_adjusted", "advantage", "advantage_dra"]
    ids, rewards = rollouts.group_ids, np.asarray(rollouts.rewards)
    adjusted = adjust_rewards(rewards, sample_embeddings, ids)
    expect = {
        "smi": smi_scores(sample_embeddings, ids),
        "reward_adjusted": adjusted,
        "advantage": group_advantages(rewards, ids),
        "advantage_dra": group_advantages(adjusted, ids),
    }
    for name, values in expect.items():
        got = np.array([row[name] for row in written])
        np.testing.assert_allclose(got, values, rtol=1e-5, atol=1e-6, err_msg=name)
    assert (np.array([row["smi"] for row in written]) > 0).all()


def test_adjust_csv_with_id_groups_and_dr_grpo(tmp_path: Path) -> None:
    source = tmp_path / "two.jsonl"  # two prompts of the sample keep this test quick
    lines = SAMPLE.read_text().splitlines()
    source.write_text("\n".join(lines[:14]) + "\n")
    out = tmp_path / "adjusted.csv"
    args = ["adjust", str(source), "-o", str(out), "--group-field", "prompt_id", "--scale", "none"]
    assert main([*args, "--device", "cpu", "--batch-size", "3"]) == 0
    back = read_rollouts(out, group_field="prompt_id", reward_field="reward_adjusted")
    rewards = np.asarray(back.rewards)
    advantages = np.array([float(row["advantage_dra"]) for row in back.rows])
    np.testing.assert_allclose(advantages, group_advantages(rewards, back.group_ids, scale="none"))
    assert set(back.group_ids) == {"p01", "p02"}


def test_analyze_report_plot_and_table(
    tmp_path: Path, sample_embeddings: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    plot, table = tmp_path / "p.png", tmp_path / "table.jsonl"
    argv = ["analyze", str(SAMPLE), "--plot", str(plot), "-o", str(table), "--device", "cpu"]
    assert main(argv) == 0
    rollouts = read_rollouts(SAMPLE)
    report = diversity_quality(rollouts.rewards, sample_embeddings, rollouts.group_ids)
    stdout = capsys.readouterr().out
    assert f"{report.not_significant} of 12 prompts" in stdout
    assert plot.read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(line) for line in table.read_text().splitlines()]
    assert [row["group"] for row in rows] == [g.group for g in report.groups]
    np.testing.assert_allclose(
        [row["p_value"] for row in rows], [g.p_value for g in report.groups], rtol=1e-4
    )


BAD_INPUTS = [
    ('{"prompt": "q", "completion": "a", "reward": 1}\n{"prompt": "q"', "line 2", None, "JSON"),
    ('{"prompt": "q", "reward": 1}\n', "line 1", "completion", "missing"),
    ('{"prompt": "q", "completion": "a", "reward": "1/2"}\n', "line 1", "reward", "number"),
    ('{"prompt": "q", "completion": "a", "reward": NaN}\n', "line 1", "reward", "finite"),
    ("\n", None, None, "empty"),
]


@pytest.mark.parametrize("command", ["adjust", "analyze"])
@pytest.mark.parametrize(("text", "line", "field", "reason"), BAD_INPUTS)
def test_bad_input_exits_1_and_writes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    text: str,
    line: str | None,
    field: str | None,
    reason: str,
) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text(text)
    out = tmp_path / "out.jsonl"
    argv = [command, str(source), "-o", str(out)]
    if command == "analyze":
        argv += ["--plot", str(tmp_path / "p.png")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"dra-kernels {command}: error: {source}" in err
    for part in (line, field and f"field '{field}'", reason):
        assert part is None or part in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


def test_failure_keeps_an_existing_output(tmp_path: Path) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text('{"prompt": "q", "completion": "a", "reward": true}\n')
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    assert main(["adjust", str(source), "-o", str(out)]) == 1
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "out.jsonl"]


def test_missing_input_and_unwritable_output_exit_1(tmp_path: Path) -> None:
    assert main(["adjust", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "o.jsonl")]) == 1
    assert main(["adjust", str(SAMPLE), "-o", str(tmp_path / "no" / "o.jsonl")]) == 1
    assert main(["analyze", str(SAMPLE), "--plot", str(tmp_path)]) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["adjust", str(SAMPLE)],  # -o is required
        ["adjust", str(SAMPLE), "-o", "x.jsonl", "--batch-size", "0"],
        ["adjust", str(SAMPLE), "-o", "x.jsonl", "--min-denominator", "-1"],
        ["adjust", str(SAMPLE), "-o", "x.jsonl", "--scale", "max"],
        ["adjust", str(SAMPLE), "-o", "out.parquet"],
        ["analyze", str(SAMPLE), "--alpha", "2"],
        ["demo", "--no-such-option"],
        [
            "adjust",
            "no-such-file.jsonl",
            "-o",
            "x.jsonl",
            "--long-text",
            "head",
            "--window-overlap",
            "4",
        ],
        [
            "adjust",
            "no-such-file.jsonl",
            "-o",
            "x.jsonl",
            "--window-tokens",
            "2",
            "--window-overlap",
            "2",
        ],
        ["analyze", "no-such-file.jsonl", "--long-text", "tail"],
        ["adjust", "no-such-file.jsonl", "-o", "x.jsonl", "--window-overlap", "-1"],
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    prog = "dra-kernels" if argv[:1] in ([], ["frobnicate"]) else f"dra-kernels {argv[0]}"
    _assert_usage_error(capsys.readouterr().err, prog)
    assert list(tmp_path.iterdir()) == []


def _assert_usage_error(err: str, prog: str, message: str = "") -> None:
    """A usage error is two lines: the error, and where the usage is; no usage block."""
    first, second = err.splitlines()
    assert first.startswith(f"{prog}: error: ") and message in first, err
    assert second == f"run '{prog} --help' for usage", err
    assert err.endswith("\n")


USAGE_ERRORS = [  # (argv, the command's prog, the error message)
    ([], "dra-kernels", "the following arguments are required: COMMAND"),
    (["frobnicate"], "dra-kernels", "invalid choice: 'frobnicate'"),
    (["adjust", "in.jsonl"], "dra-kernels adjust", "the following arguments are required: -o"),
    (["adjust", "in.jsonl", "-o", "o.jsonl", "--scale", "max"], "dra-kernels adjust", "'max'"),
    (["analyze", "in.jsonl", "--alpha", "2"], "dra-kernels analyze", "expected a level in (0, 1)"),
    (["demo", "--no-such-option"], "dra-kernels demo", "unrecognized arguments: --no-such-option"),
    (["adjust", "in.jsonl", "-o", "out.parquet"], "dra-kernels adjust", "output format"),
    (["demo", "--device", "meta"], "dra-kernels demo", "--device='meta'"),
    (["analyze", "in.jsonl", "--device", "cuda"], "dra-kernels analyze", "CUDA is not available"),
]


@pytest.mark.parametrize(("argv", "prog", "message"), USAGE_ERRORS)
def test_a_usage_error_is_one_line_and_a_pointer_to_help(
    argv: list[str],
    prog: str,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """argparse's own errors and the command's checks alike: the line that says what is wrong
    first, not after a usage block of 17 lines (``--device cuda`` on a machine without CUDA is
    the first example of docs/cli.md's "Your own rollouts")."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # a machine without CUDA
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    _assert_usage_error(captured.err, prog, message)


def test_cut_completions_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "adjusted.jsonl"
    assert (
        main(["adjust", str(SAMPLE), "-o", str(out), "--device", "cpu", "--max-tokens", "20"]) == 0
    )
    err = capsys.readouterr().err
    assert "note: embedded 84 completions" in err
    assert "completions cut (--long-text windows, --max-tokens 20)" in err
    share = float(err.split("% of tokens read")[0].rsplit(" ", 1)[1])
    assert 0 < share < 100


@pytest.mark.parametrize("command", [[], ["adjust"], ["analyze"], ["demo"], ["bench"]])
def test_help_has_examples(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: dra-kernels {' '.join(command)}".rstrip())
    runner = "python -m benchmarks.run" if command == ["bench"] else "dra-kernels"
    assert f"examples:\n  {runner}" in out


HEAVY_MODULES = ("torch", "numpy", "sentence_transformers", "transformers")


@pytest.mark.parametrize("command", [[], ["adjust"], ["analyze"], ["demo"], ["bench"]])
def test_help_imports_neither_torch_nor_the_model(command: list[str]) -> None:
    """``--help`` answers at once: the installed console script, in a real process, imports none
    of torch, numpy, sentence-transformers (``-X importtime`` lists every module imported)."""
    script = Path(sys.executable).with_name("dra-kernels")
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(script), *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: dra-kernels")
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "dra_kernels" in imported  # the listing is complete enough to trust
    assert imported.isdisjoint(HEAVY_MODULES), sorted(imported & set(HEAVY_MODULES))


def test_bench_says_where_the_benchmarks_are(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["bench"], ["bench", "--quick", "--out", "x"]):  # the old options too
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("dra-kernels bench: error: the installed package runs no benchmark")
        assert "python -m benchmarks.run --help" in err and "docs/performance.md" in err
    assert main(["bench", "--help"]) == 0
    assert "python -m benchmarks.run" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("dra-kernels 0.")


def test_console_script_is_declared() -> None:
    (script,) = entry_points(group="console_scripts", name="dra-kernels")
    assert script.value == "dra_kernels.cli:main"


def test_demo_in_a_subprocess(tmp_path: Path) -> None:
    """The real process and model: exit code, output files (by default in a new folder of the
    temporary directory, nothing in the current one), no progress bars without a terminal."""
    cwd, temporary = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    temporary.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(temporary)}
    result = subprocess.run(
        [sys.executable, "-m", "dra_kernels.cli", "demo", "--device", "cpu"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert list(cwd.iterdir()) == []
    (out_dir,) = temporary.glob("dra-demo-*")
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "adjusted.jsonl",
        "analysis.csv",
        "pvalues.png",
    ]
    assert "outputs:" in result.stdout and f"{out_dir / 'adjusted.jsonl'}" in result.stdout
    assert "prompts" in result.stdout and "84 completions in 12 groups" in result.stdout
    assert "it/s" not in result.stderr and "%|" not in result.stderr  # tqdm stays quiet
    with open(out_dir / "analysis.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 12


# ----------------------------------------------------------------------------- reliability
# Most tests below use a stand-in for the embedding model (no model load), so that they are quick
# and can count what the command embeds; the round trip of adjust's own output uses the real one.


class FakeEmbedder:
    """Deterministic 8-d vectors from a text's bytes; records the text lengths of each call."""

    calls: ClassVar[list[list[int]]] = []
    loads: ClassVar[int] = 0

    def __init__(self, model: str | None = None, **options: object) -> None:
        type(self).loads += 1
        self.window_tokens = 256
        self.progress = bool(options.get("progress"))
        self.last_stats: EmbedStats | None = None

    @staticmethod
    def vectors(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 8), dtype=np.float32)
        for row, text in enumerate(texts):
            data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
            out[row] = np.bincount(data % 7, minlength=8)[:8]
            out[row, 7] = 1.0 + len(text) % 5
        return out

    def encode(self, texts: list[str]) -> torch.Tensor:
        type(self).calls.append([len(text) for text in texts])
        tokens = sum(len(t) for t in texts)
        self.last_stats = EmbedStats(len(texts), 0, tokens, tokens, len(texts))
        return torch.from_numpy(self.vectors(list(texts)))


@pytest.fixture
def fake_embedder(monkeypatch: pytest.MonkeyPatch) -> type[FakeEmbedder]:
    monkeypatch.setattr(FakeEmbedder, "calls", [])
    monkeypatch.setattr(FakeEmbedder, "loads", 0)
    monkeypatch.setattr("dra_kernels.embed.Embedder", FakeEmbedder)
    return FakeEmbedder


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What slow work the command started: reading the input, loading a model."""
    done: list[str] = []

    def scan(*args: object, **kwargs: object) -> None:
        done.append("read the input")
        raise RuntimeError("the input was read")

    class NoModel:
        def __init__(self, *args: object, **kwargs: object) -> None:
            done.append("loaded a model")
            raise RuntimeError("a model was loaded")

    monkeypatch.setattr("dra_kernels.cli.scan_rollouts", scan)
    monkeypatch.setattr("dra_kernels.embed.Embedder", NoModel)
    return done


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    return path


HEADER = "prompt,completion,reward\n"
HUGE = "1" + "0" * 400  # beyond float64 written as an integer


def _line(reward: str, extra: str = "", completion: str = "a") -> str:
    return f'{{"prompt": "q", "completion": "{completion}", "reward": {reward}{extra}}}\n'


BAD_VALUES = [  # (file name, content, line, field, start of the reason)
    ("in.jsonl", _line(HUGE), 1, "reward", "reward must be finite, found an integer of 401 digits"),
    ("in.csv", f"{HEADER}q,a,1\nq,b,{HUGE}\n", 3, "reward", "reward must be finite"),
    ("in.jsonl", _line("-1e400"), 1, "reward", "reward must be finite"),
    ("in.jsonl", _line("-Infinity"), 1, "reward", "reward must be finite"),
    ("in.jsonl", _line('{"v": 1}'), 1, "reward", "reward must be a number, found an object"),
    ("in.jsonl", _line('"0x10"'), 1, "reward", "reward must be a number"),
    ("in.csv", f"{HEADER}q,a,0x10\n", 2, "reward", "reward must be a number"),
    ("in.csv", f"{HEADER}q,a,NaN\n", 2, "reward", "reward must be finite"),
    ("in.jsonl", _line("1" + "0" * 5000), 1, None, "cannot read a number"),
    ("in.jsonl", _line("1", ', "x": ' + "[" * 50_000), 1, None, "malformed JSON: nested deeper"),
    ("in.jsonl", _line("1", ', "x": [NaN]'), 1, "x", "holds a non-finite number"),
    ("in.jsonl", _line("1", completion="a\\ud800"), 1, "completion", "completion is not valid"),
    ("in.jsonl", _line("1") + _line("1e200"), 2, "reward", "reward 1e+200 is too large"),
    ("in.jsonl", _line("1") + "\udcff\n", 2, None, "not valid UTF-8"),  # the byte 0xff
    # the line lacks its closing brace: json stops just past its 46 characters
    ("in.jsonl", _line("1") + _line("1")[:-2] + "\n", 2, None, "malformed JSON at column 47: "),
]


@pytest.mark.parametrize(("name", "text", "line", "field", "reason"), BAD_VALUES)
def test_bad_values_are_an_error_line_before_any_model_loads(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fake_embedder: type[FakeEmbedder],
    name: str,
    text: str,
    line: int,
    field: str | None,
    reason: str,
) -> None:
    source = tmp_path / name
    source.write_bytes(text.encode("utf-8", "surrogateescape"))
    for command in ("adjust", "analyze"):
        out = tmp_path / f"out{source.suffix}"
        assert main([command, str(source), "-o", str(out)]) == 1
        err = capsys.readouterr().err
        where = f"{source}, line {line}: " + (f"field '{field}': " if field else "")
        assert err.startswith(f"dra-kernels {command}: error: {where}{reason}"), err
        assert err.count("\n") == 1  # one line, no traceback
        assert fake_embedder.loads == 0
        assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def _ok_file(tmp_path: Path) -> Path:
    return _write(tmp_path / "in.jsonl", '{"prompt": "q", "completion": "a", "reward": 1}\n')


def test_one_smi_pass_per_run(
    tmp_path: Path, fake_embedder: type[FakeEmbedder], monkeypatch: pytest.MonkeyPatch
) -> None:
    """adjust goes through the one DRA step: one SMI pass over the file's rows (it used to call
    adjust_rewards and smi_scores on the same embeddings), whatever the measure."""
    from dra_kernels import measures, torch_backend

    calls = []
    for module, name in SMI_PASSES:
        module = {"measures": measures, "torch_backend": torch_backend}[module]
        original = getattr(module, name)

        def spy(*args, original=original, name=name, **kwargs):
            calls.append(name)
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    rows = "".join(
        f'{{"prompt": "q{i % 2}", "completion": "{"ab"[i % 2] * (i + 1)}", "reward": {i % 3}}}\n'
        for i in range(6)
    )
    source = _write(tmp_path / "in.jsonl", rows)
    for options in ([], ["--measure", "facility_location", "--eta", "0.5"]):
        calls.clear()
        assert main(["adjust", str(source), "-o", str(tmp_path / "o.jsonl"), *options]) == 0
        assert len(calls) == 1, calls


SMI_PASSES = [  # every function of the torch backend that computes SMI from embeddings
    ("torch_backend", "smi_scores"),
    ("torch_backend", "adjust_rewards"),
    ("measures", "smi_by_measure"),
]


MIN_DENOMINATOR = "--min-denominator must be a finite number > 0 and <= 1"
OPTION_ERRORS = [  # (argv after "IN -o OUT" or "IN", part of the message)
    (["adjust", "--eps", "0"], "--eps must be a finite number > 0, got 0.0 (with --scale std)"),
    (["adjust", "--min-denominator", "2"], MIN_DENOMINATOR),
    (["adjust", "--device", "meta"], "--device='meta': the embedding model cannot run on 'meta'"),
    (["adjust", "--device", "tpu"], "--device must be 'cpu', 'cuda', 'cuda:N'..., got 'tpu'"),
    (["adjust", "--device", "cpu:1"], "--device='cpu:1': there is one CPU device"),
    (["adjust", "--device", "cuda:4096"], "--device='cuda:4096'"),
    (["adjust", "--device", "xpu:3"], "--device='xpu:3'"),
    (["adjust", "--device", "ipu"], "--device='ipu'"),
    (["adjust", "--group-field", " "], "--group-field must name a field, got ' '"),
    (["adjust", "--reward-field", ""], "--reward-field must name a field, got ''"),
    (["analyze", "-o", "table.parquet"], "cannot tell the output format of 'table.parquet'"),
    (["analyze", "-o", "same.csv", "--plot", "same.csv"], "--plot and --output name the same file"),
    (["analyze", "--device", "meta"], "--device='meta'"),
    (["demo", "--min-denominator", "1.5"], MIN_DENOMINATOR),
    (["demo", "--device", "meta"], "--device='meta'"),
    # invalid only together, or against the model's limits read from its files (issue 24)
    (["adjust", "--window-overlap", "300"], "--window-overlap=300 leaves no room for text"),
    (["adjust", "--window-tokens", "100000"], "--window-tokens=100000 exceeds the 512-token"),
    (["analyze", "--long-text", "head", "--window-overlap", "8"], "--window-overlap=8 only"),
]


@pytest.mark.parametrize(("argv", "message"), OPTION_ERRORS)
def test_every_option_is_checked_before_any_work(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    work: list[str],
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    command, options = argv[0], argv[1:]
    source = _ok_file(tmp_path)
    files = {"adjust": [str(source), "-o", "out.jsonl"], "analyze": [str(source)], "demo": []}
    assert main([command, *files[command], *options]) == 2
    _assert_usage_error(capsys.readouterr().err, f"dra-kernels {command}", message)
    assert work == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_outputs_are_checked_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], work: list[str]
) -> None:
    source = _ok_file(tmp_path)
    (tmp_path / "dir.jsonl").mkdir()
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "analysis.csv").mkdir()
    for argv in (
        ["adjust", str(source), "-o", str(tmp_path / "no" / "out.jsonl")],
        ["adjust", str(source), "-o", str(tmp_path / "dir.jsonl")],
        ["analyze", str(source), "-o", str(tmp_path / "dir.jsonl")],
        ["analyze", str(source), "--plot", str(tmp_path / "no" / "p.png")],
        ["demo", "-o", str(tmp_path / "demo")],
        ["demo", "-o", str(source)],
    ):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith(f"dra-kernels {argv[0]}: error: ") and "cannot write" in err, err
    assert work == []


def test_counts_say_1_group_not_1_groups(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fake_embedder: type[FakeEmbedder],
) -> None:
    """Every count the command prints takes the singular for 1 and the plural otherwise."""
    one = _write(tmp_path / "one.jsonl", _line("1"))  # 1 completion of 1 token, 1 group
    out = tmp_path / "out.jsonl"
    assert main(["adjust", str(one), "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("1 completion in 1 group\n"), captured.out
    assert f"wrote 1 row to {out}" in captured.out
    assert captured.err.startswith("embedded 1 completion (1 token, 1 window of up to 256 "), (
        captured.err
    )
    assert main(["analyze", str(one), "-o", str(tmp_path / "table.csv")]) == 0
    stdout = capsys.readouterr().out
    assert "1 prompt not tested: 1 with fewer than 3 completions" in stdout, stdout
    assert "wrote 1 prompt to" in stdout

    many = "".join(
        _line("1", completion=f"{g} {i}").replace('"q"', f'"q{g}"')
        for g in range(21)
        for i in range(2)
    )
    assert main(["adjust", str(_write(tmp_path / "many.jsonl", many)), "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "42 completions in 21 groups" in stdout and "... 1 more group (all" in stdout, stdout

    encode = FakeEmbedder.encode

    def cut_one(self: FakeEmbedder, texts: list[str]) -> torch.Tensor:
        vectors = encode(self, texts)
        self.last_stats = EmbedStats(len(texts), 1, 2, 1, len(texts))
        return vectors

    monkeypatch.setattr(FakeEmbedder, "encode", cut_one)
    assert main(["adjust", str(one), "-o", str(out)]) == 0
    assert "; 1 completion cut (--long-text windows)" in capsys.readouterr().err

    monkeypatch.setattr(FakeEmbedder, "encode", lambda self, texts: torch.full((1, 8), np.nan))
    assert main(["adjust", str(one), "-o", str(out)]) == 1
    assert "(NaN or inf; 1 completion in all)" in capsys.readouterr().err


def test_an_unexpected_exception_is_an_error_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fake_embedder: type[FakeEmbedder],
) -> None:
    source = _ok_file(tmp_path)
    out = tmp_path / "out.jsonl"

    def fails(*args: object) -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(FakeEmbedder, "encode", fails)
    assert main(["adjust", str(source), "-o", str(out)]) == 1
    assert capsys.readouterr().err == (
        "dra-kernels adjust: error: CUDA error: an illegal memory access was encountered\n"
    )

    def bug(args: object) -> int:
        raise KeyError("oops")

    monkeypatch.setitem(cli._COMMANDS, "adjust", bug)
    assert main(["adjust", str(source), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dra-kernels adjust: error: unexpected KeyError: 'oops'"), err
    assert not out.exists()


def test_a_real_process_prints_an_error_line_never_a_traceback(tmp_path: Path) -> None:
    """The cases found first, as a user runs them. TRITON_INTERPRET unset: the Triton backend
    cannot run on the CPU arrays the command passes, which must be a usage error found at once."""
    source = _write(
        tmp_path / "in.jsonl", f'{{"prompt": "q", "completion": "a", "reward": {HUGE}}}\n'
    )
    good = _write(tmp_path / "ok.jsonl", '{"prompt": "q", "completion": "a", "reward": 1}\n')
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["HF_HUB_OFFLINE"] = "1"
    for argv, code, message in (
        (["adjust", str(source), "-o", "out.jsonl"], 1, "field 'reward': reward must be finite"),
        (["adjust", str(good), "-o", "out.jsonl", "--device", "meta"], 2, "--device='meta'"),
        (["adjust", str(good), "-o", "out.jsonl", "--backend", "triton"], 2, "--backend='triton'"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "dra_kernels.cli", *argv],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == code, result.stderr
        assert "Traceback" not in result.stderr
        if code == 2:
            _assert_usage_error(result.stderr, "dra-kernels adjust", message)
        else:
            (line,) = result.stderr.splitlines()
            assert line.startswith("dra-kernels adjust: error: ") and message in line, line
        assert "embedded" not in result.stderr  # failed before any model loaded
    assert not (tmp_path / "out.jsonl").exists()


TRICKY = [
    "separators: a\rb\x0bc\x0cd\x1ce\x1df\x1eg\x85h\u2028i\u2029j\r\nk",
    "unicode: 数学 ∑ é (é) עברית 😀\U0001f9ee \u200b\ufeff",
    "long: " + " ".join(f"step {i}: 2 + {i} = {i + 2}." for i in range(1500)),  # ~ 28k chars
    "plain: 2 + 3 = 5, so \\boxed{5}.",
]


def _tricky_rows() -> list[dict]:
    return [
        {
            "prompt": "q\u2028one" if i % 2 else "q two",
            "completion": text,
            "reward": [1, 0.5, -0.0, 1e-300][i],
            "big": 10**40 + i,
            "nested": {"a": [1, {"b": None}], "é\u2029": "x\x85"},
            "lone": "\udc80" if i == 0 else "",
        }
        for i, text in enumerate(TRICKY)
    ]


def test_adjust_reads_back_its_own_output(tmp_path: Path) -> None:
    """Real model: completions with every line-separator character, unicode, a long trace, and
    pass-through values of every JSON kind; adjust's output fed to adjust gives the same rows."""
    rows = _tricky_rows()
    source = tmp_path / "in.jsonl"
    write_rows(source, rows)
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    assert main(["adjust", str(source), "-o", str(first), "--device", "cpu"]) == 0
    assert main(["adjust", str(first), "-o", str(second), "--device", "cpu"]) == 0
    once = read_rollouts(first).rows
    assert len(once) == len(rows)
    for row, original in zip(once, rows, strict=True):
        assert {k: row[k] for k in original} == original  # every field, exactly
        assert list(row) == [*original, *cli.OUTPUT_FIELDS]
    assert read_rollouts(second).rows == once  # same completions, same numbers


def test_csv_output_reads_back(tmp_path: Path, fake_embedder: type[FakeEmbedder]) -> None:
    """CSV: the same, with a field longer than the csv module's default limit (128 KiB)."""
    rows = [{k: v for k, v in row.items() if k != "lone"} for row in _tricky_rows()]
    rows[2]["completion"] *= 8  # ~ 230,000 characters
    source = tmp_path / "in.jsonl"
    write_rows(source, rows)
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    assert main(["adjust", str(source), "-o", str(first)]) == 0
    assert main(["adjust", str(first), "-o", str(second)]) == 0
    once = read_rollouts(first)
    assert once.completions == [row["completion"] for row in rows]
    assert [row["nested"] for row in once.rows] == [
        json.dumps(rows[0]["nested"], ensure_ascii=False)
    ] * 4
    assert read_rollouts(second).rows == once.rows


def test_adjust_embeds_in_chunks_and_writes_what_the_library_computes(
    tmp_path: Path, fake_embedder: type[FakeEmbedder], capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        {"prompt": f"q{i % 7}", "completion": f"{i} " + "ab" * (i % 13), "reward": i % 3}
        for i in range(1100)
    ]
    rows[5]["completion"] = "long " + "x" * 2_000_000  # longer than a chunk: alone in its own
    source = tmp_path / "in.jsonl"
    write_rows(source, rows)
    out = tmp_path / "out.jsonl"
    assert main(["adjust", str(source), "-o", str(out)]) == 0
    assert "embedded 1100 completions" in capsys.readouterr().err
    sizes = [len(call) for call in fake_embedder.calls]
    assert fake_embedder.loads == 1 and sum(sizes) == 1100 and max(sizes) <= CHUNK_ROWS
    assert [len(rows[5]["completion"])] in fake_embedder.calls  # alone in its chunk
    for call in fake_embedder.calls:
        assert len(call) == 1 or sum(call) <= CHUNK_CHARS
    embeddings = FakeEmbedder.vectors([row["completion"] for row in rows]).astype(np.float64)
    ids = [row["prompt"] for row in rows]
    rewards = np.array([row["reward"] for row in rows], dtype=np.float64)
    adjusted = adjust_rewards(rewards, embeddings, ids)
    written = read_rollouts(out).rows
    for name, values in {
        "smi": smi_scores(embeddings, ids),
        "reward_adjusted": adjusted,
        "advantage": group_advantages(rewards, ids),
        "advantage_dra": group_advantages(adjusted, ids),
    }.items():
        np.testing.assert_allclose([row[name] for row in written], values, rtol=1e-12, err_msg=name)


def test_adjust_memory_is_bounded_by_a_chunk_not_the_file(
    tmp_path: Path, fake_embedder: type[FakeEmbedder]
) -> None:
    """Peak Python memory of adjust on 8 MB of long traces stays near one chunk (CHUNK_CHARS of
    text) plus a few rows; reading the whole file would hold it several times over."""
    source = tmp_path / "long.jsonl"
    write_rows(
        source,
        (
            {"prompt": f"q{i % 4}", "completion": f"{i} " + "y" * 100_000, "reward": i % 2}
            for i in range(80)
        ),
    )
    size = source.stat().st_size
    tracemalloc.start()
    try:
        assert main(["adjust", str(source), "-o", str(tmp_path / "out.jsonl")]) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < size / 3, f"peak {peak:,} bytes for a {size:,}-byte file"


_KILLED_WRITER = """
import sys, time
import numpy as np, torch
import dra_kernels.cli as cli
import dra_kernels.embed as embed

class Fake:
    def __init__(self, *args, **kwargs):
        self.window_tokens, self.progress, self.last_stats = 256, False, None
    def encode(self, texts):
        return torch.ones(len(texts), 4)

embed.Embedder = Fake
rows = cli._output_rows

def paused(*args):
    for number, row in enumerate(rows(*args)):
        if number == 1:
            print("writing", flush=True)
            time.sleep(120)  # killed here, mid-write
        yield row

cli._output_rows = paused
cli.main(sys.argv[1:])
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL and stale temporaries: POSIX only")
def test_a_run_killed_mid_write_is_cleaned_up_by_the_next(
    tmp_path: Path, fake_embedder: type[FakeEmbedder], capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.jsonl"
    write_rows(source, [{"prompt": "q", "completion": c, "reward": 1} for c in "abc"])
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, "adjust", str(source), "-o", str(out)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        assert child.stdout is not None
        assert "writing\n" in iter(child.stdout.readline, "")  # the summary lines come first
    finally:
        child.kill()
        child.wait()
    (left,) = [p.name for p in tmp_path.iterdir() if ".dra-tmp-" in p.name]
    assert left.startswith(".out.jsonl.dra-tmp-") and f"-{child.pid}-" in left
    assert out.read_text() == "old\n"
    assert main(["adjust", str(source), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"note: removed {tmp_path / left}, a temporary file left by an interrupted run" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]
    assert len(read_rollouts(out).rows) == 3


# SIGINT as a terminal delivers it: a command started with `&` by a non-interactive shell (a CI
# script, `cmd &`) inherits SIGINT ignored, and Python then installs no handler of its own.
_SIGNALLED_WRITER = _KILLED_WRITER.replace(
    "cli.main(sys.argv[1:])", "sys.exit(cli.main(sys.argv[1:]))"
).replace(
    "import sys, time",
    "import signal, sys, time\nsignal.signal(signal.SIGINT, signal.default_int_handler)",
)


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_mid_write_cleans_up_as_ctrl_c(tmp_path: Path, signame: str) -> None:
    """kill, timeout, Slurm and Kubernetes send SIGTERM, a closed terminal SIGHUP: each is handled
    as SIGINT, the temporary removed, the old output intact, one line, a non-zero status."""
    import signal

    source = tmp_path / "in.jsonl"
    write_rows(source, [{"prompt": "q", "completion": c, "reward": 1} for c in "abc"])
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    child = subprocess.Popen(
        [sys.executable, "-c", _SIGNALLED_WRITER, "adjust", str(source), "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        assert child.stdout is not None
        assert "writing\n" in iter(child.stdout.readline, "")
        assert any(".dra-tmp-" in p.name for p in tmp_path.iterdir())  # mid-write
        child.send_signal(getattr(signal, signame))
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
        child.wait()
    number = getattr(signal, signame)
    assert child.returncode == 128 + number, err
    word = "interrupted" if signame == "SIGINT" else f"terminated ({signame})"
    assert err.splitlines()[-1] == f"dra-kernels: {word}", err  # after the summary lines
    assert "Traceback" not in err and err.count("dra-kernels") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]
    assert out.read_text() == "old\n"


@pytest.mark.skipif(os.name != "posix", reason="FIFOs and /dev/stdin")
@pytest.mark.parametrize("how", ["fifo", "stdin-dash", "dev-stdin"])
def test_input_that_reads_once_is_read_once(tmp_path: Path, how: str) -> None:
    """A FIFO, '-' and /dev/stdin (how pipes and process substitutions arrive) are read once into
    a temporary copy, removed after: the command's second pass never waits on a second open."""
    import threading

    rows = [{"prompt": "q" + str(i % 2), "completion": "ab"[i % 2] * (i + 1), "reward": i % 3}
            for i in range(6)]  # fmt: skip
    source = tmp_path / "rows.jsonl"
    write_rows(source, rows)
    data = source.read_bytes()
    out = tmp_path / "out.jsonl"
    spools = set(Path(tempfile.gettempdir()).glob("dra-kernels-input-*"))
    argv, stdin = ["adjust", "--format", "jsonl", "-o", str(out)], None
    writer = None
    if how == "fifo":
        fifo = tmp_path / "fifo.jsonl"
        os.mkfifo(fifo)
        writer = threading.Thread(target=fifo.write_bytes, args=(data,))
        writer.start()
        argv.append(str(fifo))
    else:
        argv.append("-" if how == "stdin-dash" else "/dev/stdin")
        stdin = data
    result = subprocess.run(
        [sys.executable, "-c", _STUB_EMBEDDER_MAIN, *argv],
        input=stdin,
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
        check=False,
    )
    if writer is not None:
        writer.join(timeout=10)
    assert result.returncode == 0, result.stderr.decode()
    got = read_rollouts(out).rows
    assert [r["completion"] for r in got] == [r["completion"] for r in rows]
    assert all("reward_adjusted" in r for r in got)
    assert set(Path(tempfile.gettempdir()).glob("dra-kernels-input-*")) == spools  # removed
    if how == "stdin-dash":  # messages name standard input
        bad = subprocess.run(
            [sys.executable, "-c", _STUB_EMBEDDER_MAIN, "adjust", "-", "-o", str(out)],
            input=b'{"prompt": "q"}\n', capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        assert bad.returncode == 2 or b"<stdin>" in bad.stderr, bad.stderr


@pytest.mark.skipif(os.name != "posix", reason="POSIX pipes")
def test_a_reader_that_leaves_stdout_does_not_stop_the_command(tmp_path: Path) -> None:
    """`dra-kernels adjust ... | head -1`: the summary's reader leaves after one line; the command
    still writes its output in full and exits 0, with no error about the pipe."""
    rows = [
        {"prompt": f"q{i % 40}", "completion": "x" * (i + 1), "reward": i % 2} for i in range(200)
    ]
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_rows(source, rows)
    child = subprocess.Popen(
        [sys.executable, "-c", _STUB_EMBEDDER_MAIN, "adjust", str(source), "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert child.stdout is not None and child.stderr is not None
    child.stdout.readline()
    child.stdout.close()  # the reader leaves
    err = child.stderr.read().decode()
    assert child.wait(timeout=120) == 0, err
    assert "error" not in err and "Broken pipe" not in err, err
    assert len(read_rollouts(out).rows) == 200


_STUB_EMBEDDER_MAIN = """
import sys, torch
import dra_kernels.cli as cli
import dra_kernels.embed as embed

class Stub:
    def __init__(self, *args, **kwargs):
        self.window_tokens, self.progress, self.last_stats = 256, False, None
    def encode(self, texts):
        return torch.stack([torch.tensor([1.0, len(t) % 3, 0.5]) for t in texts])

embed.Embedder = Stub
sys.exit(cli.main(sys.argv[1:]))
"""


# ----------------------------------------------------------------------------- demo


def _demo_table(stdout: str) -> tuple[str, list[list[float]]]:
    """The header line and the numbers of the demo's one-prompt table."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("completion (first words)"))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("columns:"))
    return lines[start], [[float(v) for v in line[36:].split()] for line in lines[start + 1 : end]]


def test_demo_shows_one_prompt_column_by_column_as_the_library_computes_it(
    tmp_path: Path, fake_embedder: type[FakeEmbedder], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "-o", str(tmp_path / "demo")]) == 0
    stdout = capsys.readouterr().out
    header, table = _demo_table(stdout)
    labels = ("completion (first words)", "reward", "SMI", "adjusted", "GRPO adv", "DRA adv")
    assert header.split() == " ".join(labels).split(), header  # every column, in this order
    prose = " ".join(stdout.split())  # paragraphs are wrapped
    assert (
        "SMI of a completion = the sum of the cosine similarities between its embedding and those "
        "of the other completions of the same prompt"
    ) in prose
    assert "adjusted = reward / (1 + SMI)" in prose
    assert "Why every reward shrinks: every SMI here is positive" in prose
    assert "Why only differences within a group matter: GRPO subtracts" in prose

    rollouts = read_rollouts(SAMPLE)
    rows = [i for i, row in enumerate(rollouts.rows) if row["prompt_id"] == cli.DEMO_PROMPT_ID]
    texts = [rollouts.completions[i] for i in rows]
    embeddings = FakeEmbedder.vectors(texts).astype(np.float64)
    rewards = np.asarray(rollouts.rewards)[rows]
    ids = np.zeros(len(rows), dtype=np.int64)  # one prompt: one group
    adjusted = adjust_rewards(rewards, embeddings, ids)
    expected = np.stack(
        [
            rewards,
            smi_scores(embeddings, ids),
            adjusted,
            group_advantages(rewards, ids),
            dra_advantages(rewards, embeddings, ids),
        ],
        axis=1,
    )
    assert len(table) == len(rows) == 7
    np.testing.assert_allclose(np.asarray(table), expected, rtol=0, atol=6e-4)
    assert len({row[3] for row in table if row[0] == 1}) == 1  # GRPO: one advantage per reward
    assert len({row[4] for row in table if row[0] == 1}) > 1  # DRA: they differ
    assert f"One prompt (7 completions): {rollouts.rows[rows[0]]['prompt']}" in prose


def test_demo_output_folder_is_an_option_and_defaults_to_the_temporary_directory(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_embedder: type[FakeEmbedder],
    capsys: pytest.CaptureFixture[str],
) -> None:
    import tempfile

    files = ["adjusted.jsonl", "analysis.csv", "pvalues.png"]
    chosen = tmp_path / "chosen" / "deeper"
    assert main(["demo", "-o", str(chosen)]) == 0
    assert sorted(p.name for p in chosen.iterdir()) == files
    assert f"{chosen / 'analysis.csv'}" in capsys.readouterr().out

    cwd, temporary = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    temporary.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    assert main(["demo"]) == 0
    (default,) = temporary.iterdir()
    assert default.name.startswith("dra-demo-")
    assert sorted(p.name for p in default.iterdir()) == files
    assert f"{default / 'pvalues.png'}" in capsys.readouterr().out
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize(
    "options", [["--measure", "facility_location", "--eta", "0.5"], ["--measure", "log_det"]]
)
def test_adjust_with_another_measure_writes_what_the_library_computes(
    tmp_path: Path, fake_embedder: type[FakeEmbedder], options: list[str]
) -> None:
    rows = [{"prompt": f"q{i % 3}", "completion": "ab" * (i % 5) + str(i), "reward": i % 2}
            for i in range(20)]  # fmt: skip
    source = tmp_path / "in.jsonl"
    write_rows(source, rows)
    out = tmp_path / "out.jsonl"
    assert main(["adjust", str(source), "-o", str(out), *options]) == 0
    measure = {"measure": options[1], **({"eta": 0.5} if "--eta" in options else {})}
    embeddings = FakeEmbedder.vectors([row["completion"] for row in rows]).astype(np.float64)
    ids = [row["prompt"] for row in rows]
    rewards = np.array([row["reward"] for row in rows], dtype=np.float64)
    written = read_rollouts(out).rows
    smi = smi_scores(embeddings, ids, **measure)
    assert not np.allclose(smi, smi_scores(embeddings, ids))  # not graph-cut's
    np.testing.assert_allclose([row["smi"] for row in written], smi, rtol=1e-12)
    adjusted = adjust_rewards(rewards, embeddings, ids, **measure)
    np.testing.assert_allclose([row["reward_adjusted"] for row in written], adjusted, rtol=1e-12)


def test_measure_options_are_checked_before_any_work(
    tmp_path: Path, fake_embedder: type[FakeEmbedder], capsys: pytest.CaptureFixture[str]
) -> None:
    source = _ok_file(tmp_path)
    for options, message in (
        (["--measure", "log_det", "--eta", "2"], "--eta must be > 0 and <= 1"),
        (["--lam", "0.5"], "--lam is used only by --measure='log_det'"),
    ):
        assert main(["adjust", str(source), "-o", str(tmp_path / "o.jsonl"), *options]) == 2
        assert message in capsys.readouterr().err
    assert fake_embedder.loads == 0
