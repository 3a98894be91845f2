"""Bad input is a clear error (exit code 2) before any engine starts, and nothing is written."""

from __future__ import annotations

import json
import os

import pytest

from sigray.cli import main
from tests.conftest import prepare_without_engine

ROLLING = "mlstars.custom.timeseries_preprocessing.rolling_window_sequences#1"
AGGREGATE = "mlstars.custom.timeseries_preprocessing.time_segments_aggregate#1"
FORMAT_AS_INTEGER = "sigllm.primitives.transformation.format_as_integer#1"
HF = "sigllm.primitives.forecasting.huggingface.HF#1"
GOOD = "timestamp,value\n" + "".join(f"{1400000000 + 300 * i},{i % 7}\n" for i in range(20000))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", "", "the file is empty"),
        ("header_only.csv", "timestamp,value\n", "has no rows"),
        ("wrong_columns.csv", "time,val\n1,2\n", "needs columns 'timestamp' and 'value'"),
        ("text_value.csv", "timestamp,value\n1,2\n2,abc\n", "'value' row 3 ('abc'): not a number"),
        ("nan_value.csv", "timestamp,value\n1,2\n2,\n", "'value' row 3: NaN"),
        ("inf_value.csv", "timestamp,value\n1,2\n2,inf\n", "'value' row 3: NaN, empty or infinite"),
        ("bad_date.csv", "timestamp,value\n2020-01-01,2\nsoon,3\n", "row 3 ('soon'): neither"),
        ("short.csv", "timestamp,value\n" + "".join(f"{i * 300},{i}\n" for i in range(100)), "too short for one"),
        ("one_row.csv", "timestamp,value\n1400000000,5\n", "too short for one window"),
        ("semicolons.csv", "timestamp;value\n1;2\n2;3\n", "missing ['timestamp', 'value'], found ['timestamp;value']"),
        ("huge.csv", GOOD.replace(",3\n", ",3e300\n", 1), "past int64's 9.22e+18"),
        ("negative_huge.csv", GOOD.replace(",5\n", ",-2e17\n", 1), "past int64's 9.22e+18"),
        ("nan_timestamp.csv", "timestamp,value\n1,2\n,3\n", "'timestamp' has empty cells (row 3)"),
        ("binary.csv", bytes(range(256)) * 20, "not a readable CSV file"),
        ("text_timestamp.csv", GOOD.replace("1400001200,", "abc,", 1), "'timestamp' row 6 ('abc'): not a number"),
        ("extra_field.csv", GOOD.replace("\n", ",7\n").replace(",7\n", "\n", 1), "more fields than the header"),
    ],
)
def test_bad_signal_files_are_refused_before_any_engine_starts(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
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
    err = capsys.readouterr().err
    assert "unknown pipeline 'nope'." in err and "sigllm ships: gpt_detector, gpt_prompter, mistral_detector," in err
    assert main(["run", str(signal), "--store", str(tmp_path / "s"), "--pipeline", "mistral_detecor"]) == 2
    assert "Did you mean 'mistral_detector'?" in capsys.readouterr().err
    assert main(["run", str(signal), "--store", str(tmp_path / "s"), "--pipeline", "mistral_prompter_0shoot"]) == 2
    assert "Did you mean 'mistral_prompter_0shot'?" in capsys.readouterr().err
    assert main(["run", str(signal), "--store", str(tmp_path / "s"), "--engine", "nope"]) == 2
    assert "unknown engine 'nope'" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "s")


def test_a_model_that_cannot_be_found_is_refused_before_ray_starts(tmp_path, capsys, ray_must_not_start):
    signal = tmp_path / "ok.csv"
    signal.write_text(GOOD)
    code = main(["run", str(signal), "--store", str(tmp_path / "s"), "--model", str(tmp_path / "no-model")])
    assert code == 2
    assert "no-model" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "s")


def _run_cli(tmp_path, *args: str) -> int:
    return main(["run", *args, "--engine", "test-double"])


def test_a_directory_given_as_a_signal_is_named(tmp_path, capsys):
    assert _run_cli(tmp_path, str(tmp_path), "--store", str(tmp_path / "s")) == 2
    assert "is a directory, not a CSV file" in capsys.readouterr().err


