"""The CLI tests use the config tests' shared key files and config writer."""

from tests.config.conftest import site_dir, write_config

__all__ = ["site_dir", "write_config"]
