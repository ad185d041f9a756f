"""Constants of ASAPP's SFTP export layout (reference: asapp-retrieve-messaging-data.md)."""

import re
from datetime import time

SUCCESS_FLAG = "_SUCCESS"
# ASAPP's daily feed schema, when the export location carries it (beside the feed folders).
EXPORT_DOCS_NAME = "export_docs.yaml"
SUPPORTED_FORMATS = ("jsonl", "json", "jsonlines")
# Partitions are looked for from (last loaded dt - lookback) on; older dt folders are not listed again.
DEFAULT_LOOKBACK_DAYS = 2
# A plain run lists every dt folder again (a rescan: late and restated partitions) when the last rescan of the
# feed is older than this.
DEFAULT_RESCAN_HOURS = 24.0
# A partition dated further ahead of now than this is held back (reported, never loaded, never moving the
# listing's start), so one mis-dated folder cannot stop a feed.
FUTURE_TOLERANCE_HOURS = 24
# Partition loads recorded in the raw dataset: what each load read (its fingerprint) and whether it was a restatement.
PARTITIONS_TABLE = "_partitions"
# Rows per Arrow batch handed to dlt: bounds memory whatever the file size.
BATCH_ROWS = 100_000

# Folder names are matched whole (re.fullmatch: `$` would also match before a trailing newline) and in ASCII
# only (`\d` would also match other scripts' digits); dt, hr and mi must also be real calendar values (listing.py).
VERSION_DIR = re.compile(r"version=(?P<value>[0-9A-Za-z_.-]+)", re.ASCII)
FORMAT_DIR = re.compile(r"format=(?P<value>[0-9A-Za-z_.-]+)", re.ASCII)
DT_DIR = re.compile(r"dt=(?P<value>[0-9]{4}-[0-9]{2}-[0-9]{2})", re.ASCII)
HR_DIR = re.compile(r"hr=(?P<value>[0-9]{2})", re.ASCII)
MI_DIR = re.compile(r"mi=(?P<value>[0-9]{2})", re.ASCII)
FEED_NAME = re.compile(r"[a-z][a-z0-9_]*", re.ASCII)


def data_file_pattern(feed: str) -> "re.Pattern[str]":
    """FEED.jsonl[.NN][.gz][.enc]"""
    return re.compile(rf"{re.escape(feed)}\.jsonl(?:\.(?P<split>[0-9]{{2,}}))?(?P<gz>\.gz)?(?P<enc>\.enc)?", re.ASCII)


# A partition with more bad lines than this fails as a whole (and is retried); fewer go to asapp_raw._rejects.
DEFAULT_MAX_BAD_LINES = 10
REJECT_RAW_LIMIT = 2000  # bytes of a rejected line kept in _rejects
REJECTS_TABLE = "_rejects"
# Partitions per feed in one dlt run: a long backfill is loaded (and committed) in chunks of this size, which
# bounds memory however many partitions are waiting (4320 small partitions in one run peaked at 1.7 GB).
DEFAULT_MAX_PARTITIONS_PER_RUN = 500
# A dropped connection (server restarted, connection reset) is re-opened and the operation retried: this many
# attempts per operation, waiting 2 s, 4 s, 8 s... (with jitter) in between, about a minute in all.
DEFAULT_RETRY_ATTEMPTS = 6
DEFAULT_RETRY_WAIT_SECONDS = 2.0
# Seconds without an answer from the server after which its connection counts as lost.
DEFAULT_TIMEOUT_SECONDS = 60.0
# Bytes asked for per SFTP read request. paramiko's own 32 KiB costs more client CPU per byte downloaded (each
# answer is handled in Python, so fewer, larger ones cost less). OpenSSH serves up to 255 KiB per request; a server
# that answers with less still yields whole files, but paramiko then reads the rest one request at a time, far more
# slowly: set 32768 for such a server.
DEFAULT_READ_REQUEST_BYTES = 128 * 1024
# Hostile input: each bound below turns an input that would exhaust memory, disk or a parser into a defined
# outcome. A line longer than this is rejected (kept in _rejects, up to REJECT_RAW_LIMIT bytes) and never held
# whole: DuckDB takes several times a line's size in memory to read it, and ASAPP's records are a few KB.
DEFAULT_MAX_LINE_BYTES = 32 << 20
# A line nested deeper than this (its own object is level 1) is rejected: no ASAPP record nests more than a few
# levels, and deeper JSON only threatens the parsers downstream.
DEFAULT_MAX_DEPTH = 64
# A gzip (or .enc) file inflating (decrypting) to more than this fails its partition (retried by the next run, named
# in the summary): it bounds the temporary disk one downloaded file may take (a 1 MB gzip can hold 1 GB).
DEFAULT_MAX_INFLATED_BYTES = 8 << 30

# The File Exporter API (transports/file_exporter.py; reference: asapp-fileexporter-openapi.yml).
FILE_EXPORTER_BASE_URL = "https://api.asapp.com"
# The API documents no _SUCCESS flag, and that its data refreshes once a day at 02:00 UTC: a day's partitions
# without a flag are complete once the refresh after that day has passed (listing.py).
FILE_EXPORTER_DAILY_REFRESH = time(2, 0)
# A Retry-After longer than this is waited this long (then the back-off's attempts run out as usual).
FILE_EXPORTER_MAX_RETRY_AFTER_SECONDS = 60.0
# Presigned URLs asked for one file when each answers 403 (expired) before the run stops.
FILE_EXPORTER_URL_ATTEMPTS = 3
