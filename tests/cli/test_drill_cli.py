"""`trainwarden drill`: arguments, exit codes, the table and the JSON."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainwarden.cli import main
from trainwarden.cli.drill import render_text
from trainwarden.drill import Detection, DrillResult, Effect, Person, ScenarioResult

INSIDER = Person(
    via="ledger", identity="intern@drill", user="uid4242", uid=4242, host="node1", pid=77
)


def _result(*rows: ScenarioResult) -> DrillResult:
    return DrillResult(
        control=ScenarioResult(
            scenario="control",
            technique="-",
            title="clean control run",
            run="r-control",
            status="clean",
        ),
        scenarios=rows,
        ranks=2,
        insider=Person(via="drill", identity="intern@drill", uid=4242),
        insider_mode="separate-uid",
        components={"guard": False},
        seconds=12.5,
        notes=("the insider ran as uid 4242",),
    )


def test_table_names_check_delay_insider_and_evidence() -> None:
    detected = ScenarioResult(
        scenario="T7-rolled-back",
        technique="T7",
        title="colleague's checkpoint rolled back",
        run="r-t7",
        status="detected",
        detections=(
            Detection(
                "trainwarden verify",
                "lineage.rolled-back",
                "rolled back",
                "2026-01-01T00:00:00.500000Z",
                0.5,
                None,
                True,
                "check",
                Person(via="file owner", uid=4242, user="uid4242"),
            ),
        ),
        insider=INSIDER,
        effect=Effect(True, "ckpt-000040.pt now holds the previous checkpoint"),
    )
    unavailable = ScenarioResult(
        scenario="T3-sleeping-optimizer",
        technique="T3",
        title="optimizer sleeps at random on one rank",
        run="r-t3",
        status="unavailable",
        reason="guard not installed (trainwarden.guard, the runtime checks inside each rank)",
        insider=INSIDER,
    )
    text = render_text(_result(detected, unavailable))
    lines = text.splitlines()
    assert lines[0] == (
        "trainwarden drill: 2 ranks, insider intern@drill (uid 4242) (separate-uid), 12.5 s"
    )
    row = next(line for line in lines if line.startswith("T7"))
    assert "DETECTED" in row
    assert "trainwarden verify [lineage.rolled-back]" in row
    assert "-, 0.5 s" in row
    assert "intern@drill (uid 4242) @node1 pid 77" in row
    assert "(file owner (uid 4242): matches)" in row
    t3 = next(line for line in lines if line.startswith("T3"))
    assert "NOT DETECTED" in t3
    assert "guard not installed" in t3
    assert "  T3-sleeping-optimizer: unavailable: guard not installed" in text
    assert "2 attack(s): 1 detected, 1 not; control run clean." in text


def test_bad_ranks_and_unknown_scenarios_are_usage_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["drill", "--ranks", "1", "--no-progress"]) == 2
    assert "--ranks must be between 2" in capsys.readouterr().err
    assert main(["drill", "--only", "T9", "--no-progress"]) == 2
    assert "unknown drill scenario 'T9'" in capsys.readouterr().err
    assert main(["drill", "--ranks", "two"]) == 2


def test_keep_into_a_non_empty_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x").write_text("x", encoding="utf-8")
    assert main(["drill", "--keep", str(tmp_path), "--only", "T8", "--no-progress"]) == 2
    assert "new or empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--report", "{d}", "--only", "T8"], "is a directory"),
        (["--report", "{d}/r.html", "--output", "{d}/r.html", "--only", "T8"], "same file"),
        (["--output", "{d}", "--only", "T8"], "is a directory"),
        (["--report", "{d}/keep/r.html", "--keep", "{d}/keep"], "inside the --keep directory"),
        (["--output", "{d}/keep/o.txt", "--keep", "{d}/keep"], "inside the --keep directory"),
        (["--report", ""], "empty path"),
        # The HTML index is written as a whole file, never as a stream: a device is refused
        # now, not after the drill's minutes of work.
        (["--report", "/dev/full"], "it is a device"),
    ],
)
def test_unwritable_outputs_are_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    args = [a.replace("{d}", str(tmp_path)) for a in argv]
    assert main(["drill", *args, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err
    # Nothing was built: no sandbox kept, no report half-written.
    assert not (tmp_path / "keep").exists()
    assert not (tmp_path / "r.html").exists()


# The whole drill through this command, with --keep and --output, is the CI drill test:
# tests/unit/drill/test_drill_run.py.
