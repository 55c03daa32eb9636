"""Prompt plans equal the official talker inputs for every mode, layout and language form."""

from __future__ import annotations

import pytest
import torch

from official_models import capture_talker_inputs, official_model, our_config, our_talker
from qtts.errors import InputError
from qtts.prompt import PromptBuilder, pad_batch, prompt_positions
from qtts.testing.tokenizer import write_tokenizer_files
from qtts.text import TextTokenizer, assistant_text, instruct_text, reference_text

TEXT = "Hello world, 你好世界 123."
REF_TEXT = "A short reference 参考."
LONG_REF_TEXT = "This reference transcript is much longer than its few frames of audio, 这是很长的参考文本。"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return TextTokenizer.from_folder(write_tokenizer_files(tmp_path_factory.mktemp("tokenizer")))


@pytest.fixture(scope="module")
def models():
    return {variant: official_model(variant) for variant in ("base", "custom_voice", "voice_design")}


def ids(tokenizer, text):
    return torch.tensor([tokenizer.encode(text)])


def assert_plan_equals_official(plan, captured):
    theirs_prefill = captured["inputs_embeds"][0]
    assert plan.prefill.shape == theirs_prefill.shape
    torch.testing.assert_close(plan.prefill, theirs_prefill, rtol=0, atol=1e-6)
    theirs_trailing = captured["trailing_text_hidden"][0]
    assert plan.trailing.shape == theirs_trailing.shape
    torch.testing.assert_close(plan.trailing, theirs_trailing, rtol=0, atol=1e-6)
    torch.testing.assert_close(plan.tts_pad, captured["tts_pad_embed"].reshape(-1), rtol=0, atol=0)


CLONE_CASES = [  # (ICL?, reference transcript, reference frames, non_streaming_mode, language)
    (True, REF_TEXT, 3, False, "auto"),  # streaming, text longer than codec
    (True, REF_TEXT, 40, False, "English"),  # streaming, codec longer than text
    (True, LONG_REF_TEXT, 5, True, "chinese"),
    (False, None, 0, False, "auto"),
    (False, None, 0, True, "Japanese"),
]


@torch.no_grad()
@pytest.mark.parametrize("icl, ref_text, frames, non_streaming, language", CLONE_CASES)
def test_voice_clone_plan_equals_official(models, tokenizer, icl, ref_text, frames, non_streaming, language):
    model, config = models["base"], our_config("base")
    builder = PromptBuilder(our_talker(model, config), config, tokenizer)
    speaker = torch.randn(config.talker_config.hidden_size)
    ref_codes = torch.randint(0, 2048, (frames, 16)) if icl else None
    plan = builder.voice_clone(TEXT, speaker, language=language, ref_codes=ref_codes, ref_text=ref_text,
                               non_streaming_mode=non_streaming)
    captured = capture_talker_inputs(
        model,
        input_ids=[ids(tokenizer, assistant_text(TEXT))],
        ref_ids=[ids(tokenizer, reference_text(ref_text)) if icl else None],
        voice_clone_prompt=dict(ref_code=[ref_codes], ref_spk_embedding=[speaker],
                                x_vector_only_mode=[not icl], icl_mode=[icl]),
        languages=[language],
        non_streaming_mode=non_streaming,
    )
    assert_plan_equals_official(plan, captured)


CUSTOM_CASES = [  # (speaker, language, instruct, non_streaming_mode)
    ("Vivian", "auto", None, True),
    ("ryan", "English", None, False),
    ("Dylan", "Chinese", None, True),  # Beijing dialect tag replaces Chinese
    ("eric", "auto", "Speak slowly and calmly.", False),  # Sichuan dialect under auto, with instruct
    ("Serena", "French", "用开心的语气说", True),
]


@torch.no_grad()
@pytest.mark.parametrize("speaker, language, instruct, non_streaming", CUSTOM_CASES)
def test_custom_voice_plan_equals_official(models, tokenizer, speaker, language, instruct, non_streaming):
    model, config = models["custom_voice"], our_config("custom_voice", size_tag="1b7")
    builder = PromptBuilder(our_talker(model, config), config, tokenizer)
    plan = builder.custom_voice(TEXT, speaker, language=language, instruct=instruct,
                                non_streaming_mode=non_streaming)
    captured = capture_talker_inputs(
        model,
        input_ids=[ids(tokenizer, assistant_text(TEXT))],
        instruct_ids=[ids(tokenizer, instruct_text(instruct)) if instruct else None],
        languages=[language],
        speakers=[speaker],
        non_streaming_mode=non_streaming,
    )
    assert_plan_equals_official(plan, captured)


