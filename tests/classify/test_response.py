"""classify/response.py: the answer built as served and parsed back; hostile answers refused cheaply."""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path

import pytest

import classify.response
from classify.response import (
    MAX_RESPONSE_BYTES,
    InvalidAnswer,
    answer,
    nests_deeper,
    parse_answer,
    parse_refusal,
    refusal,
)


def test_it_imports_only_the_standard_library():
    """The probe and the remote client use it without torch, Pillow or requests."""
    tree = ast.parse(Path(classify.response.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "json", "math", "re", "struct"}


def test_what_is_built_parses_back():
    import json

    one, two = [("tabby", 0.5), ("tiger cat", 0.25)], [("dog", 1.0)]
    assert parse_answer(json.dumps(answer([one]))) == [one]
    assert parse_answer(json.dumps(answer([one, two])).encode(), images=2) == [one, two]
    assert parse_refusal(refusal(413, "TooManyImages", "too many")) == ("TooManyImages", "too many")
    with pytest.raises(InvalidAnswer, match="1 answers for 2"):
        parse_answer(json.dumps(answer([one])), images=2)


@pytest.mark.parametrize(
    "body, reason",
    [
        ('{"tabby": NaN}', "NaN"),
        ('{"tabby": -Infinity}', "Infinity"),
        ('{"tabby": 1.5}', "not a number in"),
        ('{"tabby": true}', "not a number in"),
        ('{"tabby": 0.8, "dog": 0.8}', "sum to"),
        ("[" * 1_000_000, "not valid JSON"),  # never closed: the parser's recursion limit, caught
        ("[" * 500_000 + "]" * 500_000, "nests"),
        ('"' + '\\"' * 500_000, "not valid JSON"),  # an unterminated string of escapes: linear
        ('[{"a": [[0.5]]}]', "nests"),
        ("{}", "expected a JSON object"),
        ("not json", "not valid JSON"),
    ],
)
def test_hostile_answers_are_refused(body, reason):
    started = time.perf_counter()
    with pytest.raises(InvalidAnswer, match=reason):
        parse_answer(body)
    assert time.perf_counter() - started < 5  # a million brackets: no recursion, no per-character loop in Python


def test_brackets_inside_strings_do_not_count_and_size_is_capped():
    assert not nests_deeper(b'{"a[[[\\"[[": 0.5}', 1) and nests_deeper(b'[{"a[": 0.5}]', 1)
    assert not nests_deeper(b"[[],[[]]]", 3) and nests_deeper(b"[[],[[]]]", 2)
    with pytest.raises(InvalidAnswer, match="bytes, above"):
        parse_answer(b" " * (MAX_RESPONSE_BYTES + 1))


def test_a_v2_answer_is_checked_like_a_torchserve_one():
    from classify.response import parse_v2_answer

    def answer(names, probabilities, shape):
        return json.dumps(
            {
                "outputs": [
                    {"name": "CLASS_NAMES", "datatype": "BYTES", "shape": shape, "data": names},
                    {"name": "PROBABILITIES", "datatype": "FP32", "shape": shape, "data": probabilities},
                ]
            }
        )

    assert parse_v2_answer(answer(["7", "1", "2", "9"], [0.9, 0.1, 0.6, 0.4], [2, 2])) == [
        [("7", 0.9), ("1", 0.1)],
        [("2", 0.6), ("9", 0.4)],
    ]
    for bad in [
        answer(["7"], [1.5], [1, 1]),  # out of [0, 1]
        answer(["7"], [0.5, 0.5], [1, 1]),  # data does not match the shape
        answer(["7"], [0.5], [1, 1]).replace("0.5", "NaN"),
        '{"outputs": []}',
        "[" * 100_000,
    ]:
        with pytest.raises(InvalidAnswer):
            parse_v2_answer(bad)
