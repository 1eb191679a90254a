"""Request-trace files in the formats people publish them in: sniff which one a file is, read it, refuse a bad one.

Which format a file is comes from its CSV header or its first JSON line (`--format` overrides):

- ``azure``: Azure LLM inference traces 2023 and 2024, CSV ``TIMESTAMP,ContextTokens,GeneratedTokens`` with
  wall-clock times; 2024's carry a UTC offset and sometimes no fraction (``2024-05-10 00:00:00.009930+00:00``,
  ``2024-05-12 00:00:00+00:00``). Source: Azure/AzurePublicDataset, AzureLLMInferenceDataset2023.md,
  AzureLLMInferenceDataset2024.md and analysis/AzureLLMInferenceDataset2024.ipynb.
- ``mooncake``: JSONL, one object per request: ``timestamp`` (ms since the first request; equal stamps allowed),
  ``input_length``, ``output_length``; other keys (``hash_ids``) ignored. Source: kvcache-ai/Mooncake,
  FAST25-release/traces.
- ``burstgpt``: CSV ``Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type``, Timestamp in seconds
  from the first day's midnight. Failed requests are the rows with ``Response tokens`` 0 (the README of
  HPMLL/BurstGPT: ``BurstGPT_1.csv`` "with some failure that Response tokens are 0s"); they are dropped and
  counted in the notes. ``Log Type`` says how the model was called (``Conversation log`` or ``API log``), not
  whether the call failed, so both are kept.
- ``servegen``: a rate series ``window_start_seconds,rate_rps,...`` (aggregated from alibaba/ServeGen); read
  and checked here, turned into arrivals by trace.load.
- ``columns``: any CSV or JSONL, given ``--columns time=COL,input=COL,output=COL`` and ``--time-unit``
  (numbers in s, ms, us or ns; ISO date-times are recognised by themselves).

Gzip is recognised by its magic bytes, whatever the file is called. A bad file raises TraceFileError (a
ValueError, so the CLIs print it as one line and exit 2) naming the file, the line (the header is line 1)
and what is wrong.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

FORMATS = ("auto", "azure", "mooncake", "burstgpt", "servegen", "columns")
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
ROLES = ("time", "input", "output")

# format -> (time, input, output) column names, the time column's unit (None: date-times)
KNOWN = {
    "azure": (("TIMESTAMP", "ContextTokens", "GeneratedTokens"), None),
    "mooncake": (("timestamp", "input_length", "output_length"), "ms"),
    "burstgpt": (("Timestamp", "Request tokens", "Response tokens"), "s"),
}
LABELS = {"azure": "Azure LLM inference trace", "mooncake": "Mooncake JSONL", "burstgpt": "BurstGPT",
          "servegen": "ServeGen rate series", "columns": "column map"}
SERVEGEN_COLUMNS = ("window_start_seconds", "rate_rps")
EXPECTED = ("expected the columns of a known trace: Azure TIMESTAMP,ContextTokens,GeneratedTokens; BurstGPT "
            "Timestamp,Request tokens,Response tokens; ServeGen window_start_seconds,rate_rps; Mooncake JSONL "
            "timestamp,input_length,output_length; or name yours with --columns time=COL,input=COL,output=COL")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
BLOCK_BYTES = 8 << 20  # read and converted to arrays a block at a time: a 17 M-row trace never sits in memory as text


class TraceFileError(ValueError):
    """A trace file that cannot be read as asked; the message is one line naming the file and the line."""

    def __init__(self, path: Path, what: str, line: int | None = None) -> None:
        super().__init__(f"{path}: " + (f"line {line}: " if line is not None else "") + what)


@dataclass(frozen=True)
class Requests:
    """One row per request, in file order (which must be time order)."""

    arrivals: np.ndarray  # seconds since the first request, non-decreasing
    prompt_tokens: np.ndarray  # int64
    output_tokens: np.ndarray  # int64
    format: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RateSeries:
    """A ServeGen-style rate series: its header and its rows as strings (checked numeric), as np.loadtxt gave them."""

    header: list[str]
    table: np.ndarray


def parse_columns(text: str) -> dict[str, str]:
    """`time=ts,input=prompt_len,output=gen_len` -> {"time": "ts", ...}; all three roles, nothing else."""
    mapping: dict[str, str] = {}
    for part in (p for p in text.split(",") if p.strip()):
        role, sep, column = part.partition("=")
        role, column = role.strip(), column.strip()
        if not sep or role not in ROLES or not column:
            raise ValueError(f"{part.strip()!r} is not ROLE=COLUMN with ROLE one of {', '.join(ROLES)}, "
                             "e.g. time=ts,input=prompt_len,output=gen_len")
        if role in mapping:
            raise ValueError(f"{role} given twice")
        mapping[role] = column
    missing = [r for r in ROLES if r not in mapping]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}; give time=COL,input=COL,output=COL")
    return mapping


def read(path: str | Path, format: str | None = None, columns: dict[str, str] | None = None,
         time_unit: str | None = None) -> Requests | RateSeries:
    """Read a trace file as `format` ("auto" or None: sniffed); raises TraceFileError on any bad input."""
    path = Path(path)
    format = format or ("columns" if columns else "auto")
    if format not in FORMATS:
        raise ValueError(f"--format: {format!r} is not one of {', '.join(FORMATS)}")
    if columns and format != "columns":
        raise ValueError(f"--columns names the columns of --format columns, not of --format {format}")
    if format == "columns" and not columns:
        raise ValueError("--format columns needs --columns time=COL,input=COL,output=COL")
    if time_unit is not None and format != "columns":
        raise ValueError(f"--time-unit applies to --columns; {LABELS.get(format, 'this format')} fixes its own unit")
    if time_unit is not None and time_unit not in TIME_UNITS:
        raise ValueError(f"--time-unit: {time_unit!r} is not one of {', '.join(TIME_UNITS)}")
    try:
        with _open(path) as text:
            first = _first_line(path, text)
            if first.lstrip().startswith("{"):
                return _read_jsonl(path, first, text, format, columns, time_unit)
            return _read_csv(path, first, text, format, columns, time_unit)
    except FileNotFoundError:
        raise TraceFileError(path, "no such file") from None
    except IsADirectoryError:
        raise TraceFileError(path, "is a directory, not a trace file") from None
    except PermissionError:
        raise TraceFileError(path, "not readable (permission denied)") from None


# ------------------------------------------------------------------ reading lines


class _Lines:
    """The file's lines in blocks, counted; gzip and decoding failures become TraceFileError near that line."""

    def __init__(self, path: Path, stream) -> None:
        self.path, self.stream, self.number = path, stream, 0  # number: lines handed out so far

    def _read(self, call):
        try:
            return call()
        except EOFError:
            raise TraceFileError(self.path, "truncated gzip: the file ends before its compressed stream does (cut "
                                 "short at or after this line)", self.number + 1) from None
        except (gzip.BadGzipFile, zlib.error) as error:
            raise TraceFileError(self.path, f"corrupt gzip ({error})", self.number + 1) from None
        except UnicodeDecodeError as error:
            raise TraceFileError(self.path, f"not UTF-8 text ({error.reason})", self.number + 1) from None

    def readline(self) -> str:
        line = self._read(self.stream.readline)
        self.number += bool(line)
        return line

    def blocks(self):
        """(number of the block's first line, its lines) until the end of the file."""
        while block := self._read(lambda: self.stream.readlines(BLOCK_BYTES)):
            yield self.number + 1, block
            self.number += len(block)

    def close(self) -> None:
        self.stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open(path: Path) -> _Lines:
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    raw = gzip.open(path, "rb") if gzipped else open(path, "rb")
    return _Lines(path, io.TextIOWrapper(raw, encoding="utf-8-sig", newline=""))


