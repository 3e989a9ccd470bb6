"""The streaming telemetry reader behind the report's plots: exact bins, hostile lines, bounds."""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import tracemalloc
from pathlib import Path

import pytest

from trainwarden.report._run_telemetry import MAX_LINE, read_telemetry


def _line(step: int, rank: int, **fields: object) -> str:
    record = {"step": step, "rank": rank, "t": 1.7e9 + step, "checked": 0, "data": f"d{step}"}
    record.update(fields)
    return json.dumps(record, separators=(",", ":")) + "\n"


def _write(directory: Path, rank: int, lines: list[str] | str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"rank-{rank}.jsonl"
    path.write_text(lines if isinstance(lines, str) else "".join(lines), encoding="utf-8")
    return path


def test_bins_hold_exact_min_max_median_mean(tmp_path: Path) -> None:
    rng = random.Random(7)
    steps = 1000
    values = [rng.uniform(0.1, 2.0) for _ in range(steps)]
    _write(
        tmp_path,
        0,
        [
            _line(s + 1, 0, step_time=v, fwd=v / 4, bwd=v / 2, opt=v / 8, wait=v / 8)
            for s, v in enumerate(values)
        ],
    )
    t = read_telemetry(tmp_path, bins=10)
    assert (t.width, t.bins) == (100, 10)
    r = t.ranks[0]
    assert (r.records, r.bad, r.first_step, r.last_step) == (steps, 0, 1, steps)
    bins = r.metrics["step_time"]
    for i in range(10):
        chunk = values[i * 100 : (i + 1) * 100]
        assert bins.count[i] == 100
        assert bins.low[i] == min(chunk)
        assert bins.high[i] == max(chunk)
        assert bins.median[i] == pytest.approx(statistics.median(chunk))
        assert bins.mean[i] == pytest.approx(statistics.fmean(chunk))
    # Own work is forward + backward + optimizer, waits excluded.
    work = r.metrics["work"]
    assert work.high[0] == pytest.approx(max(v * (1 / 4 + 1 / 2 + 1 / 8) for v in values[:100]))


def test_work_falls_back_to_step_time_minus_wait(tmp_path: Path) -> None:
    _write(tmp_path, 0, [_line(s, 0, step_time=1.0, wait=0.25) for s in range(1, 11)])
    r = read_telemetry(tmp_path, bins=1).ranks[0]
    assert r.metrics["work"].median[0] == pytest.approx(0.75)


def test_ranks_share_one_grid_set_by_the_longest(tmp_path: Path) -> None:
    _write(tmp_path, 0, [_line(s, 0, loss=1.0) for s in range(1, 401)])
    _write(tmp_path, 1, [_line(s, 1, loss=2.0) for s in range(1, 101)])
    t = read_telemetry(tmp_path, bins=4)
    assert t.width == 100
    assert [r.rank for r in t.ranks] == [0, 1]
    assert t.ranks[1].metrics["loss"].count == (100, 0, 0, 0)
    assert t.bin_steps(3) == (301, 400)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("this is not json\n", "not JSON"),
        ("[1, 2, 3]\n", "not a JSON object"),
        ('{"rank": 0, "loss": 1.0}\n', "no integer step"),
        ('{"step": true, "rank": 0}\n', "no integer step"),
        ('{"step": -4, "rank": 0}\n', "no integer step"),
        ('{"step": 5, "rank": 1, "loss": 9.0}\n', "rank 1 in the file of rank 0"),
        ("[" * 100_000 + "\n", "longer than"),
        ('{"step": 5, "rank": 0, "x": ' + "[" * 5000 + "]" * 5000 + "}\n", "not JSON"),
        ('{"step": 5, "rank": 0, "loss": 1' + "0" * 5000 + "}\n", "not JSON"),
    ],
)
def test_bad_lines_are_counted_named_and_skipped(tmp_path: Path, bad: str, reason: str) -> None:
    good = [_line(s, 0, loss=1.0) for s in range(1, 5)]
    _write(tmp_path, 0, [*good[:2], bad, *good[2:]])
    t = read_telemetry(tmp_path, bins=4)
    r = t.ranks[0]
    assert r.records == 4
    assert r.bad == 1
    assert reason in r.bad_examples[0]
    assert "line 3" in r.bad_examples[0]
    assert any("not valid records" in n for n in t.notes)
    # The forged record of another rank must never be plotted as this rank's.
    loss = r.metrics["loss"]
    assert loss.values == 4
    assert {v for v in loss.high if v is not None} == {1.0}


def test_a_torn_final_line_is_bad_but_the_rest_reads(tmp_path: Path) -> None:
    _write(tmp_path, 0, "".join(_line(s, 0, loss=1.0) for s in range(1, 4)) + '{"step": 4, "ra')
    r = read_telemetry(tmp_path, bins=2).ranks[0]
    assert (r.records, r.bad) == (3, 1)
    assert "incomplete final line" in r.bad_examples[0]


def test_non_finite_values_are_counted_not_plotted(tmp_path: Path) -> None:
    lines = [_line(s, 0, loss=1.0) for s in range(1, 5)]
    lines.append('{"step":5,"rank":0,"loss":NaN}\n')
    lines.append('{"step":6,"rank":0,"loss":Infinity,"grad_norm":1' + "0" * 400 + "}\n")
    _write(tmp_path, 0, lines)
    r = read_telemetry(tmp_path, bins=1).ranks[0]
    loss = r.metrics["loss"]
    assert loss.nonfinite == 2
    assert loss.first_nonfinite_step == 5
    assert loss.high[0] == 1.0
    assert r.metrics["grad_norm"].nonfinite == 1  # a 401-digit integer overflows a float


