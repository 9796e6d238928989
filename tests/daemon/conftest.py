"""The KMS tier's real KME fixtures, for daemon components that talk to a KMS."""

from tests.kms.conftest import kme_pair, kme_pki_dir

__all__ = ["kme_pair", "kme_pki_dir"]
