"""Counts and nesting a cell may hold are bounded, and refused at their line and column at once (no
Ray: these fail before anything connects)."""
from __future__ import annotations

import time

import pytest

from byzer_magic.errors import ByzerError
from byzer_magic.language.parser import parse_cell
from byzer_magic.language.session import Session


def test_deeply_nested_brackets_are_refused_fast():
    started = time.time()
    with pytest.raises(ByzerError, match=r"line 1, column 264: brackets nest more than 256 deep"):
        parse_cell("select " + "(" * 100_000 + "1" + ")" * 100_000 + " as x;")
    assert time.time() - started < 2
    assert len(parse_cell("select " + "(" * 50 + "1" + ")" * 50 + " as x;")) == 1


def test_a_huge_partition_count_is_refused_before_any_table_is_read():
    session = Session(connect=lambda: pytest.fail("must not connect"))
    with pytest.raises(ByzerError, match=r"line 1, column 36: partitionNum must be a whole number from 1 to "
                                         r"1,000,000, got 99999999999999999999"):
        session.run_cell('run t as TableRepartition.`` where partitionNum="99999999999999999999" as u;')
