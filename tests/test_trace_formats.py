"""Trace formats: each fixture (a few rows in the published layout) loads to the hand-computed arrivals and tokens;
bad files exit 2 with one line naming the file, the line and what is wrong."""

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from inferencepool import cli as main_cli
from inferencepool.simulate import cli, formats
from inferencepool.simulate import trace as tr

FIXTURES = Path(__file__).parent / "fixtures" / "traces"

# file, load() keywords, arrivals (s since the first request), prompt tokens, output tokens: worked out by hand
CASES = {
    "azure-2023": ("azure-2023.csv", {}, [0, 4.314579, 4.314579, 14.51941], [374, 396, 879, 91], [44, 109, 29, 1]),
    # 2024: UTC offsets, and the first stamp has no fraction (as the real file mixes both)
    "azure-2024": ("azure-2024.csv", {}, [0, 0.041683, 0.157988, 2.5], [1452, 584, 862, 1569], [3, 3, 38, 104]),
    # timestamp in ms, two pairs of equal stamps, hash_ids ignored
    "mooncake": ("mooncake.jsonl", {}, [0, 0, 3.052, 3.052, 10.535], [6755, 7319, 7234, 2287, 672],
                 [500, 490, 794, 316, 26]),
    # rows at 45 s and 231 s failed (Response tokens 0): dropped; both Log Types kept
    "burstgpt": ("burstgpt.csv", {}, [0, 113, 225], [472, 417, 1360], [18, 276, 185]),
    "columns-csv": ("columns.csv", {"columns": {"time": "ts", "input": "prompt_len", "output": "gen_len"},
                                    "time_unit": "ms"}, [0, 0.25, 2.5], [120, 64, 2048], [30, 12, 256]),
    "columns-jsonl": ("columns.jsonl", {"columns": {"time": "t_us", "input": "prompt", "output": "completion"},
                                        "time_unit": "us"}, [0, 0.25, 2.0], [10, 20, 30], [5, 7, 9]),
}


@pytest.mark.parametrize("case", CASES)
def test_each_format_loads_to_the_hand_computed_rows(case):
    name, keywords, arrivals, prompts, outputs = CASES[case]
    trace = tr.load(FIXTURES / name, **keywords)
    assert trace.arrivals == pytest.approx(arrivals, abs=1e-6)
    assert trace.prompt_tokens.tolist() == prompts and trace.output_tokens.tolist() == outputs
    assert trace.prompt_tokens.dtype == np.int64


@pytest.mark.parametrize("case", CASES)
def test_gzip_is_read_by_its_magic_bytes_whatever_the_name(case, tmp_path):
    name, keywords, arrivals, prompts, _ = CASES[case]
    for target in (tmp_path / (name + ".gz"), tmp_path / name):  # with and without the .gz suffix
        target.write_bytes(gzip.compress((FIXTURES / name).read_bytes()))
        trace = tr.load(target, **keywords)
        assert trace.arrivals == pytest.approx(arrivals, abs=1e-6) and trace.prompt_tokens.tolist() == prompts


def test_the_format_is_sniffed_and_said():
    assert formats.read(FIXTURES / "azure-2024.csv").format == "azure"
    assert formats.read(FIXTURES / "mooncake.jsonl").format == "mooncake"
    burst = formats.read(FIXTURES / "burstgpt.csv")
    assert burst.format == "burstgpt" and burst.notes == ("dropped 2 failed requests (Response tokens 0) of 5",)
    assert "(Mooncake JSONL)" in tr.load(FIXTURES / "mooncake.jsonl").name
    assert tr.load(FIXTURES / "burstgpt.csv").notes == burst.notes


def test_format_override_reads_a_known_layout_as_columns():
    forced = tr.load(FIXTURES / "mooncake.jsonl", format="columns", time_unit="s",
                     columns={"time": "timestamp", "input": "output_length", "output": "input_length"})
    assert forced.arrivals.tolist() == [0, 0, 3052, 3052, 10535]  # read in seconds as told
    assert forced.prompt_tokens.tolist() == [500, 490, 794, 316, 26]