def _first_line(path: Path, lines: _Lines) -> str:
    while line := lines.readline():
        if line.strip():
            return line
    raise TraceFileError(path, "empty file: no header and no requests")


# ------------------------------------------------------------------ the two layouts


def _csv_blocks(path, lines: _Lines, width: int, index: list[int]):
    """(line numbers, [column values] for `index`) per block; blank lines skipped, a row of the wrong width refused."""
    for first, block in lines.blocks():
        rows = list(csv.reader(block))
        numbers = np.arange(first, first + len(rows))  # a row per line: trace files have no multi-line fields
        widths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        blank = widths == 0
        for i in np.flatnonzero(widths == 1) if width != 1 else ():
            blank[i] = not rows[i][0].strip()
        wrong = np.flatnonzero((widths != width) & ~blank)
        if len(wrong):
            i = wrong[0]
            raise TraceFileError(path, f"{widths[i]} fields where the header has {width} (a truncated or malformed "
                                 "row)", numbers[i])
        if blank.any():
            rows, numbers = [r for r, b in zip(rows, blank) if not b], numbers[~blank]
        yield numbers, [[r[i] for r in rows] for i in index]


def _read_csv(path, first, lines, format, columns, time_unit):
    header = [c.strip() for c in next(csv.reader([first]))]
    if format == "auto":
        format = _sniff(path, header, lines.number)
    if format == "mooncake":
        raise TraceFileError(path, "--format mooncake expects JSON lines, this file is CSV", lines.number)
    if format == "servegen":
        return _rate_series(path, header, lines)
    names, unit = (tuple(columns[r] for r in ROLES), time_unit) if format == "columns" else KNOWN[format]
    index = []
    for name in names:
        if name not in header:
            raise TraceFileError(path, f"no column {name!r} for {LABELS[format]}; the header has "
                                 f"{','.join(header)}" + ("" if format == "columns" else f"; {EXPECTED}"), 1)
        index.append(header.index(name))
    return _requests(path, format, names, unit, _csv_blocks(path, lines, len(header), index))


