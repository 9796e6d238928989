"""The shipped example configurations are valid once `make example-keys` has run."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import GatewayConfig, load_config
from gateway.identity import PeerPublicKeys, SiteIdentity
from tests.config.sitefiles import REPO, assert_no_secrets, copy_examples, run_cli

pytestmark = pytest.mark.unit

EXAMPLES = sorted(p.relative_to(REPO / "configs") for p in (REPO / "configs").rglob("*.yaml"))
CITIES = {"bucharest", "iasi", "timisoara", "craiova", "cluj-napoca", "constanta"}


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_examples(tmp_path_factory.mktemp("examples"))


def test_the_expected_examples_exist() -> None:
    assert {p.stem for p in EXAMPLES if p.parts[0] == "ronaqci"} == CITIES
    assert {p.stem for p in EXAMPLES if p.parts[0] == "pair"} == {"bucharest", "cluj-napoca"}


@pytest.mark.parametrize("name", [str(p) for p in EXAMPLES])
def test_example_passes_check_config(examples: Path, name: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("check-config", str(examples / name)) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{examples / name}: OK\n") and err == ""
    # The summary names keys by fingerprint only: no private key file content may appear.
    assert_no_secrets(out, [examples / "keys", examples / "pki"])


def _own_public(config: GatewayConfig) -> PeerPublicKeys:
    ident = config.site.identity
    return SiteIdentity.load(ident.ed25519_key.path, ident.mldsa65_key.path).public()


def test_examples_pin_each_others_generated_keys(examples: Path) -> None:
    hub = load_config(examples / "ronaqci/bucharest.yaml")
    assert {p.name for p in hub.peers} == CITIES - {"bucharest"}
    hub_public = _own_public(hub)
    for city in CITIES - {"bucharest"}:
        spoke = load_config(examples / f"ronaqci/{city}.yaml")
        pinned_by_hub = hub.peer(city).public_keys
        assert PeerPublicKeys(pinned_by_hub.ed25519, pinned_by_hub.mldsa65) == _own_public(spoke)
        pinned_by_spoke = spoke.peer("bucharest").public_keys
        assert PeerPublicKeys(pinned_by_spoke.ed25519, pinned_by_spoke.mldsa65) == hub_public
    assert {t.kind for t in hub.tunnels} == {"wireguard", "xfrm"}
    assert {t.policy for t in hub.tunnels} == {"qkd+pqc", "qkd", "pqc", "any"}
    assert {k.kind for k in hub.kms} == {"etsi014", "skip"}


def test_skip_examples_name_each_others_kme(examples: Path) -> None:
    hub = load_config(examples / "ronaqci/bucharest.yaml")
    spoke = load_config(examples / "ronaqci/craiova.yaml")
    hub_skip, spoke_skip = hub.kms_named("ronaqci-skip"), spoke.kms_named("ronaqci-skip")
    assert hub_skip.remote_system_id(spoke.site.sae_id) == spoke_skip.kme_id
    assert spoke_skip.remote_system_id(hub.site.sae_id) == hub_skip.kme_id


def test_example_keys_is_idempotent(examples: Path) -> None:
    before = {p: p.read_bytes() for p in (examples / "keys").rglob("*")
              if p.is_file()} | {p: p.read_bytes() for p in (examples / "pki").iterdir()}
    from tests.config.sitefiles import example_keys

    assert example_keys.main(["--root", str(examples)]) == 0
    after = {p: p.read_bytes() for p in before}
    assert after == before
    for key in (examples / "keys").rglob("*.key"):
        assert key.stat().st_mode & 0o777 == 0o600
