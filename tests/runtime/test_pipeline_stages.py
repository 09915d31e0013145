"""The text decoder in pipeline stages (`build --pipeline-stages N`): greedy tokens equal the
single-graph engine's token for token, images included; the manifest records the stages and the
runtime refuses engines that disagree with it; int8 and int4 stages build and run.

glm4v-tiny has two decoder layers, so it is tested with 2 stages, and a 4-layer variant of it with
3; smollm2-135m (30 layers) with 2 and 3."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from builder.export.paged_decoder import stage_ranges
from runtime import decoder_io as io
from runtime.errors import EngineDirError
from runtime.llm_engine import LLMEngine
from runtime.manifest import Manifest
from runtime.sampling import SamplingParams
from runtime.server.llm_service import instance_devices
from runtime.stages import StagedEngine
from tests.conftest import _engines, run_cli
from tests.runtime.test_multimodal_parity import IMAGES, hf_image_greedy
from tests.runtime.test_multimodal_preprocess import png

PROMPTS = [
    "The capital of France is",
    "Write a short poem about the sea, with rhymes, in four lines:",
    "1, 2, 3,",
]
MAX_NEW = 24


@pytest.fixture(scope="module")
def glm4v_four_layers(tmp_path_factory, glm4v_tiny_model):
    """glm4v-tiny with two more decoder layers (seeded random, as the preset's), its single-graph
    and 3-stage fp32 engines: (model dir, single, staged)."""
    import torch
    from transformers import AutoConfig, Glm4vForConditionalGeneration

    model_dir = tmp_path_factory.mktemp("glm4v") / "glm4v-tiny-4l"
    shutil.copytree(glm4v_tiny_model, model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    config.text_config.num_hidden_layers = 4
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        model = Glm4vForConditionalGeneration.from_pretrained(glm4v_tiny_model, config=config)
    model.save_pretrained(model_dir)
    single = _engines(tmp_path_factory, model_dir, ("fp32",))
    staged = _engines(tmp_path_factory, model_dir, ("fp32",), "-stages3", stages=3)
    return model_dir, single, staged


def greedy(engines, prompts=PROMPTS, precision="fp32") -> list[list[int]]:
    llm = LLMEngine(engines, precision=precision)
    params = SamplingParams(max_tokens=MAX_NEW, stop_token_ids=llm.tokenizer.stop_token_ids)
    return [ids for ids, _ in llm.generate_ids([llm.tokenizer.encode(p) for p in prompts], params)]


def test_stage_ranges_are_contiguous_and_even():
    assert stage_ranges(30, 3) == [range(0, 10), range(10, 20), range(20, 30)]
    assert stage_ranges(5, 2) == [range(0, 3), range(3, 5)]  # the earlier stage takes the extra layer
    assert stage_ranges(2, 2) == [range(0, 1), range(1, 2)]
    with pytest.raises(ValueError):
        stage_ranges(2, 3)


def test_build_refuses_more_stages_than_layers(tmp_path, glm4v_tiny_model):
    result = run_cli("build", "--model", glm4v_tiny_model, "--out", tmp_path / "e", "--work-dir",
                     tmp_path / "w", "--pipeline-stages", "3", "--backend", "onnxruntime", check=False)  # fmt: skip
    assert result.returncode == 2
    assert "--pipeline-stages 3 does not fit glm4v-tiny: it has 2 decoder layers" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("stages", [2, 3])
def test_smollm2_stages_generate_the_single_graph_tokens(smollm2_engines, smollm2_staged, stages):
    staged = LLMEngine(smollm2_staged[stages], precision="fp32")
    assert isinstance(staged.decoder.engine, StagedEngine)
    assert [pool.spec.num_layers for pool in staged.decoder.pool.pools] == [
        len(r) for r in stage_ranges(30, stages)
    ]
    assert greedy(smollm2_staged[stages]) == greedy(smollm2_engines)


def test_glm4v_tiny_stages_generate_the_single_graph_tokens(glm4v_tiny_engines, glm4v_tiny_staged):
    assert greedy(glm4v_tiny_staged) == greedy(glm4v_tiny_engines)


def test_glm4v_three_stages_with_images_equal_the_single_graph_and_hf(glm4v_four_layers):
    model_dir, single, staged = glm4v_four_layers
    assert [s["layers"] for s in Manifest.load(staged).stages] == [[0, 2], [2, 3], [3, 4]]
    assert greedy(staged) == greedy(single)
    llm = LLMEngine(staged, precision="fp32")
    text, images = "Describe the picture.", [IMAGES["wide"]]
    prepared = llm.prepare_media(text, [png(i) for i in images], [])
    params = SamplingParams(max_tokens=MAX_NEW, stop_token_ids=llm.tokenizer.stop_token_ids)
    ((ours, _),) = llm.generate_ids([prepared], params)
    _, reference, _ = hf_image_greedy(model_dir, llm, text, images)
    assert ours == reference


def test_glm4v_tiny_stages_with_images_equal_hf(glm4v_tiny_model, glm4v_tiny_staged):
    """The first stage splices the image rows; the tokens are Hugging Face's, as the single graph's are."""
    llm = LLMEngine(glm4v_tiny_staged, precision="fp32")
    text, images = "What differs between these two screenshots?", [IMAGES["square"], IMAGES["wide"]]
    prepared = llm.prepare_media(text, [png(i) for i in images], [])
    params = SamplingParams(max_tokens=MAX_NEW, stop_token_ids=llm.tokenizer.stop_token_ids)
    ((ours, _),) = llm.generate_ids([prepared], params)
    _, reference, _ = hf_image_greedy(glm4v_tiny_model, llm, text, images)
    assert ours == reference


def test_manifest_records_stages_and_their_engines(glm4v_tiny_staged):
    manifest = Manifest.load(glm4v_tiny_staged)
    assert manifest.stages == [
        {"component": "text_decoder_stage0", "layers": [0, 1]},
        {"component": "text_decoder_stage1", "layers": [1, 2]},
    ]
    assert "text_decoder" not in manifest.engines
    assert manifest.precisions("text_decoder") == ["fp32", "int4", "int8"]
    first, last = (manifest.entry(s["component"], "fp32") for s in manifest.stages)
    assert io.INPUT_IDS in {t.name for t in first.inputs} and io.MEDIA_EMBEDS in {
        t.name for t in first.inputs
    }
    present = set(io.kv_present_names(1))  # each stage's one layer's past, updated in place
    assert {t.name for t in first.outputs} == {io.HIDDEN_OUT, io.NEW_KV, *present}
    assert io.HIDDEN_IN in {t.name for t in last.inputs} and io.INPUT_IDS not in {t.name for t in last.inputs}
    assert {t.name for t in last.outputs} == {io.LOGITS, io.NEW_KV, *present}
    for entry in (first, last):  # fused like the single graph: one GQA per layer, its past in slots
        assert entry.report["fusions"]["GroupQueryAttention (paged)"] == 1
        kv = [t for t in entry.inputs if t.name.startswith(("key_cache.", "value_cache."))]
        assert [t.name for t in kv] == io.kv_input_names(1) and all(len(t.shape) == 4 for t in kv)


def _tampered(src, tmp_path, edit) -> str:
    out = tmp_path / "engines"
    shutil.copytree(src, out)
    data = json.loads((out / "manifest.json").read_text())
    edit(data)
    (out / "manifest.json").write_text(json.dumps(data))
    return out


def test_runtime_refuses_stages_that_disagree_with_the_engines(glm4v_tiny_staged, tmp_path):
    def overlap(data):  # ranges that do not tile the layers
        data["decoder"]["stages"][1]["layers"] = [0, 2]

    with pytest.raises(EngineDirError, match="do not cover the decoder's 2 layers in order"):
        LLMEngine(_tampered(glm4v_tiny_staged, tmp_path / "a", overlap), precision="fp32")

    def swapped(data):  # each stage's engine named for the other's place
        stages = data["decoder"]["stages"]
        stages[0]["component"], stages[1]["component"] = stages[1]["component"], stages[0]["component"]

    with pytest.raises(EngineDirError, match="does not take what pipeline stage 1 of 2"):
        LLMEngine(_tampered(glm4v_tiny_staged, tmp_path / "b", swapped), precision="fp32")


def test_devices_must_name_one_device_per_stage(glm4v_tiny_staged, glm4v_tiny_engines):
    staged = run_cli(
        "generate", "--engines", glm4v_tiny_staged, "--prompt", "hi", "--devices", "0,1,2", check=False
    )
    assert staged.returncode == 2 and "Traceback" not in staged.stderr
    assert "--devices names 3 device(s) but the text decoder" in staged.stderr
    assert "is 2 pipeline stages" in staged.stderr
    single = run_cli(
        "generate", "--engines", glm4v_tiny_engines, "--prompt", "hi", "--devices", "0,1", check=False
    )
    assert single.returncode == 2 and "rebuild with --pipeline-stages 2" in single.stderr
    # One device per stage: on a machine without CUDA the stages run on the CPU.
    placed = run_cli("generate", "--engines", glm4v_tiny_staged, "--prompt", "hi", "--devices", "0,1",
                     "--max-tokens", "4", "--json")  # fmt: skip
    assert len(json.loads(placed.stdout.splitlines()[-1])["token_ids"]) == 4


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantised_stages_build_and_run(glm4v_tiny_staged, precision):
    """Later stages calibrate on the hidden states the stages before them hand on."""
    manifest = Manifest.load(glm4v_tiny_staged)
    later = manifest.entry("text_decoder_stage1", precision)
    assert later.calibration["data"].endswith("through the 1 stage(s) before")
    quantised, reference = (LLMEngine(glm4v_tiny_staged, precision=p) for p in (precision, "fp32"))
    tokens = quantised.tokenizer.encode(PROMPTS[1])
    got, want = quantised.score(tokens), reference.score(tokens)
    cosine = float((got * want).sum() / (np.linalg.norm(got) * np.linalg.norm(want)))
    # glm4v-tiny's random weights: int8 measured 0.9990, int4 (4-bit blocks of 32) 0.920.
    assert cosine > {"int8": 0.995, "int4": 0.85}[precision]
    assert len(greedy(glm4v_tiny_staged, PROMPTS[:1], precision)[0]) == MAX_NEW


def test_bench_engines_says_it_does_not_measure_stages_yet(glm4v_tiny_staged):
    result = run_cli("bench", "engines", "--engines", glm4v_tiny_staged, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "2 pipeline stages, which bench engines does not measure yet" in result.stderr


def test_an_llm_instance_on_a_gpu_takes_triton_s_device(glm4v_tiny_engines, glm4v_tiny_staged):
    """Replicas on GPUs: a KIND_GPU llm instance runs a single-graph decoder on the GPU Triton gave
    it; a staged one goes where --devices says (its default: from the first GPU)."""
    assert instance_devices(glm4v_tiny_engines, "", "GPU", 1) == (1,)
    assert instance_devices(glm4v_tiny_engines, "", "CPU", 0) == ()
    assert instance_devices(glm4v_tiny_staged, "", "GPU", 1) == ()
    assert instance_devices(glm4v_tiny_staged, "2,3", "GPU", 1) == (2, 3)
