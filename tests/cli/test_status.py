"""`status` and `rekey` find the control socket from the file alone: no secrets needed."""

from pathlib import Path

import pytest

from gateway.cli.main import main

pytestmark = pytest.mark.unit


def test_status_reads_only_the_socket_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                           ) -> None:
    cfg = tmp_path / "gateway.yaml"
    # A credential reference without $CREDENTIALS_DIRECTORY would fail full validation.
    cfg.write_text("site: {name: a, sae_id: a, identity: {ed25519_key: {credential: x}, "
                   "mldsa65_key: {credential: y}}}\ncontrol_socket: ctl.sock\n")
    assert main(["status", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert f"no daemon is listening on {tmp_path / 'ctl.sock'}" in err
    assert main(["rekey", "t0", "--socket", str(tmp_path / "none.sock")]) == 1
