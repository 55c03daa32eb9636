"""Talker and code predictor modules against the official ones on tiny random models."""

from __future__ import annotations

import pytest
import torch

import official_models
from official_models import official_model, our_config
from qtts.config import TalkerConfig
from qtts.models.layers import attention_mask
from qtts.models.talker import Talker
from qtts.testing.configs import tiny_tts_config


def our_talker(model, variant="custom_voice", mtp_projection=True):
    return official_models.our_talker(model, our_config(variant, mtp_projection))


@pytest.mark.parametrize("mtp_projection", [True, False])
def test_state_dict_keys_and_shapes_equal_official(mtp_projection):
    model = official_model(mtp_projection=mtp_projection)
    config = TalkerConfig.from_dict(tiny_tts_config("custom_voice", mtp_projection=mtp_projection)["talker_config"])
    ours = {k: tuple(v.shape) for k, v in Talker(config).state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in model.talker.state_dict().items()}
    assert ours == theirs
    assert any("small_to_mtp_projection" in k for k in ours) == mtp_projection


@torch.no_grad()
def test_talker_hidden_states_equal_official_with_left_padding():
    model = official_model()
    talker = our_talker(model)
    hidden = talker.config.hidden_size
    lengths = [7, 4]
    batch, seq = len(lengths), max(lengths)
    x = torch.randn(batch, seq, hidden)
    valid = torch.zeros(batch, seq, dtype=torch.bool)
    for row, n in enumerate(lengths):
        x[row, : seq - n] = 0
        valid[row, seq - n:] = True
    mask_2d = valid.long()
    position_ids, _ = model.talker.get_rope_index(mask_2d)
    theirs = model.talker.model(inputs_embeds=x, attention_mask=mask_2d, position_ids=position_ids,
                                use_cache=False).last_hidden_state

    talker.setup_caches(batch, max_len=seq + 3)
    slots = torch.arange(seq)
    valid_slots = torch.zeros(batch, seq + 3, dtype=torch.bool)
    valid_slots[:, :seq] = valid
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    ours = talker(x, positions, slots, attention_mask(valid_slots, slots))
    for row, n in enumerate(lengths):
        torch.testing.assert_close(ours[row, seq - n:], theirs[row, seq - n:], rtol=1e-5, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("mtp_projection", [True, False])
def test_code_predictor_hidden_states_equal_official(mtp_projection):
    model = official_model(mtp_projection=mtp_projection)
    talker = our_talker(model, mtp_projection=mtp_projection)
    x = torch.randn(2, 5, talker.config.hidden_size)
    official_predictor = model.talker.code_predictor
    theirs = official_predictor.model(inputs_embeds=official_predictor.small_to_mtp_projection(x),
                                      use_cache=False).last_hidden_state
    talker.code_predictor.setup_caches(2)
    ours = talker.code_predictor(x, torch.arange(5))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", ["0.6b", "1.7b"])
def test_real_size_state_dict_equals_official_on_meta(size):
    official_model()  # imports the oracle
    from qwen_tts.core.models.configuration_qwen3_tts import Qwen3TTSConfig
    from qwen_tts.core.models.modeling_qwen3_tts import Qwen3TTSTalkerForConditionalGeneration
    from qtts.testing.configs import real_tts_config

    data = real_tts_config("custom_voice", size)
    with torch.device("meta"):
        theirs = Qwen3TTSTalkerForConditionalGeneration(Qwen3TTSConfig(**data).talker_config)
    ours = Talker(TalkerConfig.from_dict(data["talker_config"]), device="meta")
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
