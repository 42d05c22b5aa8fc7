"""``csv_text``: the run directory's tables in exactly the text ``DataFrame.to_csv`` writes,
formatted a column at a time (and by pandas itself for columns it does not format)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from profiler.collect.writer import csv_text


def _pandas(df: pd.DataFrame) -> str:
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    return buf.getvalue()


def test_numbers_and_text_match_pandas_including_quoting_and_missing_values():
    df = pd.DataFrame({
        "ts_us": [4607700843595.125, np.nan, 1e16, -0.0, 1e-7, np.inf, 0.1 + 0.2, 2.0],
        "name": ["aten::mm", 'odd "name"', None, "a,b", "two\nlines", "", "cr\rhere", "x"],
        "bytes": np.array([1, -2, 3, 2**62, 0, 5, 6, 7], dtype=np.int64),
        "role": pd.array(["weight", None, "x", "y", "z", "w", "v", "u"], dtype="string"),
        "count": np.arange(8, dtype=np.uint32),
    })
    text = csv_text(df, ["ts_us", "name", "bytes"])
    assert text == _pandas(df)
    assert text.splitlines()[2] == ',"odd ""name""",-2,,1'  # NaN and None are empty cells


@pytest.mark.parametrize("extra", [
    {"flag": [True, False, True]},                      # bool: pandas' rules
    {"mixed": ["a", 3, None]},                         # numbers in a text column
    {"when": pd.to_datetime(["2026-01-01", "2026-01-02", None])},
])
def test_other_columns_fall_back_to_pandas(extra):
    df = pd.DataFrame({"a": [1.5, 2.5, np.nan], **extra})
    assert csv_text(df, ["a"]) == _pandas(df)


def test_column_order_missing_columns_and_empty_tables():
    df = pd.DataFrame({"b": [1, 2], "extra": ["p", "q"], "a": [0.5, 1.5]})
    assert csv_text(df, ["a", "b", "c"]) == "a,b,c,extra\n0.5,1,,p\n1.5,2,,q\n"
    assert csv_text(df.iloc[0:0], ["a", "b"]) == _pandas(df.iloc[0:0][["a", "b", "extra"]])
    assert csv_text([], ["x", "y"]) == "x,y\n"
    assert csv_text([{"y": 1}, {"x": "s", "z": 2.0}], ["x", "y"]) == \
        _pandas(pd.DataFrame([{"y": 1}, {"x": "s", "z": 2.0}])[["x", "y", "z"]])


def test_steps_rows_appended_as_values_read_as_written(tmp_path):
    from profiler.collect.writer import RowAppender, csv_cell

    rows = [(0, "warmup", 1.5, float("nan"), None, float("inf"), 3, "a,b"),  # plain: as is
            (1, "measured", np.float32(0.1), True, np.int64(7), -float("inf"), None, 'q"')]
    appender = RowAppender(tmp_path / "steps.csv", list("abcdefgh"))
    appender.add_values(rows)
    assert appender.flush(sync=False) == 2
    appender.close()
    expected = io.StringIO()
    pd.DataFrame([[csv_cell(v) for v in r] for r in rows], columns=list("abcdefgh")).to_csv(
        expected, index=False, lineterminator="\n")
    assert (tmp_path / "steps.csv").read_text() == expected.getvalue()
    assert expected.getvalue().splitlines()[1:] == [
        '0,warmup,1.5,nan,,inf,3,"a,b"', '1,measured,0.10000000149011612,1,7,-inf,,"q"""']
