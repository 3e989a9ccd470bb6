"""The drill's throwaway world: its own Python environment, keys, team directories and runs.

Nothing outside the sandbox is ever modified. The environment is a venv whose site-packages
holds a *mirror* of the installed torch distribution: real directories, one symbolic link per
file of torch's RECORD, and a real copy of its ``.dist-info``. So ``import torch`` in the
sandbox loads ``<sandbox>/.../site-packages/torch/__init__.py`` (the import system does not
resolve links), ``env verify`` sees the sandbox torch as an installed distribution checked
against its RECORD, and an attack edits torch the way a saboteur edits a shared install: it
writes a new file in place of one of torch's (``sed -i`` style), which replaces the link in the
sandbox and never touches the file it pointed to. Directories are real so that no write can
go through a link into the real environment, and jobs run with ``PYTHONDONTWRITEBYTECODE``.
Everything else the job imports (numpy, trainwarden itself) comes from the caller's
environment through a ``.pth`` file of path lines, recorded in the RECORD of a small
distribution of its own so the verifier can vouch for it. A lock of the sandbox is taken and
signed with the platform key before any attack.
"""

# os on str paths on purpose: the mirror makes ~15,000 links and directories, and pathlib
# objects would cost more than the system calls.
# ruff: noqa: PTH101, PTH102, PTH105, PTH114, PTH115, PTH118, PTH120, PTH211

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import os
import secrets
import shutil
import site
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from trainwarden.drill._identity import InsiderAccount
from trainwarden.errors import ConfigError, InputError

__all__ = ["IDENTITIES", "KeyPair", "RunPaths", "Sandbox", "torch_installation"]

#: Key identities of the drill's people (key labels; the ledger's actor shows them).
IDENTITIES = {
    "platform": "platform@drill",
    "seal": "ops-seal@drill",
    "victim": "alice@drill",
    "insider": "intern@drill",
}

_BASE_DIST = "trainwarden_drill_base"
_BASE_PTH = f"{_BASE_DIST}.pth"
# Shared directories: setgid so new files belong to the team group, group-writable as a
# team's shared environment and checkpoint directories are on a cluster.
_SHARED_DIR = 0o2775
_SHARED_FILE = 0o664
_SCRATCH_MIN_FREE = 512 << 20
_SITE_QUERY = "import sysconfig; print(sysconfig.get_path('purelib'))"


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A drill identity's key files."""

    private: Path
    public: Path
    identity: str


@dataclass(frozen=True, slots=True)
class RunPaths:
    """Where one job run of the drill keeps its things.

    Attributes:
        name: Short name (``control``, ``t7``...).
        run_id: The run id (``run`` of every ledger entry about it).
        run_dir: The run directory (``RUN_DIR`` of docs/events.md).
        ledger: The run's ledger directory.
        ckpt: The team's checkpoint directory for this run (shared, group-writable).
        out: Where rank 0 writes its result (tinygpt ``--out``).
        log: The job's combined stdout and stderr.
    """

    name: str
    run_id: str
    run_dir: Path
    ledger: Path
    ckpt: Path
    out: Path
    log: Path


@dataclass(frozen=True, slots=True)
class _Origin:
    kind: str  # "link" (a symlink to ``source``) or "copy" (a copy of ``source``)
    source: str
    mode: int = _SHARED_FILE


def torch_installation() -> tuple[Path, Path]:
    """The site directory that holds the installed torch and its ``.dist-info``.

    Found without importing torch (the drill's own process never needs it).

    Raises:
        ConfigError: torch is not installed, or not as a wheel with a RECORD.
    """
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        raise ConfigError(
            "the drill trains a real job and needs torch: pip install 'trainwarden[torch]' "
            "(install the torch build you want first)"
        )
    site_dir = Path(spec.origin).parent.parent
    version = importlib.metadata.version("torch")
    for candidate in sorted(site_dir.glob("torch-*.dist-info")):
        if candidate.name == f"torch-{version}.dist-info" and (candidate / "RECORD").is_file():
            return site_dir, candidate
    raise ConfigError(
        f"torch {version} in {site_dir} has no .dist-info with a RECORD (an egg or editable "
        "install?): the drill needs a wheel install to mirror"
    )