@torch.no_grad()
def test_a_builder_that_has_made_other_plans_makes_the_same_plan_as_a_fresh_one(models, tokenizer):
    # A builder keeps the embeddings of fixed ids (template, tags, speakers) from one plan to the next:
    # plans for other speakers and languages in between must not change what it builds.
    model, config = models["custom_voice"], our_config("custom_voice", size_tag="1b7")
    talker = our_talker(model, config)
    shared = PromptBuilder(talker, config, tokenizer)
    for _ in range(2):
        for speaker, language, instruct, non_streaming in CUSTOM_CASES:
            plan = shared.custom_voice(TEXT, speaker, language=language, instruct=instruct,
                                       non_streaming_mode=non_streaming)
            fresh = PromptBuilder(talker, config, tokenizer).custom_voice(
                TEXT, speaker, language=language, instruct=instruct, non_streaming_mode=non_streaming)
            for name in ("prefill", "trailing", "tts_pad"):
                assert torch.equal(getattr(plan, name), getattr(fresh, name)), (speaker, language, name)
    assert torch.equal(shared.end_of_text(), PromptBuilder(talker, config, tokenizer).end_of_text())


@torch.no_grad()
@pytest.mark.parametrize("language, non_streaming", [("auto", True), ("korean", False)])
def test_voice_design_plan_equals_official(models, tokenizer, language, non_streaming):
    model, config = models["voice_design"], our_config("voice_design")
    builder = PromptBuilder(our_talker(model, config), config, tokenizer)
    instruct = "A warm, low female voice 温柔的女声."
    plan = builder.voice_design(TEXT, instruct, language=language, non_streaming_mode=non_streaming)
    captured = capture_talker_inputs(
        model,
        input_ids=[ids(tokenizer, assistant_text(TEXT))],
        instruct_ids=[ids(tokenizer, instruct_text(instruct))],
        languages=[language],
        non_streaming_mode=non_streaming,
    )
    assert_plan_equals_official(plan, captured)


@torch.no_grad()
def test_batched_plans_equal_official_padding(models, tokenizer):
    model, config = models["voice_design"], our_config("voice_design")
    builder = PromptBuilder(our_talker(model, config), config, tokenizer)
    texts, instructs = ["Hi.", TEXT + " And a longer second sentence follows here."], ["Calm.", "Bright voice."]
    plans = [builder.voice_design(t, i, non_streaming_mode=False) for t, i in zip(texts, instructs)]
    prefill, valid, trailing = pad_batch(plans)
    captured = capture_talker_inputs(
        model,
        input_ids=[ids(tokenizer, assistant_text(t)) for t in texts],
        instruct_ids=[ids(tokenizer, instruct_text(i)) for i in instructs],
        languages=["auto", "auto"],
        non_streaming_mode=False,
    )
    torch.testing.assert_close(prefill, captured["inputs_embeds"], rtol=0, atol=1e-6)
    assert valid.long().tolist() == captured["attention_mask"].tolist()
    torch.testing.assert_close(trailing, captured["trailing_text_hidden"], rtol=0, atol=1e-6)
    # padded further to a graph's length: more left padding, the same rows and positions
    longer, longer_valid, _ = pad_batch(plans, multiple_of=64)
    extra = longer.shape[1] - prefill.shape[1]
    assert longer.shape[1] % 64 == 0 and extra > 0
    assert torch.equal(longer[:, extra:], prefill) and not longer[:, :extra].any()
    assert torch.equal(longer_valid[:, extra:], valid) and not longer_valid[:, :extra].any()
    assert torch.equal(prompt_positions(longer_valid)[:, extra:], prompt_positions(valid))


@torch.no_grad()
def test_invalid_names_raise_input_error_listing_valid_ones(models, tokenizer):
    model, config = models["custom_voice"], our_config("custom_voice")
    builder = PromptBuilder(our_talker(model, config), config, tokenizer)
    with pytest.raises(InputError, match="vivian"):
        builder.custom_voice(TEXT, "Nobody")
    with pytest.raises(InputError, match="english"):
        builder.custom_voice(TEXT, "vivian", language="Klingon")
    with pytest.raises(InputError, match="choose one of"):  # dialects are tags, not selectable languages
        builder.custom_voice(TEXT, "vivian", language="beijing_dialect")
    with pytest.raises(InputError, match="base"):
        builder.voice_clone(TEXT, torch.zeros(config.talker_config.hidden_size))
    base_config = our_config("base")
    base = PromptBuilder(our_talker(models["base"], base_config), base_config, tokenizer)
    speaker = torch.zeros(base_config.talker_config.hidden_size)
    with pytest.raises(InputError, match="ref_text"):
        base.voice_clone(TEXT, speaker, ref_codes=torch.zeros(4, 16, dtype=torch.long))
    with pytest.raises(InputError, match="0..2047"):
        base.voice_clone(TEXT, speaker, ref_codes=torch.full((4, 16), 2048), ref_text="x")
