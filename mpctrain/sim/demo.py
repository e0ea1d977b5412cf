"""`mpctrain demo`: three hospitals train one model on pooled data through a simulated-TEE aggregator.

Everything runs in one process over loopback gRPC: the aggregator (enclave keys, sim attester), and
three party agents that attest it, approve the job, seal and upload their shards, and open the outputs.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import tempfile
import threading
import time
import tomllib
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
from rich.table import Table

from mpctrain.enclave.events import MemoryEventSink
from mpctrain.party.agent import PartyAgent, load_shard
from mpctrain.party.errors import AttestationRefused
from mpctrain.sim.cluster import EXAMPLE, HOSPITALS, SimCluster

JOB_ID = "hospitals-pooled"


DEFAULT_OUT = Path("out") / "demo"  # relative to the current directory: the checkout's out/demo under `make demo`


class DemoError(Exception):
    """The demo cannot run here (its example data is missing, or --out is not writable)."""


def example_files(example: Path | None = None) -> list[Path]:
    """What the pooled demo reads from the source checkout's examples/ (not shipped in a wheel)."""
    example = EXAMPLE if example is None else example
    return [example / "job.toml", example / "data" / "schema.toml",
            *(example / "data" / f"{p}.csv" for p in HOSPITALS)]


def check_example(example: Path | None = None) -> None:
    """Fail with the missing files named, before any key or enclave is made: a non-editable install ships
    the mpctrain package only, and the demo's hospital data lives in the checkout's examples/."""
    missing = [str(f) for f in example_files(example) if not f.is_file()]
    if missing:
        raise DemoError(f"the demo's example data is missing: {', '.join(missing)}. It lives in examples/ of the "
                        "source checkout, which a non-editable install does not ship: run `pip install -e .` (or "
                        "`make demo`) in a checkout of mpctrain")


def _workdir(out: Path | None = None) -> Path:
    """``out`` when given (must be writable); else ``./out/demo``, or a temporary directory when that is not
    writable."""
    d = DEFAULT_OUT if out is None else out
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        if out is not None:
            raise DemoError(f"cannot write to --out {out}: {exc.strerror or exc}") from None
        d = Path(tempfile.mkdtemp(prefix="mpctrain-demo-"))
    return d.absolute()


def _alone_metrics(manifest, data: dict[str, Path]) -> dict[str, dict[str, float]]:
    """Each hospital's model trained alone on its own training rows, scored on the rows held out from every
    hospital (the same split the enclave uses), so the numbers sit next to the pooled model's."""
    import numpy as np

    from mpctrain.enclave.pooled import table_schema
    from mpctrain.train.data import stratified_split, table_from_bytes
    from mpctrain.train.loop import TrainConfig, evaluate, fit
    from mpctrain.train.registry import build_model

    cfg = TrainConfig.from_dict({k: v for k, v in manifest.training.items() if k in TrainConfig.__dataclass_fields__})
    splits = {p: stratified_split(*table_from_bytes(load_shard(data[p], manifest)), cfg.val_fraction, cfg.seed)
              for p in sorted(data)}
    X_val = np.concatenate([s.X_val for s in splits.values()])
    y_val = np.concatenate([s.y_val for s in splits.values()])
    classes = table_schema(manifest.schema).num_classes or max(2, int(max(s.y_train.max() for s in splits.values()))
                                                               + 1)
    out = {}
    for party, s in splits.items():
        model = build_model(dict(manifest.model), X_val.shape[1], classes)
        fit(model, s.X_train, s.y_train, cfg, device="cpu")
        out[party] = evaluate(model, X_val, y_val)
    return out


def run_demo(workdir: Path | None = None, console: Console | None = None, epochs: int | None = None) -> dict:
    """Run the pooled job end to end and print what happened; returns a summary for tests.

    ``workdir`` (``mpctrain demo --out``) receives keys, the simulated root, the audit log and the opened
    outputs; default ``./out/demo``. Raises ``DemoError`` when the example data or ``workdir`` is unusable.
    """
    console = console or Console()
    check_example()
    workdir = _workdir(workdir)
    import torch

    # A 30-feature MLP on ~570 rows: thread start-up and contention cost more than they bring, and a
    # 2-core machine is shared by the aggregator, three parties and gRPC here.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(workdir, console, epochs)
    finally:
        torch.set_num_threads(threads)


