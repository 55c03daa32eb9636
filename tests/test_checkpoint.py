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


def _edit_json(folder, name, edit):
    data = json.loads((folder / name).read_text())
    edit(data)
    (folder / name).write_text(json.dumps(data))


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["talker_config"].update(hidden_size="64"), "talker_config: hidden_size must be an integer, got '64'"),
    (lambda c: c["talker_config"].update(num_attention_heads=0), "num_attention_heads must be a positive integer"),
    (lambda c: c["talker_config"].update(rms_norm_eps="tiny"), "rms_norm_eps must be a number"),
    (lambda c: c["talker_config"]["code_predictor_config"].update(head_dim=12.5),
     "code_predictor_config: head_dim must be an integer"),
    (lambda c: c.update(tts_model_size=6), "tts_model_size must be a string"),
])
def test_config_values_of_the_wrong_type_are_named(tiny_custom, tmp_path, edit, message):
    bad = _copy(tiny_custom, tmp_path)
    _edit_json(bad, "config.json", edit)
    with pytest.raises(CheckpointError, match=message):
        open_checkpoint(bad)


@pytest.mark.parametrize("edit, message", [
    (lambda g: g.update(temperature="hot"), "temperature must be a number"),
    (lambda g: g.update(top_p=3.0), "top_p must be in"),
    (lambda g: g.update(max_new_tokens=0), "max_new_tokens must be a positive integer"),
    (lambda g: g.update(max_new_tokens=10**9), "leaves no room for the prompt"),
    (lambda g: g.update(do_sample="yes"), "do_sample must be true or false"),
])
def test_bad_generation_config_is_refused_at_load(tiny_custom, tmp_path, edit, message):
    """Every request takes its defaults from this file: a bad value is the checkpoint's fault, not a client's."""
    bad = _copy(tiny_custom, tmp_path)
    _edit_json(bad, "generation_config.json", edit)
    with pytest.raises(CheckpointError, match=f"generation_config.json.*{message}"):
        open_checkpoint(bad)