def _read_jsonl(path, first, lines, format, columns, time_unit):
    if format in ("azure", "burstgpt", "servegen"):
        raise TraceFileError(path, f"--format {format} expects CSV, this file is JSON lines", lines.number)
    record = _json(path, first, lines.number)
    if format == "auto":
        format = _sniff(path, list(record), lines.number, json_lines=True)
    names, unit = (tuple(columns[r] for r in ROLES), time_unit) if format == "columns" else KNOWN[format]
    for name in names:
        if name not in record:
            raise TraceFileError(path, f"no key {name!r} for {LABELS[format]}; the first record has "
                                 f"{','.join(record)}", lines.number)

    def blocks():
        yield np.array([lines.number]), [[record[n]] for n in names]
        for first, block in lines.blocks():
            numbers, values = [], [[] for _ in names]
            for number, line in enumerate(block, first):
                if not line.strip():
                    continue
                item = _json(path, line, number)
                for name, column in zip(names, values):
                    if name not in item:
                        raise TraceFileError(path, f"no key {name!r}", number)
                    column.append(item[name])
                numbers.append(number)
            yield np.array(numbers, dtype=np.int64), values

    return _requests(path, format, names, unit, blocks())


def _json(path, line, number) -> dict:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as error:
        raise TraceFileError(path, f"not JSON ({error.msg} at column {error.colno}; a truncated line?)", number) from None
    if not isinstance(item, dict):
        raise TraceFileError(path, "not a JSON object", number)
    return item


def _sniff(path, keys: list[str], line: int, json_lines: bool = False) -> str:
    """The known format whose columns (keys) the file has; the first line's names decide."""
    for format in (("mooncake",) if json_lines else ("azure", "burstgpt")):
        if set(KNOWN[format][0]) <= set(keys):
            return format
    if not json_lines and set(SERVEGEN_COLUMNS) <= set(keys):
        return "servegen"
    found = ",".join(keys)
    raise TraceFileError(path, f"unknown {'keys' if json_lines else 'columns'} {found}; {EXPECTED}", line)


# ------------------------------------------------------------------ values


def _requests(path, format, names, unit, blocks) -> Requests:
    """Convert (line numbers, [times, inputs, outputs]) blocks to arrays, check them, drop BurstGPT's failures."""
    times, prompts, outputs, numbers = [], [], [], []
    kind: list = []  # "number" or "datetime" (decided by the first value), then the first time: the origin
    for lines, columns in blocks:
        if len(lines):
            _convert(path, names, unit, lines, columns, kind, times, prompts, outputs, numbers)
    if not numbers:
        raise TraceFileError(path, "no requests after the header")
    t, prompt, output, line = (np.concatenate(a) for a in (times, prompts, outputs, numbers))
    back = np.flatnonzero(np.diff(t) < 0)
    if len(back):
        i = back[0] + 1
        raise TraceFileError(path, f"{names[0]} goes back in time ({_show(t[i], kind)} after "
                             f"{_show(t[i - 1], kind)}, line {line[i - 1]}); sort the file by time", line[i])
    notes = []
    if format == "burstgpt":
        ok = output > 0
        if not ok.all():
            notes.append(f"dropped {int((~ok).sum()):,} failed requests (Response tokens 0) of {len(ok):,}")
            t, prompt, output = t[ok], prompt[ok], output[ok]
            if not len(t):
                raise TraceFileError(path, "every request failed (Response tokens 0): nothing to replay")
    return Requests(arrivals=t - t[0], prompt_tokens=prompt, output_tokens=output, format=format,
                    notes=tuple(notes))


def _convert(path, names, unit, lines, columns, kind, times, prompts, outputs, numbers) -> None:
    if not kind:
        kind.append("datetime" if unit is None and not _is_number(columns[0][0]) else "number")
    if kind[0] == "datetime":  # int64 ns, made relative before turning float, so no precision is lost
        stamps = _datetimes(path, names[0], columns[0], lines)
        if len(kind) == 1:
            kind.append(int(stamps[0]))
        t = (stamps - kind[1]) / 1e9
    else:
        t = _numbers(path, names[0], columns[0], lines, what="time") * TIME_UNITS[unit or "s"]
    times.append(t)
    prompts.append(_tokens(path, names[1], columns[1], lines))
    outputs.append(_tokens(path, names[2], columns[2], lines))
    numbers.append(lines)


