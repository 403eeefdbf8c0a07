"""The columnar cache beside metrics.jsonl (docs/format.md, "metrics.cache").

The JSONL stays the source of truth: every read through the cache must give
the frame a full parse of the JSONL gives, whatever happened to either file
since the cache was written (appends, rewrites, truncation, damage, links, a
second process appending), and only rows appended since are parsed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainmap.trainer import rundir

CACHE = rundir.METRICS_CACHE_FILE


def reference_frame(jsonl: bytes) -> pd.DataFrame:
    """What docs/format.md says a run's metrics are, computed the plain way, row by row."""
    rows = [json.loads(line) for line in jsonl[: jsonl.rfind(b"\n") + 1].splitlines() if line]
    names = list(dict.fromkeys(k for row in rows for k in row if k not in ("epoch", "step")))
    columns = {k: np.array([row[k] for row in rows], dtype=np.int64) for k in ("epoch", "step")}
    for name in names:
        values = [row.get(name) for row in rows]
        if all(type(v) is int and -(2**63) <= v < 2**63 for v in values):
            columns[name] = np.array(values, dtype=np.int64)
            continue
        columns[name] = np.array([as_number(v) for v in values], dtype=np.float64)
    return pd.DataFrame(columns)


def as_number(value) -> float:
    if type(value) is not float and type(value) is not int:
        return math.nan  # null, missing, booleans, strings, lists, objects
    try:
        return float(value)
    except OverflowError:  # an integer beyond float range
        return math.copysign(math.inf, value)


def line(**values) -> bytes:
    return json.dumps(values).encode() + b"\n"


def make_run(tmp_path: Path, jsonl: bytes, name: str = "run") -> Path:
    path = tmp_path / "exp" / name
    with rundir.RunWriter.create(tmp_path, "exp", name, task="toy"):
        pass
    (path / rundir.METRICS_FILE).write_bytes(jsonl)
    (path / CACHE).unlink(missing_ok=True)
    return path


def append(path: Path, data: bytes) -> None:
    with open(path / rundir.METRICS_FILE, "ab") as handle:
        handle.write(data)


@pytest.fixture
def parsed_rows(monkeypatch):
    """Counts the rows rundir parses (every parsed row goes through ``_columns_of``)."""
    counted = []
    original = rundir._columns_of

    def counting(rows):
        counted.append(len(rows))
        return original(rows)

    monkeypatch.setattr(rundir, "_columns_of", counting)
    return counted


ODD = (
    line(epoch=0, step=0, l2=1.5, count=3, text="a", big=2**70)
    + line(epoch=1, step=10, l2=None, count=4, flag=True, text=1.0)
    + b'{"epoch": 2, "step": 20, "l2": NaN, "count": 5, "late": -Infinity, "huge": 1e999}\n'
    + b"\n"  # a blank line is skipped
    + line(epoch=3, step=30, l2=[1], count=6, late=2, nested={"a": 1}, big=-(2**80))
)


def test_the_cache_gives_the_frame_of_a_full_parse_with_odd_values(tmp_path):
    path = make_run(tmp_path, ODD)
    expected = reference_frame(ODD)
    assert list(expected.columns[2:]) == [
        "l2",
        "count",
        "text",
        "big",
        "flag",
        "late",
        "huge",
        "nested",
    ]
    built = rundir.read_metrics(path)  # parses and writes the cache
    assert (path / CACHE).is_file()
    cached = rundir.read_metrics(path)
    for frame in (built, cached):
        pd.testing.assert_frame_equal(frame, expected)
    assert cached["count"].dtype == np.int64 and cached["late"].tolist()[2:] == [-math.inf, 2.0]
    rundir.configure_metrics_cache(enabled=False)
    try:
        pd.testing.assert_frame_equal(rundir.read_metrics(path), expected)
    finally:
        rundir.configure_metrics_cache()


def test_only_the_asked_columns_come_back(tmp_path):
    path = make_run(tmp_path, ODD)
    rundir.read_metrics(path)
    frame = rundir.read_metrics(path, columns=["late", "absent"])
    assert list(frame.columns) == ["epoch", "step", "late"]
    pd.testing.assert_frame_equal(frame, reference_frame(ODD)[["epoch", "step", "late"]])


