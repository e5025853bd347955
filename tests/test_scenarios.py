"""The scenario library: every scenario dumped with every strategy under every profile,
restored, verified, and every expectation asserted; and the format's error reporting."""

from __future__ import annotations

import pytest

from dumper.model.kernels import PROFILES
from dumper.scenarios.check import library, resolve, run_matrix
from dumper.scenarios.format import ScenarioError, load, parse
from dumper.select import STRATEGIES

SCENARIOS = library()


def test_the_library_holds_every_scenario_of_the_spec():
    """SCENARIOS.md lists 15 cases; 3 and 9 have two stages each."""
    numbers = {p.name.split("-", 1)[0].rstrip("b") for p in SCENARIOS}
    assert numbers == {f"{i:02d}" for i in range(1, 16)}
    for p in SCENARIOS:
        sc = load(p)
        assert sc.cite, f"{p.name} cites no thread message"
        assert sc.header.startswith("Scenario"), f"{p.name} has no header comment"
        assert sc.lost or sc.views, f"{p.name} expects nothing"


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_expectations_hold_across_profiles_and_strategies(path):
    sc = load(path)
    outcomes, failures = run_matrix([sc])
    assert len(outcomes) == len(PROFILES) * len(STRATEGIES)
    assert not failures, "\n".join(f.line_text() for f in failures)
    # The thread's conclusion, for every scenario: the object-based strategies lose nothing.
    for o in outcomes:
        if o.strategy in ("auto", "lseek", "all"):
            assert o.lost == 0, f"{sc.name} {o.profile}/{o.strategy} lost {o.lost}"
        assert o.selection_unchanged


def test_resolve_by_number_name_and_path():
    assert resolve("1").name == "fork-unmap-after-swapout"
    assert resolve("09b").name == "swap-cache-dropped"
    assert resolve("mincore-and-vs-or").name == "mincore-and-vs-or"
    assert resolve(str(SCENARIOS[0])).path == str(SCENARIOS[0])
    with pytest.raises(ScenarioError, match="no such scenario"):
        resolve("no-such-thing")


GOOD = "task A\nmmap A r 4 shared\nwrite A r 0-3\ndump A\n"


@pytest.mark.parametrize(
    "text,line,message",
    [
        ("task A\nfrobnicate A\ndump A\n", 2, "unknown operation 'frobnicate'"),
        ("task A\nwrite B r 0\ndump A\n", 2, "unknown task 'B'"),
        ("task A\nwrite A r 0\ndump A\n", 2, "unknown region 'r'"),
        ("task A\nmmap A r 4\nwrite A r 4\ndump A\n", 3, "page 4 is outside region 'r'"),
        ("task A\nmmap A r 4\nwrite A r 2-1\ndump A\n", 3, "bad page range"),
        ("task A\nmmap A r 4\nmadvise A r 0 frob\ndump A\n", 3, "unknown advice 'frob'"),
        ("task A\nmmap A r 0\ndump A\n", 2, "not a positive number of pages"),
        ("task A\nmmap A r 4 sharde\ndump A\n", 2, "mmap does not take 'sharde'"),
        ("task A\nmmap A r 4\ndump A\nwrite A r 0\n", 4, "operations come before the dump"),
        (GOOD + "expect lost pagemap linux-5.14 = x\n", 5, "malformed expectation"),
        (GOOD + "expect lost pagemp * = 1\n", 5, "unknown strategy 'pagemp'"),
        (GOOD + "expect lost * linux-9 = 1\n", 5, "unknown profile 'linux-9'"),
        (GOOD + 'expect view A r pagemop * = "P"\n', 5, "unknown view 'pagemop'"),
        (GOOD + 'expect view C r pagemap * = "P"\n', 5, "unknown task 'C'"),
        (GOOD + "dump A\n", 5, "a second dump line"),
        ("mmap A r 4\n", 1, "declare the root task first"),
        ("task A\nmmap A r 4\n", 2, "no dump line"),
        ('task A\nmmap A r 4\nwrite A r "0\ndump A\n', 3, "cannot split the line"),
    ],
)
def test_parser_reports_every_mistake_with_file_and_line(text, line, message):
    with pytest.raises(ScenarioError) as e:
        parse(text, "bad.scn")
    assert e.value.line == line
    assert str(e.value).startswith(f"bad.scn:{line}: ")
    assert message in str(e.value)


def test_runtime_mistakes_name_the_line():
    """Names the parser cannot judge (a region a task does not have) fail at run time, with
    the line."""
    sc = parse("task A\nmmap A r 4\nfork A B\nmunmap B r\nwrite B r 0\ndump A\n", "late.scn")
    with pytest.raises(ScenarioError, match=r"late.scn:5: task B has no region 'r'"):
        run_matrix([sc], profiles=["linux-6.18"], strategies=["auto"])


def test_operations_the_kernel_refuses_name_the_line_and_profile():
    sc = parse("task A\nmmap A r 4\nmadvise A r 0 guard-install\ndump A\n", "g.scn")
    with pytest.raises(ScenarioError, match=r"g.scn:3: madvise failed under linux-5.14: EINVAL"):
        run_matrix([sc], profiles=["linux-5.14"], strategies=["auto"])