def _is_number(value) -> bool:
    if isinstance(value, bool):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _numbers(path, name, values, lines, what: str) -> np.ndarray:
    """Finite, non-negative numbers, or the first line where one is not."""
    try:
        array = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        array = None
    if array is None or len(array) != len(values):
        for value, line in zip(values, lines):
            if not _is_number(value):
                raise TraceFileError(path, f"{name} {value!r} is not a number", line)
        raise TraceFileError(path, f"{name} is not a number", lines[0])  # pragma: no cover (ragged nesting)
    for bad, message in ((np.isnan(array), "is NaN or empty"), (np.isinf(array), "is infinite"),
                         (array < 0, f"is negative: a {what} must be >= 0")):
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise TraceFileError(path, f"{name} {values[i]!r} {message}", lines[i])
    return array


MAX_TOKENS = 1e9


def _tokens(path, name, values, lines) -> np.ndarray:
    array = _numbers(path, name, values, lines, what="token count")
    huge = array > MAX_TOKENS  # issue 15: 1e308 tokens overflowed the int64 cast below
    if huge.any():
        i = int(np.flatnonzero(huge)[0])
        raise TraceFileError(path, f"{name} {values[i]!r} is over {MAX_TOKENS:.0e} tokens: no request is that long", lines[i])
    fraction = array != np.floor(array)
    if fraction.any():
        i = int(np.flatnonzero(fraction)[0])
        raise TraceFileError(path, f"{name} {values[i]!r} is not a whole number of tokens", lines[i])
    return array.astype(np.int64)


def _datetimes(path, name, values, lines) -> np.ndarray:
    """Nanoseconds since the epoch (UTC, int64) of ISO date-times; naive ones (Azure 2023) are taken as UTC."""
    strings = np.array([str(v).strip() for v in values])
    if np.char.endswith(strings, "+00:00").all():  # Azure 2024: every stamp in UTC
        strings = np.char.replace(strings, "+00:00", "")
    offsets = ((np.char.find(strings, "+") >= 0) | (np.char.find(strings, "-", 10) >= 0)
               | np.char.endswith(strings, "Z"))
    if not offsets.any():  # naive stamps: numpy parses them fast, as UTC
        try:
            stamps = strings.astype("datetime64[ns]")
        except ValueError:
            stamps = None
        if stamps is not None and not np.isnat(stamps).any():
            return stamps.astype(np.int64)
    out = np.empty(len(strings), dtype=np.int64)
    for i, (text, line) in enumerate(zip(strings.tolist(), lines.tolist())):
        try:
            stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise TraceFileError(path, f"{name} {text!r} is not a date-time like 2023-11-16 18:15:46.68", line) from None
        aware = stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
        out[i] = (aware - EPOCH) // timedelta(microseconds=1) * 1000
    return out


def _show(value: float, kind: list) -> str:
    if kind[0] == "datetime":
        return str(np.datetime64(kind[1] + int(round(value * 1e9)), "ns").astype("datetime64[us]"))
    return f"{value:g}s"


# ------------------------------------------------------------------ the rate series


def _rate_series(path, header, lines) -> RateSeries:
    """Rows as strings (trace.load reads them), every cell checked numeric; window starts increasing."""
    for name in SERVEGEN_COLUMNS:
        if name not in header:
            raise TraceFileError(path, f"no column {name!r} for the ServeGen rate series; the header has "
                                 f"{','.join(header)}", 1)
    start = header.index("window_start_seconds")
    parts, starts, numbers = [], [], []
    for block_lines, columns in _csv_blocks(path, lines, len(header), list(range(len(header)))):
        cells = [[c.strip() for c in column] for column in columns]
        for name, column in zip(header, cells):
            _numbers(path, name, column, block_lines, what="window start or rate")
        parts.append(np.array(cells, dtype=str).T)
        starts.append(np.array(cells[start], dtype=np.float64))
        numbers.append(block_lines)
    if not parts:
        raise TraceFileError(path, "no windows after the header")
    starts, numbers = np.concatenate(starts), np.concatenate(numbers)
    back = np.flatnonzero(np.diff(starts) <= 0)
    if len(back):
        i = back[0] + 1
        raise TraceFileError(path, f"window_start_seconds {starts[i]:g} does not follow {starts[i - 1]:g} (line "
                             f"{numbers[i - 1]}); windows must be in increasing order", numbers[i])
    return RateSeries(header=header, table=np.concatenate(parts))
