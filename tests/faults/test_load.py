"""Load (issue 7): concurrent writers and subscribers for a fixed time against each backend, then
the check of bench/load.py: every acknowledged event stored exactly once, nothing invented,
positions strictly increasing, entity versions 1..n, every subscriber got exactly the stored
events after its start, once each, in order, and no append failed. Speed is reported, never asserted."""

from __future__ import annotations

from collections import Counter

import load  # bench/load.py: bench/ is on the test path (pyproject: [tool.pytest.ini_options] pythonpath)
import pytest


def _report(result: dict) -> str:
    return (f"{result['backend']} W={result['writers']}: {result['events']} events stored by "
            f"{result['calls']} calls; failures: {result['failures']}")


def _check(result: dict, writers: int) -> None:
    assert result["failures"] == [], _report(result)
    assert result["passed"]
    assert result["events"] > writers, _report(result)  # every writer got going: the check was not vacuous
    assert result["stored"] == result["events"]
    subscribers = result["subscriber_details"]
    assert all(s["delivered"] > 0 for s in subscribers), subscribers
    assert any(s["after"] > 0 for s in subscribers), subscribers  # one joined mid-run (catch-up, then live)


async def test_load_postgres(database_url):
    result = await load.run_load("postgres", writers=8, subscribers=2, seconds=5, database_url=database_url)
    _check(result, 8)
    assert "2 processes" in result["layout"]


async def test_load_file(tmp_path):
    result = await load.run_load("file", writers=8, subscribers=2, seconds=5, path=tmp_path / "load.jsonl")
    _check(result, 8)
    assert any("other process" in s["name"] for s in result["subscriber_details"])


@pytest.mark.long
async def test_load_postgres_long(database_url):
    result = await load.run_load("postgres", writers=32, subscribers=4, seconds=60, database_url=database_url)
    _check(result, 32)
    assert "4 processes" in result["layout"]


@pytest.mark.long
async def test_load_file_long(tmp_path):
    result = await load.run_load("file", writers=32, subscribers=4, seconds=60, path=tmp_path / "load.jsonl")
    _check(result, 32)


def _run(stored, followers, acked, *, raw=None, uncertain=()):
    writer = {"acked": [(k, 0.0) for k in acked], "uncertain": list(uncertain), "errors": [], "violations": [],
              "own": ["none", 0]}
    return {"stored": stored, "raw_key_counts": raw, "writer_results": [writer],
            "followers": [{"name": f"sub{i}", "after": after, "items": [(p, k, 0.0, 0.0) for p, k in items],
                           "error": None} for i, (after, items) in enumerate(followers)]}


def test_the_check_finds_each_kind_of_damage():
    """The verification is not vacuous: each defect a load could expose is reported."""
    stored = [(1, "a", "e", 1), (2, "b", "e", 2), (4, "c", None, None)]
    full = [(1, "a"), (2, "b"), (4, "c")]
    assert load.verify(_run(stored, [(0, full), (2, [(4, "c")])], "abc")) == []

    def finds(text: str, run: dict) -> None:
        failures = load.verify(run)
        assert any(text in f for f in failures), failures

    finds("not stored", _run(stored, [(0, full)], "abcd"))  # an acknowledged event lost
    finds("no writer had acknowledged", _run(stored, [(0, full)], "ab"))  # an event invented
    finds("more than once", _run(stored, [(0, full)], "abc", raw=Counter("abcc")))  # stored twice
    finds("acknowledged as new twice", _run(stored, [(0, full)], "abcc"))
    finds("strictly increasing", _run([stored[1], stored[0], stored[2]], [(0, full)], "abc"))
    finds("versions are not 1..n", _run([(1, "a", "e", 1), (2, "b", "e", 3)], [(0, full[:2])], "ab"))
    finds("1 missing", _run(stored, [(0, [(1, "a"), (4, "c")])], "abc"))  # a subscriber skipped one
    finds("1 repeated", _run(stored, [(0, [*full, (4, "c")])], "abc"))  # a subscriber got one twice
    finds("in order: False", _run(stored, [(0, [(2, "b"), (1, "a"), (4, "c")])], "abc"))
    finds("1 not stored", _run(stored, [(2, [(2, "b"), (4, "c")])], "abc"))  # delivered what is before its start
