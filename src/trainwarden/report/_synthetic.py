"""A synthetic run directory written through the real APIs, for tests, screenshots and benchmarks.

It writes what ``trainwarden run`` and the guard write (``docs/events.md``): ``run.json``, a
real ledger (``trainwarden.ledger.Ledger``, real Ed25519 keys from ``trainwarden.keys``, one
writer per rank and one for the supervisor), checkpoints really signed with
``trainwarden.sign.sign_path``, per-rank telemetry, a stack dump and a DSSE-signed provenance
statement. A *sabotaged* run then replays the incident: a rank whose optimizer sleeps, a rank
whose updates are perturbed, a learning-rate change, data order and seed changed, a SIGTERM
with its sender, a SIGKILL, a checkpoint modified and one deleted, a ledger entry edited,
telemetry edited, an unexpected egress endpoint. No training runs: numbers are drawn from a
seeded generator, so two runs with the same seed agree until the sabotage begins.
"""

# ruff: noqa: S311  # seeded generators draw synthetic numbers, nothing secret

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainwarden._canonical import canonical_json
from trainwarden._fs import atomic_write

__all__ = ["HOSTILE", "SyntheticRun", "write_synthetic_run"]

#: Strings that would run script if a report ever put them in a page unescaped. A hostile
#: run carries them in paths, commands, messages, host names and identities.
HOSTILE = (
    "</script><script>window.__xss=1</script>",
    "<img src=x onerror=window.__xss=2>",
    '"><svg onload=window.__xss=3>',
    "';window.__xss=4;'",
    "<!-- --><style>*{display:none}</style>",
    "\u2028\u2029]]>",
)


@dataclass(frozen=True, slots=True)
class SyntheticRun:
    """What :func:`write_synthetic_run` wrote.

    Attributes:
        run_dir: The run directory.
        run_id: The run's id.
        keys: Trusted public key files (supervisor and job), for ``--key``.
        seal_key: The sealer's public key file, for ``--seal-pubkey``.
        insider_key: The drill insider's public key file (``None`` unless ``drill``).
        checkpoints: Checkpoint files signed during the run.
        sabotage: What was done to the run, one phrase each (empty for a clean run).
    """

    run_dir: Path
    run_id: str
    keys: tuple[Path, ...]
    seal_key: Path
    insider_key: Path | None
    checkpoints: tuple[Path, ...]
    sabotage: tuple[str, ...]


