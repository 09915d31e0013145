"""Preset `autoglm-phone-9b-shape`: AutoGLM-Phone-9B's real configuration and a tokenizer, no weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoTokenizer

from builder.errors import ModelDirError
from builder.model_dir import open_model_dir
from builder.presets import create_preset, read_preset_marker
from tests.conftest import run_cli

PRESET = "autoglm-phone-9b-shape"


@pytest.fixture(scope="module")
def shape_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_preset(PRESET, tmp_path_factory.mktemp("p") / PRESET)


def test_writes_glm_4_1v_9b_configuration(shape_dir: Path) -> None:
    config = AutoConfig.from_pretrained(shape_dir)
    assert config.model_type == "glm4v" and config.architectures == ["Glm4vForConditionalGeneration"]
    text, vision = config.text_config, config.vision_config
    assert (text.num_hidden_layers, text.hidden_size, text.intermediate_size) == (40, 4096, 13696)
    assert (text.num_attention_heads, text.num_key_value_heads, text.vocab_size) == (32, 2, 151552)
    assert (text.max_position_embeddings, text.rms_norm_eps, text.attention_bias) == (65536, 1e-5, True)
    assert text.rope_parameters == {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "partial_rotary_factor": 0.5,
        "mrope_section": [8, 12, 12],
    }
    head_dim = text.hidden_size // text.num_attention_heads
    assert sum(text.rope_parameters["mrope_section"]) == head_dim * 0.5 / 2
    assert (vision.depth, vision.hidden_size, vision.num_heads) == (24, 1536, 12)
    assert (vision.patch_size, vision.image_size, vision.out_hidden_size) == (14, 336, 4096)
    assert (vision.intermediate_size, vision.spatial_merge_size, vision.temporal_patch_size) == (13696, 2, 2)
    assert not config.tie_word_embeddings


def test_tokenizer_uses_the_configs_token_ids(shape_dir: Path) -> None:
    config = AutoConfig.from_pretrained(shape_dir)
    tokenizer = AutoTokenizer.from_pretrained(shape_dir)
    ids = tokenizer.convert_tokens_to_ids
    assert ids("<|image|>") == config.image_token_id == 151343
    assert ids("<|begin_of_image|>") == config.image_start_token_id == 151339
    assert ids("<|end_of_image|>") == config.image_end_token_id == 151340
    assert ids("<|video|>") == config.video_token_id == 151344
    eos = json.loads((shape_dir / "generation_config.json").read_text())["eos_token_id"]
    assert eos == [ids(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>", "</answer>")]
    assert ids("<|begin_of_audio|>") is None  # GLM-4.1V has no audio tokens
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "打开微信"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert (
        prompt == "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>打开微信<|assistant|>\n"
    )
    assert tokenizer.decode(tokenizer(prompt)["input_ids"]) == prompt
    processor = json.loads((shape_dir / "preprocessor_config.json").read_text())
    assert processor["size"] == {"shortest_edge": 12544, "longest_edge": 9633792}


def test_has_no_weights_and_says_so(shape_dir: Path) -> None:
    assert not [p for p in shape_dir.rglob("*") if p.suffix in (".safetensors", ".bin", ".gguf")]
    assert not (shape_dir / "audio_encoder").exists()
    assert read_preset_marker(shape_dir)["weights"] == "none"
    model_dir = open_model_dir(shape_dir)
    assert model_dir.shape_only
    with pytest.raises(ModelDirError, match="no weights"):
        model_dir.load()


def test_a_weightless_directory_that_is_not_shape_only_is_refused(shape_dir: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text((shape_dir / "config.json").read_text())
    with pytest.raises(ModelDirError, match="no weights"):
        open_model_dir(plain)


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
def test_full_build_refuses_with_one_error_line(shape_dir: Path, tmp_path: Path, backend: str) -> None:
    result = run_cli(
        "build", "--model", shape_dir, "--out", tmp_path / "engines", "--backend", backend, check=False
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no weights" in errors[0] and "--check-only" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "engines").exists()
