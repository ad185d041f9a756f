"""ASAPP Metadata Ingestion API: the many-customer-metadata endpoint and its documented limits
(reference: asapp-many-customer-metadata.txt and the OpenAPI spec shipped beside this file)."""

from pathlib import Path

from dlt.common.configuration import configspec
from dlt.common.configuration.specs import BaseConfiguration
from dlt.common.typing import TSecretStrValue

SPEC_PATH = Path(__file__).with_name("openapi.yml")  # ASAPP's published Metadata Ingestion OpenAPI spec
ENDPOINT = "/metadata-ingestion/v1/many-customer-metadata"
BATCH_SIZE = 1000  # maxItems of the request's items
MAX_REQUESTS_PER_SECOND = 100.0  # spike limit
CONCURRENT_REQUESTS = 4  # batches in flight at once (still paced to the spike limit)
RETRY_429_S = (1.0, 2.0, 4.0)  # unless the answer's Retry-After says otherwise
MAX_RETRY_AFTER_S = 60.0  # a longer Retry-After gives the batch up for this run: it is sent again by the next
RETRY_5XX_S = (0.25, 0.5, 1.0)
REQUEST_TIMEOUT_S = 60.0
LOG_PART_ROWS = 20 * BATCH_SIZE  # push log rows held before dlt takes them
EVENT_ID_HEX_DIGITS = 40  # an eventId is `elt-` and this many hex digits of the item's content hash
DRY_RUN_SAMPLE = 3  # items a dry run keeps to show

MART = "customer_metadata"  # one row per (external_conversation_id, external_customer_id)
MART_ATTRIBUTES = "customer_metadata_attributes"  # up to 10 (name, value) per key
LOG_DATASET = "asapp_metadata"
LOG_TABLE = "asapp_metadata_push_log"

KEYS = ("external_conversation_id", "external_customer_id")
# mart column -> API field
FIELDS = {
    "external_conversation_id": "externalConversationId",
    "external_customer_id": "externalCustomerId",
    "status": "status",
    "phone_number": "phoneNumber",
    "email_address": "emailAddress",
    "user_id": "userId",
    "address_country": "addressCountry",
    "address_state": "addressState",
    "address_zipcode": "addressZipcode",
}


@configspec
class AsappApiConfiguration(BaseConfiguration):
    """ASAPP's API, resolved by dlt from the `asapp_api` section: ASAPP_API__BASE_URL, ASAPP_API__API_ID and
    ASAPP_API__API_SECRET (a secret), in the environment or in .dlt/config.toml and .dlt/secrets.toml."""

    # dlt's way of declaring a required field: None until resolved, and an error when nothing sets it
    base_url: str = None  # type: ignore[assignment]
    api_id: str = None  # type: ignore[assignment]
    api_secret: TSecretStrValue = None  # type: ignore[assignment]


@configspec
class AsappApiCredentials(BaseConfiguration):
    """ASAPP's API id and secret alone, from the same `asapp_api` section (no base_url): the File Exporter API
    falls back to them when its own SOURCES__ASAPP_FILE_EXPORTER__API_ID / __API_SECRET are unset."""

    api_id: str | None = None
    api_secret: TSecretStrValue | None = None
