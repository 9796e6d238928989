"""Equal per-tunnel values held once (gateway.config.fields, "equal values held once"): same values, fewer objects."""

from collections.abc import Callable
from pathlib import Path

import pydantic
import pytest
import yaml

from gateway.config import load_config
from gateway.config.models import GatewayConfig
from tests.config.test_hub import hub, write_hub  # noqa: F401  (fixture)

pytestmark = pytest.mark.unit


def test_tunnels_written_alike_share_their_key_source_and_given_fields(
        write_hub: Callable[[str], Path]) -> None:  # noqa: F811
    cfg = load_config(write_hub(hub()))
    t0, t1 = cfg.tunnels
    assert t0.wireguard is not None and t1.wireguard is not None
    # The hub's one WireGuard key file: one object, its path resolved as before.
    assert t0.wireguard.private_key is t1.wireguard.private_key
    assert t0.wireguard.private_key is not None
    assert t0.wireguard.private_key.path.name == "wireguard.key"
    assert t0.wireguard.private_key.path.is_absolute()
    # The sets of given field names are shared and still right.
    assert t0.wireguard.model_fields_set is t1.wireguard.model_fields_set
    assert "reject_after" not in t1.model_fields_set
    # Frozen: a write is refused and leaves the shared set alone.
    with pytest.raises(pydantic.ValidationError):
        t1.wireguard.adopt = True  # type: ignore[misc]
    assert "adopt" not in t0.wireguard.model_fields_set


def test_a_tunnel_written_differently_keeps_its_own_given_fields(
        write_hub: Callable[[str], Path]) -> None:  # noqa: F811
    cfg = load_config(write_hub(hub(spoke_extra="    reject_after: 200s\n")))
    t0, t1 = cfg.tunnels
    assert "reject_after" in t1.model_fields_set and "reject_after" not in t0.model_fields_set
    assert t1.reject_after == 200 and t0.model_fields_set is not t1.model_fields_set


def test_validated_without_the_table_nothing_is_shared(
        write_hub: Callable[[str], Path]) -> None:  # noqa: F811
    path = write_hub(hub())
    via_load = load_config(path)
    direct = GatewayConfig.model_validate(yaml.safe_load(path.read_text()),
                                          context={"base_dir": path.parent})
    assert direct == via_load  # the same values either way
    a, b = direct.tunnels
    assert a.wireguard is not None and b.wireguard is not None
    assert a.wireguard.private_key is not b.wireguard.private_key
