"""The tokens an answer says it used, read off its bytes however they are split."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from activator.usage import CommentDropper, Usage, UsageScanner
from contracts.replica import usage_comment


def _stream(texts: list[str], usage: dict[str, int] | None) -> bytes:
    out = []
    for text in texts:
        chunk = {"id": "x", "choices": [{"index": 0, "text": text}], "usage": None}
        out.append(f"data: {json.dumps(chunk)}\n\n")
    if usage is not None:
        out.append(f"data: {json.dumps({'id': 'x', 'choices': [], 'usage': usage})}\n\n")
    out.append("data: [DONE]\n\n")
    return "".join(out).encode()


def _feed(data: bytes, cuts: list[int]) -> UsageScanner:
    scanner = UsageScanner()
    last = 0
    for cut in sorted(set(cuts)):
        scanner.feed(data[last:cut])
        last = cut
    scanner.feed(data[last:])
    return scanner


@settings(max_examples=300, deadline=None)
@given(
    texts=st.lists(st.text(max_size=12), max_size=6),
    prompt=st.integers(0, 10**6),
    completion=st.integers(0, 10**6),
    cuts=st.lists(st.integers(0, 2000), max_size=12),
)
def test_a_streams_usage_however_it_is_split(
    texts: list[str], prompt: int, completion: int, cuts: list[int]
) -> None:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": 1}
    data = _stream(texts, usage)
    assert _feed(data, cuts).usage == Usage(prompt, completion)


@settings(max_examples=100, deadline=None)
@given(texts=st.lists(st.text(max_size=12), max_size=6), cuts=st.lists(st.integers(0, 800)))
def test_no_usage_is_none(texts: list[str], cuts: list[int]) -> None:
    assert _feed(_stream(texts, None), cuts).usage is None


def test_a_whole_answer_with_nested_details() -> None:
    body = {
        "choices": [{"text": 'say "usage": {"prompt_tokens": 9}', "index": 0}],
        "usage": {
            "prompt_tokens": 3,
            "completion_tokens": 4,
            "prompt_tokens_details": {"cached_tokens": 1},
        },
    }
    scanner = UsageScanner()
    scanner.feed(json.dumps(body).encode())
    assert scanner.usage == Usage(3, 4)


def test_embeddings_usage_has_no_completion() -> None:
    scanner = UsageScanner()
    scanner.feed(b'{"data":[],"usage":{"prompt_tokens":5,"total_tokens":5}}')
    assert scanner.usage == Usage(5, 0)


def test_bad_values_are_not_tokens() -> None:
    for raw in (
        b'{"usage":{"prompt_tokens":-1,"completion_tokens":2}}',
        b'{"usage":{"prompt_tokens":"3","completion_tokens":2}}',
        b'{"usage":{"prompt_tokens":true,"completion_tokens":2}}',
        b'{"usage":{"prompt_tokens":1,',  # never ends
        b'{"usage":[1,2]}',
    ):
        scanner = UsageScanner()
        scanner.feed(raw)
        assert scanner.usage is None, raw


def test_an_endless_object_is_given_up() -> None:
    scanner = UsageScanner()
    scanner.feed(b'{"usage":{"prompt_tokens":1,"x":"' + b"a" * 10_000)
    scanner.feed(b'"},"completion_tokens":2}')
    assert scanner.usage is None
    scanner.feed(b'data: {"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n')
    assert scanner.usage == Usage(1, 2)


def _chunked(events: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"


@settings(max_examples=300, deadline=None)
@given(
    texts=st.lists(st.text(max_size=12), max_size=6),
    cuts=st.lists(st.integers(0, 2000), max_size=12),
    prompt=st.integers(0, 10**6),
    completion=st.integers(0, 10**6),
)
def test_the_usage_comment_is_taken_out_however_the_stream_is_split(
    texts: list[str], cuts: list[int], prompt: int, completion: int
) -> None:
    events = [f"data: {json.dumps({'choices': [{'text': t}]})}\n\n".encode() for t in texts]
    client_sees = _chunked([*events, b"data: [DONE]\n\n"])
    stream = _chunked([*events, usage_comment(prompt, completion), b"data: [DONE]\n\n"])
    dropper, scanner, out = CommentDropper(), UsageScanner(), []
    last = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        piece = stream[last:cut]
        last = max(last, cut)
        scanner.feed(piece)
        out.append(dropper.feed(piece))
    assert b"".join(out) == client_sees
    assert scanner.usage == Usage(prompt, completion)


def test_what_is_not_chunk_framing_passes_unfiltered() -> None:
    dropper = CommentDropper()
    assert dropper.feed(b"5\r\nhello\r\n") == b"5\r\nhello\r\n"
    assert dropper.feed(b"zz\r\n: ember-usage {}\r\n") == b"zz\r\n: ember-usage {}\r\n"
    assert dropper.feed(b"anything") == b"anything"


def test_sizes_that_are_not_chunk_framing_pass_unfiltered_and_end() -> None:
    for bad in (b"-6", b"+a", b"0x1a", b"1_0", b"123456789", b""):
        dropper = CommentDropper()
        data = bad + b"\r\n" + usage_comment(1, 2) + b"\r\n"
        assert dropper.feed(data) == data  # passed as it is (and the loop ends)
        assert dropper.feed(b"more") == b"more"


def test_a_big_chunk_passes_as_it_comes_never_held() -> None:
    dropper = CommentDropper()
    body = b"data: " + b"x" * 100_000 + b"\n\n"
    framed = b"%x\r\n%s\r\n" % (len(body), body)
    out = [dropper.feed(framed[i : i + 1000]) for i in range(0, len(framed), 1000)]
    assert all(out)  # every piece went on at once
    assert b"".join(out) == framed
    # a comment-sized chunk that begins like the comment but is bigger than one is passed too
    big = usage_comment(1, 2) + b"y" * 5000
    assert CommentDropper().feed(b"%x\r\n%s\r\n" % (len(big), big)).endswith(b"y\r\n")


def test_a_comment_sharing_its_chunk_with_an_event_is_passed() -> None:
    shared = usage_comment(1, 2) + b"data: [DONE]\n\n"
    framed = b"%x\r\n%s\r\n" % (len(shared), shared)
    assert CommentDropper().feed(framed) == framed
