"""glm4v-600m: a GLM-4.1V model whose fp32 decoder is over 2 GB (protobuf's limit), built at every
precision with the real CLI; greedy fp32 generation equals Hugging Face's."""

from __future__ import annotations

import json

import pytest
import torch

from builder.model_dir import open_model_dir
from runtime.llm_engine import LLMEngine
from runtime.manifest import Manifest
from runtime.onnx_files import data_files
from runtime.sampling import SamplingParams
from tests.conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.large]

PRECISIONS = ("fp32", "fp16", "int8", "int4")
PROMPTS = ("The capital of France is", "def fibonacci(n):")
MAX_NEW = 12
TWO_GB = 2**31


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    base = tmp_path_factory.mktemp("large")
    model, engines = base / "glm4v-600m", base / "engines"
    run_cli("model", "create", "--preset", "glm4v-600m", "--out", model)
    precisions = [a for p in PRECISIONS for a in ("--precision", p)]
    run_cli("build", "--model", model, "--out", engines, "--work-dir", base / "work", *precisions)
    return model, engines


def test_the_preset_is_a_sharded_checkpoint_over_2_gb(large):
    model, _ = large
    index = json.loads((model / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert index["metadata"]["total_size"] > TWO_GB
    config = json.loads((model / "config.json").read_text())["text_config"]
    assert (config["vocab_size"], config["num_key_value_heads"]) == (151_552, 2)


def test_every_precision_builds_with_its_weights_beside_the_engine(large):
    _, engines = large
    manifest = Manifest.load(engines)
    fp32 = manifest.entry("text_decoder", "fp32")
    assert sum(d["size"] for d in fp32.data_files) > TWO_GB
    for precision in PRECISIONS:
        entry = manifest.entry("text_decoder", precision)
        assert [d["file"] for d in entry.data_files] == data_files(engines / entry.file)
        result = run_cli("generate", "--engines", engines, "--precision", precision, "--prompt", "Hi",
                         "--max-tokens", "4", "--json")  # fmt: skip
        assert len(json.loads(result.stdout)["token_ids"]) == 4


def test_greedy_fp32_equals_hugging_face(large):
    model_dir, engines = large
    generator = LLMEngine(engines, precision="fp32")
    params = SamplingParams(max_tokens=MAX_NEW, stop_token_ids=generator.tokenizer.stop_token_ids)
    hf = open_model_dir(model_dir).load()
    for text in PROMPTS:
        ids = generator.tokenizer.encode(text)
        ((ours, _),) = generator.generate_ids([ids], params)
        with torch.no_grad():
            out = hf.generate(
                torch.tensor([ids]),
                max_new_tokens=MAX_NEW,
                do_sample=False,
                eos_token_id=list(params.stop_token_ids),
                pad_token_id=params.stop_token_ids[0],
            )
        assert ours == out[0, len(ids) :].tolist(), text
