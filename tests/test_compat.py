"""The official qwen-tts README, run unchanged against qtts with one import swapped, and against the official
package itself: both must write the same audio.

The examples are the ```python blocks of the README as published on PyPI (the installed package's METADATA),
executed as text. What changes, and why: the import (`qwen_tts` -> `qtts`) for our run; hub ids -> tiny random
checkpoints in the official layout; the clone URL -> a local file; `device_map="cuda:0"` and
`dtype=torch.bfloat16` -> CPU and float32, because CI has no GPU and greedy bf16 on two engines need not agree;
for the official run only, `flash_attention_2` -> `sdpa` (flash-attn cannot run on a CPU; qtts ignores the
keyword). The checkpoints' generation_config.json sets greedy decoding and a short `max_new_tokens`, which
both packages read as their defaults, so the README's calls stay as written and stay fast.
"""

import base64
import functools
import http.server
import importlib.metadata
import json
import logging
import re
import shutil
import threading
import warnings

import numpy as np
import pytest
import soundfile
import torch

import qtts
from oracle import official
from qtts import InputError, Qwen3TTSModel, Qwen3TTSTokenizer, VoiceClonePromptItem, VoiceError

FRAMES = 20  # max_new_tokens: 19 frames, 1.5 s; the designed clip must pass qtts's 1 s reference minimum
GREEDY = dict(do_sample=False, subtalker_dosample=False)
HUB_IDS = {
    "Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice": "custom_voice",
    "Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign": "voice_design",
    "Qwen/Qwen3-TTS-12Hz-1.7B-Base": "base",
}
CLONE_URL = "https://qianwen-res.oss-cn-beijing.aliyuncs.com/Qwen3-TTS-Repo/clone.wav"
TOKENIZER_URL = "https://qianwen-res.oss-cn-beijing.aliyuncs.com/Qwen3-TTS-Repo/tokenizer_demo_1.wav"


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def readme_examples() -> list[str]:
    official()
    readme = importlib.metadata.distribution("qwen-tts").read_text("METADATA")
    return re.findall(r"```python\n(.*?)```", readme, re.S)


@pytest.fixture(scope="module")
def folders(tiny_checkpoint, tmp_path_factory):
    """The README's 1.7B checkpoints as tiny ones: size tag 1b7 (instruct is honoured), greedy, short."""
    root = tmp_path_factory.mktemp("readme-checkpoints")
    made = {}
    for variant in ("custom_voice", "voice_design", "base"):
        folder = root / variant
        shutil.copytree(tiny_checkpoint(variant, mtp_projection=variant != "voice_design"), folder)
        config = json.loads((folder / "config.json").read_text())
        config["tts_model_size"] = "1b7"
        (folder / "config.json").write_text(json.dumps(config))
        generation = json.loads((folder / "generation_config.json").read_text())
        generation.update(GREEDY, max_new_tokens=FRAMES)
        (folder / "generation_config.json").write_text(json.dumps(generation))
        made[variant] = folder
    made["tokenizer"] = made["base"] / "speech_tokenizer"
    clip = root / "clone.wav"
    soundfile.write(clip, *reference_clip(), subtype="FLOAT")
    made["clip"] = clip
    return made


def reference_clip(seconds=2.0, seed=0, rate=24000):
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    wav = 0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.3 * t)) + 0.05 * rng.standard_normal(t.shape)
    return wav.astype(np.float32), rate


def localized(code: str, folders, package: str) -> str:
    """The example's text with the swaps the module docstring lists; each swap must find its target."""
    swaps = [("from qwen_tts import", f"from {package} import"), ('device_map="cuda:0"', 'device_map="cpu"'),
             ("dtype=torch.bfloat16", "dtype=torch.float32"), (CLONE_URL, str(folders["clip"])),
             (TOKENIZER_URL, str(folders["clip"])), ("Qwen/Qwen3-TTS-Tokenizer-12Hz", str(folders["tokenizer"]))]
    swaps += [(hub_id, str(folders[variant])) for hub_id, variant in HUB_IDS.items()]
    if package == "qwen_tts":
        swaps.append(('attn_implementation="flash_attention_2"', 'attn_implementation="sdpa"'))
    for old, new in swaps:
        code = code.replace(old, new)
    assert "cuda" not in code and "https://" not in code and "Qwen/" not in code
    return code