def test_the_servegen_rate_series_is_kept():
    series = formats.read(FIXTURES / "servegen-rate.csv")
    assert isinstance(series, formats.RateSeries)
    assert series.header[:2] == ["window_start_seconds", "rate_rps"]
    assert series.table[:, 1].astype(float).tolist() == [2.0, 1.5, 3.0]
    trace = tr.load(FIXTURES / "servegen-rate.csv", rng=np.random.default_rng(1))
    # ~2.2/s mean over 30 min: about 4,000 requests, as a renewal process at the windows' CVs (1.5-2.1)
    assert 3500 < len(trace) < 4500 and trace.span == pytest.approx(1800, abs=10)
    assert "renewal arrivals" in trace.notes[0]
    gaps = np.diff(trace.arrivals[trace.arrivals < 600])  # the first window: CV 2.1179
    assert gaps.std() / gaps.mean() == pytest.approx(2.1179, rel=0.15)


def test_a_rate_series_without_a_cv_column_is_poisson(tmp_path):
    plain = tmp_path / "rates.csv"
    plain.write_text("window_start_seconds,rate_rps\n0,2.0\n600,2.0\n1200,2.0\n")
    gaps = np.diff(tr.load(plain, rng=np.random.default_rng(1)).arrivals)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.1)


def test_the_cli_replays_a_mooncake_trace(tmp_path, capsys):
    code = cli.main(["--trace", str(FIXTURES / "mooncake.jsonl"), "--policies", "static,oracle", "--quiet",
                     "--json", "--out", str(tmp_path)])
    document = json.loads(capsys.readouterr().out)
    assert code == 0 and document["trace"]["requests"] == 5 and document["trace"]["span_seconds"] == 10.535


def test_the_cli_reads_a_column_map(tmp_path, capsys):
    code = cli.main(["--trace", str(FIXTURES / "columns.csv"), "--columns", "time=ts,input=prompt_len,output=gen_len",
                     "--time-unit", "ms", "--policies", "oracle", "--quiet", "--json", "--out", str(tmp_path)])
    assert code == 0 and json.loads(capsys.readouterr().out)["trace"]["span_seconds"] == 2.5


AZURE = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
MOONCAKE = '{{"timestamp": {}, "input_length": {}, "output_length": {}}}\n'
BURST = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
# name -> (file content, extra flags, what the one error line must say)
BAD = {
    "unknown columns": ("ts,a,b\n1,2,3\n", [], "line 1: unknown columns ts,a,b; expected the columns of a known trace"),
    "non-monotonic": (AZURE + "2023-11-16 18:15:46.5,1,1\n2023-11-16 18:15:47.0,1,1\n2023-11-16 18:15:46.9,1,1\n", [],
                      "line 4: TIMESTAMP goes back in time (2023-11-16T18:15:46.900000 after 2023-11-16T18:15:47"),
    "negative time": (MOONCAKE.format(0, 5, 5) + MOONCAKE.format(-20, 5, 5), [],
                      "line 2: timestamp -20 is negative: a time must be >= 0"),
    "nan tokens": (BURST + "5,ChatGPT,472,18,490,Conversation log\n9,ChatGPT,nan,18,490,API log\n", [],
                   "line 3: Request tokens 'nan' is NaN or empty"),
    "empty cell": (AZURE + "2023-11-16 18:15:46.5,,1\n", [], "line 2: ContextTokens '' is not a number"),
    "nan in json": ('{"timestamp": 0, "input_length": NaN, "output_length": 3}\n', [],
                    "line 1: input_length nan is NaN or empty"),
    "empty": ("", [], "empty file: no header and no requests"),
    "blank lines only": ("\n\n  \n", [], "empty file"),
    "header only": (AZURE, [], "no requests after the header"),
    "truncated row": (AZURE + "2023-11-16 18:15:46.5,10,1\n2023-11-16 18:15:47.5,10\n", [],
                      "line 3: 2 fields where the header has 3 (a truncated or malformed row)"),
    "truncated json": (MOONCAKE.format(0, 5, 5) + '{"timestamp": 10, "input_le', [],
                       "line 2: not JSON (Unterminated string"),
    "fractional tokens": (AZURE + "2023-11-16 18:15:46.5,10.5,1\n", [], "line 2: ContextTokens '10.5' is not a whole number"),
    "bad date": (AZURE + "2023-11-16 18:15:46.5,10,1\nyesterday,10,1\n", [], "line 3: TIMESTAMP 'yesterday' is not a date-time"),
    "missing mapped column": ("ts,prompt,gen\n1,2,3\n", ["--columns", "time=ts,input=prompt_len,output=gen"],
                              "line 1: no column 'prompt_len' for column map; the header has ts,prompt,gen"),
    "missing json key": (MOONCAKE.format(0, 5, 5) + '{"timestamp": 10, "input_length": 4}\n', [],
                         "line 2: no key 'output_length'"),
    "rates out of order": ("window_start_seconds,rate_rps\n0,1\n600,2\n600,3\n", [],
                           "line 4: window_start_seconds 600 does not follow 600"),
    "negative rate": ("window_start_seconds,rate_rps\n0,1\n600,-2\n", [], "line 3: rate_rps '-2' is negative"),
    "all failed": (BURST + "5,ChatGPT,472,0,472,Conversation log\n", [], "every request failed (Response tokens 0)"),
    "wrong format forced": (AZURE + "2023-11-16 18:15:46.5,10,1\n", ["--format", "mooncake"],
                            "line 1: --format mooncake expects JSON lines, this file is CSV"),
}


