"""The ASAPP source's own settings (SOURCES__ASAPP_SFTP__*), typed: how the walker lists, reads and bounds what
it reads, whichever transport delivers the files. The transports' settings are theirs (transports/)."""

from __future__ import annotations

from dlt.common.configuration import configspec
from dlt.common.configuration.specs import BaseConfiguration
from dlt.common.typing import TSecretStrValue

from loaders.asapp_sftp import settings


@configspec
class AsappSourceConfiguration(BaseConfiguration):
    """The settings of the asapp_sftp source (the section keeps its first transport's name: the pipeline's state
    and the documented variables stay as they are). See the source's docstring for each."""

    lookback_days: int = settings.DEFAULT_LOOKBACK_DAYS
    rescan_hours: float = settings.DEFAULT_RESCAN_HOURS
    max_bad_lines: int = settings.DEFAULT_MAX_BAD_LINES
    max_partitions: int = settings.DEFAULT_MAX_PARTITIONS_PER_RUN
    max_line_bytes: int = settings.DEFAULT_MAX_LINE_BYTES
    max_depth: int = settings.DEFAULT_MAX_DEPTH
    max_inflated_bytes: int = settings.DEFAULT_MAX_INFLATED_BYTES
    decrypt_command: str | None = None
    gnupg_home: str | None = None
    gnupg_passphrase: TSecretStrValue | None = None