def run_examples(codes: list[str], folders, package: str, workdir, monkeypatch) -> dict:
    """Execute the examples in one namespace (later ones use earlier ones' names, as the README reads);
    return every waveform handed to soundfile.write, by file name, and the final namespace."""
    written = {}
    real_write = soundfile.write

    def recording_write(file, data, samplerate, *args, **kwargs):
        written[str(file)] = (np.array(data, dtype=np.float32), samplerate)
        return real_write(file, data, samplerate, *args, **kwargs)

    workdir.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(soundfile, "write", recording_write)
    namespace = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for code in codes:
            exec(compile(localized(code, folders, package), f"<README example, {package}>", "exec"), namespace)
    monkeypatch.setattr(soundfile, "write", real_write)
    for name in written:
        assert (workdir / name).is_file()
    return written | {"namespace": namespace}


def assert_same_wave(ours, theirs):
    ours, theirs = np.asarray(ours), np.asarray(theirs, dtype=np.float32)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape and ours.size > 0
    assert np.abs(ours).max() > 1e-3, "audio is silent: the comparison would prove nothing"
    assert (np.abs(ours) >= 1).mean() < 0.2, "audio is mostly clamped: the comparison would prove little"
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


# The README's sections: CustomVoice, VoiceDesign, Clone + reusable prompt, Design-then-clone, Tokenizer.
SECTIONS = {"custom_voice": [0], "voice_design": [1], "voice_clone": [2, 3], "design_then_clone": [4],
            "tokenizer": [5]}
WRITES = {
    "custom_voice": ["output_custom_voice.wav", "output_custom_voice_1.wav", "output_custom_voice_2.wav"],
    "voice_design": ["output_voice_design.wav", "output_voice_design_1.wav", "output_voice_design_2.wav"],
    "voice_clone": ["output_voice_clone.wav", "output_voice_clone_1.wav", "output_voice_clone_2.wav"],
    "design_then_clone": ["voice_design_reference.wav", "clone_single_1.wav", "clone_single_2.wav",
                          "clone_batch_0.wav", "clone_batch_1.wav"],
    "tokenizer": ["decode_output.wav"],
}


@pytest.mark.parametrize("section", SECTIONS)
def test_readme_example_runs_unchanged_and_matches_official(section, folders, tmp_path, monkeypatch):
    examples = readme_examples()
    assert len(examples) == 6, "the published README changed: update SECTIONS"
    codes = [examples[i] for i in SECTIONS[section]]
    theirs = run_examples(codes, folders, "qwen_tts", tmp_path / "official", monkeypatch)
    ours = run_examples(codes, folders, "qtts", tmp_path / "qtts", monkeypatch)
    # The swap reached qtts: the classes the README imported are ours, and the model is run by qtts.TTS.
    imported = [ours["namespace"][n] for n in ("Qwen3TTSModel", "Qwen3TTSTokenizer") if n in ours["namespace"]]
    assert imported and all(cls.__module__.startswith("qtts.compat") for cls in imported)
    models = [v for v in ours["namespace"].values() if isinstance(v, Qwen3TTSModel)]
    assert all(isinstance(m.tts, qtts.TTS) for m in models)
    assert sorted(k for k in ours if k != "namespace") == sorted(WRITES[section])
    assert sorted(k for k in theirs if k != "namespace") == sorted(WRITES[section])
    for name in WRITES[section]:
        (wave, rate), (their_wave, their_rate) = ours[name], theirs[name]
        assert rate == their_rate == 24000
        assert_same_wave(wave, their_wave)
    if section == "tokenizer":
        for codes, their_codes in zip(ours["namespace"]["enc"].audio_codes, theirs["namespace"]["enc"].audio_codes):
            assert torch.equal(codes.cpu(), their_codes.cpu())


# -- the parts of the surface the README does not show --------------------------------------------------

@pytest.fixture(scope="module")
def clone_pair(folders):
    official()
    from qwen_tts import Qwen3TTSModel as Official

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = Official.from_pretrained(str(folders["base"]), device_map="cpu", dtype=torch.float32)
    return Qwen3TTSModel.from_pretrained(folders["base"], device_map="cpu", dtype=torch.float32), theirs


def test_prompt_items_carry_the_official_fields(clone_pair, folders):
    ours, theirs = clone_pair
    clip = str(folders["clip"])
    for x_vector_only in (False, True):
        mine = ours.create_voice_clone_prompt(clip, "Reference words.", x_vector_only_mode=x_vector_only)[0]
        their = theirs.create_voice_clone_prompt(clip, "Reference words.", x_vector_only_mode=x_vector_only)[0]
        assert (mine.x_vector_only_mode, mine.icl_mode, mine.ref_text) == (
            their.x_vector_only_mode, their.icl_mode, their.ref_text)
        assert (mine.ref_code is None) == (their.ref_code is None) == x_vector_only
        if not x_vector_only:
            assert torch.equal(mine.ref_code, their.ref_code.cpu())
        torch.testing.assert_close(mine.ref_spk_embedding, their.ref_spk_embedding.cpu(), atol=1e-5, rtol=1e-5)


