"""Bad input is a clear error (exit code 2) before any engine starts, and nothing is written."""

from __future__ import annotations

import os

import pytest

from sigray.cli import main

GOOD = "timestamp,value\n" + "".join(f"{1400000000 + 300 * i},{i % 7}\n" for i in range(20000))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", "", "the file is empty"),
        ("header_only.csv", "timestamp,value\n", "has no rows"),
        ("wrong_columns.csv", "time,val\n1,2\n", "needs columns 'timestamp' and 'value'"),
        ("text_value.csv", "timestamp,value\n1,2\n2,abc\n", "'value' row 3 is not a number"),
        ("nan_value.csv", "timestamp,value\n1,2\n2,\n", "'value' row 3 is NaN"),
        ("inf_value.csv", "timestamp,value\n1,2\n2,inf\n", "'value' row 3 is NaN, empty or infinite"),
        ("duplicate_ts.csv", "timestamp,value\n1,2\n1,3\n", "duplicate timestamp at row 3"),
        ("unsorted_ts.csv", "timestamp,value\n5,2\n3,3\n", "timestamps are not sorted (row 3"),
        ("bad_date.csv", "timestamp,value\n2020-01-01,2\nsoon,3\n", "row 3 ('soon') is neither"),
        ("short.csv", "timestamp,value\n" + "".join(f"{i * 300},{i}\n" for i in range(100)), "too short for one"),
    ],
)
def test_bad_signal_files_are_refused_before_any_engine_starts(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    store = tmp_path / "store"
    code = main(["run", str(path), "--store", str(store), "--engine", "test-double"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert not store.exists()


def test_a_missing_file_is_named(tmp_path, capsys):
    missing = tmp_path / "nope.csv"
    assert main(["run", str(missing), "--store", str(tmp_path / "s"), "--engine", "test-double"]) == 2
    assert f"{missing}: no such file" in capsys.readouterr().err


def test_a_store_path_that_is_a_file_is_refused(tmp_path, capsys):
    signal, store = tmp_path / "ok.csv", tmp_path / "store"
    signal.write_text(GOOD)
    store.write_text("not a directory")
    assert main(["run", str(signal), "--store", str(store), "--engine", "test-double"]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert store.read_text() == "not a directory"


def test_unknown_pipelines_and_engines_are_named(tmp_path, capsys):
    signal = tmp_path / "ok.csv"
    signal.write_text(GOOD)
    assert main(["run", str(signal), "--store", str(tmp_path / "s"), "--pipeline", "nope"]) == 2
    assert "unknown pipeline 'nope'; sigllm ships:" in capsys.readouterr().err
    assert main(["run", str(signal), "--store", str(tmp_path / "s"), "--engine", "nope"]) == 2
    assert "unknown engine 'nope'" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "s")


def test_a_model_that_cannot_be_found_is_refused_before_ray_starts(tmp_path, capsys):
    import ray

    signal = tmp_path / "ok.csv"
    signal.write_text(GOOD)
    code = main(["run", str(signal), "--store", str(tmp_path / "s"), "--model", str(tmp_path / "no-model")])
    assert code == 2
    assert "no-model" in capsys.readouterr().err
    assert not ray.is_initialized()
    assert not os.path.exists(tmp_path / "s")
