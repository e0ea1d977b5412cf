#!/usr/bin/env python3
"""Generate mpctrain/wire/ from protos/mpctrain/v1/*.proto (messages, gRPC stubs, .pyi type stubs).

protoc writes ``mpctrain/v1/<name>_pb2.py`` importing its siblings as ``from mpctrain.v1 import ...``;
we flatten the output into ``mpctrain/wire/`` and rewrite those imports to ``mpctrain.wire`` so code
reads ``from mpctrain.wire import attestation_pb2, attestation_pb2_grpc``.

    python scripts/gen_protos.py            # regenerate
    python scripts/gen_protos.py --check    # exit 1 if mpctrain/wire is stale (CI, tests/test_wire_fresh.py)

The output depends on the grpcio-tools version, which pyproject.toml pins in the dev extra.
"""

from __future__ import annotations

import argparse
import importlib.resources
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
WIRE_DIR = ROOT / "mpctrain" / "wire"
PROTO_PACKAGE = "mpctrain/v1"
GENERATED = re.compile(r"^[a-z0-9_]+_pb2(_grpc)?\.pyi?$")

_IMPORT = re.compile(r"^from mpctrain\.v1 import ", re.MULTILINE)
_MODULE_NAME = re.compile(r"'mpctrain\.v1\.([a-z0-9_]+_pb2)'")


class GenerationError(RuntimeError):
    """protoc failed or the proto directory holds nothing to generate."""


def proto_files(proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Every .proto of the package, relative to ``proto_dir`` (protoc's include root)."""
    found = sorted((proto_dir / PROTO_PACKAGE).glob("*.proto"))
    if not found:
        raise GenerationError(f"no .proto files under {proto_dir / PROTO_PACKAGE}")
    return [p.relative_to(proto_dir) for p in found]


def render(proto_dir: Path = PROTO_DIR) -> dict[str, str]:
    """Run protoc and return ``{file name: text}`` of the flattened, import-rewritten modules."""
    from grpc_tools import protoc

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory(prefix="mpctrain-protoc-") as tmp:
        args = [
            "grpc_tools.protoc",
            f"--proto_path={proto_dir}",
            f"--proto_path={well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *(p.as_posix() for p in proto_files(proto_dir)),
        ]
        rc = protoc.main(args)
        if rc != 0:
            raise GenerationError(f"protoc failed with exit code {rc} (see messages above)")
        out_pkg = Path(tmp) / PROTO_PACKAGE
        rendered = {}
        for path in sorted(out_pkg.iterdir()):
            if GENERATED.match(path.name):
                text = _IMPORT.sub("from mpctrain.wire import ", path.read_text())
                rendered[path.name] = _MODULE_NAME.sub(r"'mpctrain.wire.\1'", text)
    return rendered


def stale(proto_dir: Path = PROTO_DIR, out_dir: Path = WIRE_DIR) -> list[str]:
    """Differences between what the protos generate and what ``out_dir`` holds (empty: up to date)."""
    want = render(proto_dir)
    have = {p.name: p for p in out_dir.iterdir() if GENERATED.match(p.name)} if out_dir.is_dir() else {}
    problems = [f"missing {name}" for name in sorted(set(want) - set(have))]
    problems += [f"left over {name} (its .proto is gone)" for name in sorted(set(have) - set(want))]
    problems += [f"differs {name}" for name in sorted(set(want) & set(have)) if have[name].read_text() != want[name]]
    return problems


def generate(proto_dir: Path = PROTO_DIR, out_dir: Path = WIRE_DIR) -> list[str]:
    """Write the generated modules into ``out_dir``, removing generated files whose .proto is gone."""
    rendered = render(proto_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    init = out_dir / "__init__.py"
    if not init.exists():
        init.write_text('"""Code generated from protos/ by scripts/gen_protos.py; never edit by hand."""\n')
    for path in out_dir.iterdir():
        if GENERATED.match(path.name) and path.name not in rendered:
            path.unlink()
    for name, text in rendered.items():
        target = out_dir / name
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
    return sorted(rendered)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the generated code is stale")
    parser.add_argument("--proto-dir", type=Path, default=PROTO_DIR, help="include root holding mpctrain/v1/")
    parser.add_argument("--out-dir", type=Path, default=WIRE_DIR, help="where the generated modules live")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = stale(args.proto_dir, args.out_dir)
            if problems:
                print(f"{args.out_dir} is stale; run `make protos` (python scripts/gen_protos.py):", file=sys.stderr)
                for p in problems:
                    print(f"  {p}", file=sys.stderr)
                return 1
            print(f"{args.out_dir} is up to date")
            return 0
        written = generate(args.proto_dir, args.out_dir)
    except GenerationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"generated {len(written)} files into {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
