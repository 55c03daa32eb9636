"""Voice files: exact round trips, rejection of corrupt or foreign files, width compatibility."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from qtts.errors import VoiceError
from qtts.voices import FORMAT, Voice


def icl_voice(width: int = 1024, dtype=torch.float32) -> Voice:
    generator = torch.Generator().manual_seed(width)
    return Voice(
        speaker_embedding=torch.randn(width, generator=generator).to(dtype),
        ref_codes=torch.randint(0, 2048, (37, 16), generator=generator),
        ref_text="Bonjour, ceci est une référence. 你好。",
        model_name="Qwen/Qwen3-TTS-12Hz-0.6B-Base",
        tts_model_size="0b6",
    )


def assert_same_voice(a: Voice, b: Voice) -> None:
    assert torch.equal(a.speaker_embedding, b.speaker_embedding)
    assert a.speaker_embedding.dtype == b.speaker_embedding.dtype
    assert (a.ref_codes is None) == (b.ref_codes is None)
    if a.ref_codes is not None:
        assert torch.equal(a.ref_codes, b.ref_codes) and b.ref_codes.dtype == torch.int64
    assert (a.ref_text, a.model_name, a.tts_model_size) == (b.ref_text, b.model_name, b.tts_model_size)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_icl_voice_round_trips_exactly(tmp_path, dtype):
    voice = icl_voice(dtype=dtype)
    voice.save(tmp_path / "v.safetensors")
    loaded = Voice.load(tmp_path / "v.safetensors")
    assert_same_voice(voice, loaded)
    assert loaded.icl and loaded.hidden_size == 1024


def test_x_vector_only_voice_round_trips_exactly(tmp_path):
    voice = Voice(torch.randn(2048), model_name="Qwen/Qwen3-TTS-12Hz-1.7B-Base", tts_model_size="1b7")
    voice.save(tmp_path / "x.safetensors")
    loaded = Voice.load(tmp_path / "x.safetensors")
    assert_same_voice(voice, loaded)
    assert not loaded.icl and loaded.ref_text is None


def test_voice_file_is_safetensors_with_json_metadata(tmp_path):
    from safetensors import safe_open

    icl_voice().save(tmp_path / "v.safetensors")
    with safe_open(str(tmp_path / "v.safetensors"), framework="pt") as file:
        metadata = json.loads(file.metadata()[FORMAT])
        assert sorted(file.keys()) == ["ref_codes", "speaker_embedding"]
    assert metadata["hidden_size"] == 1024 and metadata["tts_model_size"] == "0b6"


def test_loading_garbage_raises_voice_error(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"\x00\x01 definitely not a safetensors file" * 10)
    with pytest.raises(VoiceError, match="not a valid safetensors file"):
        Voice.load(path)


def test_loading_a_truncated_voice_raises_voice_error(tmp_path):
    path = tmp_path / "v.safetensors"
    icl_voice().save(path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(VoiceError, match="cannot read voice file"):
        Voice.load(path)


def test_loading_a_safetensors_file_that_is_not_a_voice_raises_voice_error(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"fc.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(VoiceError, match="not a qtts voice"):
        Voice.load(path)


@pytest.mark.parametrize(
    "metadata,tensors,message",
    [
        ("{not json", {"speaker_embedding": torch.zeros(8)}, "corrupt metadata"),
        (json.dumps({"format_version": 1}), {"speaker_embedding": torch.zeros(8)}, "corrupt metadata"),
        (json.dumps({"format_version": 99, "ref_text": None, "model_name": "", "tts_model_size": "",
                     "hidden_size": 8}), {"speaker_embedding": torch.zeros(8)}, "format version 99"),
        (json.dumps({"format_version": 1, "ref_text": None, "model_name": "", "tts_model_size": "",
                     "hidden_size": 16}), {"speaker_embedding": torch.zeros(8)}, "says 16"),
        (json.dumps({"format_version": 1, "ref_text": "hi", "model_name": "", "tts_model_size": "",
                     "hidden_size": 8}), {"speaker_embedding": torch.zeros(8)}, "needs both"),
        (json.dumps({"format_version": 1, "ref_text": None, "model_name": "", "tts_model_size": "",
                     "hidden_size": 8}), {"ref_codes": torch.zeros(3, 16, dtype=torch.int64)}, "no speaker_embedding"),
    ],
)
def test_loading_a_voice_with_bad_contents_raises_voice_error(tmp_path, metadata, tensors, message):
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata={FORMAT: metadata})
    with pytest.raises(VoiceError, match=message):
        Voice.load(path)


def test_loading_a_missing_file_raises_voice_error(tmp_path):
    with pytest.raises(VoiceError, match="not found"):
        Voice.load(tmp_path / "absent.safetensors")


def test_voice_for_width_2048_is_rejected_by_a_1024_model():
    voice = icl_voice(width=2048)
    with pytest.raises(VoiceError, match=r"hidden size 2048\).*Qwen3-TTS-12Hz-0.6B-Base \(hidden size 1024\)"):
        voice.check_compatible(1024, "Qwen/Qwen3-TTS-12Hz-0.6B-Base")
    voice.check_compatible(2048, "a fine-tune of the same width")  # same width: fits


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(speaker_embedding=torch.zeros(4, 4)), "1-D float tensor"),
        (dict(speaker_embedding=torch.zeros(4, dtype=torch.int64)), "1-D float tensor"),
        (dict(speaker_embedding=torch.zeros(4), ref_text="hello"), "needs both"),
        (dict(speaker_embedding=torch.zeros(4), ref_codes=torch.zeros(2, 16, dtype=torch.int64), ref_text="  "),
         "transcript"),
        (dict(speaker_embedding=torch.zeros(4), ref_codes=torch.zeros(2, 8, dtype=torch.int64), ref_text="hi"),
         r"\[frames, 16\]"),
        (dict(speaker_embedding=torch.zeros(4), ref_codes=torch.full((2, 16), 2048), ref_text="hi"),
         r"\[0, 2048\)"),
    ],
)
def test_invalid_voice_contents_raise_voice_error(kwargs, message):
    with pytest.raises(VoiceError, match=message):
        Voice(**kwargs)
