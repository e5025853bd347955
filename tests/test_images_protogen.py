"""The committed *_pb2.py modules are what `make proto` makes from proto/ today."""

from __future__ import annotations

import importlib.util

import pytest

from dumper.images import protogen


def test_generated_modules_are_fresh(tmp_path):
    if importlib.util.find_spec("grpc_tools") is None and not __import__("shutil").which("protoc"):
        pytest.fail("no protoc: install the test extra (grpcio-tools)")
    assert protogen.main(["--out", str(tmp_path)]) == 0
    for name, text in protogen.generate().items():
        committed = protogen.OUT_DIR / name
        assert committed.is_file(), f"{committed} missing: run `make proto`"
        assert committed.read_text() == (tmp_path / name).read_text() == text, (
            f"{committed} is stale against proto/: run `make proto`"
        )
    assert protogen.main(["--check"]) == 0


def test_check_reports_stale(tmp_path, capsys):
    protogen.main(["--out", str(tmp_path)])
    (tmp_path / "criu_images_pb2.py").write_text("# edited\n")
    assert protogen.main(["--check", "--out", str(tmp_path)]) == 1
    assert "criu_images_pb2.py (run `make proto`)" in capsys.readouterr().err


def test_gencode_is_runtime_independent():
    # No ValidateProtobufRuntimeVersion: the modules load on every runtime >= 5.28.
    for path in protogen.OUT_DIR.glob("*_pb2.py"):
        assert "runtime_version" not in path.read_text()