def write_synthetic_run(
    run_dir: str | os.PathLike[str],
    *,
    ranks: int = 4,
    steps: int = 400,
    sabotaged: bool = False,
    drill: bool = False,
    hostile: bool = False,
    seed: int = 0,
    checkpoint_every: int | None = None,
    keys_dir: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SyntheticRun:
    """Write a synthetic run directory (see the module docstring).

    Args:
        run_dir: Directory to create (must not exist or be empty).
        ranks: World size.
        steps: Optimizer steps per rank.
        sabotaged: Replay the incident's techniques (else a clean run).
        drill: Also write ``drill.scenario`` events signed by an insider key.
        hostile: Put script-injection strings in every attacker-controlled text.
        seed: Seed of every number drawn; a clean and a sabotaged run with the same seed are
            identical until the sabotage begins.
        checkpoint_every: Steps between checkpoints (default: a tenth of the run).
        keys_dir: Where to create the keys (default: ``<run_dir>-keys`` beside it).
        run_id: The run id (default: from the directory name).
        progress: Called with ``(steps_done, steps)``.

    Returns:
        What was written.
    """
    if ranks < 2 or steps < 50:
        raise ValueError("a synthetic run needs at least 2 ranks and 50 steps")
    return _Writer(
        Path(run_dir),
        ranks=ranks,
        steps=steps,
        sabotaged=sabotaged or drill,
        drill=drill,
        hostile=hostile,
        seed=seed,
        checkpoint_every=checkpoint_every or max(1, steps // 10),
        keys_dir=Path(keys_dir) if keys_dir is not None else None,
        run_id=run_id,
        progress=progress,
    ).write()


class _Writer:
    def __init__(
        self,
        run_dir: Path,
        *,
        ranks: int,
        steps: int,
        sabotaged: bool,
        drill: bool,
        hostile: bool,
        seed: int,
        checkpoint_every: int,
        keys_dir: Path | None,
        run_id: str | None,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.root = run_dir
        self.ranks = ranks
        self.steps = steps
        self.sabotaged = sabotaged
        self.drill = drill
        self.hostile = hostile
        self.seed = seed
        self.every = checkpoint_every
        self.keys_dir = keys_dir or run_dir.with_name(run_dir.name + "-keys")
        self.run_id = run_id or run_dir.name
        self.progress = progress
        self.rng = random.Random(seed)
        self.sabotage: list[str] = []
        # Steps at which each act of sabotage begins (fractions of the run, as in a drill).
        n = steps
        self.at_code = int(n * 0.30)
        self.at_flip = int(n * 0.45)
        self.at_data = int(n * 0.50)
        self.at_lr = int(n * 0.55)
        self.at_kill = int(n * 0.90)
        self.sleeper = 3 % ranks
        self.flipper = 5 % ranks
        self.victim = 2 % ranks
        self.killed = 6 % ranks if ranks > 6 else ranks - 1
        self.exfil = 4 % ranks
        self.text = (
            (lambda s, i: f"{s} {HOSTILE[i % len(HOSTILE)]}") if hostile else (lambda s, i: s)
        )

    # -- setup ----------------------------------------------------------------------------

    def write(self) -> SyntheticRun:
        from trainwarden.keys import PrivateKey
        from trainwarden.ledger import Ledger

        if self.root.exists() and any(self.root.iterdir()):
            raise ValueError(f"{self.root} exists and is not empty")
        for sub in ("telemetry", "stacks", "checkpoints"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        self.supervisor_key = PrivateKey.generate("supervisor@login1")
        self.job_key = PrivateKey.generate("job-llm7@cluster")
        self.seal_key = PrivateKey.generate("ops-sealer@secure1")
        insider_identity = self.text("mallory@node7", 0) if self.drill else "mallory@node7"
        self.insider_key = PrivateKey.generate(
            insider_identity.replace("\u2028", " ").replace("\u2029", " ").strip()
        )
        key_files = []
        for name, key in (("supervisor", self.supervisor_key), ("job", self.job_key)):
            path = self.keys_dir / f"{name}.pub"
            atomic_write(path, key.public.to_pem())
            key_files.append(path)
        seal_pub = self.keys_dir / "sealer.pub"
        atomic_write(seal_pub, self.seal_key.public.to_pem())
        insider_pub = None
        if self.drill:
            insider_pub = self.keys_dir / "insider.pub"
            atomic_write(insider_pub, self.insider_key.public.to_pem())
        self.ledger_dir = self.root / "ledger"
        self.command = [
            "torchrun",
            f"--nproc-per-node={self.ranks}",
            "train.py",
            "--config",
            "configs/llm7.yaml",
        ]
        if self.hostile:
            self.command.append(f"--note={HOSTILE[0]}")
        self.started = _now()
        self.t0 = time.time()
        self.commit = hashlib.sha256(f"commit-{self.seed}".encode()).hexdigest()[:40]
        self.pids = {r: 40000 + 17 * r for r in range(self.ranks)}
        self.agent_pid = 39990
        self.sup = Ledger(self.ledger_dir, key=self.supervisor_key, fsync="never")
        self.writers = [
            Ledger(self.ledger_dir, key=self.job_key, fsync="never") for _ in range(self.ranks)
        ]
        self.insider = (
            Ledger(self.ledger_dir, key=self.insider_key, fsync="never") if self.drill else None
        )
        self._write_run_json(ended=None, status=None)
        try:
            checkpoints = self._run()
        finally:
            for w in self.writers:
                w.close()
            if self.insider is not None:
                self.insider.close()
        self._provenance(checkpoints)
        self.sup.close()
        self._seal()
        if self.sabotaged:
            self._after_the_run(checkpoints)
        return SyntheticRun(
            run_dir=self.root,
            run_id=self.run_id,
            keys=tuple(key_files),
            seal_key=seal_pub,
            insider_key=insider_pub,
            checkpoints=tuple(checkpoints),
            sabotage=tuple(self.sabotage),
        )

    def _write_run_json(self, *, ended: str | None, status: int | None) -> None:
        data = {
            "schema_version": 1,
            "run_id": self.run_id,
            "command": self.command,
            "launcher": "torchrun",
            "cwd": "/srv/llm7",
            "ledger": "ledger",
            "world_size": self.ranks,
            "nodes": sorted({_node(r) for r in range(self.ranks)}),
            "started": self.started,
            "ended": ended,
            "exit": None if ended is None else {"status": status, "signal": None},
            "supervisor": {
                "pid": 39999,
                "host": "login1",
                "user": "alice",
                "key": self.supervisor_key.public.fingerprint,
            },
        }
        atomic_write(self.root / "run.json", canonical_json(data))

    # -- the run --------------------------------------------------------------------------

    def _run(self) -> list[Path]:
        sup = self.sup
        run = self.run_id
        sup.append(
            "run.start",
            run=run,
            command=self.command,
            launcher="torchrun",
            cwd="/srv/llm7",
            run_dir=str(self.root),
            world_size=self.ranks,
            config={"configs/llm7.yaml": _digest(f"config-{self.seed}")},
            seed_commitment=_digest(f"seed-{self.seed}"),
        )
        self._preflight()
        # torchrun's agent: a process of the job without a rank (it starts the ranks).
        sup.append(
            "process.start",
            run=run,
            rank=None,
            local_rank=None,
            node=None,
            pid=self.agent_pid,
            host=_node(0),
            role="process",
            restart=0,
        )
        for r in range(self.ranks):
            sup.append(
                "rank.start",
                run=run,
                rank=r,
                local_rank=r % 8,
                node=_node(r),
                pid=self.pids[r],
                host=_node(r),
            )
        for r, w in enumerate(self.writers):
            w.append(
                "guard.attach",
                run=run,
                rank=r,
                world_size=self.ranks,
                optimizer="torch.optim.AdamW",
                params=124_439_808,
                checks=[
                    "hyperparam",
                    "update",
                    "cross-rank",
                    "rng",
                    "data-order",
                    "timing",
                    "hooks",
                ],
                k=64,
                sampling="secret",
            )
            w.append(
                "guard.rng",
                run=run,
                rank=r,
                step=0,
                when="attach",
                fingerprints=self._rng_fingerprints(r, 0),
            )
            w.append(
                "egress.endpoint",
                run=run,
                host="127.0.0.1",
                port=29500,
                address="127.0.0.1",
                via="connect",
                rank=r,
                pid=self.pids[r],
            )
        files = [
            (self.root / "telemetry" / f"rank-{r}.jsonl").open(
                "w", encoding="utf-8", buffering=1 << 20
            )
            for r in range(self.ranks)
        ]
        checkpoints: list[Path] = []
        last = self.at_kill if self.sabotaged else self.steps
        try:
            self._steps(files, last, checkpoints)
        finally:
            for f in files:
                f.close()
        self._end(last)
        return checkpoints

    def _preflight(self) -> None:
        sup, run = self.sup, self.run_id
        tampered = self.sabotaged
        sup.append(
            "preflight.env",
            run=run,
            verdict="tampered" if tampered else "intact",
            summary={"distributions": 187, "modified": 1 if tampered else 0, "startup_hooks": 0},
            lock={"path": "/shared/locks/llm7-env.lock", "digest": _digest("lock")},
            findings=[
                {
                    "rule_id": "env.modified",
                    "severity": "high",
                    "message": "file does not match the hash in env.lock",
                    "location": {
                        "path": "/shared/venv/lib/python3.11/site-packages/torch/optim/adamw.py"
                    },
                }
            ]
            if tampered
            else [],
        )
        sup.append(
            "preflight.scan",
            run=run,
            paths=["/shared/ckpt/llm7-init"],
            verdict="safe",
            files=[
                {
                    "path": "/shared/ckpt/llm7-init/model.safetensors",
                    "verdict": "safe",
                    "sha256": _digest("init"),
                }
            ],
            findings=[],
        )
        sup.append(
            "preflight.code",
            run=run,
            root="/srv/llm7",
            commit=self.commit,
            dirty=False,
            dirty_digest=None,
            untracked=0,
        )
        sup.append(
            "preflight.inputs",
            run=run,
            files=[
                {"path": "/data/llm7/train.bin", "sha256": _digest("train"), "size": 8_000_000_000},
                {
                    "path": "configs/llm7.yaml",
                    "sha256": _digest(f"config-{self.seed}"),
                    "size": 1423,
                },
            ],
            kind="data-manifest",
        )
        sup.append(
            "preflight.access",
            run=run,
            path=str(self.root / "checkpoints"),
            role="checkpoints",
            writers=[
                {"kind": "user", "name": "alice", "via": "owner"},
                {"kind": "group", "name": "ml-team", "via": "mode"},
            ],
            verdict="warn",
        )
        sup.append(
            "preflight.decision",
            run=run,
            decision="proceed",
            reasons=["--preflight warn: environment tampered"] if tampered else [],
        )

    def _rng_fingerprints(self, rank: int, epoch: int) -> dict[str, Any]:
        return {
            g: _digest(f"rng-{self.seed}-{rank}-{g}-{epoch}")[:23]
            for g in ("torch", "numpy", "python")
        } | {"cuda": None}

    def _steps(self, files: list[Any], last: int, checkpoints: list[Path]) -> None:
        rng = self.rng
        R = self.ranks
        base = [(0.080 + 0.002 * rng.random(), 0.160 + 0.004 * rng.random()) for _ in range(R)]
        data_rngs = [random.Random(f"data-{self.seed}-{r}") for r in range(R)]
        sample_rng = random.Random(f"secret-{self.seed}")
        t = self.t0
        parent: str | None = None
        warmup = max(1, self.steps // 50)
        sleep_reports = 0
        for step in range(1, last + 1):
            sampled = sample_rng.random() < 0.125
            if self.sabotaged and step == self.at_data:
                data_rngs = [random.Random(f"data-hijacked-{self.seed}-{r}") for r in range(R)]
            work = []
            for r in range(R):
                fwd = base[r][0] * (1 + 0.03 * rng.gauss(0, 1))
                bwd = base[r][1] * (1 + 0.03 * rng.gauss(0, 1))
                opt = 0.012 * (1 + 0.05 * rng.gauss(0, 1))
                if rng.random() < 0.002:  # a garbage collection or a page fault
                    bwd += 0.02 * rng.random()
                if (
                    self.sabotaged
                    and r == self.sleeper
                    and step > self.at_code
                    and rng.random() < 0.15
                ):
                    opt += 0.4 + 1.2 * rng.random()  # the patched optimizer sleeps
                work.append((max(fwd, 1e-4), max(bwd, 1e-4), max(opt, 1e-4)))
            slowest = max(a + b + c for a, b, c in work)
            comm = 0.008 + 0.002 * rng.random()
            step_time = slowest + comm
            t += step_time
            progress_frac = step / self.steps
            lr = 3e-4 * min(1.0, step / warmup) * 0.5 * (1 + math.cos(math.pi * progress_frac))
            if self.sabotaged and step >= self.at_lr:
                lr *= 10
            loss0 = 2.1 + 8.0 * math.exp(-step / (self.steps / 6))
            for r in range(R):
                fwd, bwd, opt = work[r]
                loss = loss0 + 0.05 * rng.gauss(0, 1)
                grad = 0.9 + 3.0 * math.exp(-step / (self.steps / 8)) + 0.05 * rng.gauss(0, 1)
                residual = None
                checked = 0
                if sampled:
                    checked = 64
                    residual = 1e-7 * math.exp(rng.gauss(0, 0.5))
                    if self.sabotaged and r == self.flipper and step >= self.at_flip:
                        residual = 0.3 + 1.7 * rng.random()
                if self.sabotaged and step >= self.at_flip:
                    drift = (step - self.at_flip) / self.steps
                    loss += 0.6 * drift if r == self.flipper else 0.15 * drift
                    if r == self.flipper:
                        grad *= 1.0 + 2.0 * drift
                if self.sabotaged and step >= self.at_lr:
                    loss += 0.3 * (step - self.at_lr) / self.steps
                line = (
                    f'{{"step":{step},"rank":{r},"t":{t:.6f},"fwd":{fwd:.6f},"bwd":{bwd:.6f},'
                    f'"opt":{opt:.6f},"wait":{slowest - (fwd + bwd + opt) + comm:.6f},'
                    f'"step_time":{step_time:.6f},"loss":{loss:.5f},"grad_norm":{grad:.5f},'
                    f'"residual":{"null" if residual is None else f"{residual:.4g}"},'
                    f'"checked":{checked},"data":"b{data_rngs[r].getrandbits(64):016x}",'
                    f'"lr":{lr:.6g}}}\n'
                )
                files[r].write(line)
            self._events_at(step, lr)
            if self.sabotaged and self.sleeper is not None and step > self.at_code:
                every = max(1, self.steps // 12)
                if (step - self.at_code) % every == 5 and sleep_reports < 6:
                    sleep_reports += 1
                    self.writers[self.sleeper].append(
                        "guard.finding",
                        run=self.run_id,
                        rule_id="guard.timing",
                        technique="T3",
                        check="own-work",
                        severity="high",
                        message=self.text(
                            "optimizer step took 1.3 s, 96x its median of 13 ms, while the other "
                            "ranks waited for it in all-reduce",
                            2,
                        ),
                        evidence="opt 1.31 s; median 0.0136 s; peers' wait 1.29 s",
                        rank=self.sleeper,
                        step=step,
                        established=False,
                        pid=self.pids[self.sleeper],
                        host=_node(self.sleeper),
                    )
            if step % self.every == 0:
                parent = self._checkpoint(step, parent, checkpoints)
            if step % max(1, self.steps // 10) == 0:
                for r, w in enumerate(self.writers):
                    w.append(
                        "guard.rng",
                        run=self.run_id,
                        rank=r,
                        step=step,
                        when="periodic",
                        fingerprints=self._rng_fingerprints(r, step),
                    )
            if self.progress is not None and step % 1000 == 0:
                self.progress(step, last)

    def _checkpoint(self, step: int, parent: str | None, checkpoints: list[Path]) -> str:
        from trainwarden.sign import sign_path

        name = f"ckpt-{step}.pt"
        if self.hostile:
            name = f"ckpt-{step}-{HOSTILE[1]}.pt"
        path = self.root / "checkpoints" / name
        body = random.Random(f"ckpt-{self.seed}-{step}").randbytes(4096)
        atomic_write(path, b"PK\x03\x04synthetic-checkpoint\x00" + body)
        sig = sign_path(
            path,
            self.job_key,
            run=self.run_id,
            step=step,
            parent=parent,
            ledger=self.ledger_dir,
            workers=1,
        )
        checkpoints.append(path)
        return sig.digest

    def _events_at(self, step: int, lr: float) -> None:
        if not self.sabotaged:
            return
        run = self.run_id
        if step == self.at_code:
            self._scenario(
                "optimizer-sleep",
                "T3",
                "AdamW.step patched in the shared torch install to sleep on one rank",
            )
            self.sabotage.append(f"rank {self.sleeper}'s optimizer sleeps from step {step}")
            self.writers[self.sleeper].append(
                "guard.finding",
                run=run,
                rule_id="guard.code",
                technique="T2",
                check="runtime-patch",
                severity="critical",
                message=self.text("torch.optim.AdamW.step is not the original function", 1),
                evidence=(
                    "AdamW.step -> "
                    "/shared/venv/lib/python3.11/site-packages/torch/optim/_functional_ext.py:41"
                ),
                rank=self.sleeper,
                step=step + 1,
                established=True,
                pid=self.pids[self.sleeper],
                host=_node(self.sleeper),
            )
            self.writers[self.exfil].append(
                "egress.native-load",
                run=run,
                library="/home/mallory/.cache/libtorch_ext.so",
                rank=self.exfil,
                pid=self.pids[self.exfil],
            )
            host = self.text("paste.example.net", 3) if self.hostile else "paste.example.net"
            self.writers[self.exfil].append(
                "egress.endpoint",
                run=run,
                host=host,
                port=443,
                address="203.0.113.7",
                via="connect",
                rank=self.exfil,
                pid=self.pids[self.exfil],
            )
        if step == self.at_code + max(2, self.steps // 10):
            stack = (
                f'Thread {self.pids[self.sleeper]} (idle): "MainThread"\n'
                "    _sleep (torch/optim/_functional_ext.py:41)\n"
                "    step (torch/optim/adamw.py:197)\n"
                "    wrapper (torch/optim/optimizer.py:487)\n"
                "    train_step (train.py:212)\n"
                "    main (train.py:301)\n"
            )
            if self.hostile:
                stack += HOSTILE[0] + "\n"
            atomic_write(self.root / "stacks" / f"rank-{self.sleeper}-1.txt", stack)
            self.sup.append(
                "rank.hang",
                run=run,
                rank=self.sleeper,
                pid=self.pids[self.sleeper],
                last_step=step,
                seconds=31.0,
                stacks=f"stacks/rank-{self.sleeper}-1.txt",
            )
        if step == self.at_flip:
            self._scenario("update-flip", "T4", "optimizer update perturbed on one rank")
            self.sabotage.append(f"rank {self.flipper}'s updates perturbed from step {step}")
        if step == self.at_flip + 3:
            self.writers[self.flipper].append(
                "guard.finding",
                run=run,
                rule_id="guard.update",
                technique="T4",
                check="sampled-update",
                severity="critical",
                message=self.text(
                    "the sampled update differs from the independent AdamW reference", 4
                ),
                evidence="relative residual 1.74 on 64 coordinates (threshold 1e-4)",
                rank=self.flipper,
                step=step,
                established=True,
                pid=self.pids[self.flipper],
                host=_node(self.flipper),
            )
            self.writers[0].append(
                "guard.finding",
                run=run,
                rule_id="guard.cross-rank",
                technique="T4",
                check="parameter-checksum",
                severity="high",
                message=f"parameter checksum of rank {self.flipper} differs from every other rank",
                evidence="checksum 0x3f1c9a2e vs 0x8b07d4c1",
                rank=self.flipper,
                step=step + 1,
                established=True,
                pid=self.pids[0],
                host=_node(0),
            )
        if step == self.at_data:
            self._scenario("data-order", "T5", "sampler reseeded from a patched torch.utils.data")
            self.sabotage.append(f"data order and seed changed at step {step}")
            self.writers[0].append(
                "guard.reseed",
                run=run,
                rank=0,
                step=step,
                function="torch.manual_seed",
                caller="/shared/venv/lib/python3.11/site-packages/torch/utils/data/sampler.py:141",
                seed=1234,
            )
            self.writers[0].append(
                "guard.finding",
                run=run,
                rule_id="guard.data-order",
                technique="T5",
                check="data-order",
                severity="high",
                message="batch indices no longer follow the declared sampler seed",
                evidence="expected b5e1…, got 7a90…",
                rank=0,
                step=step,
                established=True,
                pid=self.pids[0],
                host=_node(0),
            )
        if step == self.at_lr:
            self._scenario("lr-change", "T5", "learning rate multiplied by 10 in the scheduler")
            self.sabotage.append(f"learning rate x10 from step {step}")
            for r, w in enumerate(self.writers):
                w.append(
                    "guard.finding",
                    run=run,
                    rule_id="guard.hyperparam",
                    technique="T5",
                    check="lr-schedule",
                    severity="high",
                    message=f"learning rate {lr:.3g} is not the declared schedule's {lr / 10:.3g}",
                    evidence="param group 0; declared: warm-up + cosine",
                    rank=r,
                    step=step,
                    established=True,
                    pid=self.pids[r],
                    host=_node(r),
                )

    def _scenario(self, name: str, technique: str, attack: str) -> None:
        if self.insider is None:
            return
        self.insider.append(
            "drill.scenario",
            run=self.run_id,
            scenario=name,
            technique=technique,
            started=_now(),
            attack=self.text(attack, 5),
            insider=self.insider_key.identity,
        )

    def _end(self, last: int) -> None:
        sup, run = self.sup, self.run_id
        live = set(range(self.ranks))
        if self.sabotaged:
            self._scenario("kill", "T6", "SIGTERM and SIGKILL sent to two ranks")
            self.sabotage.append(
                f"rank {self.victim} sent SIGTERM, rank {self.killed} SIGKILL at step {last}"
            )
            cmd = ["kill", "-TERM", str(self.pids[self.victim])]
            if self.hostile:
                cmd = ["sh", "-c", f"kill -TERM {self.pids[self.victim]} # {HOSTILE[0]}"]
            sender = {"pid": 31337, "uid": 1002, "user": "mallory", "cmdline": cmd}
            self._signals(run, last, sender)
            live -= {self.victim, self.killed}
            # torchrun's agent stops the other ranks once one failed: it signals each rank's
            # shim, which records the signal (source "shim") and forwards it.
            for r in sorted(live):
                sup.append(
                    "rank.signal",
                    run=run,
                    rank=r,
                    pid=self.pids[r],
                    signal="SIGTERM",
                    signo=15,
                    sender={
                        "pid": self.agent_pid,
                        "uid": 1000,
                        "user": "alice",
                        "cmdline": ["python", "-m", "torch.distributed.run", *self.command[1:]],
                    },
                    source="shim",
                    note="sent to the rank's shim (its parent under torchrun) and forwarded",
                )
        for r, w in enumerate(self.writers):
            if r == self.killed and self.sabotaged:
                continue  # a SIGKILLed rank never closes its guard: its telemetry is unattested
            path = self.root / "telemetry" / f"rank-{r}.jsonl"
            data = path.read_bytes()
            w.append(
                "guard.telemetry",
                run=run,
                rank=r,
                path=str(path),
                lines=data.count(b"\n"),
                # As the guard records it: the bare hex digest and the bytes it wrote.
                sha256=hashlib.sha256(data).hexdigest(),
                bytes=len(data),
            )
            w.append(
                "guard.close",
                run=run,
                rank=r,
                steps=last,
                verified_steps=last // 8,
                checked=64 * (last // 8),
                cost=0.0021,
                findings=0,
            )
        for r in sorted(live if self.sabotaged else range(self.ranks)):
            status = 0 if not self.sabotaged else None
            sup.append(
                "rank.exit",
                run=run,
                rank=r,
                pid=self.pids[r],
                status=status,
                signal=None if not self.sabotaged else "SIGTERM",
                seconds=round(time.time() - self.t0, 3),
            )
        findings = (
            {"T2": 1, "T3": 6, "T4": 2, "T5": 1 + self.ranks, "T6": 2} if self.sabotaged else {}
        )
        sup.append(
            "run.exit",
            run=run,
            status=1 if self.sabotaged else 0,
            signal=None,
            seconds=round(time.time() - self.t0, 3),
            findings=findings,
        )
        self._write_run_json(ended=_now(), status=1 if self.sabotaged else 0)

    def _signals(self, run: str, last: int, sender: dict[str, Any]) -> None:
        """The records of a real run under torchrun (docs/events.md) of the two kills.

        SIGTERM to a rank with the guard: the guard's recorder writes ``guard.signal`` (with
        the sender) and the guard a ``guard.finding`` (``guard.signal``), both relayed and
        signed by the supervisor, then the shim's ``rank.exit``. SIGKILL: the shim's
        ``rank.signal`` from the exit status (no sender) and ``rank.exit``.
        """
        sup, victim, killed = self.sup, self.victim, self.killed
        sup.append(
            "guard.signal",
            run=run,
            rank=victim,
            pid=self.pids[victim],
            signal="SIGTERM",
            signo=15,
            sender=sender,
            code="SI_USER",
            action="default",
        )
        sup.append(
            "guard.finding",
            run=run,
            rule_id="guard.signal",
            technique="T6",
            check="signals",
            severity="medium",
            message=(
                f"SIGTERM received from pid {sender['pid']} (uid {sender['uid']}, "
                f"{' '.join(sender['cmdline'])})"
            ),
            evidence=f"SIGTERM from pid {sender['pid']}",
            rank=victim,
            step=last,
            established=True,
            pid=self.pids[victim],
            host=_node(victim),
            observer=victim,
        )
        for rank, name, signo in ((victim, "SIGTERM", 15), (killed, "SIGKILL", 9)):
            if name == "SIGKILL":
                sup.append(
                    "rank.signal",
                    run=run,
                    rank=rank,
                    pid=self.pids[rank],
                    signal=name,
                    signo=signo,
                    sender=None,
                    source="exit-status",
                    note="SIGKILL cannot be caught; sender unknown",
                )
            sup.append(
                "rank.exit",
                run=run,
                rank=rank,
                pid=self.pids[rank],
                status=None,
                signal=name,
                seconds=round(time.time() - self.t0, 3),
                observed_by="shim",
            )

    def _provenance(self, checkpoints: list[Path]) -> None:
        # Through the real provenance API, so the report verifies what `trainwarden run`
        # would have written (signature, statement shape and outputs on disk).
        from trainwarden.provenance import (
            ResourceDescriptor,
            TrainingRun,
            build_statement,
            output_descriptor,
            write_provenance,
        )

        outputs = tuple(
            output_descriptor(p, root=self.root, annotations={"kind": "checkpoint"})
            for p in checkpoints[-3:]
        )
        statement = build_statement(
            TrainingRun(
                run_id=self.run_id,
                outputs=outputs,
                external_parameters={
                    "command": list(self.command),
                    "config": {
                        "lr": 3e-4,
                        "batch_size": 32,
                        "steps": self.steps,
                        "warmup": max(1, self.steps // 50),
                    },
                },
                internal_parameters={
                    "cwd": str(self.root),
                    "launcher": "torchrun",
                    "world_size": self.ranks,
                },
                dependencies=(
                    ResourceDescriptor(
                        name="code",
                        uri=f"git+file:///srv/llm7@{self.commit}",
                        digest={"gitCommit": self.commit},
                    ),
                    ResourceDescriptor(
                        name="environment",
                        uri="file:///shared/locks/llm7-env.lock",
                        digest={"sha256": _digest("lock")[7:]},
                    ),
                    ResourceDescriptor(
                        name="data",
                        uri="file:///data/llm7/train.bin",
                        digest={"sha256": _digest("train")[7:]},
                    ),
                ),
                byproducts=(
                    ResourceDescriptor(
                        name="findings", digest={"sha256": hashlib.sha256(b"{}").hexdigest()}
                    ),
                ),
                started=self.started,
                finished=_now(),
                builder_version={"trainwarden": "0.1.0", "python": "3.11.7", "torch": "2.13.0"},
            )
        )
        written = write_provenance(
            self.root / "provenance.intoto.json", statement, self.supervisor_key
        )
        self.sup.append(
            "provenance.signed",
            run=self.run_id,
            path=str(written.path),
            digest=written.digest,
            subjects=len(outputs),
        )

    def _seal(self) -> None:
        from trainwarden.ledger import seal_ledger

        seal_ledger(
            self.ledger_dir,
            key=self.seal_key,
            writer_keys=[self.supervisor_key.public, self.job_key.public]
            + ([self.insider_key.public] if self.drill else []),
        )

    # -- what the insider does afterwards ---------------------------------------------------

    def _after_the_run(self, checkpoints: list[Path]) -> None:
        # A checkpoint modified in place and handed to another owner, one deleted.
        if len(checkpoints) >= 6:
            modified, deleted = checkpoints[3], checkpoints[4]
            with modified.open("r+b") as fh:
                fh.seek(100)
                fh.write(b"\x00" * 16)
            if os.geteuid() == 0:
                os.chown(modified, 1002, 1002)
            deleted.unlink()
            self.sabotage.append(f"{modified.name} modified, {deleted.name} deleted")
        # The sender of the SIGTERM is edited in the supervisor's ledger entry, to blame the
        # intern: the signature no longer matches, so the entry shows as altered.
        for path in sorted((self.ledger_dir / "writers").glob("*.jsonl")):
            text = path.read_text(encoding="utf-8")
            if '"event":"guard.signal"' in text and '"user":"mallory"' in text:
                lines = text.split("\n")
                for i, line in enumerate(lines):
                    if '"event":"guard.signal"' in line and '"user":"mallory"' in line:
                        lines[i] = line.replace('"user":"mallory"', '"user":"intern"').replace(
                            '"uid":1002', '"uid":1003'
                        )
                        break
                path.write_text("\n".join(lines), encoding="utf-8")
                self.sabotage.append(
                    "the SIGTERM's sender edited in the ledger (mallory -> intern)"
                )
                break
        # One line of the sleeping rank's telemetry rewritten to hide a sleep.
        tel = self.root / "telemetry" / f"rank-{self.sleeper}.jsonl"
        raw = tel.read_bytes().split(b"\n")
        for i in range(self.at_code, min(len(raw), self.at_kill)):
            record = json.loads(raw[i]) if raw[i] else None
            if record and record["opt"] > 0.3:
                record["opt"] = 0.0121
                raw[i] = json.dumps(record, separators=(",", ":")).encode()
                break
        tel.write_bytes(b"\n".join(raw))
        self.sabotage.append(f"telemetry of rank {self.sleeper} edited")


def _now() -> str:
    ns = time.time_ns()
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1000:06d}Z"


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _node(rank: int) -> str:
    return f"node{rank // 8 + 1}"
