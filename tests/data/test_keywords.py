"""Spoken keyword data: espeak-ng synthesis and its cache, held-out voices, the asterisk recordings, users' WAV
folders, and WAV files written as PCM or mu-law (checked against Python's reference G.711 coder)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from attnlab.data.audio import keywords, speech
from attnlab.data.audio.keywords import fit_length, make_audio_folder, make_keywords, voice_splits
from attnlab.data.audio.wav import read_wav_bytes, ulaw_decode, ulaw_encode, wav_bytes
from attnlab.data.registry import get_dataset
from attnlab.data.sources import locate

needs_espeak = pytest.mark.skipif(locate("espeak") is None, reason="espeak-ng missing: apt-get install -y espeak-ng")
needs_asterisk = pytest.mark.skipif(locate("keywords") is None,
                                    reason="Asterisk prompts missing: apt-get install -y asterisk-core-sounds-en-wav")

SMALL = dict(train_voices=6, val_voices=2, test_voices=2)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))


@needs_espeak
def test_espeak_speaks_the_same_clip_the_same_way():
    clip = speech.Clip("seven", "en-gb-scotland+f2", 150, 40)
    a, b = speech.synthesise(clip), speech.synthesise(clip)
    assert a.dtype == np.float32 and 0.3 * speech.RATE < len(a) < 2 * speech.RATE
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, speech.synthesise(speech.Clip("seven", "en-us+m3", 150, 40)))
    assert len(speech.voices()) >= 7 * 50  # seven accents x espeak-ng's voice variants


@needs_espeak
def test_voices_of_the_splits_are_disjoint_and_seeded():
    train, val, test = voice_splits(20, 5, 5, seed=3)
    assert len(set(train) | set(val) | set(test)) == 30
    assert (train, val, test) == voice_splits(20, 5, 5, seed=3) and train != voice_splits(20, 5, 5, seed=4)[0]
    with pytest.raises(ValueError, match="voices asked for, espeak-ng has"):
        voice_splits(10_000, 1, 1, seed=0)


@needs_espeak
def test_keywords_dataset_shapes_labels_and_normalisation(monkeypatch):
    d = make_keywords(**SMALL, frames=64, mel_bins=32)
    assert d.audio_shape == (64, 32) and d.num_classes == 10 and d.label_names[7] == "seven"
    assert d.train.inputs.shape == (60, 64, 32) and d.val.inputs.shape == d.test.inputs.shape == (20, 64, 32)
    assert torch.equal(torch.bincount(d.train.targets), torch.full((10,), 6))
    assert abs(float(d.train.inputs.mean())) < 1e-4 and float(d.train.inputs.std()) == pytest.approx(0.5, abs=1e-3)
    assert set(d.train.batch(torch.arange(4))) == {"spectrogram", "targets"}
    # the clips are cached: building again synthesises nothing
    monkeypatch.setattr(speech, "synthesise", lambda clip: pytest.fail("synthesised again"))
    again = get_dataset("keywords", **SMALL, frames=64, mel_bins=32)
    assert torch.equal(again.test.inputs, d.test.inputs)


@needs_espeak
@needs_asterisk
def test_asterisk_test_split_is_the_real_digit_recordings():
    d = make_keywords(**SMALL, frames=64, mel_bins=32, test="asterisk")
    assert d.test.inputs.shape == (10, 64, 32) and d.test.targets.tolist() == list(range(10))
    with pytest.raises(ValueError, match="test='asterisk' scores the ten digits"):
        make_keywords(words=["yes", "no"], **SMALL, test="asterisk")


@needs_espeak
@pytest.mark.parametrize("options, message", [
    (dict(words=["yes"]), "at least two distinct"),
    (dict(test="other"), "test must be 'voices'"),
    (dict(freq_mask=200), "do not fit"),
    (dict(seconds=0), "seconds must be"),
    (dict(train_voices=0), "train_voices must be a positive int"),
])
def test_bad_keyword_options_are_one_line(options, message):
    with pytest.raises(ValueError, match=message):
        make_keywords(**{**SMALL, **options})


def test_missing_espeak_names_the_install_command(monkeypatch):
    monkeypatch.setattr(speech.shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="apt-get install -y espeak-ng"):
        make_keywords(**SMALL)


def test_fit_length_centres_the_clip():
    w = torch.arange(1.0, 6.0)
    assert fit_length(w, 9).tolist() == [0, 0, 1, 2, 3, 4, 5, 0, 0]
    assert fit_length(w, 3).tolist() == [2, 3, 4]


def _tone(freq: float, seconds: float = 0.6, rate: int = 8000, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return 0.5 * np.sin(2 * np.pi * freq * t + phase)


def test_audio_folder_reads_and_splits_a_users_wavs(tmp_path):
    for label, freq in (("low", 300.0), ("high", 2000.0)):
        (tmp_path / label).mkdir()
        for i in range(5):
            (tmp_path / label / f"{i}.wav").write_bytes(wav_bytes(_tone(freq, phase=i), 8000))
    d = make_audio_folder(str(tmp_path), frames=40, mel_bins=24, test_fraction=0.2)
    assert d.label_names == ("high", "low") and d.audio_shape == (40, 24)
    assert len(d.train) == 8 and len(d.test) == 2 and sorted(d.test.targets.tolist()) == [0, 1]
    # a high tone puts its energy in higher mel bins than a low one
    hi, lo = (d.train.inputs[d.train.targets == k].mean(dim=(0, 1)) for k in (0, 1))
    assert hi.argmax() > lo.argmax()


def test_bad_audio_folders_are_one_line(tmp_path):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "ok.wav").write_bytes(wav_bytes(_tone(440.0), 8000))
    (tmp_path / "a" / "broken.wav").write_bytes(b"not a wav file at all")
    with pytest.raises(ValueError, match="broken.wav is not a WAV file"):
        make_audio_folder(str(tmp_path))
    (tmp_path / "a" / "broken.wav").write_bytes(wav_bytes(np.zeros(800), 8000))
    with pytest.raises(ValueError, match="broken.wav is silent"):
        make_audio_folder(str(tmp_path))
    with pytest.raises(ValueError, match="needs data.options.path"):
        make_audio_folder("")


def test_mu_law_is_bit_exact_with_the_g711_reference():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop", reason="Python's audioop (removed in 3.13) is the G.711 reference")
    x = np.arange(-32768, 32768)
    ref = np.frombuffer(audioop.lin2ulaw(x.astype("<i2").tobytes(), 2), np.uint8)
    np.testing.assert_array_equal(ulaw_encode(x / 32768), ref)
    codes = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(ulaw_decode(codes), np.frombuffer(audioop.ulaw2lin(codes.tobytes(), 2), "<i2") / 32768)


@pytest.mark.parametrize("encoding, size, tol", [("pcm16", 2, 1 / 32767), ("pcm8", 1, 1 / 127), ("mulaw8", 1, 0.016)])
def test_written_wavs_read_back(encoding, size, tol):
    x = _tone(440.0, seconds=0.25)
    raw = wav_bytes(x, 8000, encoding)
    wave, rate = read_wav_bytes(raw)
    assert rate == 8000 and len(wave) == len(x) and len(raw) >= 44 + size * len(x)
    assert np.abs(wave.numpy() - x).max() <= tol
    with pytest.raises(ValueError, match="unknown WAV encoding"):
        wav_bytes(x, 8000, "flac")


def test_keyword_clips_draw_speed_and_pitch_per_clip():
    clips, labels = keywords.keyword_clips(("yes", "no"), ["en-us+f2", "en-gb+m1"], np.random.default_rng(0))
    assert [c.word for c in clips] == ["yes", "no", "yes", "no"] and labels == [0, 1, 0, 1]
    assert len({(c.speed, c.pitch) for c in clips}) > 1
    assert all(keywords.SPEEDS[0] <= c.speed <= keywords.SPEEDS[1] for c in clips)
