"""Greedy generation with images equals Hugging Face `generate` token for token; with audio it equals
a PyTorch reference (HF Whisper encoder + projector spliced into HF's `inputs_embeds`)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

from builder.export.audio_encoder import load_audio_encoder
from builder.model_dir import open_model_dir
from runtime.llm_engine import LLMEngine
from runtime.multimodal.image import ImageSpec, letterbox
from runtime.sampling import SamplingParams
from tests.conftest import run_cli
from tests.runtime.test_multimodal_preprocess import make_image, png, speech_like, wav

MAX_NEW = 24
# A 224×224 image is the engine's own size (no resize); 640×360 is letterboxed into it.
IMAGES = {"square": make_image(224, 224, seed=11), "wide": make_image(640, 360, seed=12)}


@functools.cache
def hf_model(model_dir):
    return open_model_dir(model_dir).load()


@pytest.fixture(scope="module")
def generator(glm4v_tiny_engines) -> LLMEngine:
    return LLMEngine(glm4v_tiny_engines, precision="fp32")


def _params(generator: LLMEngine) -> SamplingParams:
    return SamplingParams(max_tokens=MAX_NEW, stop_token_ids=generator.tokenizer.stop_token_ids)


def hf_image_greedy(model_dir, generator: LLMEngine, text: str, images: list) -> tuple[list, list, list]:
    """(prompt ids, generated ids, 3-D positions) from Hugging Face, fed the same pixel grid."""
    model = hf_model(model_dir)
    info = generator.manifest.encoders["vision_encoder"]
    config = {k: v for k, v in info["preprocessor"].items() if k != "image_processor_type"}
    spec = ImageSpec.from_info(info)
    pixels = Glm4vImageProcessorPil(**config)(
        images=[letterbox(i, spec) for i in images], return_tensors="pt"
    )
    messages = [
        {"role": "user", "content": [*[{"type": "image"}] * len(images), {"type": "text", "text": text}]}
    ]
    rendered = generator.tokenizer.hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    # What Glm4vProcessor does: one <|image|> per merged patch.
    tokens = int(pixels["image_grid_thw"][0].prod()) // 4
    rendered = rendered.replace("<|image|>", "<|image|>" * tokens)
    ids = torch.tensor([generator.tokenizer.hf.encode(rendered, add_special_tokens=False)])
    mm_types = (ids == model.config.image_token_id).int()
    positions, _ = model.model.get_rope_index(ids, mm_types, pixels["image_grid_thw"])
    stop = list(generator.tokenizer.stop_token_ids)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=pixels["pixel_values"],
            image_grid_thw=pixels["image_grid_thw"],
            mm_token_type_ids=mm_types,
            max_new_tokens=MAX_NEW,
            do_sample=False,
            eos_token_id=stop,
            pad_token_id=stop[0],
        )
    return ids[0].tolist(), out[0, ids.shape[1] :].tolist(), positions[:, 0].numpy()


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("Describe the picture.", ["square"]),
        ("What differs between these two screenshots?", ["square", "wide"]),
    ],
)
def test_image_generation_equals_hf(glm4v_tiny_model, generator, text, names):
    images = [IMAGES[name] for name in names]
    prepared = generator.prepare_media(text, [png(i) for i in images], [])
    ((ours, _),) = generator.generate_ids([prepared], _params(generator))
    ids, reference, positions = hf_image_greedy(glm4v_tiny_model, generator, text, images)
    assert prepared.token_ids == ids, "placeholders expanded as Glm4vProcessor does"
    np.testing.assert_array_equal(prepared.positions, positions)
    assert prepared.rope_delta == int(positions.max()) + 1 - len(ids)
    assert len(ours) == MAX_NEW or ours[-1] in generator.tokenizer.stop_token_ids
    assert ours == reference


def reference_audio_greedy(model_dir, generator: LLMEngine, text: str, clip: np.ndarray) -> list[int]:
    """Our own PyTorch pipeline: HF WhisperFeatureExtractor → HF WhisperEncoder + projector →
    rows over the audio tokens of HF's `inputs_embeds` → HF forward, greedy, no cache."""
    from transformers import WhisperFeatureExtractor

    model = hf_model(model_dir)
    info = generator.manifest.encoders["audio_encoder"]
    pcm = np.frombuffer(wav(clip), "<i2", offset=44).astype(np.float32) / 32768
    features = WhisperFeatureExtractor.from_dict(info["preprocessor"])(
        pcm, sampling_rate=16000, return_tensors="pt"
    )
    with torch.no_grad():
        rows = load_audio_encoder(model_dir)(features["input_features"])[0]  # [375, H]
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": text}]}]
    rendered = generator.tokenizer.hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    rendered = rendered.replace("<|audio|>", "<|audio|>" * len(rows))
    ids = generator.tokenizer.hf.encode(rendered, add_special_tokens=False)
    stop = generator.tokenizer.stop_token_ids
    out: list[int] = []
    with torch.no_grad():
        while len(out) < MAX_NEW and (not out or out[-1] not in stop):
            tokens = torch.tensor([ids + out])
            embeds = model.get_input_embeddings()(tokens)
            embeds[0, tokens[0] == info["token_ids"]["placeholder"]] = rows
            positions = torch.arange(tokens.shape[1]).expand(3, 1, -1)
            logits = model(inputs_embeds=embeds, position_ids=positions).logits
            out.append(int(logits[0, -1].argmax()))
    return out


