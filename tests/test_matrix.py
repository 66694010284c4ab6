"""Expression matrices a user brings (CSV, TSV, GCT): what is refused, and where the message points."""

from __future__ import annotations

import numpy as np
import pytest

from leukspark.errors import GeoFormatError, InputError
from leukspark.matrix import read_matrix


def write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def refusal(path, error=GeoFormatError) -> str:
    """The message of the error read_matrix raises, with the file's path cut out (it must be named)."""
    with pytest.raises(error) as caught:
        read_matrix(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    return message.replace(str(path), "<file>")


@pytest.mark.parametrize("token", ["inf", "1e400", "-Infinity", "Inf"])
@pytest.mark.parametrize("name, sep", [("m.csv", ","), ("m.tsv", "\t")])
def test_infinite_values_are_refused_naming_sample_probe_and_line(tmp_path, token, name, sep):
    text = "\n".join(sep.join(row) for row in [["gene", "S1", "S2"], ["TP53", "1.5", "2"],
                                                 ["MPO", "3", token], ["CD19", "4", "5"]])
    message = refusal(write(tmp_path, name, text + "\n"))
    assert "sample S2" in message and "line 3" in message and "probe MPO" in message
    assert f"{token!r} is infinite" in message


def test_infinite_value_in_a_gct_is_refused_like_in_a_csv(tmp_path):
    text = "#1.2\n2\t2\nName\tDescription\tS1\tS2\nTP53\tna\t1\t2\nMPO\tna\t1e400\t2\n"
    message = refusal(write(tmp_path, "m.gct", text))
    assert "sample S1" in message and "line 5" in message and "probe MPO" in message and "infinite" in message


def test_a_repeated_sample_column_is_refused_not_renamed(tmp_path):
    message = refusal(write(tmp_path, "m.csv", "gene,S1,S2,S1\nTP53,1,2,3\n"))
    assert "line 1" in message and "'S1'" in message and "columns 2 and 4" in message


@pytest.mark.parametrize("dimensions, complaint", [
    ("3\t2", "declares 3 rows, but the file holds 2"),
    ("2\t3", "declares 3 samples, but the file holds 2"),
    ("two\t2", "must be two integers"),
    ("2", "must be two integers"),
])
def test_gct_dimension_line_must_agree_with_the_body(tmp_path, dimensions, complaint):
    text = f"#1.2\n{dimensions}\nName\tDescription\tS1\tS2\nTP53\tna\t1\t2\nMPO\tna\t3\t4\n"
    message = refusal(write(tmp_path, "m.gct", text))
    assert message.startswith("<file>: line 2:") and complaint in message


def test_a_consistent_gct_reads_without_its_description_column(tmp_path):
    text = "#1.2\n2\t2\nName\tDescription\tS1\tS2\nTP53\tna\t1\t2\nMPO\tna\t3\tNA\n"
    frame = read_matrix(write(tmp_path, "m.gct", text))
    assert list(frame.columns) == ["S1", "S2"] and list(frame.index) == ["TP53", "MPO"]
    assert frame.loc["MPO", "S1"] == 3.0 and np.isnan(frame.loc["MPO", "S2"])


@pytest.mark.parametrize("body, line, fields", [
    ("TP53,1,2\nMPO,3\n", 3, 2),          # short rows were filled with NaN
    ("TP53,1,2\n\nMPO,3,4,5\n", 4, 4),    # blank lines still count for the line number
])
def test_a_ragged_row_is_refused_naming_its_line(tmp_path, body, line, fields):
    message = refusal(write(tmp_path, "m.csv", "gene,S1,S2\n" + body))
    assert f"line {line}: {fields} fields" in message and "has 3" in message


@pytest.mark.parametrize("text, complaint", [("", "empty"), ("gene,S1,S2\n", "no data rows"),
                                             ("gene\nTP53\n", "no sample columns")])
def test_empty_matrices_are_refused(tmp_path, text, complaint):
    assert complaint in refusal(write(tmp_path, "m.csv", text))


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig"])
def test_a_matrix_with_a_byte_order_mark_is_decoded(tmp_path, encoding):
    frame = read_matrix(write(tmp_path, "m.csv", "gene,S1,S2\nTP53,1,2\n", encoding))
    assert list(frame.columns) == ["S1", "S2"] and frame.loc["TP53"].tolist() == [1.0, 2.0]


def test_utf16_without_a_byte_order_mark_and_latin1_are_refused(tmp_path):
    assert "UTF-16" in refusal(write(tmp_path, "a.csv", "gene,S1\nTP53,1\n", "utf-16-le"))
    latin = tmp_path / "b.csv"
    latin.write_bytes("gene,S1\nCD\xe9,1\n".encode("latin-1"))
    assert "not UTF-8" in refusal(latin, InputError)


@pytest.mark.parametrize("text, encoding, complaint", [
    ("gene,S1,S2\nTP53,1,2\nMPO,3\n", "utf-8", "line 3: 2 fields"),
    ("", "utf-8", "the file is empty"),
    ("gene,S1,S2\nTP53,1,2\n", "utf-16-le", "UTF-16"),
])
def test_predict_refuses_a_bad_matrix_in_one_line_before_opening_the_lake(tmp_path, capsys, text, encoding,
                                                                          complaint):
    from leukspark.cli import main

    path = write(tmp_path, "new_samples.csv", text, encoding)
    assert main(["predict", str(path), "--lake", str(tmp_path / "no_lake")]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"leukspark predict: error: {path}") and error.count("\n") == 1 and complaint in error
