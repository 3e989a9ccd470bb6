"""Pickle streams inside any container: run the symbolic machine and let the policy judge.

Data within the read budget is read and parsed once; past it, reads grow geometrically from
a window, so a pickle followed by gigabytes of storage bytes (legacy torch) stays cheap.
"""

from __future__ import annotations

import base64
import codecs
import warnings
from dataclasses import replace
from typing import TYPE_CHECKING

from trainwarden.findings import Finding, Location, Severity, Verdict
from trainwarden.scan._formats._base import Blob, Context, MemoryBlob, SubBlob, join_member

if TYPE_CHECKING:
    from trainwarden.scan._pickle import PickleAnalysis

__all__ = ["analyse_stream", "judge", "report_trailing"]

# Past the read budget, the first window: reading 16 MiB costs milliseconds, re-parsing a
# pickle that outgrew a smaller window costs far more (most pickles fit in this one).
_FIRST_WINDOW = 16 << 20


def judge(
    ctx: Context,
    analysis: PickleAnalysis,
    member: str | None,
    *,
    base: int = 0,
    source: Blob | None = None,
) -> None:
    """Add the policy's findings for one analysed pickle, nested payloads included.

    ``base`` is added to the offsets when the analysed buffer started inside the member.
    ``source`` is the blob the analysis offsets (plus ``base``) point into: the payloads
    the pickle hands to nested loaders are read from it and analysed as members of their
    own. Without it they are not analysed, and the nested loads stay unverified.
    """
    nested_safe = False
    if analysis.nested and source is not None:
        nested_safe = _analyse_nested(ctx, analysis, member, source, base)
    if analysis.embedded and source is not None:
        _analyse_embedded(ctx, analysis, member, source, base, ctx.depth)
    findings = ctx.policy.judge(analysis, Location(ctx.path, member), nested_safe=nested_safe)
    if analysis.shared_memo is not None:
        findings += _shared_memo_findings(ctx, analysis.shared_memo, member, findings)
    if base:
        findings = tuple(_shift(f, base) for f in findings)
    for finding in findings:
        ctx.record(finding)


def _shared_memo_findings(
    ctx: Context, shared: PickleAnalysis, member: str | None, seen: tuple[Finding, ...]
) -> tuple[Finding, ...]:
    """Findings of the reading by an Unpickler reused across loads (memo kept), not yet seen.

    No common loader reads a file that way (pickle.load and torch.load make a fresh
    unpickler for each pickle), and for legitimate streams of protocol 4+ it reads the
    wrong memo entries (torch's legacy format saved with ``pickle_protocol=5`` turns into
    calls of ``int.HalfStorage``). So when that reading is malformed (the loader stops with
    an error) only its known-dangerous imports are reported; a well-formed reading counts
    in full.
    """
    from trainwarden.scan._pickle import RULE_MALFORMED

    well_formed = shared.complete and not any(i.rule_id == RULE_MALFORMED for i in shared.issues)
    keys = {(f.rule_id, f.evidence) for f in seen}
    out: list[Finding] = []
    for finding in ctx.policy.judge(shared, Location(ctx.path, member)):
        if (finding.rule_id, finding.evidence) in keys:
            continue
        if not well_formed and finding.verdict is not Verdict.UNSAFE:
            continue
        keys.add((finding.rule_id, finding.evidence))
        out.append(
            replace(
                finding,
                message=f"{finding.message} (when one Unpickler is reused for every pickle)",
            )
        )
    return tuple(out)


def _analyse_nested(
    ctx: Context, analysis: PickleAnalysis, member: str | None, source: Blob, base: int
) -> bool:
    """Analyse every payload handed to a nested loader; True when each one came out safe.

    ``torch.storage._load_from_bytes`` (what ``pickle.dumps`` of a tensor writes) runs
    ``torch.load(weights_only=False)`` on its bytes literal, so that literal is a file of its
    own to the loader: it goes through the dispatcher like an archive member, one nesting
    level deeper (``Limits.max_nesting`` bounds the recursion of payloads in payloads).
    """
    safe = True
    done: set[tuple[int, int]] = set()
    for payload in analysis.nested:
        span = (payload.start, payload.end)
        if span in done:
            continue  # one literal loaded many times (memo GET): its findings are the same
        done.add(span)
        ctx.check_time(member)
        start = base + payload.start
        where = join_member(member, f"(nested@{start})")
        before = len(ctx.findings)
        sub = SubBlob(source, start, payload.end - payload.start)
        if sub.size < payload.end - payload.start:
            ctx.unknown("pickle.nested-truncated", "nested payload runs past the data", where)
        else:
            ctx.analyse(sub, where, ctx.depth + 1)
        if any(f.verdict is not Verdict.SAFE for f in ctx.findings[before:]):
            safe = False
    return safe


