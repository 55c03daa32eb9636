"""Text side of Qwen3-TTS: the Qwen2 byte-level BPE tokenizer and the official prompt templates (spec 5.1).

A checkpoint that ships `tokenizer.json` is tokenized as that file says, as the official processor does.
Otherwise the tokenizer is built with the `tokenizers` library straight from `vocab.json`, `merges.txt`
and `tokenizer_config.json`, exactly as transformers' Qwen2 converter sets it up: NFC, the Qwen split
regex, byte-level mapping, and added tokens at the ids the config gives them (the published
`tokenizer.json` says the same, which tests pin). Either way the pre-tokenizer is the one the files give:
transformers would swap in a Mistral regex for some local folders (spec pitfall 12), which is a loader
accident, not the model.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

from .config import read_json
from .errors import CheckpointError

QWEN_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")
TOKENIZER_JSON = "tokenizer.json"


def qwen_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def read_merges(path: Path) -> list[tuple[str, str]]:
    merges = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line or (number == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise CheckpointError(f"{path}:{number}: expected two symbols per merge, got {line!r}")
            merges.append((parts[0], parts[1]))
    return merges


class TextTokenizer:
    """Qwen2 BPE tokenizer: `encode(text) -> list[int]`, `decode(ids) -> str`."""

    def __init__(self, backend: Tokenizer):
        self._backend = backend
        self._token_ids = {token.content: index for index, token in backend.get_added_tokens_decoder().items()}

    @classmethod
    def from_vocab(cls, vocab: dict[str, int], merges: list[tuple[str, str]],
                   added_tokens: dict[int, dict]) -> "TextTokenizer":
        """The tokenizer transformers' Qwen2 converter builds from these files' contents."""
        vocab = dict(vocab)
        by_id = {index: token for token, index in vocab.items()}
        for index, token in added_tokens.items():
            index, content = int(index), token["content"]
            if by_id.get(index, content) != content:
                raise CheckpointError(
                    f"tokenizer_config.json puts {content!r} at id {index}, which vocab.json gives to {by_id[index]!r}"
                )
            # An added token whose text is also in the model vocabulary takes that id: this pins each one
            # to the id tokenizer_config.json gives it (151643... in Qwen checkpoints).
            vocab[content] = index
        backend = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None,
                                continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                                byte_fallback=False))
        backend.normalizer = normalizers.NFC()
        backend.pre_tokenizer = qwen_pre_tokenizer()
        backend.decoder = decoders.ByteLevel()
        backend.add_tokens([
            AddedToken(token["content"], single_word=token.get("single_word", False),
                       lstrip=token.get("lstrip", False), rstrip=token.get("rstrip", False),
                       normalized=token.get("normalized", False), special=token.get("special", True))
            for _, token in sorted(added_tokens.items(), key=lambda item: int(item[0]))
        ])
        return cls(backend)

    @classmethod
    def from_folder(cls, folder: str | Path) -> "TextTokenizer":
        """Load a checkpoint folder's `tokenizer.json` if it ships one, else its `vocab.json`, `merges.txt`
        and `tokenizer_config.json`."""
        folder = Path(folder)
        if (folder / TOKENIZER_JSON).is_file():
            return cls._from_tokenizer_json(folder)
        missing = [name for name in TOKENIZER_FILES if not (folder / name).is_file()]
        if missing:
            raise CheckpointError(f"{folder}: missing tokenizer file(s) {', '.join(missing)}")
        vocab = read_json(folder / "vocab.json")
        added = read_json(folder / "tokenizer_config.json").get("added_tokens_decoder", {})
        return cls.from_vocab(vocab, read_merges(folder / "merges.txt"), added)

    @classmethod
    def _from_tokenizer_json(cls, folder: Path) -> "TextTokenizer":
        path = folder / TOKENIZER_JSON
        try:
            tokenizer = cls(Tokenizer.from_file(str(path)))
        except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
            raise CheckpointError(f"{path} is not a readable tokenizer file ({exc}); re-download it") from None
        config = folder / "tokenizer_config.json"
        added = read_json(config).get("added_tokens_decoder", {}) if config.is_file() else {}
        for index, token in added.items():
            # The prompt template is built from these ids: both files must agree on every one of them.
            if tokenizer._token_ids.get(token["content"]) != int(index):
                raise CheckpointError(f"{config} puts {token['content']!r} at id {index}, which {path} does not")
        return tokenizer

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    def most_tokens(self, text: str) -> int:
        """At least `len(encode(text))`, found without encoding: every token of a byte-level BPE holds at
        least one byte of the normalized text (an added token aside, which plain text may not hold). A
        limit check that this bound passes needs no encoding; a live session's text is checked at every
        word, and encoding was a third of the server's event-loop time (BENCHMARKS.md)."""
        normalizer = self._backend.normalizer
        normalized = normalizer.normalize_str(text) if normalizer is not None else text
        return len(normalized.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return self._backend.decode(ids, skip_special_tokens=False)

    @property
    def added_tokens(self) -> tuple[str, ...]:
        """The text of every added token (`<|im_start|>`, `<tts_pad>`, ...): text holding one gets its id."""
        return tuple(self._token_ids)

    def token_id(self, content: str) -> int:
        """Id of an added token such as `<|im_start|>`."""
        if content not in self._token_ids:
            raise CheckpointError(f"tokenizer has no added token {content!r}")
        return self._token_ids[content]


def assistant_text(text: str) -> str:
    """Template for the text to speak: role ids are [0:3], the text ids [3:-5]."""
    return f"<|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>assistant\n"


def reference_text(text: str) -> str:
    """Template for a voice-clone reference transcript: its text ids are [3:-2]."""
    return f"<|im_start|>assistant\n{text}<|im_end|>\n"


def instruct_text(instruct: str) -> str:
    """Template for a style/voice description: every id is used."""
    return f"<|im_start|>user\n{instruct}<|im_end|>\n"
