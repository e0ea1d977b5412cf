"""The consented Flower app inside the enclave: found by digest in the submitted FAB, run from the hashed bytes."""

from __future__ import annotations

import io
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from flwr.cli.build import build_fab_from_disk

from mpctrain.enclave.federated import apps
from mpctrain.enclave.federated.apps import (
    AppEntryError,
    app_from_fab,
    check_fab,
    consented_initial_arrays,
    read_app,
)
from mpctrain.enclave.federated.errors import CodeDigestMismatch
from mpctrain.enclave.federated.simulation import build_federation
from mpctrain.jobs import ManifestError
from mpctrain.party.flower import app_code_digest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "banks_federated"
TASK = "from flwr.app import Array, ArrayRecord\nimport numpy as np\n\n\ndef initial_arrays():\n" \
       "    return ArrayRecord({'w': Array(np.full(3, {value}, np.float32))})\n"


def _manifest(digest: str, entry: str | None = "task:initial_arrays"):
    flower = {"initial_arrays": entry} if entry is not None else {}
    return build_federation(["bank-a"], job_id="apps", code_digest=digest,
                            training={"rounds": 1, "flower": flower}).manifest


def _app_dir(tmp_path: Path, value: float = 1.0, name: str = "app") -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "__init__.py").write_text("")
    (d / "task.py").write_text(TASK.replace("{value}", repr(value)))
    (d / "helpers.py").write_text("VALUE = 3\n")
    return d


def _rezip(fab: bytes, edit: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(fab)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, edit.get(info.filename, src.read(info)))
        for name, data in edit.items():
            if name not in src.namelist():
                dst.writestr(name, data)
    return out.getvalue()


def test_the_consented_app_in_a_real_fab_builds_the_initial_model():
    from examples.banks_federated.app.task import initial_arrays

    digest = app_code_digest(EXAMPLE / "app")
    fab = build_fab_from_disk(EXAMPLE)  # what `flwr run` submits and every SuperNode runs
    app = app_from_fab(fab, digest)
    assert app.path.name == "app" and app.digest == digest
    arrays = consented_initial_arrays(_manifest(digest), app)
    want = initial_arrays()
    assert list(arrays) == list(want)
    for k in want:
        np.testing.assert_array_equal(arrays[k].numpy(), want[k].numpy())


def test_a_fab_whose_code_differs_from_the_consented_digest_is_refused():
    digest = app_code_digest(EXAMPLE / "app")
    fab = build_fab_from_disk(EXAMPLE)
    with zipfile.ZipFile(io.BytesIO(fab)) as zf:
        task = zf.read("app/task.py")
    for edit in ({"app/task.py": task + b"\n# one more line\n"},  # changed code
                 {"app/extra.py": b"x = 1\n"}):  # an added module
        with pytest.raises(CodeDigestMismatch, match="no directory of the submitted FAB"):
            app_from_fab(_rezip(fab, edit), digest)