def _analyse_embedded(
    ctx: Context, analysis: PickleAnalysis, member: str | None, source: Blob, base: int, depth: int
) -> None:
    """Judge each pickle kept as data in a literal (raw bytes, base64 or hex text).

    This load does not run it, so nothing found there is ``unsafe``; but whoever unpickles
    the field does (``torch.distributed.checkpoint`` unpickles the bytes it saved for
    non-tensor state, custom loaders decode base64), so a pickle there that is not safe makes
    the file ``unknown`` (``pickle.embedded-pickle``), naming what it would import. Only a
    complete, well-formed pickle that imports something counts: text that merely looks like
    base64 or hex, or bytes that start like a pickle, stay data.
    """
    if depth >= ctx.limits.max_nesting:
        return
    done: set[tuple[int, int]] = {(p.start, p.end) for p in analysis.nested}
    for start, end in analysis.embedded:
        if (start, end) in done:
            continue  # a payload handed to a nested loader: analysed as such already
        done.add((start, end))
        ctx.check_time(member)
        decoded = _decode_embedded(bytes(source.read(base + start, end - start)))
        found = ((d, _embedded_analysis(ctx, d)) for d in decoded)
        data, inner = next(((d, a) for d, a in found if a is not None), (b"", None))
        if inner is None:
            continue
        where = join_member(member, f"(data@{base + start})")
        sub = ctx.policy.judge(inner, Location(ctx.path, where)) if inner.imports else ()
        bad = sorted({f.evidence or f.rule_id for f in sub if f.verdict is not Verdict.SAFE})
        if bad:
            ctx.unknown(
                "pickle.embedded-pickle",
                "a pickle kept as data would import "
                f"{', '.join(bad[:8])} when unpickled (this load does not run it; code that "
                "unpickles the field does)",
                member,
                offset=base + start,
                evidence=", ".join(bad[:8]),
                severity=Severity.HIGH,
            )
        if inner.embedded:
            _analyse_embedded(ctx, inner, where, MemoryBlob(data), 0, depth + 1)