def test_bad_settings_are_named_before_anything_is_written(tmp_path, capsys):
    signal = tmp_path / "ok.csv"
    signal.write_text(GOOD)
    store = str(tmp_path / "s")
    cases = [
        (["--max-attempts", "0"], "invalid run configuration: max_attempts=0"),
        (["--param", "no.such.block#1.x=1"], "pipeline has no block 'no.such.block#1'"),
        (["--normal", str(signal)], "takes no normal reference signal"),
        (["--pipeline", "mistral_prompter_1shot"], "needs a normal reference signal"),
        (["--fix-error-units", "--pipeline", "mistral_detector_kmeans"], "fix_error_units applies to"),
        (
            [
                "--pipeline",
                "multivariate_mistral_detector_jsonformat",
                "--param",
                "sigllm.primitives.formatting.json_format.format_as_integer#1.trunc=null",
            ],
            "sigray needs trunc",
        ),
        (["--engine-option", "foo=1"], "engine 'test-double' takes no option 'foo'"),
        (["--engine-option", "delay_s=soon"], "engine option delay_s='soon' must be float"),
        (["--engine-option", "base_url"], "expected key=value, got 'base_url'"),
        (["--param", "window_size_portion=0.5"], "--param needs block.param=value"),
        ([f"--param={ROLLING}.window_size=0"], f"--param {ROLLING}.window_size=0: expected an integer >= 1"),
        ([f"--param={ROLLING}.window_size=-5"], f"--param {ROLLING}.window_size=-5: expected an integer >= 1"),
        ([f"--param={AGGREGATE}.interval=0"], f"--param {AGGREGATE}.interval=0: expected an integer >= 1"),
        ([f"--param={FORMAT_AS_INTEGER}.trunc=0"], f"--param {FORMAT_AS_INTEGER}.trunc=0: expected an integer >= 1"),
        ([f"--param={FORMAT_AS_INTEGER}.trunc=1000000"], "trunc=1000000: more values per answer than a window has"),
        ([f"--param={HF}.steps=0"], f"--param {HF}.steps=0: expected an integer >= 1"),
    ]
    for extra, message in cases:
        assert _run_cli(tmp_path, str(signal), "--store", store, *extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)
    assert not os.path.exists(store)


def test_bad_settings_in_a_pipeline_json_are_named_as_its_own_before_anything_is_written(tmp_path, capsys):
    """A pipeline file's init_params are checked as --param is (MLBlocks' own error is a TypeError
    deep inside, or worse, a run that fails after its windows)."""
    from sigray.pipelines.sigllm_pipeline import load_pipeline_spec

    signal = tmp_path / "ok.csv"
    signal.write_text(GOOD)
    store = str(tmp_path / "s")
    cases = [
        ({ROLLING: {"window_size": "100"}}, f'init_params {ROLLING}.window_size="100": expected an integer'),
        ({FORMAT_AS_INTEGER: {"trunc": 0}}, f"init_params {FORMAT_AS_INTEGER}.trunc=0: expected an integer >= 1"),
        (
            {ROLLING: {"widow_size": 100}},
            f"init_params {ROLLING}.widow_size: the primitive has no parameter 'widow_size'. Did you mean",
        ),
    ]
    stock = load_pipeline_spec("mistral_detector")
    misspelled = [p.replace("time_segments_aggregate", "time_segments_agregate") for p in stock["primitives"]]
    shapes = [  # the pipeline itself malformed: MLBlocks' KeyError or AttributeError, or a typo ignored
        ({**stock, "init_params": [1, 2]}, "init_params must map blocks to mappings"),
        ({**stock, "init_params": {ROLLING: [100]}}, "init_params must map blocks to mappings"),
        (
            {**stock, "init_params": {ROLLING[:-1] + "2": {"window_size": 9}}},
            f"init_params names block '{ROLLING[:-1]}2'",
        ),
        (
            {**stock, "init_params": {"orion.primitives.timeseries_anomalies.find_anomalie#1": {"fixed_threshold": 0}}},
            "init_params names block 'orion.primitives.timeseries_anomalies.find_anomalie#1'",
        ),
        ({**stock, "primitives": misspelled}, "unknown primitive 'mlstars.custom.timeseries_preprocessing.time_se"),
        ({}, "expected sigllm's pipeline JSON, a mapping with a list of 'primitives'"),
    ]
    for init_params, message in cases + shapes:
        if "primitives" in init_params or not init_params:
            spec = init_params
        else:
            spec = load_pipeline_spec("mistral_detector")
            for block, values in init_params.items():
                spec["init_params"].setdefault(block, {}).update(values)
        path = tmp_path / "mine.json"
        path.write_text(json.dumps(spec))
        assert _run_cli(tmp_path, str(signal), "--store", store, "--pipeline", str(path)) == 2, init_params
        err = capsys.readouterr().err
        assert f"pipeline {str(path)!r}: {message}" in err and "Traceback" not in err, (init_params, err)
    assert not os.path.exists(store)