def test_records_out_of_order_are_counted(tmp_path: Path) -> None:
    steps = [1, 2, 3, 10, 4, 11, 12]
    _write(tmp_path, 0, [_line(s, 0, loss=float(s)) for s in steps])
    r = read_telemetry(tmp_path, bins=12).ranks[0]
    assert r.records == len(steps)
    assert r.out_of_order == 1
    assert (r.first_step, r.last_step) == (1, 12)


def test_a_claimed_huge_last_step_cannot_blow_up_the_grid(tmp_path: Path) -> None:
    lines = [_line(s, 0, loss=1.0) for s in range(1, 101)]
    lines.append(_line(10**11, 0, loss=50.0))
    _write(tmp_path, 0, lines)
    t = read_telemetry(tmp_path, bins=10)
    assert t.bins <= 10
    assert t.width <= 11
    # The outlier is clamped into the last bin, not dropped.
    assert t.ranks[0].records == 101
    assert t.ranks[0].metrics["loss"].overall_high() == 50.0


def test_data_order_digests_tell_which_bin_changed(tmp_path: Path) -> None:
    a = tmp_path / "a"
    b = tmp_path / "b"
    _write(a, 0, [_line(s, 0, data=f"batch-{s}") for s in range(1, 101)])
    _write(b, 0, [_line(s, 0, data=f"batch-{s}" if s < 61 else "other") for s in range(1, 101)])
    da = read_telemetry(a, bins=10).ranks[0].data_digests
    db = read_telemetry(b, bins=10).ranks[0].data_digests
    assert da[:6] == db[:6]
    assert all(x != y for x, y in zip(da[6:], db[6:], strict=True))


def test_the_file_digest_covers_every_byte(tmp_path: Path) -> None:
    import hashlib

    path = _write(tmp_path, 0, [_line(s, 0) for s in range(1, 20)] + ["garbage\n"])
    r = read_telemetry(tmp_path).ranks[0]
    assert r.sha256 == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert r.size == path.stat().st_size


def test_missing_empty_and_odd_directories_give_notes_not_errors(tmp_path: Path) -> None:
    assert read_telemetry(tmp_path / "nope").ranks == ()
    assert "missing" in read_telemetry(tmp_path / "nope").notes[0]
    (tmp_path / "empty").mkdir()
    assert "no telemetry files" in read_telemetry(tmp_path / "empty").notes[0]
    odd = tmp_path / "odd"
    _write(odd, 0, [_line(1, 0)])
    (odd / "notes.txt").write_text("x")
    (odd / "rank-01.jsonl").write_text("x")  # not a canonical rank number
    t = read_telemetry(odd)
    assert [r.rank for r in t.ranks] == [0]
    assert "notes.txt" in t.notes[0]
    link = tmp_path / "link"
    link.symlink_to(odd)
    assert "symlink" in read_telemetry(link).notes[0]


def test_a_fifo_or_directory_named_like_a_rank_file_is_reported(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "rank-0.jsonl")
    (tmp_path / "rank-1.jsonl").mkdir()
    _write(tmp_path, 2, [_line(1, 2, loss=1.0)])
    t = read_telemetry(tmp_path)  # must not block on the FIFO
    assert [r.rank for r in t.ranks if r.records] == [2]
    assert len([n for n in t.notes if "FIFO" in n or "directory" in n]) == 2


def _peak_reading(directory: Path, lines: int) -> tuple[int, int]:
    _write(
        directory,
        0,
        [
            _line(s, 0, fwd=0.1, bwd=0.2, opt=0.01, wait=0.01, step_time=0.32, loss=2.0, lr=1e-4)
            for s in range(1, lines + 1)
        ],
    )
    tracemalloc.start()
    try:
        t = read_telemetry(directory, bins=100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert t.ranks[0].records == lines
    return peak, (directory / "rank-0.jsonl").stat().st_size


def test_memory_stays_bounded_by_the_bins_not_the_lines(tmp_path: Path) -> None:
    small_peak, _ = _peak_reading(tmp_path / "small", 4_000)
    large_peak, _ = _peak_reading(tmp_path / "large", 16_000)
    # Only the lines of the bins still open are held (exact medians need them): 12,000 more
    # lines may cost a little for wider bins, never the ~700 bytes a line that keeping the
    # parsed records would.
    assert large_peak - small_peak < 12_000 * 100, (small_peak, large_peak)


def test_a_line_longer_than_the_limit_is_skipped_in_bounded_reads(tmp_path: Path) -> None:
    huge = '{"step": 3, "rank": 0, "pad": "' + "x" * (4 * MAX_LINE) + '"}\n'
    _write(tmp_path, 0, [_line(1, 0, loss=1.0), _line(2, 0, loss=1.0), huge, _line(4, 0)])
    r = read_telemetry(tmp_path).ranks[0]
    assert (r.records, r.bad) == (3, 1)
    assert math.isclose(r.metrics["loss"].overall_high() or 0, 1.0)


def test_worker_processes_give_the_same_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainwarden.report import _run_telemetry

    for rank in range(3):
        _write(tmp_path, rank, [_line(s, rank, loss=float(s % 7)) for s in range(1, 301)])
    _write(tmp_path, 3, "garbage\n")
    one = read_telemetry(tmp_path, bins=10, workers=1)
    monkeypatch.setattr(_run_telemetry, "PARALLEL_MIN_BYTES", 0)
    seen: list[tuple[int, int]] = []
    two = read_telemetry(
        tmp_path, bins=10, workers=2, progress=lambda done, total: seen.append((done, total))
    )
    assert one == two
    assert seen[-1][0] == seen[-1][1]
