"""dumper replay and dumper explore: reports, expectations, user profiles and scenarios,
the HTML report rendered in headless Chromium, shrinking."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from dumper.cli import main
from dumper.model.kernels import PROFILES
from dumper.scenarios import explore as ex

CHROMIUM = shutil.which("chromium")


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_table_reads_like_the_argument():
    r = run("replay", "1", "2", "--kernel", "linux-6.18", "--kernel", "pagecache-lookup")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    i = lines.index("fork-unmap-after-swapout  (david-2021-08-17b)")
    assert lines[i + 1].split() == ["strategy", "linux-6.18", "pagecache-lookup"]
    assert lines[i + 3].split() == ["pagemap", "8", "lost", "ok"]
    assert lines[i + 6].split() == ["lseek", "ok", "ok"]
    assert "2 scenarios x 2 profiles x 6 strategies = 24 dumps" in r.output
    assert "0 expectations failed" in r.output


def test_json_report(tmp_path):
    out = tmp_path / "r.json"
    r = run("replay", "7", "--format", "json", "-o", str(out), "--strategy", "mincore-and",
            "--strategy", "lseek")
    assert r.exit_code == 0
    doc = json.loads(out.read_text())
    assert doc["profiles"] == list(PROFILES)
    cells = {(o["profile"], o["strategy"]): o for o in doc["outcomes"]}
    assert cells[("linux-5.14", "mincore-and")]["lost"] == 4
    assert cells[("pte-marker-rfc", "mincore-and")]["lost"] == 0
    assert cells[("linux-6.18", "lseek")]["lost"] == 0
    lost = cells[("linux-5.14", "mincore-and")]["lost_pages"]
    assert {p["offset"] for p in lost} == {0, 4096, 8192, 12288}
    assert all(o["ptes_walked"] > 0 for o in doc["outcomes"])


def test_a_failed_expectation_exits_1_naming_file_line_expected_found(tmp_path):
    f = tmp_path / "mine.scn"
    f.write_text("task A\nmmap A s 4 shared\nwrite A s all\nfork A B\nmunmap A s\ndump A\n"
                 "expect lost pagemap linux-6.18 = 0\nexpect view B s mincore * = \"0000\"\n")
    r = CliRunner().invoke(main, ["replay", str(f), "--kernel", "linux-6.18"])
    assert r.exit_code == 1
    assert f"{f}:7: " in r.output and "expected 0 pages lost, found 4" in r.output
    assert f"{f}:8: " in r.output and "expected mincore '0000', found '1111'" in r.output


def test_a_users_kernel_profile_replays_without_editing_dumper(tmp_path):
    """"Would my change lose data?": a profile in which fork copied shmem PTEs makes the
    pagemap strategy keep scenario 2's pages only if the parent's PTEs survived... it does
    not: munmap drops them — the table says so."""
    prof = tmp_path / "leave_marker.py"
    prof.write_text(
        "from dataclasses import replace\n"
        "from dumper.model.kernels import LINUX_6_18\n"
        "PROFILE = replace(LINUX_6_18, name='marker-everywhere', shmem_pageout_marker=True,\n"
        "                  pagemap_pagecache_lookup=True)\n")
    r = run("replay", "1", "4", "--kernel", str(prof), "--strategy", "pagemap")
    assert r.exit_code == 0, r.output
    assert "marker-everywhere" in r.output
    assert r.output.count("ok") >= 2


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="Debian's chromium is not installed (CI installs it)")
def test_html_report_renders_in_headless_chromium(tmp_path):
    assert CHROMIUM, "chromium missing in CI"
    out = tmp_path / "r.html"
    r = run("replay", "1", "12", "--format", "html", "-o", str(out))
    assert r.exit_code == 0
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp_path / 'ud'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", out.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    # The page's script counts what the browser rendered: one picture per task region per
    # profile, and every page square in them.
    pictures = out.read_text().count('<svg class="pages"')
    assert pictures >= 8
    assert f'data-rendered="{pictures}"' in dom, dom[-300:]
    assert 'data-grids="2"' in dom  # each scenario's matrix and panels: one CSS grid
    assert dom.count('<table class="matrix">') == 2
    assert 'class="page dump-lost"' in dom and 'class="page state-S"' in dom
    # A table of contents whose every link lands on a section of the page.
    toc = re.search(r'<nav id="toc">(.*?)</nav>', dom).group(1)
    targets = re.findall(r'href="#([^"]+)"', toc)
    assert targets == ["fork-unmap-after-swapout", "classify-by-combination", "cost"]
    assert all(f'id="{t}"' in dom for t in targets)
    # Thread references link to their entries in docs/thread.md; the series to lore.
    doc = (Path(__file__).parents[1] / "docs" / "thread.md").read_text()
    refs = re.findall(r'href="[^"]*thread\.md#([^"]+)"', dom)
    assert {"david-2021-08-17b", "david-2021-08-19", "tiberiu-2021-08-25a"} <= set(refs)
    assert all(f'<a id="{x}"></a>' in doc for x in refs)
    assert ('href="https://lore.kernel.org/all/20210807032521.7591-1-peterx@redhat.com/"'
            in dom)
    # Okabe-Ito fills only, and the state in a glyph too; lost pages hatched.
    okabe_ito = {"#0072B2", "#56B4E9", "#F0E442", "#E69F00", "#CC79A7", "#009E73", "#eeeeee",
                 "#ffffff", "#555555", "url(#lost)"}
    assert set(re.findall(r'<rect class="page [^"]*"[^>]* fill="([^"]+)"', dom)) <= okabe_ito
    assert re.search(r'class="page state-S"[^>]*>.*?</rect><text class="glyph"[^>]*>S</text>',
                     dom)
    assert 'class="page dump-lost"' in dom and 'fill="url(#lost)"' in dom
    # Page numbers under the strips; whose state the first row is; identical profiles folded.
    assert dom.count('<text class="tick"') >= 8 * pictures
    assert "object's page" in dom
    folded = re.findall(r'<p class="folded">(\d) profiles behave identically here: ([^<]+)</p>',
                        dom)
    assert folded and all(int(n) == len(names.split(", ")) for n, names in folded)
    # The cost of looking, as the terminal prints it.
    cost = re.search(r'<table class="cost">(.*?)</table>', dom).group(1)
    assert cost.count("<tr>") == 1 + 6 and "pages</td>" in cost
    png = tmp_path / "r.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={png}", "--window-size=1200,900",
                    out.as_uri()], capture_output=True, timeout=120)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_shrink_finds_the_smallest_losing_program():
    text = ("scenario big\nswap on\ntask A\nmmap A x 3\nwrite A x 0-2\nmemfd A m 4\n"
            "pwrite A m 0-3\nmmap A s 4 shared fd=m\nread A s 0\nzap A s 0-3\nfork A B\n"
            "write A x 1\ndump A\n")
    prof = PROFILES["linux-6.18"]
    assert ex.lost_pages(text, prof, "pagemap") == 4
    small = ex.shrink(text, lambda t: ex.lost_pages(t, prof, "pagemap") > 0)
    ops = [x for x in small.splitlines() if x.split()[0] not in ("scenario", "swap", "task",
                                                                  "dump")]
    assert ops == ["memfd A m 4", "pwrite A m 0-3", "mmap A s 4 shared fd=m"]


def test_explore_cli_reports_and_prints_replayable_scenarios(tmp_path):
    r = run("explore", "--seed", "1", "--count", "10", "--depth", "10", "--kernel",
            "linux-6.18", "-o", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert r.output.startswith("checked 10 programs (60 dumps restored and verified)")
    written = sorted(tmp_path.glob("explore-*.scn"))
    assert written
    replayed = run("replay", *map(str, written), "--kernel", "linux-6.18")
    assert replayed.exit_code == 0, replayed.output  # each file's expect line holds


def test_exhaustive_mode_counts_programs():
    progs = list(ex.exhaustive_programs(1))
    assert len(progs) == 1 + len(ex.ALPHABET)
    r = run("explore", "--exhaustive", "--depth", "1", "--kernel", "linux-6.18",
            "--strategy", "auto", "--strategy", "lseek")
    assert r.exit_code == 0
    assert r.output.startswith(f"checked {len(progs)} programs")


def test_explore_exits_1_when_a_must_not_lose_strategy_loses(monkeypatch):
    monkeypatch.setattr(ex, "MUST_NOT_LOSE", ("pagemap",))
    prof = PROFILES["linux-6.18"]
    seed = next(s for s, text in ex.random_programs(1, 60, 10)
                if ex.lost_pages(text, prof, "pagemap") > 0)  # the generator's first loser
    r = run("explore", "--seed", str(seed), "--count", "1", "--depth", "10", "--kernel",
            "linux-6.18", "--strategy", "pagemap")
    assert r.exit_code == 1
    assert "pagemap under linux-6.18 lost data" in r.output
