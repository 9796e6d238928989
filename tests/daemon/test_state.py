import json
import stat
from pathlib import Path

import pytest

from gateway.daemon import commit
from gateway.daemon.state import StateError, StateStore, TunnelState

pytestmark = pytest.mark.unit


def test_round_trip_and_permissions(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.prepare()
    key_ids = ("0f2c8a0e-8d7b-4c55-9b7e-2ad1a3f2c001",)
    st = TunnelState("buc-clj", 7, 1700000000.5, key_ids, "qkd+pqc", "qkd+pqc")
    store.save(st)
    assert store.load("buc-clj") == st
    path = tmp_path / "state" / "tunnels" / "buc-clj.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert store.load("other") is None


def test_file_holds_every_field_and_spis_only_when_set(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.prepare()
    wg = TunnelState("wg", 3, 2.5, ("k1", "k2"), "qkd+pqc", "qkd+pqc", "boot", 9.5, "ab", True)
    esp = TunnelState("esp", 4, 3.5, ("k3",), "qkd", "qkd", spi_in=0x1234, spi_out=0x5678)
    for st in (wg, esp):
        store.save(st)
        assert store.load(st.tunnel) == st
    on_disk = json.loads((tmp_path / "tunnels" / "wg.json").read_text())
    assert on_disk == {"version": 2, "tunnel": "wg", "epoch": 3, "activated_at": 2.5,
                       "key_ids": ["k1", "k2"], "policy": "qkd+pqc", "achieved": "qkd+pqc",
                       "boot_id": "boot", "activated_boot": 9.5, "key_fingerprint": "ab",
                       "closed": True}
    esp_disk = json.loads((tmp_path / "tunnels" / "esp.json").read_text())
    assert (esp_disk["spi_in"], esp_disk["spi_out"]) == (0x1234, 0x5678)


def test_overwrite_leaves_the_file_and_its_spare_only(tmp_path: Path) -> None:
    """Each save writes the spare and swaps the names: the spare then holds the previous
    version (mode 0600, never read); no other file is left behind, and no inode is made or
    freed per save (the two files trade names)."""
    store = StateStore(tmp_path)
    store.prepare()
    tunnels = tmp_path / "tunnels"
    inodes: set[int] = set()
    for epoch in range(5):
        store.save(TunnelState("t", epoch, 1.0))
        inodes |= {p.stat().st_ino for p in tunnels.iterdir()}
    assert store.load("t") == TunnelState("t", 4, 1.0)
    assert sorted(p.name for p in tunnels.iterdir()) == [".spare-t.json", "t.json"]
    assert json.loads((tunnels / ".spare-t.json").read_text())["epoch"] == 3
    assert stat.S_IMODE((tunnels / ".spare-t.json").stat().st_mode) == 0o600
    if commit._RENAMEAT2 is not None:
        assert len(inodes) == 2
    store.remove("t")
    assert list(tunnels.iterdir()) == []


@pytest.mark.parametrize(
    "content",
    ["{", json.dumps({"version": 99, "tunnel": "t", "epoch": 1, "activated_at": 0}),
     json.dumps({"version": 1, "tunnel": "x", "epoch": 1, "activated_at": 0}),
     json.dumps({"version": 1, "tunnel": "t", "epoch": -1, "activated_at": 0}),
     json.dumps({"version": 1, "tunnel": "t"})],
)
def test_corrupt_state_is_a_clear_error(tmp_path: Path, content: str) -> None:
    store = StateStore(tmp_path)
    store.prepare()
    (tmp_path / "tunnels" / "t.json").write_text(content)
    with pytest.raises(StateError, match="remove it to start over"):
        store.load("t")


def test_hostile_tunnel_names_are_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with pytest.raises(StateError):
        store.save(TunnelState("../../etc/passwd", 1, 0.0))


@pytest.mark.parametrize("text", ["null", "1", '"x"', "true", "[]",
                                  '{"version": 2, "tunnel": "t", "epoch": "7", '
                                  '"activated_at": 1.0}',
                                  '{"version": 2, "tunnel": "t", "epoch": 7, '
                                  '"activated_at": 1.0, "closed": "no"}',
                                  '{"version": 2, "tunnel": "t", "epoch": 7, '
                                  '"activated_at": 1.0, "key_ids": [1]}'])
def test_malformed_state_is_a_state_error(tmp_path: Path, text: str) -> None:
    # Found by the fuzz tier: a JSON scalar used to raise AttributeError.
    store = StateStore(tmp_path)
    store.prepare()
    (tmp_path / "tunnels" / "t.json").write_text(text)
    with pytest.raises(StateError, match="malformed"):
        store.load("t")