def test_irregular_sampling_and_unicode_paths_are_accepted(tmp_path):
    """sigllm aggregates to a fixed interval (time_segments_aggregate): gaps and jitter are its job."""
    from sigray.config import RunConfig
    from sigray.plan import make_plan

    rows = [(1400000000 + 300 * i + (i % 7) * 13, i % 11) for i in range(20000) if i % 50 != 0]
    folder = tmp_path / "données_温度"
    folder.mkdir()
    signal = folder / "capteur_é.csv"
    signal.write_text("timestamp,value\n" + "".join(f"{t},{v}\n" for t, v in rows))
    plan = make_plan(RunConfig(store=str(folder / "magasin"), engine="test-double"), [str(signal)])
    assert plan.plans[0].signal.name == "capteur_é" and plan.plans[0].n_windows > 0


def _hashes(root) -> dict:
    import hashlib

    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                found[os.path.join(folder, name)] = hashlib.sha256(f.read()).hexdigest()
    return found


@pytest.mark.parametrize("new", [False, True], ids=["resume", "--new"])
def test_bad_input_against_an_existing_store_changes_nothing_in_it(tmp_path, capsys, new):
    """Every refusal comes before anything is written; with --new, before anything is deleted."""
    good, bad, store = tmp_path / "ok.csv", tmp_path / "bad.csv", str(tmp_path / "store")
    good.write_text(GOOD)
    bad.write_text("timestamp,value\n1,2\n2,\n")
    prepare_without_engine(store, [str(good)])
    before = _hashes(store)
    flag = ["--new"] if new else []
    cases = [
        ([str(bad)], "'value' row 3: NaN"),
        ([str(tmp_path / "sgi.csv")], "sgi.csv: no such file"),  # a typo in the signal's path
        ([str(good), "--pipeline", "mistral_detecor"], "unknown pipeline 'mistral_detecor'"),
        ([str(good), "--max-attempts", "0"], "invalid run configuration"),
        ([str(good), "--param", "no.such.block#1.x=1"], "pipeline has no block"),
    ]
    if not new:
        cases.append(([str(good), "--seed", "3"], "holds another run"))
    for args, message in cases:
        assert _run_cli(tmp_path, *args, "--store", store, *flag) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)
        assert _hashes(store) == before, args
    model = ["run", str(good), "--store", store, "--model", str(tmp_path / "no-model"), *flag]
    assert main(model) == 2 and "no-model" in capsys.readouterr().err
    engine = ["run", str(good), "--store", store, "--engine", "no_such_module:Engine", *flag]
    assert main(engine) == 2 and "cannot import engine" in capsys.readouterr().err
    assert _hashes(store) == before


def test_a_store_on_a_read_only_file_system_is_a_clear_error(tmp_path, capsys):
    """Root ignores file permissions; a read-only mount refuses everyone."""
    import subprocess

    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {done.stderr.decode().strip()}")
    try:
        signal = tmp_path / "ok.csv"
        signal.write_text(GOOD)
        assert _run_cli(tmp_path, str(signal), "--store", str(mount / "store")) == 2
        err = capsys.readouterr().err
        assert "cannot write to store" in err and "Read-only file system" in err and "Traceback" not in err
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_trailing_comma_on_every_row_reads_as_the_same_signal(tmp_path):
    """Spreadsheets write it; pandas' default would turn the first column into an index."""
    from sigray.signals import load_signal

    clean, trailing = tmp_path / "clean.csv", tmp_path / "trailing.csv"
    clean.write_text(GOOD)
    trailing.write_text(GOOD.replace("\n", ",\n"))
    assert load_signal(str(trailing), name="s").digest() == load_signal(str(clean), name="s").digest()
