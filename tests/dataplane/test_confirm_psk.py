import pytest

from gateway.dataplane import PskNotApplied
from gateway.dataplane.device import confirm_psk
from gateway.keymaterial import Secret

pytestmark = pytest.mark.unit


def test_read_back_must_equal_what_was_written() -> None:
    written = Secret(bytes(range(32)))
    confirm_psk("wg0", "peer", Secret(bytes(range(32))), written)
    for read_back in (None, Secret(bytes(32))):
        with pytest.raises(PskNotApplied) as err:
            confirm_psk("wg0", "peer", read_back, written)
        assert bytes(range(32)).hex() not in str(err.value)
