"""The fast RFC 8785 path must produce exactly the bytes of the rfc8785 reference package."""

import json
import math
import random

import pytest
import rfc8785

from audit.canonical import canonical_json

SPECIAL_FLOATS = [0.0, -0.0, 1.0, -1.0, 0.1, 1e-7, 1e-6, 1.5e-5, 0.0001, 123456789012345.0,
                  1e15, 1e16, 1e20, 1e21, 1e22, 5e-324, 1.7976931348623157e308, 2.5, 0.30000000000000004]
SPECIAL_STRINGS = ["", "plain", "quote\"back\\slash", "\b\f\n\r\t", "\x00\x01\x1f\x7f", "é€",
                   "\u2028\u2029", "emoji \U0001F600", "\ue000", "\uffff"]
SPECIAL_KEYS = ["a", "b", "A", "\u00e9", "\U0001F600", "\ue000", "\uffff", "10", "1", ""]


def random_value(generator: random.Random, depth: int = 0):
    choice = generator.randrange(9 if depth < 4 else 6)
    if choice == 0:
        return generator.choice([None, True, False])
    if choice == 1:
        return generator.randint(-(2**53) + 1, 2**53 - 1)
    if choice == 2:
        return generator.choice(SPECIAL_FLOATS)
    if choice == 3:
        return generator.uniform(-1e6, 1e6) * 10 ** generator.randint(-12, 12)
    if choice == 4:
        return generator.choice(SPECIAL_STRINGS)
    if choice == 5:
        return "".join(chr(generator.choice([generator.randint(32, 126), generator.randint(0, 0x2FFF),
                                             generator.randint(0x10000, 0x10FFFF)]))
                       for _ in range(generator.randint(0, 6))).encode("utf-8", "ignore").decode()
    if choice == 6:
        return [random_value(generator, depth + 1) for _ in range(generator.randint(0, 4))]
    keys = SPECIAL_KEYS + [str(generator.random())]
    return {generator.choice(keys): random_value(generator, depth + 1) for _ in range(generator.randint(0, 5))}


def test_matches_reference_on_random_values():
    generator = random.Random(8785)
    for _ in range(3000):
        value = random_value(generator)
        assert canonical_json(value) == rfc8785.dumps(value), value


@pytest.mark.parametrize("number", SPECIAL_FLOATS + [-x for x in SPECIAL_FLOATS])
def test_matches_reference_on_floats(number):
    assert canonical_json({"x": number, "y": [number]}) == rfc8785.dumps({"x": number, "y": [number]})


def test_non_bmp_key_order_follows_utf16():
    value = {"\U0001F600": 1, "\ue000": 2}
    assert canonical_json(value) == rfc8785.dumps(value)
    assert canonical_json(value).startswith('{"\U0001F600"'.encode())


@pytest.mark.parametrize("bad", [math.nan, math.inf, 2**53, {1: "x"}, "\ud800", object()])
def test_rejects_what_reference_rejects(bad):
    with pytest.raises(ValueError):
        canonical_json({"v": bad})


def test_output_parses_back():
    value = {"b": [1, 2.5, "x"], "a": {"z": None}}
    assert json.loads(canonical_json(value)) == value