def test_appends_parse_only_the_new_rows(tmp_path, parsed_rows):
    rows = [line(epoch=e, step=e, l2=float(e)) for e in range(100)]
    path = make_run(tmp_path, b"".join(rows[:60]))
    rundir.read_metrics(path)
    assert parsed_rows == [60]
    rundir.read_metrics(path)
    assert parsed_rows == [60], "an unchanged run is not parsed again"
    append(path, b"".join(rows[60:90]) + b'{"epoch": 90, "st')  # and half a row
    frame = rundir.read_metrics(path)
    assert parsed_rows == [60, 30] and len(frame) == 90
    append(path, b'ep": 90, "l2": 90.0, "new": 1}\n' + b"".join(rows[91:]))
    frame = rundir.read_metrics(path)
    assert parsed_rows == [60, 30, 10]
    full = b"".join(rows[:90]) + b'{"epoch": 90, "step": 90, "l2": 90.0, "new": 1}\n'
    pd.testing.assert_frame_equal(frame, reference_frame(full + b"".join(rows[91:])))
    assert frame["new"].isna().sum() == 99  # a column that appears late: NaN before and after
    assert rundir.summarize_run(path).checkpoints == 100 and parsed_rows == [60, 30, 10]


def test_a_column_turns_float_when_an_appended_row_needs_it(tmp_path):
    first = line(epoch=0, step=0, n=1) + line(epoch=1, step=1, n=2)
    path = make_run(tmp_path, first)
    assert rundir.read_metrics(path)["n"].dtype == np.int64
    for more in (line(epoch=2, step=2, n=2.5), line(epoch=3, step=3), line(epoch=4, step=4, n=9)):
        append(path, more)
        first += more
        pd.testing.assert_frame_equal(rundir.read_metrics(path), reference_frame(first))


@pytest.mark.parametrize(
    "change",
    ["rewritten, same size", "rewritten, longer", "truncated", "truncated and regrown", "replaced"],
)
def test_the_cache_is_never_served_once_the_jsonl_changed_under_it(tmp_path, change):
    rows = [line(epoch=e, step=e, l2=float(e)) for e in range(50)]
    path = make_run(tmp_path, b"".join(rows))
    metrics = path / rundir.METRICS_FILE
    rundir.read_metrics(path)
    other = [line(epoch=e, step=e, l2=float(e) + 0.5) for e in range(50)]  # same sizes
    if change == "rewritten, same size":
        with open(metrics, "r+b") as handle:  # in place: same inode, same size
            handle.write(b"".join(other))
        new = b"".join(other)
    elif change == "rewritten, longer":
        new = b"".join(other) + line(epoch=50, step=50, l2=1.0)
        with open(metrics, "r+b") as handle:
            handle.write(new)
    elif change == "truncated":
        new = b"".join(rows[:20])
        os.truncate(metrics, len(new))
    elif change == "truncated and regrown":
        new = b"".join(rows[:20]) + b"".join(other[20:])
        os.truncate(metrics, 0)
        append(path, new)
    else:  # e.g. --resume cutting rows: a new file renamed over the old one
        new = b"".join(rows[:10]) + b"".join(other[10:])
        metrics.with_name("tmp").write_bytes(new)
        os.replace(metrics.with_name("tmp"), metrics)
    pd.testing.assert_frame_equal(rundir.read_metrics(path), reference_frame(new))
    pd.testing.assert_frame_equal(rundir.read_metrics(path), reference_frame(new))


def test_resume_after_a_kill_reads_right(tmp_path):
    rows = [line(epoch=e, step=e, l2=float(e)) for e in range(10)]
    path = make_run(tmp_path, b"".join(rows) + b'{"epoch": 10, "st')
    assert len(rundir.read_metrics(path)) == 10
    with rundir.RunWriter.reopen(path, keep_through_step=4) as writer:
        writer.append({"epoch": 5, "step": 5, "l2": -1.0})
    frame = rundir.read_metrics(path)
    assert frame["l2"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, -1.0]


