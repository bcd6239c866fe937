"""Re-measuring one bench section replaces that section only: the other sections and the
notes written by hand around them survive, and a file that is not ours is never written."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fm_spark import bench
from fm_spark.bench.report import TITLE, ReportError, begin_marker, end_marker, merge

TOY = """
import os

def run(device="cpu", quick=False):
    if os.environ.get("TOY_FAIL"):
        raise RuntimeError("the toy section died")
    return "## {name}\\n\\nvalue " + os.environ.get("TOY_VALUE", "0") + "\\n"
"""


@pytest.fixture
def toy_sections(tmp_path, monkeypatch):
    """Two tiny sections ("a", "b") run through the real ``main``."""
    for name in ("a", "b"):
        (tmp_path / f"toy_section_{name}.py").write_text(TOY.replace("{name}", name.upper()))
        monkeypatch.setitem(bench.SECTIONS, name, f"toy_section_{name}")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("a", "b"):
        sys.modules.pop(f"toy_section_{name}", None)


def test_a_new_file_gets_the_title_and_each_section_between_its_markers():
    text = merge(None, {"a": "## A\n\nvalue 1"})
    assert text.startswith(TITLE)
    assert f"{begin_marker('a')}\n## A\n\nvalue 1\n{end_marker('a')}" in text


def test_remeasuring_one_section_keeps_the_others_and_the_notes_by_hand():
    first = merge(None, {"a": "## A\n\nvalue 1", "b": "## B\n\nvalue 1"})
    noted = first.replace(end_marker("a"), end_marker("a") + "\n\n> a note by hand on A")
    second = merge(noted, {"a": "## A\n\nvalue 2"})
    assert "value 2" in second and "value 1" in second.split(end_marker("a"))[1]
    assert "> a note by hand on A" in second
    assert second.count(begin_marker("a")) == 1
    assert second.index(end_marker("a")) < second.index(begin_marker("b"))


def test_a_section_never_written_before_is_appended():
    text = merge(f"{TITLE}\n\nnotes\n", {"b": "## B"})
    assert text.index("notes") < text.index(begin_marker("b"))


def test_a_foreign_file_or_broken_markers_are_refused():
    with pytest.raises(ReportError, match="not an fm-spark benchmarks file"):
        merge("# my own notes\n", {"a": "## A"})
    broken = f"{TITLE}\n{begin_marker('a')}\n## A\n"  # no end marker
    with pytest.raises(ReportError, match="markers of section 'a'"):
        merge(broken, {"a": "## A"})


def test_main_replaces_only_the_sections_it_runs(toy_sections, monkeypatch):
    out = toy_sections / "BENCH.md"
    monkeypatch.setenv("TOY_VALUE", "1")
    assert bench.main(["--sections", "a,b", "--out", str(out)]) == 0
    out.write_text(out.read_text() + "\n> a note by hand\n")
    monkeypatch.setenv("TOY_VALUE", "2")
    assert bench.main(["--sections", "b", "--out", str(out)]) == 0
    text = out.read_text()
    a_block = text.split(begin_marker("a"))[1].split(end_marker("a"))[0]
    b_block = text.split(begin_marker("b"))[1].split(end_marker("b"))[0]
    assert "value 1" in a_block and "value 2" in b_block
    assert "> a note by hand" in text
    # Each block says how it was measured, under its own heading.
    assert b_block.strip().startswith("## B\n\n_Measured ")
    assert "--sections b" in b_block and "--sections a,b" in a_block


def test_main_refuses_a_foreign_file_before_measuring(toy_sections, monkeypatch):
    out = toy_sections / "notes.md"
    out.write_text("# my own notes\n")
    monkeypatch.setenv("TOY_FAIL", "1")  # would raise if the section ran
    with pytest.raises(SystemExit):
        bench.main(["--sections", "a", "--out", str(out)])
    assert out.read_text() == "# my own notes\n"


def test_a_section_that_dies_leaves_the_file_as_the_last_section_left_it(toy_sections, monkeypatch):
    out = toy_sections / "BENCH.md"
    bench.main(["--sections", "a,b", "--out", str(out)])
    before = out.read_text()
    monkeypatch.setenv("TOY_FAIL", "1")
    with pytest.raises(RuntimeError, match="toy section died"):
        bench.main(["--sections", "a", "--out", str(out)])
    assert out.read_text() == before
    assert sorted(p.name for p in Path(toy_sections).glob(".BENCH.md*")) == []