def test_official_prompt_items_and_dict_clone_as_official(clone_pair, folders):
    ours, theirs = clone_pair
    clip = str(folders["clip"])
    items = theirs.create_voice_clone_prompt(clip, "Reference words.")
    expected, _ = theirs.generate_voice_clone("Hello from the other package.", voice_clone_prompt=items)
    wavs, _ = ours.generate_voice_clone("Hello from the other package.", voice_clone_prompt=items)
    assert_same_wave(wavs[0], expected[0])
    # The dict form the official model consumes (x-vector only: that form carries no transcript).
    x_items = theirs.create_voice_clone_prompt(clip, x_vector_only_mode=True)
    as_dict = theirs._prompt_items_to_voice_clone_prompt(x_items)
    expected, _ = theirs.generate_voice_clone("Only the x-vector.", voice_clone_prompt=as_dict)
    wavs, _ = ours.generate_voice_clone("Only the x-vector.", voice_clone_prompt=as_dict)
    assert_same_wave(wavs[0], expected[0])


def test_ref_audio_forms_give_one_voice(clone_pair, folders, tmp_path):
    """A path, an (array, sr) tuple at another rate, base64 (raw and data URL) and a URL on a loopback
    server all give the official package's voice for the same clip."""
    ours, theirs = clone_pair
    wav, rate = reference_clip(rate=16000)
    soundfile.write(tmp_path / "clip.wav", wav, rate, subtype="FLOAT")
    data = (tmp_path / "clip.wav").read_bytes()
    b64 = base64.b64encode(data).decode()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/clip.wav"
        forms = [str(tmp_path / "clip.wav"), (wav, rate), b64, "data:audio/wav;base64," + b64, url]
        voices = [ours.create_voice_clone_prompt(form, x_vector_only_mode=True)[0] for form in forms]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    expected = theirs.create_voice_clone_prompt((wav, rate), x_vector_only_mode=True)[0].ref_spk_embedding.cpu()
    for voice in voices:
        torch.testing.assert_close(voice.ref_spk_embedding, expected, atol=1e-5, rtol=1e-5)


def test_batch_broadcasts_one_prompt_and_one_language(clone_pair, folders):
    ours, theirs = clone_pair
    kwargs = dict(text=["First sentence.", "A second, longer sentence."], language="English",
                  ref_audio=str(folders["clip"]), ref_text="Reference words.", max_new_tokens=12)
    expected, _ = theirs.generate_voice_clone(**kwargs)
    wavs, sr = ours.generate_voice_clone(**kwargs)
    assert sr == 24000 and len(wavs) == 2
    for wave, their_wave in zip(wavs, expected):
        assert_same_wave(wave, their_wave)


