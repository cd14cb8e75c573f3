"""Mutated corpus files: whatever the damage, only DhcpdConfError escapes
parse(), and whatever parses can be walked and its hosts listed."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.dhcpd_conf import DhcpdConfError, iter_hosts, parse
from appliance.dhcpd_conf.lexer import tokenize

DATA = Path(__file__).resolve().parents[1] / "data" / "dhcpd"
CORPUS = [p.read_text() for p in sorted(DATA.glob("*.conf"))]
FUZZ = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def parses_or_fails_cleanly(text: str) -> None:
    try:
        config = parse(text, "fuzz.conf")
    except DhcpdConfError as e:
        assert e.filename == "fuzz.conf" and e.line >= 1 and e.col >= 1, str(e)
        return
    list(config.walk())
    for host in iter_hosts(config):
        host.settings()


def test_the_corpus_is_there():
    assert len(CORPUS) >= 10


@FUZZ
@given(st.sampled_from(CORPUS), st.data())
def test_byte_flips(text, data):
    raw = bytearray(text.encode())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    parses_or_fails_cleanly(raw.decode("utf-8", "surrogateescape"))


@FUZZ
@given(st.sampled_from(CORPUS), st.data())
def test_truncation(text, data):
    parses_or_fails_cleanly(text[:data.draw(st.integers(0, len(text)))])


@FUZZ
@given(st.sampled_from(CORPUS), st.data())
def test_token_deletion_and_duplication(text, data):
    tokens = tokenize(text)
    spans = [(off, off + len(v) + (2 if k == "STR" else 0)) for k, v, off in tokens]
    for _ in range(data.draw(st.integers(1, 4))):
        start, end = data.draw(st.sampled_from(spans))
        piece = text[start:end]
        if data.draw(st.booleans()):
            text = text[:start] + text[end:]
        else:
            text = text[:start] + piece + " " + piece + text[end:]
        spans = [(s, e) for s, e in spans if e <= len(text)] or [(0, 0)]
    parses_or_fails_cleanly(text)


@FUZZ
@given(st.lists(st.sampled_from(list('{}();,="#\\!~ \n\tab0:.-/') + [
    "if ", "not ", "group ", "option ", "host ", "class ", "match ", "elsif ", "else ",
    "subnet ", "netmask ", "include ", "on ", "code ", "array of ", "exists "]),
    max_size=200).map("".join))
def test_token_soup(text):
    parses_or_fails_cleanly(text)


@pytest.mark.parametrize("depth", [10_000])
def test_group_nesting_10000_deep_is_a_parse_error(depth):
    with pytest.raises(DhcpdConfError, match="nesting deeper"):
        parse("group {\n" * depth + "}\n" * depth)
