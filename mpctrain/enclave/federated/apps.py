"""The consented Flower app inside the enclave: found by its digest, run from the very bytes that were hashed.

In deployment the app comes with the SuperLink's ServerApp task: the FAB that ``flwr run`` submitted and
every SuperNode runs. The enclave reads its ``.py`` files in memory and takes the directory whose digest
(hashed like ``mpctrain.party.flower.app_code_digest`` hashes an app directory) equals the manifest's
``[training.flower] code_digest``, the digest every data party signed. Modules are compiled from those
same bytes under a private package name, so nothing read later (a file changed on disk, a second
download) ever runs. The app provides the initial model: ``[training.flower] initial_arrays =
"task:initial_arrays"`` names a module of the app and a function returning an ``ArrayRecord``. This
code runs inside the enclave, next to its keys; the parties' consent covers it like the ClientApp.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.util
import io
import logging
import sys
import threading
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from flwr.app import ArrayRecord

from mpctrain.attest.measure import read_sources, sources_digest
from mpctrain.enclave.federated.errors import CodeDigestMismatch, FederatedError, RunConfigMismatch
from mpctrain.jobs import JobManifest
from mpctrain.jobs.manifest import FLOWER_ENTRY

log = logging.getLogger(__name__)

FLOWER_SECTION = "flower"
MAX_FAB_BYTES = 16 << 20  # Flower's own limit is 10 MB
MAX_FAB_FILES = 4096
MAX_FAB_UNPACKED = 64 << 20
MAX_FAB_DEPTH = 16  # directories: each level is one more candidate directory to hash
_LOCK = threading.Lock()
_IMPORTERS: dict[str, _AppImporter] = {}  # package -> importer on sys.meta_path


class AppEntryError(FederatedError):
    """The manifest's app entry point is missing or malformed, or it does not return an ``ArrayRecord``."""


@dataclass(frozen=True)
class ConsentedApp:
    """A Flower app's sources, read once, and their digest (hex, as manifests pin it)."""

    path: Path
    digest: str
    sources: tuple[tuple[str, bytes], ...]
    root: str = ""  # its directory inside a FAB ("app"), where the FAB's component references start
    # what its modules are private to (a bank's executor: the job and run): the same code loaded for another
    # scope gets fresh modules, so no module state of one job or run reaches another
    scope: str = ""

    def module_of(self, reference: str) -> tuple[str, str]:
        """A FAB component reference (``app.client_app:app``) as (module inside this app, attribute).

        Refused unless the module lies inside the consented directory: code outside it was never hashed.
        """
        m = FLOWER_ENTRY.fullmatch(reference)
        if m is None:
            raise AppEntryError(f"component reference {reference!r} is not \"module:attribute\"")
        module, attr = m.group(1), m.group(2)
        prefix = self.root.replace("/", ".")
        if prefix:
            if not module.startswith(prefix + "."):
                raise CodeDigestMismatch(f"{reference!r} is outside the consented code ({self.root}/): refusing "
                                         "to run code no consent covers")
            module = module[len(prefix) + 1:]
        return module, attr

    @property
    def package(self) -> str:
        if not self.scope:
            return f"_mpctrain_app_{self.digest[:24]}"
        return f"_mpctrain_app_{self.digest[:24]}_{hashlib.sha256(self.scope.encode()).hexdigest()[:16]}"


def read_app(app_dir: str | Path) -> ConsentedApp:
    """An app directory on this machine (in-process runtimes, tests)."""
    path = Path(app_dir)
    try:
        sources = read_sources(path)
    except OSError as exc:
        raise CodeDigestMismatch(f"cannot read the Flower app in {path}: {exc}") from exc
    return ConsentedApp(path=path, digest=sources_digest(sources).hex(), sources=tuple(sources))


def check_fab(fab: bytes) -> None:
    """Bound a FAB before anything unpacks it, Flower's own config reader included.

    It checks the archive size, the file count, and the sum of the sizes its entries declare. A zip
    member never reads past its declared size, so a zip bomb is refused here.
    """
    if len(fab) > MAX_FAB_BYTES:
        raise CodeDigestMismatch(f"the FAB is {len(fab)} bytes, over {MAX_FAB_BYTES}")
    try:
        with zipfile.ZipFile(io.BytesIO(fab)) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise CodeDigestMismatch(f"the FAB is not a readable zip archive: {exc}") from exc
    if len(infos) > MAX_FAB_FILES:
        raise CodeDigestMismatch(f"the FAB holds {len(infos)} files, over {MAX_FAB_FILES}")
    declared = sum(i.file_size for i in infos)
    if declared > MAX_FAB_UNPACKED:
        raise CodeDigestMismatch(f"the FAB's files unpack to {declared} bytes, over {MAX_FAB_UNPACKED}")
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise CodeDigestMismatch("the FAB holds two entries under one name: which one runs would be ambiguous")
    if any(n.count("/") >= MAX_FAB_DEPTH for n in names):
        raise CodeDigestMismatch(f"the FAB nests files more than {MAX_FAB_DEPTH} directories deep")