def test_small_custom_voice_model_drops_instruct_like_official(tiny_checkpoint):
    folder = tiny_checkpoint("custom_voice")  # size tag 0b6
    official()
    from qwen_tts import Qwen3TTSModel as Official

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = Official.from_pretrained(str(folder), device_map="cpu", dtype=torch.float32)
    ours = Qwen3TTSModel.from_pretrained(folder, device_map="cpu")
    kwargs = dict(text="Hello there.", speaker="Ryan", language="English", max_new_tokens=12, **GREEDY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # silently, as the official package does
        with_instruct, _ = ours.generate_custom_voice(instruct="Whisper it.", **kwargs)
    without, _ = ours.generate_custom_voice(**kwargs)
    expected, _ = theirs.generate_custom_voice(instruct="Whisper it.", **kwargs)
    np.testing.assert_array_equal(with_instruct[0], without[0])
    assert_same_wave(with_instruct[0], expected[0])
    assert ours.get_supported_speakers() == theirs.get_supported_speakers()
    assert ours.get_supported_languages() == theirs.get_supported_languages()


def test_loading_keywords_are_mapped_or_ignored(folders, caplog):
    with caplog.at_level(logging.DEBUG, logger="qtts.compat"):
        model = Qwen3TTSModel.from_pretrained(folders["voice_design"], device_map={"": "cpu"},
                                              torch_dtype="float32", attn_implementation="flash_attention_2",
                                              low_cpu_mem_usage=True)
    assert model.device == torch.device("cpu") and model.tts.dtype == torch.float32
    assert model.generate_defaults["max_new_tokens"] == FRAMES
    ignored = [r.getMessage() for r in caplog.records]
    assert any("attn_implementation" in m for m in ignored) and any("low_cpu_mem_usage" in m for m in ignored)
    with caplog.at_level(logging.DEBUG, logger="qtts.compat"):
        wavs, _ = model.generate_voice_design("Hi.", instruct="", num_beams=4, max_new_tokens=4)
    assert any("num_beams" in r.getMessage() for r in caplog.records)
    assert len(wavs[0]) == 3 * 1920  # max_new_tokens taken: 4 talker tokens, 3 frames


@pytest.mark.parametrize("kwargs, message", [
    (dict(device_map={"talker": "cuda:0", "speech_tokenizer": "cpu"}), "one device"),
    (dict(device_map="somewhere"), "not a device"),
    (dict(dtype="int8"), "floating-point"),
    (dict(dtype=torch.float32, torch_dtype=torch.bfloat16), "disagree"),
])
def test_bad_loading_keywords_are_input_errors(folders, kwargs, message):
    with pytest.raises(InputError, match=message):
        Qwen3TTSModel.from_pretrained(folders["custom_voice"], **kwargs)


def test_wrong_requests_raise_value_errors_that_name_the_problem(clone_pair, folders):
    ours, _ = clone_pair
    clip = str(folders["clip"])
    with pytest.raises(InputError, match="generate_custom_voice needs a custom_voice.*use generate_voice_clone"):
        ours.generate_custom_voice("Hi.", speaker="Ryan")
    with pytest.raises(ValueError, match="ref_text is required when x_vector_only_mode=False"):
        ours.create_voice_clone_prompt(clip)
    with pytest.raises(ValueError, match="needs ref_audio"):
        ours.generate_voice_clone("Hi.")
    with pytest.raises(ValueError, match="language has 3 entries for 2 texts"):
        ours.generate_voice_clone(["a", "b"], language=["English"] * 3, ref_audio=clip, x_vector_only_mode=True)
    with pytest.raises(ValueError, match=r"numpy waveform needs its sample rate"):
        ours.create_voice_clone_prompt(reference_clip()[0], x_vector_only_mode=True)
    with pytest.raises(ValueError, match="eos_token_id"):
        ours.generate_voice_clone("Hi.", ref_audio=clip, x_vector_only_mode=True, eos_token_id=5)
    with pytest.raises(ValueError, match="unsupported language 'Klingon'"):
        ours.generate_voice_clone("Hi.", language="Klingon", ref_audio=clip, x_vector_only_mode=True)
    broken = VoiceClonePromptItem(ref_code=None, ref_spk_embedding=torch.zeros(64), x_vector_only_mode=False,
                                  icl_mode=True, ref_text="words")
    with pytest.raises(ValueError, match="needs ref_code"):
        ours.generate_voice_clone("Hi.", voice_clone_prompt=[broken])
    alien = VoiceClonePromptItem(ref_code=None, ref_spk_embedding=torch.zeros(2048), x_vector_only_mode=True,
                                 icl_mode=False)
    with pytest.raises(VoiceError, match="hidden size 2048"):
        ours.generate_voice_clone("Hi.", voice_clone_prompt=[alien])


def test_tokenizer_takes_the_official_input_forms(folders):
    official()
    from qwen_tts import Qwen3TTSTokenizer as Official

    theirs = Official.from_pretrained(str(folders["tokenizer"]), device_map="cpu")
    ours = Qwen3TTSTokenizer.from_pretrained(folders["tokenizer"], device_map="cpu")
    short, long = reference_clip(0.7, seed=1, rate=16000)[0], reference_clip(1.9, seed=2, rate=16000)[0]
    enc, their_enc = ours.encode([short, long], sr=16000), theirs.encode([short, long], sr=16000)
    assert [c.shape[0] for c in enc.audio_codes] == [9, 24]  # ceil(seconds * 12.5): padding is trimmed per clip
    for codes, their_codes in zip(enc.audio_codes, their_enc.audio_codes):
        assert torch.equal(codes, their_codes.cpu())
    expected, _ = theirs.decode(their_enc)
    for encoded in (enc, [{"audio_codes": c.numpy()} for c in enc.audio_codes], {"audio_codes": enc.audio_codes}):
        wavs, sr = ours.decode(encoded)
        assert sr == 24000
        for wave, their_wave in zip(wavs, expected):
            assert_same_wave(wave, their_wave)
    assert (ours.get_input_sample_rate(), ours.get_output_sample_rate(), ours.get_encode_downsample_rate(),
            ours.get_decode_upsample_rate()) == (24000, 24000, 1920, 1920)
    with pytest.raises(InputError, match="pass sr="):
        ours.encode(short)
    with pytest.raises(InputError, match=r"lie in \[0, 2048\)"):
        ours.decode({"audio_codes": torch.full((3, 16), 4096)})
