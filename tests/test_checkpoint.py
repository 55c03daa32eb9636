"""Loading checkpoints: folder/hub resolution, validation that names the problem, official layout."""

import json
import shutil

import pytest

from qtts import CheckpointError
from qtts.checkpoint import open_checkpoint, resolve


@pytest.fixture
def tiny_custom(tiny_checkpoint):
    return tiny_checkpoint("custom_voice")


def _copy(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def test_open_checkpoint_reads_all_configs(tiny_custom):
    ckpt = open_checkpoint(tiny_custom)
    assert ckpt.config.tts_model_type == "custom_voice"
    assert ckpt.config.talker_config.spk_id["ryan"] == 3061
    assert ckpt.generation.max_new_tokens == 8192
    assert ckpt.speech_tokenizer.decode_upsample_rate == 1920


def test_missing_folder_or_bad_repo_id_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="neither an existing folder nor a Hugging Face repo id"):
        resolve(tmp_path / "nope" / "deeper")


def test_offline_hub_id_not_in_cache_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        resolve("Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice")


def test_missing_weight_file_is_named(tiny_custom, tmp_path):
    bad = _copy(tiny_custom, tmp_path)
    (bad / "speech_tokenizer" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="speech_tokenizer/model.safetensors"):
        open_checkpoint(bad)


def test_config_missing_a_dimension_is_rejected(tiny_custom, tmp_path):
    bad = _copy(tiny_custom, tmp_path)
    config = json.loads((bad / "config.json").read_text())
    del config["talker_config"]["num_hidden_layers"]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="num_hidden_layers"):
        open_checkpoint(bad)


def test_corrupt_json_is_named(tiny_custom, tmp_path):
    bad = _copy(tiny_custom, tmp_path)
    (bad / "generation_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="generation_config.json is not readable JSON"):
        open_checkpoint(bad)