CORRUPTIONS = {
    "garbage": lambda data: b"\x00\xff" * 100,
    "empty": lambda data: b"",
    "cut short": lambda data: data[:-5],
    "longer": lambda data: data + b"\x00" * 8,
    "bad description": lambda data: data.replace(b'"rows": ', b'"rows": -', 1),
    "description not json": lambda data: data.replace(b'"rows"', b"rows", 1),
    "wrong version": lambda data: data.replace(b'"version": 1', b'"version": 9', 1),
    "foreign column type": lambda data: data.replace(b'"float64"', b'"object"', 1),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupt_cache_is_rebuilt(tmp_path, corruption, parsed_rows):
    path = make_run(tmp_path, ODD)
    rundir.read_metrics(path)
    good = (path / CACHE).read_bytes()
    (path / CACHE).write_bytes(CORRUPTIONS[corruption](good))
    pd.testing.assert_frame_equal(rundir.read_metrics(path), reference_frame(ODD))
    assert parsed_rows == [4, 4], "parsed again from the JSONL"
    assert (path / CACHE).read_bytes() == good  # and rewritten
    rundir.read_metrics(path)
    assert parsed_rows == [4, 4]


def test_a_missing_cache_is_rebuilt(tmp_path, parsed_rows):
    path = make_run(tmp_path, ODD)
    rundir.read_metrics(path)
    (path / CACHE).unlink()
    pd.testing.assert_frame_equal(rundir.read_metrics(path), reference_frame(ODD))
    assert (path / CACHE).is_file() and parsed_rows == [4, 4]


def forged_cache(tmp_path: Path, jsonl: bytes) -> bytes:
    """A cache describing ``jsonl`` whose l2 column says 0.123 instead (a lie only a link tells)."""
    path = make_run(tmp_path / "forge", jsonl)
    rundir.read_metrics(path)
    data = (path / CACHE).read_bytes()
    header = data[: data.index(b"\n", len(b"trainmap metrics cache\n")) + 1]
    info = json.loads(header.split(b"\n")[1])
    info["stat"] = None  # describe the bytes only, not that file's inode
    header = b"trainmap metrics cache\n" + json.dumps(info).encode() + b"\n"
    rows, names = info["rows"], [name for name, _ in info["columns"]]
    columns = [data[len(header) + 8 * rows * i :][: 8 * rows] for i in range(len(names))]
    columns[names.index("l2")] = np.full(rows, 0.123).astype("<f8").tobytes()
    return header + b"".join(columns)


def test_a_linked_cache_is_never_read_nor_written_through(tmp_path):
    jsonl = b"".join(line(epoch=e, step=e, l2=float(e)) for e in range(5))
    forged = tmp_path / "outside.cache"
    forgery = forged_cache(tmp_path, jsonl)
    forged.write_bytes(forgery)
    path = make_run(tmp_path, jsonl)
    (path / CACHE).symlink_to(forged)
    assert rundir.read_metrics(path)["l2"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert not (path / CACHE).is_symlink(), "the link is replaced by a real cache"
    assert forged.read_bytes() == forgery  # the target is untouched
    # the same forgery copied in place is believed (whoever can write there can write the
    # JSONL too): so it is the link, not the content, that was refused above
    shutil.copy(forged, path / CACHE)
    assert rundir.read_metrics(path)["l2"].tolist() == [0.123] * 5


def test_a_fifo_or_folder_in_place_of_the_cache_is_ignored(tmp_path):
    jsonl = b"".join(line(epoch=e, step=e, l2=float(e)) for e in range(5))
    path = make_run(tmp_path, jsonl)
    os.mkfifo(path / CACHE)
    assert len(rundir.read_metrics(path)) == 5  # does not hang on the FIFO
    assert (path / CACHE).is_file()
    (path / CACHE).unlink()
    (path / CACHE).mkdir()
    assert len(rundir.read_metrics(path)) == 5


def test_the_cache_never_hides_a_broken_jsonl(tmp_path, parsed_rows):
    rows = [line(epoch=e, step=e, l2=float(e)) for e in range(5)]
    path = make_run(tmp_path, b"".join(rows))
    rundir.read_metrics(path)
    append(path, b'{"epoch": 5, "step": "five"}\n' + b"".join(rows))
    for _ in range(2):  # every read, not only the first
        with pytest.raises(rundir.RunDirError, match="line 6: step is 'five'"):
            rundir.read_metrics(path)
        summary = rundir.summarize_run(path)
        assert summary.broken and "line 6" in summary.reason
    assert parsed_rows == [5]  # the cache kept the good rows; the damage is found first

    # damage inside the covered rows, made in place after the cache was written
    path = make_run(tmp_path, b"".join(rows), name="edited")
    rundir.read_metrics(path)
    data = (path / rundir.METRICS_FILE).read_bytes().replace(b'"epoch": 2,', b'"epoch": "",', 1)
    with open(path / rundir.METRICS_FILE, "r+b") as handle:
        handle.write(data)
    with pytest.raises(rundir.RunDirError, match="line 3: epoch is ''"):
        rundir.read_metrics(path)


def test_the_writer_leaves_an_up_to_date_cache(tmp_path, parsed_rows):
    with rundir.RunWriter.create(tmp_path, "exp", "run", task="toy") as writer:
        for epoch in range(20):
            writer.append({"epoch": epoch, "step": epoch, "l2": 1.0})
    assert (tmp_path / "exp" / "run" / CACHE).is_file() and parsed_rows == [20]
    assert len(rundir.read_metrics(tmp_path / "exp" / "run")) == 20 and parsed_rows == [20]
    rundir.configure_metrics_cache(enabled=False)
    try:
        with rundir.RunWriter.create(tmp_path, "exp", "off", task="toy") as writer:
            writer.append({"epoch": 0, "step": 0})
        assert len(rundir.read_metrics(tmp_path / "exp" / "off")) == 1
        assert not (tmp_path / "exp" / "off" / CACHE).exists()
    finally:
        rundir.configure_metrics_cache()


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` read-only for this process, even as root (immutable), until the block ends."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)


def test_a_read_only_run_is_cached_in_the_spare_folder(tmp_path, parsed_rows):
    rows = [line(epoch=e, step=e, l2=float(e)) for e in range(30)]
    path = make_run(tmp_path, b"".join(rows[:20]))
    spare = tmp_path / "spare"
    try:
        with read_only(path):
            assert len(rundir.read_metrics(path)) == 20  # no spare folder: parsed, not cached
            assert len(rundir.read_metrics(path)) == 20 and parsed_rows == [20, 20]
            rundir.configure_metrics_cache(spare_dir=spare)
            rundir.read_metrics(path)
            (cached,) = spare.iterdir()
            assert parsed_rows == [20, 20, 20] and not (path / CACHE).exists()
            assert len(rundir.read_metrics(path)) == 20 and parsed_rows == [20, 20, 20]
        append(path, b"".join(rows[20:]))
        with read_only(path):
            pd.testing.assert_frame_equal(
                rundir.read_metrics(path), reference_frame(b"".join(rows))
            )
            assert parsed_rows == [20, 20, 20, 10]
        assert list(spare.iterdir()) == [cached]
    finally:
        rundir.configure_metrics_cache()


WRITER = textwrap.dedent(
    """
    import sys, time
    from trainmap.trainer import rundir
    writer = rundir.RunWriter.create(sys.argv[1], "exp", "live", task="toy", seed=1)
    for step in range(300):
        writer.append({"epoch": step, "step": step, **{f"m{i}": step * 0.5 for i in range(30)}})
        time.sleep(0.002)
    writer.finish()
    """
)


def test_reading_through_the_cache_while_another_process_appends(tmp_path, parsed_rows):
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)])
    path = tmp_path / "exp" / "live"
    seen = []
    try:
        deadline = time.time() + 60
        while process.poll() is None and time.time() < deadline:
            if (path / rundir.METRICS_FILE).exists():
                frame = rundir.read_metrics(path)
                assert frame["step"].tolist() == list(range(len(frame)))
                if len(frame):
                    assert frame[[f"m{i}" for i in range(30)]].notna().all().all()
                seen.append(len(frame))
    finally:
        process.wait(timeout=60)
    assert process.returncode == 0
    assert len(set(seen)) > 2, "the reader should have seen the run grow"
    # each row was parsed about once by this reader, not once per read
    assert sum(parsed_rows) <= 300 + len(seen)
    final = rundir.read_metrics(path)
    pd.testing.assert_frame_equal(final, reference_frame((path / rundir.METRICS_FILE).read_bytes()))


VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**66), 2**66),
    st.floats(),
    st.text(max_size=3),
    st.lists(st.integers(), max_size=2),
)
ROWS = st.lists(
    st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), VALUE, max_size=4), max_size=12
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=ROWS, cuts=st.lists(st.integers(0, 12), max_size=3))
def test_any_rows_read_in_any_pieces_give_the_full_parse(tmp_path, rows, cuts):
    lines = [
        json.dumps({"epoch": i, "step": 2 * i, **row}).encode() + b"\n"
        for i, row in enumerate(rows)
    ]
    shutil.rmtree(tmp_path / "exp", ignore_errors=True)  # hypothesis reuses tmp_path
    path = make_run(tmp_path, b"", name="pieces")
    written = 0
    for cut in sorted({min(c, len(lines)) for c in cuts}) + [len(lines)]:
        append(path, b"".join(lines[written:cut]))
        written = max(written, cut)
        pd.testing.assert_frame_equal(
            rundir.read_metrics(path), reference_frame(b"".join(lines[:written]))
        )