class Sandbox:
    """A drill's sandbox directory (see the module docstring). Use :meth:`create`."""

    def __init__(self, root: Path, account: InsiderAccount, *, keep: bool) -> None:
        self.root = root
        self.account = account
        self.keep = keep
        self.token = secrets.token_hex(3)
        self.env = root / "env"
        self.python = self.env / "bin" / "python"
        self.site = root  # set by create()
        self.platform = root / "platform"
        self.lock = self.platform / "env.lock"
        self.keys_dir = root / "keys"
        self.shared = root / "shared"
        self.runs = root / "runs"
        self.insider_home = root / "insider"
        self.loot = self.insider_home / "loot"
        self.keys: dict[str, KeyPair] = {}
        self._origin: dict[str, _Origin] = {}
        self.outer_site = root

    # -- creation -----------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        account: InsiderAccount,
        *,
        keep: Path | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> Sandbox:
        """Build a sandbox (in a new temporary directory, or in ``keep``).

        Raises:
            ConfigError: ``keep`` is not an empty directory, the insider could not reach the
                sandbox, or torch is not installed.
            InputError: The sandbox could not be built, or its environment does not verify.
        """
        outer_site, dist_info = torch_installation()
        if keep is not None:
            root = Path(keep).absolute()
            if root.exists() and (not root.is_dir() or any(root.iterdir())):
                raise ConfigError(f"--keep {keep}: must be a new or empty directory")
            root.mkdir(parents=True, exist_ok=True)
        else:
            root = Path(tempfile.mkdtemp(prefix="trainwarden-drill-", dir=_scratch_dir()))
        sandbox = cls(root, account, keep=keep is not None)
        try:
            # The insider must be able to reach the team directories (its own uid).
            os.chmod(root, 0o755)  # noqa: S103
            sandbox._check_reachable()
            sandbox._build(outer_site, dist_info, progress or (lambda _: None))
        except BaseException:
            sandbox.close()
            raise
        return sandbox

    def _check_reachable(self) -> None:
        if self.account.uid is None:
            return
        for parent in [self.root, *self.root.parents]:
            st = parent.stat()
            if st.st_uid == self.account.uid:
                continue
            group_ok = st.st_gid in self.account.groups and st.st_mode & stat.S_IXGRP
            if not (st.st_mode & stat.S_IXOTH or group_ok):
                raise ConfigError(
                    f"the insider (uid {self.account.uid}) cannot reach the sandbox {self.root}: "
                    f"{parent} is not searchable by others; use --keep with a directory under "
                    "/tmp or another world-searchable place"  # noqa: S108  # advice, not a path
                )

    def _build(self, outer_site: Path, dist_info: Path, progress: Callable[[str], None]) -> None:
        import venv

        self.outer_site = outer_site
        progress("creating the sandbox environment")
        venv.EnvBuilder(with_pip=False, symlinks=True, clear=False).create(str(self.env))
        self.site = self._site_dir()
        self.share(self.site)
        self.platform.mkdir(mode=0o755)
        progress(f"mirroring torch from {outer_site}")
        self._mirror_distribution(outer_site, dist_info)
        self._write_base_layer(outer_site)
        for directory in (self.keys_dir, self.runs):
            directory.mkdir(mode=0o755)
        self.share(self.shared, mkdir=True)
        self.share(self.shared / "ckpt", mkdir=True)
        self.insider_home.mkdir(mode=0o700)
        self.loot.mkdir()
        # A drop box anyone may append to (the insider's hooks write from the victim's jobs).
        os.chmod(self.loot, 0o1777)  # noqa: S103  # sticky, like /tmp
        self._chown_insider(self.insider_home)
        progress("generating the platform, ops, colleague and insider keys")
        self._generate_keys()
        progress("taking the signed lock of the sandbox environment")
        self._lock_environment()

    def _site_dir(self) -> Path:
        # Ask the sandbox interpreter itself (-I: no user site, no PYTHON* variables).
        try:
            out = subprocess.run(  # noqa: S603  # our own interpreter, fixed arguments
                [str(self.python), "-I", "-c", _SITE_QUERY],
                check=True,
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            raise InputError(f"the sandbox interpreter {self.python} does not run: {exc}") from exc
        path = Path(out)
        if not path.is_dir() or self.env not in path.parents:
            raise InputError(f"the sandbox interpreter reports an odd site directory: {out!r}")
        return path

    def _mirror_distribution(self, outer_site: Path, dist_info: Path) -> None:
        tops: set[str] = set()
        outside: list[str] = []
        with (dist_info / "RECORD").open(encoding="utf-8", newline="") as fh:
            for row in csv.reader(fh):
                if not row or not row[0]:
                    continue
                if row[0].startswith("../"):
                    outside.append(row[0])
                else:
                    tops.add(row[0].split("/", 1)[0])
        for top in sorted(tops):
            source = outer_site / top
            if top == dist_info.name:
                self._copy_tree(source, self.site / top)
            elif source.is_dir() and not source.is_symlink():
                self._link_tree(source, self.site / top)
            elif source.exists():
                self._link(source, self.site / top)
        for rel in outside:
            # Console scripts (bin/torchrun): linked so RECORD's hashes hold; the drill
            # itself always starts torch's launcher as `python -m torch.distributed.run`.
            target = Path(os.path.normpath(self.site / rel))
            source = Path(os.path.normpath(outer_site / rel))
            if source.exists() and not target.exists() and self.env in target.parents:
                self._link(source, target, rel=rel)

    def _rel(self, path: Path) -> str:
        return os.path.relpath(path, self.site).replace(os.sep, "/")

    def _link(self, source: Path, target: Path, *, rel: str | None = None) -> None:
        os.symlink(source, target)
        self._origin[rel or self._rel(target)] = _Origin("link", str(source))

    def _link_tree(self, source: Path, target: Path) -> None:
        # Real directories all the way down and a link per file: a write can only replace a
        # link, never go through one into the real environment.
        prefix = self._rel(target)
        origin = self._origin
        team = self.account.team_gid
        stack = [(str(source), str(target), prefix)]
        while stack:
            src, dst, rel = stack.pop()
            os.mkdir(dst)
            os.chmod(dst, _SHARED_DIR)
            if team is not None:
                os.chown(dst, -1, team)
            with os.scandir(src) as it:
                entries = list(it)
            for entry in entries:
                child_rel = f"{rel}/{entry.name}"
                child_dst = f"{dst}/{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, child_dst, child_rel))
                else:
                    os.symlink(entry.path, child_dst)
                    origin[child_rel] = _Origin("link", entry.path)

    def _copy_tree(self, source: Path, target: Path) -> None:
        self.share(target, mkdir=True)
        for entry in sorted(source.iterdir()):
            if entry.is_dir():
                self._copy_tree(entry, target / entry.name)
                continue
            shutil.copy2(entry, target / entry.name)
            self.share(target / entry.name, mode=_SHARED_FILE)
            self._origin[self._rel(target / entry.name)] = _Origin("copy", str(entry))

    def _write_base_layer(self, outer_site: Path) -> None:
        """Make the caller's other packages importable, as a recorded distribution."""
        lines: list[str] = []

        def add(directory: Path) -> None:
            text = str(directory)
            if directory.is_dir() and text not in lines and "\n" not in text:
                lines.append(text)

        sites = [Path(p) for p in site.getsitepackages()]
        if site.ENABLE_USER_SITE:
            sites.append(Path(site.getusersitepackages()))
        sites = [outer_site, *(p for p in sites if p != outer_site)]
        for site_dir in sites:
            if not site_dir.is_dir():
                continue
            add(site_dir)
            for pth_file in sorted(site_dir.glob("*.pth")):
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    for line in pth_file.read_text(encoding="utf-8").splitlines():
                        if line.strip() and not line.startswith(("#", "import ", "import\t")):
                            add((site_dir / line.strip()).resolve())
        import trainwarden

        package_root = Path(trainwarden.__file__).resolve().parent.parent
        if not any((Path(d) / "trainwarden" / "__init__.py").is_file() for d in lines):
            add(package_root)
        pth = ("\n".join(lines) + "\n").encode("utf-8")
        dist = self.site / f"{_BASE_DIST}-1.0.dist-info"
        dist.mkdir()
        metadata = (
            "Metadata-Version: 2.1\n"
            f"Name: {_BASE_DIST}\n"
            "Version: 1.0\n"
            "Summary: the drill sandbox's base layer: the caller's packages, by path\n"
        ).encode()
        files = {
            _BASE_PTH: pth,
            f"{dist.name}/METADATA": metadata,
            f"{dist.name}/INSTALLER": b"trainwarden-drill\n",
        }
        rows = [f"{name},sha256={_b64_digest(data)},{len(data)}" for name, data in files.items()]
        rows.append(f"{dist.name}/RECORD,,")
        files[f"{dist.name}/RECORD"] = ("\n".join(rows) + "\n").encode()
        pristine = self.platform / "base-layer"
        pristine.mkdir(parents=True)
        for index, (name, data) in enumerate(files.items()):
            path = self.site / name
            path.write_bytes(data)
            os.chmod(path, 0o644)
            # A pristine copy the platform restores from (kept where the insider cannot write).
            (pristine / str(index)).write_bytes(data)
            self._origin[name] = _Origin("copy", str(pristine / str(index)), 0o644)

    def _generate_keys(self) -> None:
        from trainwarden.keys import generate_key

        for role in ("platform", "seal", "victim"):
            private, public = generate_key(self.keys_dir / role, identity=IDENTITIES[role])
            self.keys[role] = KeyPair(private, public, IDENTITIES[role])
        private, public = generate_key(
            self.insider_home / "insider", identity=IDENTITIES["insider"]
        )
        self._chown_insider(private)
        self._chown_insider(public)
        shared_public = self.keys_dir / "insider.pub"
        shutil.copyfile(public, shared_public)
        self.keys["insider"] = KeyPair(private, shared_public, IDENTITIES["insider"])

    def _lock_environment(self) -> None:
        from trainwarden.env import snapshot_environment, write_lock
        from trainwarden.findings import Verdict
        from trainwarden.keys import load_private_key

        lock, report = snapshot_environment([str(self.site)], check_pyc=False)
        bad = [f for f in report.findings if f.verdict is not Verdict.SAFE]
        if bad:
            first = bad[0]
            raise InputError(
                f"the sandbox environment does not verify before any attack ({len(bad)} "
                f"finding(s)); first: [{first.rule_id}] {first.message}"
            )
        write_lock(lock, self.lock, key=load_private_key(self.keys["platform"].private))

    # -- use ------------------------------------------------------------------------------

    def public_keys(self, *roles: str) -> list[object]:
        """The public keys of ``roles`` (all writer roles when none is given)."""
        from trainwarden.keys import load_public_key

        names = roles or ("platform", "victim", "insider")
        return [load_public_key(self.keys[name].public) for name in names]

    def prepare_run(self, name: str) -> RunPaths:
        """Create the directories of run ``name`` (ledger writable by the whole team)."""
        run_dir = self.runs / name
        run_dir.mkdir(mode=0o755)
        ledger = run_dir / "ledger"
        self.share(ledger, mkdir=True)
        # The ledger's own layout: everyone may add a writer file, only its owner may
        # remove or rename it (sticky bit), as docs/ledger.md asks of a shared ledger.
        self.share(ledger / "writers", mkdir=True, mode=_SHARED_DIR | stat.S_ISVTX)
        ckpt = self.shared / "ckpt" / name
        self.share(ckpt, mkdir=True)
        return RunPaths(
            name=name,
            run_id=f"drill-{self.token}-{name}",
            run_dir=run_dir,
            ledger=ledger,
            ckpt=ckpt,
            out=run_dir / "result.json",
            log=run_dir / "job.log",
        )

    def share(self, path: Path, *, mkdir: bool = False, mode: int = _SHARED_DIR) -> None:
        """Give ``path`` to the team group with ``mode`` (creating it with ``mkdir``)."""
        if mkdir:
            path.mkdir()
        os.chmod(path, mode)
        if self.account.team_gid is not None:
            os.chown(path, -1, self.account.team_gid)

    def _chown_insider(self, path: Path) -> None:
        if self.account.uid is not None:
            os.chown(path, self.account.uid, self.account.gid or -1)

    def restore(self, rels: Iterable[str]) -> None:
        """Put environment entries back as the mirror made them (the platform's repair).

        ``rels`` are paths relative to the sandbox site directory; one the mirror never made
        (a file an attack added) is removed.

        Raises:
            InputError: A path is outside the environment or cannot be restored.
        """
        for rel in rels:
            target = Path(os.path.normpath(self.site / rel))
            if self.env not in target.parents:
                raise InputError(f"refusing to restore {rel}: outside the sandbox environment")
            origin = self._origin.get(rel)
            tmp = target.with_name(f".{target.name}.restore")
            try:
                if origin is None:
                    with contextlib.suppress(FileNotFoundError):
                        target.unlink()
                    continue
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                if origin.kind == "link":
                    os.symlink(origin.source, tmp)
                else:
                    shutil.copy2(origin.source, tmp)
                    os.chmod(tmp, origin.mode)
                os.replace(tmp, target)
            except OSError as exc:
                raise InputError(f"cannot restore {target}: {exc.strerror or exc}") from exc

    def reset(self) -> None:
        """Put back every mirror entry that differs from its record (the platform's repair).

        Files added at the top of site-packages (startup hooks) are removed too.

        Raises:
            InputError: An entry cannot be restored.
        """
        import filecmp

        changed = []
        for rel, origin in self._origin.items():
            path = os.path.normpath(os.path.join(self.site, rel))
            try:
                if origin.kind == "link":
                    same = os.path.islink(path) and os.readlink(path) == origin.source
                else:
                    same = not os.path.islink(path) and filecmp.cmp(
                        path, origin.source, shallow=False
                    )
            except OSError:
                same = False
            if not same:
                changed.append(rel)
        tops = {rel.split("/", 1)[0] for rel in self._origin}
        with os.scandir(self.site) as entries:
            changed += [
                e.name
                for e in entries
                if e.name not in tops and not e.is_dir(follow_symlinks=False)
            ]
        self.restore(changed)

    def close(self) -> None:
        """Remove the sandbox unless it is kept (``--keep``)."""
        if self.keep:
            return

        def _retry(func: Callable[..., object], path: str, _exc: object) -> None:
            # A directory an attack made read-only: make it writable and try again.
            with contextlib.suppress(OSError):
                os.chmod(os.path.dirname(path), 0o700)
                func(path)

        # rmtree never follows the mirror's links: the real environment is left alone.
        shutil.rmtree(self.root, onerror=_retry)


def _scratch_dir() -> str | None:
    """Where a throwaway sandbox goes: ``/dev/shm`` when it is a usable RAM file system.

    The mirror is ~15,000 links: on a disk shared with busy neighbours, creating and removing
    them costs tens of seconds of metadata journaling; in RAM it takes well under one. A
    ``TMPDIR`` the user set wins, and a small or read-only ``/dev/shm`` (containers often
    give 64 MB) is not used.
    """
    if os.environ.get("TMPDIR"):
        return None
    shm = "/dev/shm"  # noqa: S108  # a RAM file system, the sandbox goes in a mkdtemp below it
    try:
        st = os.statvfs(shm)
    except OSError:
        return None
    if st.f_bavail * st.f_frsize < _SCRATCH_MIN_FREE or not os.access(shm, os.W_OK | os.X_OK):
        return None
    return shm


def _b64_digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