def fab_sources(fab: bytes) -> dict[str, bytes]:
    """The ``.py`` files of a FAB (a zip the host relayed), read in memory with size and count limits."""
    check_fab(fab)
    try:
        with zipfile.ZipFile(io.BytesIO(fab)) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            out: dict[str, bytes] = {}
            total = 0
            for info in infos:
                name = info.filename
                parts = name.split("/")
                if not name.endswith(".py") or "__pycache__" in parts or name.startswith("/") or ".." in parts:
                    continue
                with zf.open(info) as f:
                    data = f.read(MAX_FAB_UNPACKED + 1 - total)
                total += len(data)
                if total > MAX_FAB_UNPACKED:
                    raise CodeDigestMismatch(f"the FAB's Python files unpack to over {MAX_FAB_UNPACKED} bytes")
                out[name] = data
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise CodeDigestMismatch(f"the FAB is not a readable zip archive: {exc}") from exc
    return out


def app_from_fab(fab: bytes, digest: str) -> ConsentedApp:
    """The directory of the FAB whose ``.py`` files have the consented digest (hashed like an app directory)."""
    files = fab_sources(fab)
    dirs = sorted({"/".join(n.split("/")[:i]) for n in files for i in range(len(n.split("/")))})
    seen = []
    for d in dirs:
        prefix = f"{d}/" if d else ""
        sources = sorted((n[len(prefix):], data) for n, data in files.items() if n.startswith(prefix))
        have = sources_digest(sources).hex()
        if have == digest:
            return ConsentedApp(path=Path("<fab>") / d, digest=have, sources=tuple(sources), root=d)
        seen.append(f"{d or '.'} ({have[:16]}…)")
    raise CodeDigestMismatch(f"no directory of the submitted FAB has the consented code digest {digest[:16]}…; "
                             f"found {', '.join(seen) or 'no Python files'}: `flwr run` exactly the app every "
                             "party approved")