def test_unreadable_or_oversized_fabs_are_refused(monkeypatch):
    with pytest.raises(CodeDigestMismatch, match="not a readable zip"):
        app_from_fab(b"PK\x03\x04 not really a zip", "00" * 48)
    monkeypatch.setattr(apps, "MAX_FAB_BYTES", 100)
    with pytest.raises(CodeDigestMismatch, match="over 100"):
        app_from_fab(b"\0" * 101, "00" * 48)
    monkeypatch.setattr(apps, "MAX_FAB_BYTES", 16 << 20)
    monkeypatch.setattr(apps, "MAX_FAB_UNPACKED", 1 << 16)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("app/big.py", b"#" * (1 << 17))  # compresses to a few hundred bytes
    with pytest.raises(CodeDigestMismatch, match="unpack to 131072 bytes"):
        app_from_fab(bomb.getvalue(), "00" * 48)
    toml_bomb = io.BytesIO()  # not Python, but Flower's own reader would unpack it: refused before that
    with zipfile.ZipFile(toml_bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pyproject.toml", b"#" * (1 << 17))
    with pytest.raises(CodeDigestMismatch, match="unpack to 131072 bytes"):
        check_fab(toml_bomb.getvalue())
    twice = io.BytesIO()
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(twice, "w") as zf:
        zf.writestr("app/task.py", b"x = 1\n")
        zf.writestr("app/task.py", b"x = 2\n")
    with pytest.raises(CodeDigestMismatch, match="two entries under one name"):
        check_fab(twice.getvalue())
    deep = io.BytesIO()
    with zipfile.ZipFile(deep, "w") as zf:
        zf.writestr("/".join(["d"] * 17) + "/m.py", b"x = 1\n")
    with pytest.raises(CodeDigestMismatch, match="more than 16 directories deep"):
        check_fab(deep.getvalue())


def test_the_code_that_runs_is_the_code_that_was_hashed(tmp_path):
    app = read_app(_app_dir(tmp_path, value=1.0))
    (app.path / "task.py").write_text(TASK.replace("{value}", "666.0"))  # changed on disk after the check
    arrays = consented_initial_arrays(_manifest(app.digest), app)
    np.testing.assert_array_equal(arrays["w"].numpy(), np.ones(3, np.float32))
    assert app.digest != read_app(app.path).digest


def test_an_app_other_than_the_consented_one_is_refused(tmp_path):
    app = read_app(_app_dir(tmp_path))
    with pytest.raises(CodeDigestMismatch, match="covers"):
        consented_initial_arrays(_manifest("ab" * 48), app)
    manifest = _manifest(app.digest)
    with pytest.raises(ManifestError, match="code_digest must be the app's SHA-384"):  # refused when proposed
        replace(manifest, training={**manifest.training, "flower": {"initial_arrays": "task:initial_arrays"}})


@pytest.mark.parametrize(("entry", "message"), [
    (None, r"names no \[training.flower\] initial_arrays"),
    ("nosuch:initial_arrays", "has no module 'nosuch'"),
    ("task:missing", "has no function 'missing'"),
    ("helpers:VALUE", "has no function 'VALUE'"),
])
def test_a_missing_or_wrong_entry_point_is_a_clear_error(tmp_path, entry, message):
    app = read_app(_app_dir(tmp_path))
    with pytest.raises(AppEntryError, match=message):
        consented_initial_arrays(_manifest(app.digest, entry), app)


def test_a_malformed_entry_point_is_refused_when_the_job_is_proposed(tmp_path):
    app = read_app(_app_dir(tmp_path))
    with pytest.raises(ManifestError, match="initial_arrays must be \"module:function\""):
        _manifest(app.digest, "task.initial_arrays")
    with pytest.raises(ManifestError, match="run_config\\] must be a table"):
        build_federation(["bank-a"], job_id="apps", code_digest=app.digest,
                         training={"rounds": 1, "flower": {"run_config": "lr=0.1"}})


def test_an_entry_point_that_returns_something_else_is_refused(tmp_path):
    d = _app_dir(tmp_path)
    (d / "task.py").write_text("def initial_arrays():\n    return {'w': [1, 2, 3]}\n")
    app = read_app(d)
    with pytest.raises(AppEntryError, match="returned dict, not a flwr ArrayRecord"):
        consented_initial_arrays(_manifest(app.digest), app)


def test_an_absolute_self_import_is_refused_rather_than_loaded_from_disk(tmp_path, monkeypatch):
    d = _app_dir(tmp_path, name="myapp")
    (d / "task.py").write_text("from myapp.helpers import VALUE\n" + TASK.replace("{value}", "VALUE"))
    decoy = tmp_path / "on-path" / "myapp"  # the same package on sys.path, as a Flower install would leave it
    decoy.mkdir(parents=True)
    marker = tmp_path / "decoy-ran"
    (decoy / "__init__.py").write_text("")
    (decoy / "helpers.py").write_text(f"open({str(marker)!r}, 'w').close()\nVALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path / "on-path"))
    app = read_app(d)
    with pytest.raises(AppEntryError, match="by its absolute name"):
        consented_initial_arrays(_manifest(app.digest), app)
    assert not marker.exists()
    (d / "task.py").write_text(TASK.replace("def initial_arrays():\n", "def initial_arrays():\n"
                                            "    from myapp.helpers import VALUE\n").replace("{value}", "VALUE"))
    lazy = read_app(d)  # the same import made only when the function is called
    with pytest.raises(AppEntryError, match="by its absolute name"):
        consented_initial_arrays(_manifest(lazy.digest), lazy)
    assert not marker.exists()
    (d / "task.py").write_text("from .helpers import VALUE\n" + TASK.replace("{value}", "VALUE"))
    relative = read_app(d)  # the same app importing itself relatively runs from its hashed bytes
    np.testing.assert_array_equal(consented_initial_arrays(_manifest(relative.digest), relative)["w"].numpy(),
                                  np.full(3, 3, np.float32))