def _run_bad(entry: str, tmp_path: Path, capsys, main=cli.main, prefix=()) -> str:
    content, flags, _ = BAD[entry]
    path = tmp_path / "trace.txt"
    path.write_text(content)
    with pytest.raises(SystemExit) as stop:
        main([*prefix, "--trace", str(path), *flags, "--policies", "oracle", "--quiet", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert f"error: {path}: " in err, err
    return err


@pytest.mark.parametrize("entry", BAD)
def test_a_bad_file_exits_2_with_one_line_naming_file_line_and_fault(entry, tmp_path, capsys):
    assert BAD[entry][2] in _run_bad(entry, tmp_path, capsys)


@pytest.mark.parametrize("entry", ["non-monotonic", "truncated json", "missing mapped column"])
def test_the_inferencepool_command_says_the_same(entry, tmp_path, capsys):
    assert BAD[entry][2] in _run_bad(entry, tmp_path, capsys, main=main_cli.main, prefix=("simulate",))


@pytest.mark.parametrize("main,prefix", [(cli.main, ()), (main_cli.main, ("simulate",))])
def test_a_truncated_gzip_exits_2(main, prefix, tmp_path, capsys):
    whole = tr.bundled_path().read_bytes()  # the bundled Azure trace, gzipped
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(SystemExit) as stop:
        main([*prefix, "--trace", str(path), "--policies", "oracle", "--quiet", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"{path}: line " in err and "truncated gzip: the file ends before its compressed stream does" in err


@pytest.mark.parametrize("main,prefix", [(cli.main, ()), (main_cli.main, ("simulate",))])
def test_a_missing_file_exits_2(main, prefix, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*prefix, "--trace", str(tmp_path / "nope.csv"), "--quiet", "--out", str(tmp_path)])
    assert stop.value.code == 2 and f"{tmp_path / 'nope.csv'}: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("flags,message", [
    (["--columns", "time=ts,input=p"], "missing output"),
    (["--columns", "when=ts,input=p,output=o"], "'when=ts' is not ROLE=COLUMN"),
    (["--format", "columns"], "--format columns needs --columns"),
    (["--format", "azure", "--columns", "time=a,input=b,output=c"], "--columns names the columns of --format columns"),
    (["--time-unit", "ms"], "--time-unit applies to --columns"),
])
def test_bad_format_flags_exit_2_naming_the_flag(flags, message, tmp_path, capsys):
    shutil.copy(FIXTURES / "columns.csv", tmp_path / "t.csv")
    with pytest.raises(SystemExit) as stop:
        cli.main(["--trace", str(tmp_path / "t.csv"), *flags, "--quiet", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err and err.count("\n") == 1, err


def test_date_times_with_other_offsets_are_converted_to_utc(tmp_path):
    path = tmp_path / "offsets.csv"
    path.write_text(AZURE + "2024-05-12 02:00:00+02:00,1,1\n2024-05-12T00:00:01.5Z,2,2\n2024-05-11 20:00:03-04:00,3,3\n")
    assert tr.load(path).arrivals.tolist() == [0, 1.5, 3.0]


def test_chunks_join_up(tmp_path, monkeypatch):
    """A file longer than one conversion chunk reads the same as in one piece (offsets and line numbers too)."""
    whole = tr.load(FIXTURES / "azure-2023.csv")
    monkeypatch.setattr(formats, "BLOCK_BYTES", 100)  # a few lines a block
    assert tr.load(FIXTURES / "azure-2023.csv").arrivals.tolist() == whole.arrivals.tolist()
    path = tmp_path / "late.jsonl"
    path.write_text("".join(MOONCAKE.format(t, 1, 1) for t in (0, 1, 2, 3, 2)))
    with pytest.raises(formats.TraceFileError, match=r"late.jsonl: line 5: timestamp goes back in time \(0.002s after 0.003s, line 4"):
        formats.read(path)