class _AppImporter(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves one app's modules from memory, under ``app.package``: never from the file system."""

    def __init__(self, app: ConsentedApp) -> None:
        self.app = app
        self.sources = dict(app.sources)
        # the app's own name (its directory): while its code runs, ``import <name>.x`` would load files from
        # disk, not the hashed bytes, so it is refused (Flower templates import absolutely: use ``from .x``)
        self.own_name = Path(app.root).name if app.root else app.path.name
        self._running = threading.local()
        self.modules: dict[str, tuple[str | None, bool]] = {app.package: (None, True)}
        for rel in self.sources:
            parts = rel[:-3].split("/")
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            name = ".".join([app.package, *parts])
            self.modules[name] = (rel, is_pkg)
            for i in range(1, len(parts)):  # parent directories without __init__.py
                self.modules.setdefault(".".join([app.package, *parts[:i]]), (None, True))

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        entry = self.modules.get(fullname)
        if entry is None:
            if getattr(self._running, "depth", 0) and fullname.split(".")[0] == self.own_name:
                raise ImportError(f"the consented app imports {fullname!r} by its absolute name, which would load "
                                  "files from disk instead of the hashed bytes: import its own modules relatively "
                                  "(from .task import ...)")
            return None
        rel, is_pkg = entry
        origin = f"<consented app {self.app.digest[:16]}>/{rel or ''}"
        return importlib.util.spec_from_loader(fullname, self, origin=origin, is_package=is_pkg)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        rel, _ = self.modules[module.__name__]
        if rel is None:
            return
        code = compile(self.sources[rel], f"{self.app.path / rel}", "exec", dont_inherit=True)
        with self.running():
            exec(code, module.__dict__)  # noqa: S102 - the consented app's code, from the hashed bytes

    @contextmanager
    def running(self) -> Iterator[None]:
        """While the app's code runs (its import, or a call into it), its absolute self-imports are refused."""
        self._running.depth = getattr(self._running, "depth", 0) + 1
        try:
            yield
        finally:
            self._running.depth -= 1


def running_app(app: ConsentedApp) -> AbstractContextManager[None]:
    """Wrap every call into the app's code: an import it makes lazily is held to its hashed bytes too."""
    with _LOCK:
        importer = _IMPORTERS.get(app.package)
    return importer.running() if importer is not None else nullcontext()


def unload_app(app: ConsentedApp) -> None:
    """Forget the app's modules (``sys.modules``) and its importer: a scope that ended leaves nothing behind."""
    with _LOCK:
        importer = _IMPORTERS.pop(app.package, None)
        if importer is not None and importer in sys.meta_path:
            sys.meta_path.remove(importer)
        for name in [n for n in sys.modules if n == app.package or n.startswith(app.package + ".")]:
            del sys.modules[name]


def import_app_module(app: ConsentedApp, module: str) -> ModuleType:
    """Import ``module`` (dotted, relative to the app directory) from the app's hashed sources."""
    with _LOCK:
        importer = _IMPORTERS.get(app.package)
        if importer is None:
            importer = _IMPORTERS[app.package] = _AppImporter(app)
            sys.meta_path.insert(0, importer)
    name = f"{app.package}.{module}"
    if name not in importer.modules:
        known = sorted(m.removeprefix(app.package + ".") for m in importer.modules if m != app.package)
        raise AppEntryError(f"the consented Flower app has no module {module!r} (modules: {known})")
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise AppEntryError(f"the consented Flower app's module {module!r} does not import: {exc}") from exc


def entry_point(manifest: JobManifest) -> tuple[str, str]:
    """``[training.flower] initial_arrays`` as (module, function)."""
    flower = manifest.training.get(FLOWER_SECTION)
    value = flower.get("initial_arrays") if isinstance(flower, dict) else None
    if not isinstance(value, str):
        raise AppEntryError(f"job {manifest.job_id} names no [training.flower] initial_arrays: set it to the app "
                            "function that builds the initial model, e.g. \"task:initial_arrays\"")
    m = FLOWER_ENTRY.fullmatch(value)
    if m is None:
        raise AppEntryError(f"[training.flower] initial_arrays = {value!r} is not \"module:function\"")
    return m.group(1), m.group(2)


def manifest_code_digest(manifest: JobManifest) -> str:
    """The app digest every consent covers; refused when a (hand-built) manifest pins none."""
    flower = manifest.training.get(FLOWER_SECTION)
    digest = flower.get("code_digest") if isinstance(flower, dict) else None
    if not isinstance(digest, str):
        raise CodeDigestMismatch(f"job {manifest.job_id} names no [training.flower] code_digest; only app code "
                                 "whose digest every consent covers runs, at the banks and in the enclave")
    return digest


def consented_initial_arrays(manifest: JobManifest, app: ConsentedApp) -> ArrayRecord:
    """The job's initial model, built by the consented app's own code (see the module docstring)."""
    digest = manifest_code_digest(manifest)
    if app.digest != digest:
        raise CodeDigestMismatch(f"the Flower app {app.path} has digest {app.digest[:16]}…, but job "
                                 f"{manifest.job_id} covers {digest[:16]}…")
    module, function = entry_point(manifest)
    fn = getattr(import_app_module(app, module), function, None)
    if not callable(fn):
        raise AppEntryError(f"the consented app's module {module!r} has no function {function!r}")
    try:
        with running_app(app):
            arrays = fn()
    except ImportError as exc:
        raise AppEntryError(f"{module}:{function} does not import: {exc}") from exc
    if not isinstance(arrays, ArrayRecord):
        raise AppEntryError(f"{module}:{function} returned {type(arrays).__name__}, not a flwr ArrayRecord")
    log.info("initial model of job %s from the consented app %s…", manifest.job_id, app.digest[:16])
    return arrays


RUN_CONFIG_KEY = "run_config"
JOB_KEY = "mpctrain-job"  # names the job a run serves (deploy.JOB_CONFIG_KEY); never a training input


def check_run_config(manifest: JobManifest, run_config: Mapping[str, Any]) -> None:
    """The run's Flower config must be exactly the one the manifest pins.

    ``flwr run --run-config`` (or the FAB's pyproject defaults) feed the consented ClientApp values no
    consent covered: learning rate, epochs, seeds. ``[training.flower.run_config]`` pins them; every key
    of the run must be pinned, with the same value. A manifest that pins none allows none (the job's own
    name aside): silence is not consent to whatever the submitter of the run chooses.
    """
    flower = manifest.training.get(FLOWER_SECTION)
    pinned = flower.get(RUN_CONFIG_KEY, {}) if isinstance(flower, dict) else {}
    if not isinstance(pinned, dict):
        raise RunConfigMismatch(f"job {manifest.job_id}: [training.flower.run_config] must be a table")
    have = {k: v for k, v in run_config.items() if k != JOB_KEY}
    want = {k: v for k, v in _flatten(pinned).items() if k != JOB_KEY}
    differ = sorted(k for k in set(have) | set(want)
                    if k not in have or k not in want or _typed(have[k]) != _typed(want[k]))
    if differ:
        raise RunConfigMismatch(f"the run's config differs from the one job {manifest.job_id} pins in "
                                f"[training.flower.run_config] at {differ}: refusing to train on values no consent "
                                "covers")


def _typed(value: Any) -> tuple[bool, Any]:
    return isinstance(value, bool), value  # True is not 1 here; 2 and 2.0 are the same number


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as dotted keys, the form Flower gives a run's config (``[a] b = 1`` is ``a.b``)."""
    out: dict[str, Any] = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
