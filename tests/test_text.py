"""Our tokenizer and templates against the official processor on the tiny tokenizer stand-in."""

from __future__ import annotations

import pytest

from oracle import official
from qtts.errors import CheckpointError, InputError
from qtts.limits import check_text
from qtts.testing.tokenizer import write_tokenizer_files
from qtts.text import TextTokenizer, assistant_text, instruct_text, reference_text

SAMPLES = [
    "Hello, world! How are you today?",
    "我叫通义千问，是阿里云的开源大模型。",
    "In 2026-01-22 we paid $42.50 (about 3.14%) for 1234567 items.",
    "It's fine; WE'LL see, they'd said... \"quoted\"   spaced\ttabs\n\nnew lines",
    "混合 English 和中文 123，还有标点！？",
    "Bonjour ça va? こんにちは 안녕하세요 ¿Qué tal?",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tokenizer_files(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def official_processor(folder):
    official()
    from qwen_tts.core.models.processing_qwen3_tts import Qwen3TTSProcessor
    from transformers import AutoTokenizer

    # A folder without config.json loads as a hub id does: the Qwen split regex stays (spec pitfall 12).
    tokenizer = AutoTokenizer.from_pretrained(folder, fix_mistral_regex=True)
    return Qwen3TTSProcessor(tokenizer=tokenizer)


@pytest.mark.parametrize("template", [assistant_text, reference_text, instruct_text])
def test_ids_equal_official_processor(folder, official_processor, template):
    ours = TextTokenizer.from_folder(folder)
    for sample in SAMPLES:
        text = template(sample)
        theirs = official_processor(text=text, return_tensors="pt", padding=True)["input_ids"][0].tolist()
        assert ours.encode(text) == theirs, text


def test_special_tokens_sit_at_real_qwen_ids(folder):
    ours = TextTokenizer.from_folder(folder)
    expected = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                "<tts_pad>": 151671, "<tts_text_bos>": 151672, "<tts_text_eod>": 151673}
    for content, index in expected.items():
        assert ours.token_id(content) == index
        assert ours.encode(content) == [index]
    ids = ours.encode(assistant_text("Hi 你好"))
    assert ids[:3] == [151644, ours.encode("assistant")[0], 198]
    assert ids[-5:] == [151645, 198, 151644, ours.encode("assistant")[0], 198]
    assert ours.decode(ids) == assistant_text("Hi 你好")


def test_missing_tokenizer_file_is_a_checkpoint_error(folder, tmp_path):
    (tmp_path / "vocab.json").write_text((folder / "vocab.json").read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(CheckpointError, match="merges.txt"):
        TextTokenizer.from_folder(tmp_path)


def test_local_folder_with_config_gets_mistral_regex_but_we_keep_qwen(folder, tmp_path):
    """Spec pitfall 12: transformers 4.57.3 swaps in a Mistral split regex for a local folder whose
    config.json lacks `transformers_version`; loading by hub id keeps Qwen's. We tokenize as the hub id does."""
    official()
    from transformers import AutoTokenizer

    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    (tmp_path / "config.json").write_text('{"model_type": "qwen3_tts"}', encoding="utf-8")
    patched = AutoTokenizer.from_pretrained(tmp_path, fix_mistral_regex=True)
    hub_like = AutoTokenizer.from_pretrained(folder, fix_mistral_regex=True)
    ours = TextTokenizer.from_folder(folder)
    text = "helloWorld and camelCaseWords"
    assert ours.encode(text) == hub_like(text)["input_ids"]
    def pieces(tokenizer):
        return [piece for piece, _ in tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)]

    assert pieces(patched) != pieces(hub_like)  # the patch splits "helloWorld" into "hello", "World"


@pytest.fixture(scope="module")
def shipped(folder, tmp_path_factory):
    """A folder holding the tokenizer.json the official processor writes for `folder` (Qwen split regex)."""
    official()
    from transformers import AutoTokenizer

    target = tmp_path_factory.mktemp("with-tokenizer-json")
    AutoTokenizer.from_pretrained(folder, fix_mistral_regex=True).save_pretrained(target)
    assert (target / "tokenizer.json").is_file()
    return target


def test_shipped_tokenizer_json_tokenizes_as_the_bpe_files_do(folder, shipped):
    from_json, from_bpe = TextTokenizer.from_folder(shipped), TextTokenizer.from_folder(folder)
    for sample in SAMPLES + ["helloWorld and camelCaseWords"]:
        for template in (assistant_text, reference_text, instruct_text):
            assert from_json.encode(template(sample)) == from_bpe.encode(template(sample)), sample
    assert from_json.token_id("<tts_pad>") == 151671


def test_shipped_tokenizer_json_is_followed_where_it_differs(shipped, tmp_path):
    import json

    data = json.loads((shipped / "tokenizer.json").read_text(encoding="utf-8"))
    data["normalizer"] = {"type": "Sequence", "normalizers": [data["normalizer"], {"type": "Lowercase"}]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_bytes((shipped / "tokenizer_config.json").read_bytes())
    ours = TextTokenizer.from_folder(tmp_path)
    assert ours.encode("HELLO World") == ours.encode("hello world") != TextTokenizer.from_folder(shipped).encode(
        "HELLO World")


def test_tokenizer_json_and_config_must_agree_on_added_token_ids(shipped, tmp_path):
    import json

    (tmp_path / "tokenizer.json").write_bytes((shipped / "tokenizer.json").read_bytes())
    config = json.loads((shipped / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["added_tokens_decoder"]["151000"] = {"content": "<tts_pad>", "special": True}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(CheckpointError, match="'<tts_pad>' at id 151000"):
        TextTokenizer.from_folder(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match="not a readable tokenizer file"):
        TextTokenizer.from_folder(tmp_path)


# NFC makes some text longer: U+0958 (Devanagari qa) becomes two code points, six bytes for three.
BOUND_SAMPLES = SAMPLES + ["\u0958\u0959\u095a" * 5, "e\u0301 A\u030a \u2126 \ufb01", "🙂🎉" * 3, " ", "a" * 40]


@pytest.mark.parametrize("which", ["bpe files", "tokenizer.json"])
def test_the_token_bound_is_never_below_the_count(folder, shipped, which):
    """`most_tokens` lets a limit check skip encoding: it must never undercount, whichever file the
    tokenizer came from (the bound is the normalized text's UTF-8 length)."""
    tokenizer = TextTokenizer.from_folder(folder if which == "bpe files" else shipped)
    for text in BOUND_SAMPLES:
        assert len(tokenizer.encode(text)) <= tokenizer.most_tokens(text), text
    assert tokenizer.most_tokens("\u0958") == 6  # counted after NFC, not before (3 bytes)


def test_a_limit_is_exact_where_the_bound_exceeds_it(folder):
    """Over the bound, the exact count decides: text of more bytes than the limit but fewer tokens passes,
    and text of more tokens is refused with its count."""
    tokenizer = TextTokenizer.from_folder(folder)
    text = "Hello, world! How are you today? " * 4
    count = len(tokenizer.encode(text))
    assert count < tokenizer.most_tokens(text)
    check_text(tokenizer, "text", text, count)
    with pytest.raises(InputError, match=f"text is {count} tokens long; the limit is {count - 1}"):
        check_text(tokenizer, "text", text, count - 1)
