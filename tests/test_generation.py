"""The reference loop's greedy codes equal the official `generate` for every mode; EOS and batch handling."""

from __future__ import annotations

import pytest
import torch

from official_models import official_model, our_config, our_talker
from qtts.engine import generate_codes, generate_codes_batch
from qtts.prompt import PromptBuilder
from qtts.sampling import SamplingParams
from qtts.testing.tokenizer import write_tokenizer_files
from qtts.text import TextTokenizer, assistant_text, instruct_text, reference_text

TEXT = "Hello world, 你好世界 123."
REF_TEXT = "A short reference 参考."
FRAMES = 20
GREEDY = SamplingParams(do_sample=False, subtalker_dosample=False)
OFFICIAL_GREEDY = dict(do_sample=False, subtalker_dosample=False)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return TextTokenizer.from_folder(write_tokenizer_files(tmp_path_factory.mktemp("tokenizer")))


def ids(tokenizer, text):
    return torch.tensor([tokenizer.encode(text)])


def case(variant, tokenizer, mode, non_streaming, mtp_projection=True):
    """(official model, our talker, our plan, official generate kwargs) for one mode."""
    model = official_model(variant, mtp_projection=mtp_projection, seed=1)
    config = our_config(variant, mtp_projection, size_tag="1b7")
    talker = our_talker(model, config)
    builder = PromptBuilder(talker, config, tokenizer)
    common = dict(input_ids=[ids(tokenizer, assistant_text(TEXT))], non_streaming_mode=non_streaming)
    if mode in ("icl", "xvector"):
        icl = mode == "icl"
        torch.manual_seed(2)
        speaker = torch.randn(config.talker_config.hidden_size)
        ref_codes = torch.randint(0, 2048, (6, 16)) if icl else None
        plan = builder.voice_clone(TEXT, speaker, language="english", ref_codes=ref_codes,
                                   ref_text=REF_TEXT if icl else None, non_streaming_mode=non_streaming)
        kwargs = dict(common, languages=["english"],
                      ref_ids=[ids(tokenizer, reference_text(REF_TEXT)) if icl else None],
                      voice_clone_prompt=dict(ref_code=[ref_codes], ref_spk_embedding=[speaker],
                                              x_vector_only_mode=[not icl], icl_mode=[icl]))
    elif mode == "custom":
        instruct = "Speak happily." if non_streaming else None
        plan = builder.custom_voice(TEXT, "Dylan", language="auto", instruct=instruct,
                                    non_streaming_mode=non_streaming)
        kwargs = dict(common, languages=["auto"], speakers=["Dylan"],
                      instruct_ids=[ids(tokenizer, instruct_text(instruct)) if instruct else None])
    else:
        instruct = "A deep and slow voice."
        plan = builder.voice_design(TEXT, instruct, language="auto", non_streaming_mode=non_streaming)
        kwargs = dict(common, languages=["auto"], instruct_ids=[ids(tokenizer, instruct_text(instruct))])
    return model, talker, plan, kwargs


@pytest.mark.parametrize("variant, mode, non_streaming, mtp_projection", [
    ("base", "icl", False, True),
    ("base", "icl", True, False),
    ("base", "xvector", False, True),
    ("custom_voice", "custom", True, True),  # dialect speaker + instruct, non-streaming
    ("custom_voice", "custom", False, False),
    ("voice_design", "design", True, True),  # streaming design: the batch and EOS tests below
])
def test_greedy_codes_equal_official(tokenizer, variant, mode, non_streaming, mtp_projection):
    model, talker, plan, kwargs = case(variant, tokenizer, mode, non_streaming, mtp_projection)
    theirs = model.generate(**kwargs, max_new_tokens=FRAMES + 1, **OFFICIAL_GREEDY)[0][0]
    ours = generate_codes(talker, plan, GREEDY, max_new_tokens=FRAMES + 1)
    assert theirs.shape == (FRAMES, 16)  # N tokens -> N - 1 frames
    assert torch.equal(ours, theirs)


def test_greedy_codes_stop_at_eos_like_official(tokenizer):
    model, talker, plan, kwargs = case("voice_design", tokenizer, "design", True)
    free = model.generate(**kwargs, max_new_tokens=FRAMES + 1, **OFFICIAL_GREEDY)[0][0]
    # Make EOS outscore the code greedy picked for frame 4, so generation ends early there or before.
    with torch.no_grad():
        head = model.talker.codec_head.weight
        head[2150] = head[int(free[4, 0])] * 1.5
    talker.load_state_dict(model.talker.state_dict())
    theirs = model.generate(**kwargs, max_new_tokens=FRAMES + 1, **OFFICIAL_GREEDY)[0][0]
    ours = generate_codes(talker, plan, GREEDY, max_new_tokens=FRAMES + 1)
    assert 2 <= theirs.shape[0] <= 4  # EOS is masked for the first two tokens
    assert torch.equal(ours, theirs)


def test_batched_greedy_codes_equal_official(tokenizer):
    model = official_model("voice_design", seed=3)
    config = our_config("voice_design")
    talker = our_talker(model, config)
    builder = PromptBuilder(talker, config, tokenizer)
    texts, instructs = ["Hi.", TEXT + " Then a longer tail."], ["Calm.", "A bright and fast voice."]
    plans = [builder.voice_design(t, i, non_streaming_mode=False) for t, i in zip(texts, instructs)]
    theirs = model.generate(
        input_ids=[ids(tokenizer, assistant_text(t)) for t in texts],
        instruct_ids=[ids(tokenizer, instruct_text(i)) for i in instructs],
        languages=["auto", "auto"], non_streaming_mode=False, max_new_tokens=12, **OFFICIAL_GREEDY,
    )[0]
    ours = generate_codes_batch(talker, plans, GREEDY, max_new_tokens=12)
    assert [t.shape for t in ours] == [t.shape for t in theirs]
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_seeded_sampled_codes_are_reproducible(tokenizer):
    _, talker, plan, _ = case("voice_design", tokenizer, "design", False)
    params = SamplingParams(seed=7, top_k=0, subtalker_top_k=0, temperature=1.5, subtalker_temperature=1.5)
    first = generate_codes(talker, plan, params, max_new_tokens=10)
    again = generate_codes(talker, plan, params, max_new_tokens=10)
    other = generate_codes(talker, plan, SamplingParams(seed=8, top_k=0, subtalker_top_k=0, temperature=1.5,
                                                        subtalker_temperature=1.5), max_new_tokens=10)
    assert first.shape == (9, 16)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert int(first.min()) >= 0 and int(first.max()) < 2048


def test_min_new_tokens_holds_eos_back(tokenizer):
    model, talker, plan, kwargs = case("voice_design", tokenizer, "design", True)
    free = generate_codes(talker, plan, GREEDY, max_new_tokens=FRAMES + 1)
    with torch.no_grad():  # EOS outscores frame 4's code: generation ends by frame 4
        talker.codec_head.weight[2150] = talker.codec_head.weight[int(free[4, 0])] * 1.5
    assert generate_codes(talker, plan, GREEDY, max_new_tokens=FRAMES + 1).shape[0] <= 4
    held = SamplingParams(do_sample=False, subtalker_dosample=False, min_new_tokens=12)
    assert generate_codes(talker, plan, held, max_new_tokens=FRAMES + 1).shape[0] >= 12
