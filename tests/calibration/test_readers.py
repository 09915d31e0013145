"""Calibration data readers: default corpora, user directories, fixed order, bad input."""

from __future__ import annotations

import wave

import numpy as np
import pytest
from PIL import Image

from calibration import corpus
from calibration.errors import CalibrationError
from calibration.readers import SYSTEM_SPEECH, audio_samples, default_speech, image_samples, text_samples


def test_default_text_never_overlaps_the_evaluation_text():
    calibration, evaluation = corpus.topic_keys(False), corpus.topic_keys(True)
    assert calibration and evaluation and not set(calibration) & set(evaluation)
    assert not set(corpus.calibration_passages()) & set(corpus.evaluation_passages())
    assert text_samples(None, 256).count == 256  # enough for the largest documented run


def test_text_order_is_fixed_and_follows_sorted_paths(tmp_path):
    (tmp_path / "b.txt").write_text("second file")
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "c.md").write_text("third\n\nstill third")
    (tmp_path / "a.txt").write_text("first file, first passage")
    (tmp_path / "ignored.bin").write_bytes(b"\0\1")
    samples = text_samples(tmp_path, 3)
    assert list(samples) == ["first file, first passage", "second file", "third\n\nstill third"]
    assert list(samples) == list(samples)  # re-iterable, same order
    assert list(text_samples(None, 5)) == list(text_samples(None, 5))


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: d / "missing", "does not exist"),
        (lambda d: d, "has no text files"),
        (lambda d: (d / "f.txt").write_text("x") and d / "f.txt", "is a file"),
    ],
)
def test_bad_text_directory_is_a_clear_error(tmp_path, setup, message):
    with pytest.raises(CalibrationError, match=message):
        text_samples(setup(tmp_path), 1)


def test_unreadable_text_and_too_few_samples(tmp_path):
    (tmp_path / "a.txt").write_text("only one passage")
    with pytest.raises(CalibrationError, match=r"yields 1 samples but --samples 4 .* lower --samples"):
        text_samples(tmp_path, 4)
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe\xfa not utf-8")
    with pytest.raises(CalibrationError, match=r"b\.txt is unreadable"):
        text_samples(tmp_path, 1)


def test_images_from_a_directory_and_the_default_set(tmp_path):
    Image.new("L", (5, 4), 7).save(tmp_path / "b.png")
    Image.new("RGB", (3, 2), (1, 2, 3)).save(tmp_path / "a.jpg")
    images = list(image_samples(tmp_path, 2))
    assert [i.shape for i in images] == [(2, 3, 3), (4, 5, 3)]  # sorted: a.jpg first; grey → RGB
    assert images[0].dtype == np.uint8
    defaults = list(image_samples(None, 4))
    assert len(defaults) == 4 and all(i.ndim == 3 and i.shape[2] == 3 for i in defaults)
    (tmp_path / "c.png").write_bytes(b"not a png")
    with pytest.raises(CalibrationError, match=r"c\.png is unreadable"):
        list(image_samples(tmp_path, 3))


def test_audio_wav_becomes_mono_float(tmp_path):
    stereo = np.array([[1000, -1000], [32767, 32767], [0, -32768]], np.int16)
    with wave.open(str(tmp_path / "a.wav"), "wb") as clip:
        clip.setnchannels(2)
        clip.setsampwidth(2)
        clip.setframerate(16000)
        clip.writeframes(stereo.tobytes())
    (clip_read,) = audio_samples(tmp_path, 1)
    assert clip_read.rate == 16000
    np.testing.assert_allclose(clip_read.samples, stereo.mean(axis=1) / 32768.0, atol=1e-6)
    (tmp_path / "b.wav").write_bytes(b"RIFF junk")
    with pytest.raises(CalibrationError, match=r"b\.wav is unreadable"):
        list(audio_samples(tmp_path, 2))
    with pytest.raises(CalibrationError, match="--data DIR"):
        audio_samples(None, 1)


def test_default_speech_is_the_installed_system_clips():
    """The audio encoder's default calibration speech (Debian's pocketsphinx-testdata)."""
    if default_speech(1) is None:
        pytest.skip(f"no speech installed at {SYSTEM_SPEECH} (apt-get install pocketsphinx-testdata)")
    speech = default_speech(64)
    clips = list(speech)
    assert speech.count == len(clips) == 10  # all the package has, fewer than asked
    assert "pocketsphinx-testdata" in speech.description
    for clip in clips:
        assert clip.rate == 16000 and clip.samples.ndim == 1
        assert 0.005 < float(np.sqrt(np.mean(clip.samples**2))) < 0.5  # speech, not silence or noise
    assert [c.samples.size for c in default_speech(3)] == [c.samples.size for c in clips[:3]]
