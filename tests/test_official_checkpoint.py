"""A checkpoint written by the official classes themselves (not by qtts.testing) loads in qtts and gives the
official greedy codes: the loader follows the official layout, not just our own writer's."""

import json
import warnings

import numpy as np
import pytest
import torch

import qtts
from oracle import official
from qtts.testing.checkpoint import random_value
from qtts.testing.configs import tiny_speech_tokenizer_config, tiny_tts_config
from qtts.testing.tokenizer import write_tokenizer_files

GREEDY = dict(do_sample=False, subtalker_dosample=False)
TEXT = "Checkpoints written by the official classes."


def write_official_checkpoint(folder, variant):
    official()
    from qwen_tts.core.models.configuration_qwen3_tts import Qwen3TTSConfig
    from qwen_tts.core.models.modeling_qwen3_tts import Qwen3TTSForConditionalGeneration
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Config
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Model

    torch.manual_seed(3)
    model = Qwen3TTSForConditionalGeneration(Qwen3TTSConfig(**tiny_tts_config(variant)))
    codec = Qwen3TTSTokenizerV2Model(Qwen3TTSTokenizerV2Config(**tiny_speech_tokenizer_config()))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
        # The official init leaves the decoder's codebooks at zero and its convs at std 0.02 (output ~1e-9):
        # take qtts.testing's speech-level values, written below by the official classes.
        gen = torch.Generator().manual_seed(4)
        for name, tensor in [*codec.named_parameters(), *codec.named_buffers()]:
            if name.startswith("decoder.") and tensor.is_floating_point() and "rotary" not in name:
                tensor.copy_(random_value(name[len("decoder."):], tensor, gen))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder)
        codec.save_pretrained(folder / "speech_tokenizer")
        from transformers import EncodecFeatureExtractor

        EncodecFeatureExtractor(feature_size=1, sampling_rate=24000).save_pretrained(folder / "speech_tokenizer")
    config = json.loads((folder / "config.json").read_text())
    # save_pretrained writes a key that the official config class itself refuses on load (spec section 10).
    config.get("speaker_encoder_config", {}).pop("model_type", None)
    (folder / "config.json").write_text(json.dumps(config))
    write_tokenizer_files(folder)
    return folder


@pytest.mark.parametrize("variant", ["custom_voice", "base"])
def test_official_written_checkpoint_gives_official_greedy_codes(tmp_path, variant):
    folder = write_official_checkpoint(tmp_path / variant, variant)
    from qwen_tts import Qwen3TTSModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = Qwen3TTSModel.from_pretrained(str(folder), device_map="cpu", dtype=torch.float32)
    tts = qtts.load(folder, device="cpu")
    if variant == "custom_voice":
        codes = tts.generate_codes(TEXT, speaker="sohee", language="korean", max_new_tokens=20, **GREEDY)
        their_codes = ref.model.generate(
            input_ids=[ref._tokenize_texts([ref._build_assistant_text(TEXT)])[0]], languages=["korean"],
            speakers=["sohee"], non_streaming_mode=True, max_new_tokens=20, **GREEDY,
        )[0][0]
        assert codes.shape == (19, 16) and torch.equal(codes, their_codes)
        ours = tts.synthesize(TEXT, speaker="sohee", language="korean", max_new_tokens=20, **GREEDY)
        wavs, _ = ref.generate_custom_voice(TEXT, speaker="sohee", language="korean", max_new_tokens=20,
                                            **GREEDY)
    else:
        t = np.arange(40000) / 24000
        audio = ((0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 24000)
        voice = tts.create_voice(audio, "The reference words.")
        ours = tts.synthesize(TEXT, voice=voice, language="english", max_new_tokens=20, **GREEDY)
        wavs, _ = ref.generate_voice_clone(TEXT, language="english", ref_audio=audio,
                                           ref_text="The reference words.", max_new_tokens=20, **GREEDY)
    theirs = np.asarray(wavs[0], dtype=np.float32)
    assert ours.samples.shape == theirs.shape and ours.samples.shape[0] > 0
    assert np.abs(theirs).max() > 1e-3
    np.testing.assert_allclose(ours.samples, theirs, atol=1e-4)
