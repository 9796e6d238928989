"""Fixtures shared with other tiers: the KMS tier's real KME networks, the config tier's key
files and config writer."""

from tests.config.conftest import site_dir, write_config
from tests.kms.conftest import kme_pair, kme_pki_dir

__all__ = ["kme_pair", "kme_pki_dir", "site_dir", "write_config"]
