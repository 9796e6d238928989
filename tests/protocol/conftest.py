"""Fixtures of the protocol tests: site identities are costly-ish (ML-DSA keygen), share them."""

from __future__ import annotations

import pytest

from gateway.identity import SiteIdentity


@pytest.fixture(scope="session")
def ids() -> tuple[SiteIdentity, SiteIdentity]:
    return SiteIdentity.generate(), SiteIdentity.generate()