def test_audio_generation_equals_pytorch_reference(glm4v_tiny_model, generator):
    text, clip = "Transcribe the recording.", speech_like(4.0, seed=5)
    prepared = generator.prepare_media(text, [], [wav(clip)])
    assert prepared.positions is None and prepared.rope_delta == 0, "audio tokens are positioned as text"
    ((ours, _),) = generator.generate_ids([prepared], _params(generator))
    assert ours == reference_audio_greedy(glm4v_tiny_model, generator, text, clip)


def test_mixed_batch_equals_each_prompt_alone(generator):
    """Media and text-only prompts share engine calls without affecting each other."""
    params = SamplingParams(max_tokens=8, stop_token_ids=generator.tokenizer.stop_token_ids)
    prompts = [
        generator.prepare_media("Read the screen.", [png(IMAGES["wide"])], [wav(speech_like(2.0, seed=7))]),
        generator.tokenizer.encode("A plain text prompt", chat=True),
        generator.prepare_media("And this one?", [png(IMAGES["square"])], []),
    ]
    together = generator.generate_ids(prompts, params)
    assert together == [generator.generate_ids([p], params)[0] for p in prompts]


def test_encoders_load_lazily_and_unload_when_idle(glm4v_tiny_engines):
    generator = LLMEngine(glm4v_tiny_engines, precision="fp16")
    params = SamplingParams(max_tokens=4)
    generator.generate(["text only"], params)
    assert generator.encoders.loaded == (), "a text-only session loads no encoder"
    prepared = generator.prepare_media("look", [png(IMAGES["square"])], [])
    assert generator.encoders.loaded == ("vision_encoder",)
    assert generator.encoders.precision("vision_encoder") == "fp16"
    assert generator.encoders.unload_idle(3600) == []
    assert generator.encoders.unload_idle(0) == ["vision_encoder"]
    assert generator.encoders.loaded == ()
    again = generator.prepare_media("look", [png(IMAGES["square"])], [])
    np.testing.assert_array_equal(again.media_embeds, prepared.media_embeds)


def test_cli_generate_with_image_and_audio(glm4v_tiny_engines, smollm2_engines, tmp_path):
    (tmp_path / "a.png").write_bytes(png(IMAGES["wide"]))
    (tmp_path / "a.wav").write_bytes(wav(speech_like(1.5, seed=9)))
    args = ["generate", "--prompt", "hi", "--image", tmp_path / "a.png", "--audio", tmp_path / "a.wav"]
    result = run_cli(*args, "--engines", glm4v_tiny_engines, "--max-tokens", "3", "--json")
    assert '"finish_reason"' in result.stdout
    refused = run_cli(*args, "--engines", smollm2_engines, check=False)
    assert refused.returncode == 2
    assert "no vision encoder" in refused.stderr and "Traceback" not in refused.stderr


def test_prefill_from_a_cached_prefix_slices_media_rows(generator):
    """A prefix-cache hit inside an image: the step gets exactly the rows from `past_len` on."""
    prompt = generator.prepare_media("x", [png(IMAGES["square"]), png(IMAGES["wide"])], [])
    start = int(prompt.media_positions[0]) + 10
    step = prompt.prefill_input("r", start)
    keep = prompt.media_positions >= start
    np.testing.assert_array_equal(step.media_index, prompt.media_positions[keep] - start)
    np.testing.assert_array_equal(step.media_embeds, prompt.media_embeds[keep])
    np.testing.assert_array_equal(step.positions, prompt.positions[:, start:])
    tail = prompt.prefill_input("r", int(prompt.media_positions[-1]) + 1)
    assert tail.media_embeds is None and tail.media_index is None
    decode = prompt.decode_input("r", 5, len(prompt))
    assert decode.media_embeds is None
    np.testing.assert_array_equal(decode.positions, np.full((3, 1), len(prompt) + prompt.rope_delta))