def _fresh_audit_log(path: Path) -> None:
    """Each demo run is a fresh enclave with a fresh audit log; but a log another run is still writing (its
    ``flock`` held) is that run's record, and deleting it would break the chain it is building."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError:
        path.unlink(missing_ok=True)  # a link or something else in its place: not a log being written
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DemoError(f"{path} is being written by another demo or aggregator still running; stop it, or "
                        "pass --out with another directory") from None
    finally:
        os.close(fd)
    path.unlink(missing_ok=True)


def _run(workdir: Path, console: Console, epochs: int | None) -> dict:
    t0 = time.monotonic()
    events = MemoryEventSink()
    summary: dict = {"workdir": str(workdir)}
    _fresh_audit_log(workdir / "audit.jsonl")
    console.rule("[bold]mpctrain demo: three hospitals, one model, nobody sees another's records")
    with SimCluster(workdir, HOSPITALS, events=events, device="auto") as cluster:
        console.print(f"aggregator (simulated TEE) on [cyan]{cluster.target}[/]  "
                      f"measurement [dim]{cluster.attester.measurement.hex()[:24]}…[/]")
        overrides = {}
        if epochs is not None:
            doc = tomllib.loads((EXAMPLE / "job.toml").read_text())
            overrides["training"] = {**doc["training"], "epochs": epochs}
        manifest = cluster.manifest(JOB_ID, **overrides)
        agents: dict[str, PartyAgent] = {p: cluster.agent(p) for p in HOSPITALS}
        agents[manifest.proposer].client.propose(manifest)
        console.print(f"job [bold]{JOB_ID}[/] proposed by {manifest.proposer}: digest "
                      f"[dim]{manifest.digest().hex()[:16]}…[/], model {manifest.model.get('name')}, "
                      f"{manifest.training.get('epochs')} epochs, recipients {', '.join(manifest.recipients)}")

        # 1. attestation, each against its own policy, then consent by local rules
        att = Table(title="attestation (fresh nonce, each party's own policy)")
        for col in ("party", "verdict", "TEE", "measurement", "debug", "enclave keys"):
            att.add_column(col)
        for pid, ag in agents.items():
            try:
                r = ag.attest()
            except AttestationRefused as exc:
                att.add_row(pid, f"[red]refused: {exc.check}", "", "", "", "")
                continue
            att.add_row(pid, "[green]verified", r.cpu.backend, r.cpu.measurement.hex()[:16] + "…",
                        str(r.cpu.debug), f"kem {r.kem_public.hex()[:8]}… sig {r.sig_public.hex()[:8]}…")
        console.print(att)
        for ag in agents.values():
            ag.approve(manifest)
        status = agents[manifest.proposer].client.get_job(JOB_ID)
        console.print(f"consents: {', '.join(status.consented)} -> job [bold]{status.state}[/]")

        # 2. sealed uploads with progress
        watch_lines: list[str] = []
        done = threading.Event()

        def follow() -> None:
            for ev in agents["hospital-a"].client.watch(JOB_ID, timeout=120):
                if ev.kind == "epoch":
                    shown = "withheld (not public)" if math.isnan(ev.loss) else f"{ev.loss:.4f}"
                    watch_lines.append(f"epoch {ev.epoch:>3}  loss {shown}")
            done.set()

        threading.Thread(target=follow, daemon=True).start()
        sizes = Table(title="sealed uploads (loopback gRPC, per-chunk acknowledgements)")
        for col in ("party", "rows", "shard bytes", "sealed bytes sent", "chunks"):
            sizes.add_column(col, justify="right")
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), console=console,
                      transient=True) as progress:
            for pid, ag in agents.items():
                task = progress.add_task(f"{pid} → enclave", total=1)

                def bar(done_bytes: int, total: int, task: int = task) -> None:
                    progress.update(task, completed=done_bytes, total=total)

                res = ag.upload(manifest, bar)
                rows = len(ag.data_path.read_text().splitlines()) - 1
                sizes.add_row(pid, str(rows), f"{res.total_size:,}", f"{res.sent_bytes:,}", str(res.chunks))
        console.print(sizes)

        # 3. training progress from WatchJob
        state = agents["hospital-a"].wait(JOB_ID, ("done",), timeout=120)
        done.wait(10)
        console.print("[bold]training inside the enclave[/] (progress streamed by WatchJob):")
        shown = watch_lines if len(watch_lines) <= 10 else [*watch_lines[:5], "…", *watch_lines[-4:]]
        for line in shown:
            console.print(f"  {line}")
        if state != "done":
            reason = agents["hospital-a"].client.get_job(JOB_ID).error  # the server's text: never markup
            console.print(f"[red]job ended {state}: {escape(reason)}")
            summary["state"] = state
            return summary

        # 4. outputs: fetched, opened, receipt verified against the attested enclave key
        where = Table(title="sealed outputs (opened by each recipient, receipt verified)")
        for col in ("recipient", "model", "metrics", "written to"):
            where.add_column(col)
        opened = {}
        for pid in manifest.recipients:
            out = agents[pid].fetch(manifest)
            opened[pid] = out
            where.add_row(pid, f"{len(out['model']):,} B", f"{len(out['metrics']):,} B",
                          escape(str(agents[pid].outputs_dir / JOB_ID)))
        console.print(where)
        pooled = json.loads(next(iter(opened.values()))["metrics"])["validation"]

        # 5. pooled vs alone
        alone = _alone_metrics(manifest, {p: ag.data_path for p, ag in agents.items()})
        cmp = Table(title="validation (rows held out from every hospital)")
        for col in ("model", "accuracy", "auc", "f1", "loss"):
            cmp.add_column(col, justify="right")
        for pid in HOSPITALS:
            m = alone[pid]
            cmp.add_row(f"{pid} alone", *(f"{m.get(k, float('nan')):.3f}" for k in ("accuracy", "auc", "f1", "loss")))
        cmp.add_row("[bold]pooled (enclave)", *(f"[bold]{pooled.get(k, float('nan')):.3f}"
                                                for k in ("accuracy", "auc", "f1", "loss")))
        console.print(cmp)
        summary.update(state=state, pooled=pooled, alone={p: alone[p] for p in HOSPITALS},
                       outputs={p: str(agents[p].outputs_dir / JOB_ID) for p in manifest.recipients},
                       events=events.kinds())
    console.print(f"done in {time.monotonic() - t0:.1f}s; keys, simulated root and outputs under "
                  f"{escape(str(workdir))}")
    return summary
