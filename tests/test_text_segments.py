"""Sentence-boundary segmentation: where the cuts fall in each of the ten languages, the length limit,
and the property live speech rests on: text delivered in deltas of any size is cut exactly as when whole."""

from __future__ import annotations

import random

import pytest

from qtts.text_segments import LOOKAHEAD, SegmentBuffer, iter_segments

# One passage per supported language, with the traps of its script.
PASSAGES = {
    "english": "Dr. Smith paid $3.14 for it, e.g. a coffee. Then J. R. Tolkien wrote! \"Really?\" she asked. Yes.",
    "chinese": "今天天气很好。我们去公园吧！你觉得呢？“好。”他说，然后走了。",
    "japanese": "こんにちは。「はい。」と言った。今日は、いい天気ですね！",
    "korean": "안녕하세요. 오늘 날씨가 좋네요! 공원에 갈까요?",
    "german": "Das kostet z.B. 1.000 Euro. Herr Nr. 5 kam um 10:30 Uhr. Gut!",
    "french": "« Bonjour. » Il est là ? Oui ! M. Dupont arrive, dit-il. Fin.",
    "russian": "Привет. Это т.е. пример! Как дела? Хорошо.",
    "portuguese": "Olá, tudo bem? Sim. O Sr. Silva chegou às 10h.",
    "spanish": "¿Qué tal? ¡Muy bien! La Sra. García llegó, y luego se fue.",
    "italian": "Ciao. Come stai? Bene, grazie! Il dott. Rossi è qui.",
}


def sentences(text: str, **options) -> list[str]:
    return list(iter_segments(text, granularity="sentence", **options))


@pytest.mark.parametrize("language, expected", [
    ("english", ["Dr. Smith paid $3.14 for it, e.g. a coffee.", "Then J. R. Tolkien wrote!",
                 "\"Really?\" she asked.", "Yes."]),
    ("chinese", ["今天天气很好。", "我们去公园吧！", "你觉得呢？", "“好。”他说，然后走了。"]),
    ("japanese", ["こんにちは。", "「はい。」と言った。", "今日は、いい天気ですね！"]),
    ("korean", ["안녕하세요.", "오늘 날씨가 좋네요!", "공원에 갈까요?"]),
    ("german", ["Das kostet z.B. 1.000 Euro.", "Herr Nr. 5 kam um 10:30 Uhr.", "Gut!"]),
    ("french", ["« Bonjour. »", "Il est là ?", "Oui !", "M. Dupont arrive, dit-il.", "Fin."]),
    ("russian", ["Привет.", "Это т.е. пример!", "Как дела?", "Хорошо."]),
    ("portuguese", ["Olá, tudo bem?", "Sim.", "O Sr. Silva chegou às 10h."]),
    ("spanish", ["¿Qué tal?", "¡Muy bien!", "La Sra. García llegó, y luego se fue."]),
    ("italian", ["Ciao.", "Come stai?", "Bene, grazie!", "Il dott. Rossi è qui."]),
])
def test_sentences_are_cut_at_their_ends_and_nowhere_else(language, expected):
    assert sentences(PASSAGES[language]) == expected


def test_clause_granularity_also_cuts_at_commas_but_not_inside_numbers_or_times():
    assert list(iter_segments("Well, it costs 1,000 dollars at 10:30; fine. 好的，走吧。", granularity="clause")) \
        == ["Well,", "it costs 1,000 dollars at 10:30;", "fine.", "好的，", "走吧。"]


def test_a_newline_ends_a_segment_even_without_punctuation():
    assert sentences("A heading\n\nThe first line\nThe second line") == \
        ["A heading", "The first line", "The second line"]


def test_without_granularity_whole_sentences_are_packed_up_to_the_limit():
    text = "One two. Three four. Five six. Seven eight."
    assert list(iter_segments(text, max_chars=20)) == ["One two. Three four.", "Five six.", "Seven eight."]
    assert list(iter_segments(text)) == [text]


def test_a_sentence_over_the_limit_is_cut_at_a_clause_then_a_word_then_anywhere():
    assert sentences("One two three, four five six seven eight nine.", max_chars=20) == \
        ["One two three,", "four five six seven", "eight nine."]
    assert sentences("一二三四五六七八九十一二三四五六七八九十一二三", max_chars=10) == \
        ["一二三四五六七八九十", "一二三四五六七八九十", "一二三"]


def test_every_segment_fits_the_limit_and_together_they_keep_every_character():
    text = " ".join(PASSAGES.values()) * 3
    for limit in (12, 40, 300):
        for granularity in ("sentence", "clause", "none"):
            segments = list(iter_segments(text, max_chars=limit, granularity=granularity))
            assert all(0 < len(segment) <= limit for segment in segments)
            assert "".join("".join(segments).split()) == "".join(text.split())


def test_pieces_with_nothing_to_say_are_never_segments_of_their_own():
    assert sentences("... Hello!! ...  —") == ["... Hello!!"]
    assert sentences("?!") == []


def test_a_segment_is_committed_as_soon_as_its_end_is_certain():
    latin = SegmentBuffer()
    assert latin.feed("Hello there.") == []  # "there.5"? a decimal or a sentence end: not yet known
    assert latin.feed(" ") == []  # "there. but": a lower-case word would continue the sentence
    assert latin.feed("W") == ["Hello there."]
    assert latin.pending == "W"
    assert latin.feed("orld") == []
    assert latin.flush() == ["World"]
    assert latin.pending == ""

    wide = SegmentBuffer()
    assert wide.feed("你好。") == []  # a closing quote may still follow
    assert wide.feed("我") == ["你好。"]