def _decode_embedded(raw: bytes) -> list[bytes]:
    """Every pickle a decoder could read from a literal (as is, base64 or hex): none, usually.

    The literal's bytes as they sit in the pickle: a UNICODE or STRING argument still has
    its escapes, so both unescapings are tried. Decoders are lenient, and so is this:
    ``bytes.fromhex`` skips whitespace, ``base64.b64decode`` (not validating, its default)
    every character outside its alphabet (line breaks, indentation), and the URL-safe
    alphabet is ``urlsafe_b64decode``'s. Only a decoding that starts like a pickle is kept
    (PROTO, or how protocols 0 and 1 start); the caller keeps only complete pickles that
    import something.
    """
    from trainwarden.scan._pickle import starts_like_pickle

    texts = [raw]
    if b"\\" in raw:
        for unescape in (codecs.escape_decode, codecs.raw_unicode_escape_decode):
            try:
                with warnings.catch_warnings():  # "\u" is no escape to escape_decode
                    warnings.simplefilter("ignore", DeprecationWarning)
                    text = unescape(raw)[0]
            except (ValueError, UnicodeDecodeError):
                continue
            texts.append(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    out: list[bytes] = []
    for text in texts:
        for decode in _DECODERS:
            try:
                data = decode(text)
            except (ValueError, UnicodeDecodeError):
                continue
            if starts_like_pickle(data) and data not in out:
                out.append(data)
    return out


def _from_hex(text: bytes) -> bytes:
    return bytes.fromhex(text.decode("ascii"))


def _from_urlsafe_base64(text: bytes) -> bytes:
    if b"-" not in text and b"_" not in text:
        raise ValueError("not the URL-safe alphabet")
    return base64.b64decode(text, altchars=b"-_")


# As is, hex, base64, URL-safe base64 (the text's first bytes say which may apply).
_DECODERS = (lambda text: text, _from_hex, base64.b64decode, _from_urlsafe_base64)


def _embedded_analysis(ctx: Context, data: bytes) -> PickleAnalysis | None:
    """The analysis of ``data`` when it is a complete pickle that imports or embeds one."""
    from trainwarden.scan._pickle import RULE_MALFORMED, RULE_TRUNCATED, analyse_pickle

    inner = analyse_pickle(data, limits=ctx.limits, deadline=ctx.deadline, max_ops=ctx.opcodes_left)
    ctx.opcodes_used += inner.work
    if not inner.complete or not (inner.imports or inner.embedded):
        return None
    if any(i.rule_id in (RULE_MALFORMED, RULE_TRUNCATED) for i in inner.issues):
        return None
    return inner


def _shift(finding: Finding, base: int) -> Finding:
    loc = finding.location
    if loc.offset is None:
        return finding
    return replace(finding, location=replace(loc, offset=loc.offset + base))


def _ran_out(
    ctx: Context,
    data: bytes | memoryview,
    analyses: list[PickleAnalysis],
    end: int,
    max_pickles: int,
) -> bool:
    """True when the window may have cut the pickle data short (a bigger one could help)."""
    from trainwarden.scan._pickle import analyse_pickle

    if not analyses:
        return False
    last = analyses[-1]
    if not last.complete:
        return _truncated(last)
    if len(analyses) >= max_pickles:
        return False
    if end >= len(data):
        return True  # complete pickles up to the window's end: more may follow beyond it
    # The pickle that stopped the stream may only have been cut by the window.
    probe = analyse_pickle(
        data, end, limits=ctx.limits, deadline=ctx.deadline, max_ops=ctx.opcodes_left
    )
    ctx.opcodes_used += probe.work
    return _truncated(probe)


def _truncated(analysis: PickleAnalysis) -> bool:
    return any(
        issue.rule_id in ("pickle.truncated", "limit.pickle-bytes") for issue in analysis.issues
    )


def analyse_stream(
    ctx: Context,
    blob: Blob,
    member: str | None,
    *,
    start: int = 0,
    max_pickles: int | None = None,
    judge_all: bool = True,
) -> tuple[list[PickleAnalysis], int]:
    """Analyse consecutive pickles at ``start`` as repeated ``pickle.load`` calls would.

    Returns the analyses and the offset (in ``blob``) where pickle data stopped. When not
    even the first pickle gets to an import, the list holds that failed first pickle alone
    (see ``PickleAnalysis.inert``). Every analysis is judged by the policy unless
    ``judge_all`` is false (the caller judges).
    """
    from trainwarden.scan._pickle import analyse_pickle, analyse_pickle_stream

    limits = ctx.limits
    available = max(0, blob.size - start)
    # The window is held in memory while the machine runs: half the memory bound at most.
    budget = min(limits.max_pickle_bytes, limits.max_memory // 2)
    cap = min(available, budget)
    # Reading is cheap next to parsing (the machine costs ~100x more per byte than a read),
    # and a grown window re-parses everything before it: read all the data at once when it
    # fits the budget (members and plain pickle files are pickle data to their end), and
    # grow geometrically only past it (a legacy torch pickle followed by gigabytes of storage
    # bytes then still costs only the pickle's bytes plus one budget-sized read).
    window = cap if available <= budget else min(available, _FIRST_WINDOW)
    if max_pickles is None:
        max_pickles = limits.max_pickles_per_stream
    while True:
        ctx.check_time(member)
        data = blob.read(start, window)
        analyses, end = analyse_pickle_stream(
            data,
            0,
            limits=limits,
            max_pickles=max_pickles,
            deadline=ctx.deadline,
            max_ops=ctx.opcodes_left,
        )
        if not analyses:
            first = analyse_pickle(
                data, 0, limits=limits, deadline=ctx.deadline, max_ops=ctx.opcodes_left
            )
            analyses = [first]
            end = 0
        # Every reading counts against the input's budget (Limits.max_opcodes), so thousands
        # of members or pickles cannot multiply the time one pickle may take.
        ctx.opcodes_used += sum(
            a.work + (a.shared_memo.work if a.shared_memo is not None else 0) for a in analyses
        )
        ran_out = _ran_out(ctx, data, analyses, end, max_pickles)
        if window >= cap or not ran_out:
            break
        window = min(cap, window * 8)
    if window < available and ran_out:
        ctx.unknown(
            "limit.pickle-bytes",
            "pickle data runs past the largest pickle the scanner reads; the rest was not analysed",
            member,
            offset=start + window,
            evidence=f"read {budget} bytes (max_pickle_bytes={limits.max_pickle_bytes}, "
            f"max_memory={limits.max_memory})",
        )
    if (
        max_pickles < limits.max_pickles_per_stream
        and len(analyses) < limits.max_pickles_per_stream
    ):
        # The format says how many pickles the loader reads (torch: one per record, five in
        # the legacy format); stopping there is not a limit being hit.
        analyses[-1] = replace(
            analyses[-1],
            issues=tuple(i for i in analyses[-1].issues if i.rule_id != "limit.pickles-per-stream"),
        )
    if judge_all:
        for analysis in analyses:
            judge(ctx, analysis, member, base=start, source=blob)
    return analyses, start + end


def report_trailing(ctx: Context, blob: Blob, member: str | None, end: int) -> None:
    """Note bytes after the last pickle (informational: no unpickler reads them as code)."""
    if end < blob.size:
        ctx.add(
            "pickle.trailing-data",
            Severity.INFO,
            f"{blob.size - end} byte(s) after the last pickle are not pickle data",
            member,
            verdict=Verdict.SAFE,
            offset=end,
        )
