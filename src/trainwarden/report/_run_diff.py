"""``--against``: what differs between a run and a clean run of the same job (differences only).

Each run is reduced to *facts* (code, environment, seeds, data order, hyperparameters) that
should be equal between two runs of the same job, leaving out what always differs (times,
pids, hosts, run ids). Telemetry adds the data order and the learning rate per step bin, on a
common grid, so the first step where they part is found without holding either run in memory.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from trainwarden.report._run_ledger import as_int, as_json, as_text, short_digest
from trainwarden.report._run_model import DiffRow, Provenance, RunComparison, RunInfo
from trainwarden.report._run_provenance import flatten
from trainwarden.report._run_telemetry import Telemetry

if TYPE_CHECKING:
    from trainwarden.ledger import Entry

__all__ = ["AREAS", "collect_facts", "compare_facts"]

#: Areas compared, in display order.
AREAS = ("code", "environment", "seeds", "data order", "hyperparameters")
# Parameter names that differ between any two runs and say nothing about the job.
_RUN_SPECIFIC = re.compile(
    r"(^|[._\[])(time|started|startedon|finished|finishedon|ended|pid|host|hostname|node|"
    r"nodes|invocation|invocationid|run|run_id|runid|run_dir|rundir|seconds|duration|user|uid|"
    r"cwd|ledger|ephemeralkey)"
    r"($|[._\]])",
    re.IGNORECASE,
)
_MAX_ROWS = 300


def collect_facts(
    entries: Sequence[Entry], info: RunInfo | None, provenance: Provenance
) -> dict[str, dict[str, str]]:
    """The comparable facts of a run, by area."""
    facts: dict[str, dict[str, str]] = {a: {} for a in AREAS}
    code, env, seeds, data, hyper = (facts[a] for a in AREAS)
    if info is not None:
        if info.command:
            code["command"] = " ".join(info.command)
        if info.launcher:
            env["launcher"] = info.launcher
        if info.world_size is not None:
            env["world size"] = str(info.world_size)
    attach: dict[str, dict[int, str]] = defaultdict(dict)
    reseeds: dict[int, list[str]] = defaultdict(list)
    for e in entries:
        d = e.data
        if e.event == "run.start":
            if d.get("seed_commitment") is not None:
                seeds["seed commitment"] = as_json(d.get("seed_commitment"), 200)
            for key, value in flatten(d.get("config"), "config"):
                hyper[key] = value
        elif e.event == "preflight.code":
            for k in ("root", "commit", "dirty", "dirty_digest", "untracked"):
                if k in d:
                    code[k.replace("_", " ")] = as_json(d.get(k), 200)
        elif e.event == "preflight.env":
            env["environment verdict"] = as_text(d.get("verdict"), 40) or "?"
            lock = d.get("lock")
            env["environment lock"] = as_json(lock, 300) if lock is not None else "none"
            if d.get("summary") is not None:
                env["environment summary"] = as_json(d.get("summary"), 300)
        elif e.event == "preflight.inputs":
            files = d.get("files")
            if isinstance(files, list):
                for f in files[:_MAX_ROWS]:
                    if isinstance(f, Mapping):
                        path = as_text(f.get("path"), 300) or "?"
                        data[f"input {path}"] = as_text(f.get("sha256"), 100) or "?"
        elif e.event == "preflight.scan":
            files = d.get("files")
            if isinstance(files, list):
                for f in files[:_MAX_ROWS]:
                    if isinstance(f, Mapping):
                        path = as_text(f.get("path"), 300) or "?"
                        code[f"loaded file {path}"] = as_text(f.get("sha256"), 100) or "?"
        elif e.event == "guard.attach":
            rank = as_int(d.get("rank"))
            if rank is None:
                continue
            for k in ("optimizer", "params", "checks", "k", "sampling", "world_size"):
                if k in d:
                    attach[k][rank] = as_json(d.get(k), 200)
        elif e.event == "guard.rng" and d.get("when") == "attach":
            rank = as_int(d.get("rank"))
            fps = d.get("fingerprints")
            if rank is not None and isinstance(fps, Mapping):
                for gen, fp in sorted(fps.items()):
                    seeds[f"rank {rank} {as_text(gen, 20)} RNG at attach"] = as_json(fp, 120)
        elif e.event == "guard.reseed":
            rank = as_int(d.get("rank"))
            if rank is not None:
                reseeds[rank].append(
                    f"{as_text(d.get('function'), 60) or '?'}({as_text(d.get('seed'), 60) or ''}) "
                    f"from {as_text(d.get('caller'), 200) or '?'}"
                )
    for k, per_rank in attach.items():
        values = set(per_rank.values())
        if len(values) == 1:
            hyper[f"guard {k}"] = next(iter(values))
        else:
            for rank, value in sorted(per_rank.items()):
                hyper[f"guard {k} (rank {rank})"] = value
    for rank, calls in sorted(reseeds.items()):
        seeds[f"rank {rank} reseeds during the run"] = "; ".join(calls[:5]) + (
            f" (+{len(calls) - 5})" if len(calls) > 5 else ""
        )
    for name, digest in provenance.dependencies:
        code[f"dependency {name}"] = digest
    for key, value in provenance.external_parameters:
        if not _RUN_SPECIFIC.search(key):
            hyper[f"parameter {key}"] = value
    for key, value in provenance.internal_parameters:
        if not _RUN_SPECIFIC.search(key):
            env[f"internal {key}"] = value
    return facts


def compare_facts(
    *,
    mine: Mapping[str, Mapping[str, str]],
    clean: Mapping[str, Mapping[str, str]],
    telemetry: Telemetry,
    clean_telemetry: Telemetry,
    clean_dir: str,
    clean_run_id: str | None,
    notes: Sequence[str] = (),
) -> RunComparison:
    """Differences between this run's facts and telemetry and the clean run's."""
    rows: list[DiffRow] = []
    same: dict[str, int] = {}
    for area in AREAS:
        a, b = mine.get(area, {}), clean.get(area, {})
        equal = 0
        for item in sorted(set(a) | set(b)):
            if a.get(item) == b.get(item):
                equal += 1
                continue
            rows.append(DiffRow(area, item, a.get(item, "—"), b.get(item, "—")))
        same[area] = equal
    rows.extend(_telemetry_rows(telemetry, clean_telemetry, same))
    rows.sort(key=lambda r: (AREAS.index(r.area) if r.area in AREAS else 9,))
    out_notes = list(notes)
    if len(rows) > _MAX_ROWS:
        out_notes.append(f"{len(rows) - _MAX_ROWS} more differences not shown")
        rows = rows[:_MAX_ROWS]
    return RunComparison(
        clean_dir=clean_dir,
        clean_run_id=clean_run_id,
        rows=tuple(rows),
        same=same,
        notes=tuple(out_notes),
    )


def _telemetry_rows(mine: Telemetry, clean: Telemetry, same: dict[str, int]) -> list[DiffRow]:
    rows: list[DiffRow] = []
    if not mine.ranks or not clean.ranks:
        return rows
    if mine.width != clean.width:
        rows.append(
            DiffRow(
                "data order",
                "telemetry grid",
                f"{mine.width} steps a bin",
                f"{clean.width} steps a bin (not comparable bin by bin)",
            )
        )
        return rows
    data_first: dict[int | None, list[int]] = defaultdict(list)
    lr_first: dict[tuple[int | None, str, str], list[int]] = defaultdict(list)
    steps_diff = []
    for r in mine.ranks:
        c = clean.rank(r.rank)
        if c is None:
            rows.append(DiffRow("data order", f"rank {r.rank} telemetry", "present", "—"))
            continue
        if (r.last_step or 0) != (c.last_step or 0):
            steps_diff.append((r.rank, r.last_step, c.last_step))
        first = None
        for i, (x, y) in enumerate(zip(r.data_digests, c.data_digests, strict=False)):
            if x is not None and y is not None and x != y:
                first = i
                break
        data_first[first].append(r.rank)
        lr_a, lr_b = r.metric("lr"), c.metric("lr")
        key: tuple[int | None, str, str] = (None, "", "")
        if lr_a is not None and lr_b is not None:
            for i, (a, b) in enumerate(zip(lr_a.median, lr_b.median, strict=False)):
                if a is None or b is None:
                    continue
                if abs(a - b) > 1e-9 * max(abs(a), abs(b), 1e-30):
                    key = (i, f"{a:.4g}", f"{b:.4g}")
                    break
        lr_first[key].append(r.rank)
    same["data order"] = same.get("data order", 0) + len(data_first.get(None, []))
    for index, ranks in sorted((k, v) for k, v in data_first.items() if k is not None):
        start, end = mine.bin_steps(index)
        rows.append(
            DiffRow(
                "data order",
                f"{_ranks(ranks)} batches",
                f"differ from steps {start}–{end} on",
                "as in the clean run before that",
            )
        )
    same["hyperparameters"] = same.get("hyperparameters", 0) + len(lr_first.get((None, "", ""), []))
    for (where, x, y), ranks in sorted(
        ((k, v) for k, v in lr_first.items() if k[0] is not None), key=lambda kv: kv[0][0] or 0
    ):
        start, end = mine.bin_steps(where if where is not None else 0)
        rows.append(
            DiffRow(
                "hyperparameters",
                f"{_ranks(ranks)} learning rate from steps {start}–{end}",
                f"median {x}",
                f"median {y}",
            )
        )
    if steps_diff:
        rank, a, b = steps_diff[0]
        rows.append(
            DiffRow(
                "data order",
                f"last step ({len(steps_diff)} rank(s), e.g. rank {rank})",
                str(a),
                str(b),
            )
        )
    return rows


def _ranks(ranks: Sequence[int]) -> str:
    ranks = sorted(ranks)
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    if ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"ranks {ranks[0]}–{ranks[-1]}"
    shown = ", ".join(str(r) for r in ranks[:10])
    return f"ranks {shown}" + ("…" if len(ranks) > 10 else "")


def digest_text(value: object) -> str:
    """Short digest for a diff cell."""
    return short_digest(value) or as_json(value, 120)