def test_a_long_unpunctuated_delta_stream_is_cut_once_the_limit_and_lookahead_are_passed():
    buffer = SegmentBuffer(max_chars=10)
    received = []
    for char in "一二三四五六七八九十" * 4:
        received += buffer.feed(char)
        assert len(buffer.pending) <= 10 + LOOKAHEAD
    assert received and received[0] == "一二三四五六七八九十"


ALL_PASSAGES = "\n".join(PASSAGES.values()) + " Ein Satz ohne Ende und noch ein paar Wörter dazu"


@pytest.mark.parametrize("overflow", ["strongest", "last"])
@pytest.mark.parametrize("granularity", ["sentence", "clause", "none"])
@pytest.mark.parametrize("limit", [15, 60, 300])
def test_text_in_random_deltas_gives_the_same_segments_as_the_whole_text(granularity, limit, overflow):
    text = ALL_PASSAGES
    whole = list(iter_segments(text, max_chars=limit, granularity=granularity, overflow=overflow))
    chooser = random.Random(limit)
    for _ in range(30):
        buffer = SegmentBuffer(max_chars=limit, granularity=granularity, overflow=overflow)
        segments, position = [], 0
        while position < len(text):
            size = chooser.choice([1, 1, 2, 3, 5, 8, 40])
            segments += buffer.feed(text[position:position + size])
            position += size
        segments += buffer.flush()
        assert segments == whole


def test_past_the_limit_the_last_rule_cuts_at_the_last_boundary_that_fits():
    text = "One, two three four five six seven."
    assert list(iter_segments(text, max_chars=20)) == ["One,", "two three four five", "six seven."]
    assert list(iter_segments(text, max_chars=20, overflow="last")) == ["One, two three four", "five six seven."]


@pytest.mark.parametrize("overflow", ["strongest", "last"])
@pytest.mark.parametrize("granularity", ["sentence", "clause", "none"])
@pytest.mark.parametrize("limit", [15, 60])
def test_the_settled_text_always_begins_the_next_segment(granularity, limit, overflow):
    """What live speech speaks before a segment ends must be part of it: at every step, `settled()` is a
    prefix of the segment the buffer commits next (whitespace after its end aside)."""
    chooser = random.Random(limit)
    for _ in range(10):
        buffer = SegmentBuffer(max_chars=limit, granularity=granularity, overflow=overflow)
        promised, position = "", 0
        while position < len(ALL_PASSAGES):
            size = chooser.choice([1, 1, 2, 3, 5, 8, 40])
            committed = buffer.feed(ALL_PASSAGES[position:position + size])
            position += size
            if committed:
                assert committed[0].startswith(promised.rstrip())
                promised = ""
            settled = buffer.settled()
            assert settled.startswith(promised) and buffer.pending.startswith(settled)
            promised = settled
        final = buffer.flush()
        assert not promised or final[0].startswith(promised.rstrip())


def test_with_the_last_rule_each_ended_word_is_settled_at_once():
    buffer = SegmentBuffer(max_chars=300, overflow="last")
    buffer.feed("Hello there, how are")
    assert buffer.settled() == "Hello there, how "
    buffer.feed(" you")
    assert buffer.settled() == "Hello there, how are "
    strongest = SegmentBuffer(max_chars=300)
    strongest.feed("Hello there, how are you")
    assert strongest.settled() == "Hello there, "  # past the limit the cut could still fall at the comma


def test_with_the_last_rule_words_before_an_open_mark_are_settled():
    """A mark whose boundary waits for the next character still ends the words before it, whichever way
    the text goes: full-width marks, and Latin ones followed by a space. Not a "." that may be a decimal
    point, and not within the limit's reach of the decision."""
    settled = {}
    for text in ("Well, ", "Ask Dr. ", "你好，", "Pi is 3.", "She said: « Oui. "):
        buffer = SegmentBuffer(max_chars=300, overflow="last")
        buffer.feed(text)
        settled[text] = buffer.settled()
    assert settled == {"Well, ": "Well, ", "Ask Dr. ": "Ask Dr. ", "你好，": "你好，", "Pi is 3.": "Pi is ",
                       "She said: « Oui. ": "She said: « Oui. "}
    near_the_limit = SegmentBuffer(max_chars=12, overflow="last")
    near_the_limit.feed("Well, ")
    assert near_the_limit.settled() == ""  # a closer could still carry the boundary past 12 characters
    strongest = SegmentBuffer(max_chars=300)
    strongest.feed("Well, ")
    assert strongest.settled() == ""


def test_a_preview_is_what_feeding_would_commit_and_changes_nothing():
    buffer = SegmentBuffer()
    buffer.feed("First one. Sec")
    assert buffer.preview("ond one. Thi") == (["Second one."], "Thi")
    assert buffer.pending == "Sec"
    assert buffer.feed("ond one. Thi") == ["Second one."] and buffer.pending == "Thi"


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="max_chars"):
        SegmentBuffer(max_chars=0)
    with pytest.raises(ValueError, match="granularity"):
        SegmentBuffer(granularity="word")
    with pytest.raises(ValueError, match="overflow"):
        SegmentBuffer(overflow="first")
