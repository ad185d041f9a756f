"""The APSIS source under a hostile or changing API, against the emulator on 127.0.0.1: the token stays on the APSIS
origin, requests beyond the 75/25 limits are split and joined losslessly, downloads are capped in size and time,
bad values become counted rejects, and a failed export is retried with a smaller window."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from loaders import runtime
from loaders.apsis.client import ApsisClient
from loaders.apsis.export_file import parse_export
from loaders.apsis.request import ApsisError, ids_from_config, parts
from loaders.loads import load_apsis
from loaders.sandbox.apsis_emulator import SECTION, ApsisEmulator, DownloadHost
from tests.python.helpers import Warehouse, apsis_api, elt, query, scalar

WINDOW = {"start_at": "2026-11-01", "end_at": "2026-11-02"}


@pytest.fixture
def api(tmp_path: Path, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApsisEmulator]:
    with apsis_api(tmp_path / "apsis", monkeypatch, polls_until_ready=1) as emu:
        yield emu


@pytest.fixture
def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A self-signed certificate for 127.0.0.1 that the client trusts (REQUESTS_CA_BUNDLE), as a server context."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "storage.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "storage.pem", tmp_path / "storage.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert_path))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


# --- token scope --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["answer", "redirect"])
def test_the_token_never_reaches_another_host(
    api: ApsisEmulator, warehouse: Warehouse, tls: ssl.SSLContext, via: str
) -> None:
    """The export's file on another host (https), named in the export answer or reached by a redirect of the poll
    URL: fetched without the bearer token, which the trap host would record."""
    with DownloadHost(api.state, tls) as trap:
        setattr(api.state, "download_base" if via == "answer" else "redirect_base", trap.base_url)
        load_apsis(**WINDOW)
    assert scalar(warehouse, "select count(*) from apsis_raw.profiles") == 40
    assert len(api.state.downloads) == 1
    tokens = list(api.state.tokens)
    assert tokens  # the APSIS API itself was called with a token
    for request in api.state.downloads:
        assert "authorization" not in request
        assert not any(token in value for token in tokens for value in request.values())
    if via == "redirect":  # the poll on the APSIS origin had the token, and answered the redirect
        assert [s for s, _ in api.state.polls][-1] == 200


@pytest.mark.parametrize("via", ["answer", "redirect"])
def test_a_plain_http_url_on_another_host_is_refused(api: ApsisEmulator, tmp_path: Path, via: str) -> None:
    with DownloadHost(api.state) as trap:
        setattr(api.state, "download_base" if via == "answer" else "redirect_base", trap.base_url)
        with pytest.raises(Exception, match=r"refusing to fetch http://127\.0\.0\.1:\d+/audience/.*only over https"):
            load_apsis(**WINDOW)
    assert api.state.downloads == []  # nothing was sent there, token or not


# --- beyond the 75 attributes / 25 tags limits ----------------------------------------------------------------


def test_discovery_beyond_the_limits_exports_everything_in_parts(api: ApsisEmulator, warehouse: Warehouse) -> None:
    api.state.extra_attributes, api.state.extra_tags = 80, 30  # 88 attributes and 33 tags listed
    stats = load_apsis(**WINDOW)
    first, second = api.state.requests
    assert (len(first["attributes"]), len(first["tags"]), len(second["attributes"]), len(second["tags"])) == (
        75,
        25,
        13,
        8,
    )
    assert first["events"] and "events" not in second  # events once: never exported twice
    assert {*first["attributes"], *second["attributes"]} == {a for a, _, _ in api.state.attributes()}
    assert {*first["tags"], *second["tags"]} == {t for t, _ in api.state.tags()}
    # what customer_metadata reads comes first (dbt vars: customer_id, email, phone, zip; vip)
    assert first["attributes"][:4] == ["customer_id", "email", "phone", "zip"] and first["tags"][0] == "vip"
    assert stats.exports == 1
    assert query(warehouse, "select parts, attributes_requested, tags_requested from apsis_raw.exports") == [
        (2, 88, 33)
    ]
    assert scalar(warehouse, "select count(distinct export_id) from apsis_raw.profile_attributes") == 1
    assert scalar(warehouse, "select count(*) from apsis_raw.profile_attributes") == 40 * 88
    assert scalar(warehouse, "select count(distinct tag_id) from apsis_raw.profile_tags where export_part = 1") == 8

    # staging joins the parts by profile key: every attribute of each profile, and the customers the mart matches
    models = "stg_apsis__profiles stg_apsis__attributes stg_apsis__tags int_apsis_profiles_pivoted"
    assert runtime.run_dbt(["build", "--select", models, "--indirect-selection", "cautious"])
    assert query(warehouse, "select count(*), count(distinct profile_key) from staging.stg_apsis__attributes") == [
        (40 * 88, 40)
    ]
    assert scalar(warehouse, "select count(*) from staging.stg_apsis__profiles") == 40
    assert query(
        warehouse,
        "select count(customer_id), count(email_address), count(phone_number) "
        "from intermediate.int_apsis_profiles_pivoted",
    ) == [(40, 40, 40)]


def test_long_lists_split_into_parts_within_the_limits() -> None:
    attributes = [f"a{i}" for i in range(151)]
    tags = [f"t{i}" for i in range(26)]
    split = parts(attributes, tags, ["e"], None, None)
    assert [(len(p.attributes), len(p.tags), p.events) for p in split] == [(75, 25, ("e",)), (75, 1, ()), (1, 0, ())]
    assert [a for p in split for a in p.attributes] == attributes
    assert [(len(p.attributes), len(p.tags)) for p in parts(["a"], [], [], None, None)] == [(1, 0)]
    assert ids_from_config('["email", "customer_id", "email"]') == ("email", "customer_id")
    assert ids_from_config(" email, ,phone ") == ("email", "phone")


# --- caps and deadline --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gzip", "message"),
    [(False, "the export is larger than 12000 bytes"), (True, "the export inflates to more than 12000 bytes")],
)
def test_an_export_over_the_size_cap_is_a_clear_error(
    api: ApsisEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gzip: bool, message: str
) -> None:
    """Plain: refused while downloading. Gzip: the ~5 KB download is within the cap, its JSON is not."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setenv("SOURCES__APSIS__GZIP", str(gzip).lower())
    monkeypatch.setenv("SOURCES__APSIS__MAX_EXPORT_BYTES", "12000")
    result = elt("load", "apsis", "--start-at", "2026-11-01", "--end-at", "2026-11-02")
    assert result.returncode == 1
    assert message in result.stderr and "SOURCES__APSIS__MAX_EXPORT_BYTES" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(temp.glob("apsis-export-*")) == []


def test_a_download_past_its_deadline_is_a_clear_error(api: ApsisEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each piece arrives well within a read timeout; the whole takes longer than the deadline."""
    api.state.trickle_seconds = 0.1  # ~30 KB in 4 KiB pieces: ~0.8 s
    monkeypatch.setenv("SOURCES__APSIS__GZIP", "false")
    monkeypatch.setenv("SOURCES__APSIS__DOWNLOAD_TIMEOUT", "0.3")
    with pytest.raises(Exception, match=r"took longer than 0\.3 s \(SOURCES__APSIS__DOWNLOAD_TIMEOUT"):
        load_apsis(**WINDOW)


# --- bad values ---------------------------------------------------------------------------------------------

GOOD_EVENT = {"correlationId": "ok", "typeId": "purchase_v1", "sourceEventTime": 0, "createdAt": 1793520000000}
HOSTILE = {
    "": {"sections": {SECTION: {"attributes": {"email": {"value": "nokey@example.com"}}}}},
    "p-list": [1, 2],
    "p-sections": {"sections": ["not", "an", "object"]},
    "p-section": {"sections": {SECTION: "not an object", "other": {"attributes": {"email": {"value": "x@y.z"}}}}},
    "p-attributes": {"sections": {SECTION: {"attributes": [1], "events": [GOOD_EVENT]}}},
    "p-events": {"sections": {SECTION: {"attributes": {"email": {"value": "e@x.y"}}, "events": {"a": 1}}}},
    "p-bad-events": {
        "sections": {
            SECTION: {
                "attributes": {"customer_id": {"value": "c-1"}, "vip": {"value": None}, "email": {"value": None}},
                "events": [
                    "not an object",
                    {**GOOD_EVENT, "correlationId": "far", "createdAt": 10**20},
                    {**GOOD_EVENT, "correlationId": "text", "sourceEventTime": "yesterday"},
                    {**GOOD_EVENT, "correlationId": "negative", "createdAt": -5},
                    {**GOOD_EVENT, "correlationId": "bool", "createdAt": True},
                    GOOD_EVENT,
                ],
            }
        }
    },
}


def test_bad_values_are_rejected_and_counted_and_the_rest_loads(api: ApsisEmulator, warehouse: Warehouse) -> None:
    api.state.inject_profiles = HOSTILE
    stats = load_apsis(**WINDOW)
    rejects = query(warehouse, "select profile_key, item, error from apsis_raw._rejects order by profile_key, item")
    assert [(k, i) for k, i, _ in rejects] == [
        ("", "profile"),
        ("p-attributes", "attributes"),
        ("p-bad-events", "event 0"),
        ("p-bad-events", "event 1"),
        ("p-bad-events", "event 2"),
        ("p-bad-events", "event 3"),
        ("p-bad-events", "event 4"),
        ("p-events", "events"),
        ("p-list", "profile"),
        ("p-section", "section"),
        ("p-sections", "sections"),
    ]
    errors = dict(((k, i), e) for k, i, e in rejects)
    assert errors[("", "profile")] == "a profile without a key"
    assert errors[("p-bad-events", "event 0")] == "the event is a JSON string, not an object"
    assert "createdAt '100000000000000000000'" in errors[("p-bad-events", "event 1")]
    assert "sourceEventTime 'yesterday'" in errors[("p-bad-events", "event 2")]
    assert "out of range" in errors[("p-bad-events", "event 3")]
    assert query(warehouse, "select rejected_rows, profiles_rows from apsis_raw.exports") == [(11, 40 + 5)]
    assert stats.rows["_rejects"] == 11
    # beside the rejects: the generated profiles, the good parts of the bad ones
    assert query(
        warehouse, "select correlation_id, event_index from apsis_raw.events where profile_key like 'p-%' order by 1"
    ) == [("ok", 0), ("ok", 5)]
    assert scalar(warehouse, "select count(*) from apsis_raw.profile_attributes where profile_key = 'p-section'") == 1
    assert scalar(warehouse, "select count(*) from apsis_raw.profile_attributes where profile_key = 'p-events'") == 1
    # a null attribute value is an attribute (its value unset), not a tag; a requested tag is a tag
    assert query(
        warehouse,
        "select value, value_type from apsis_raw.profile_attributes where profile_key = 'p-bad-events' "
        "and attribute_id = 'email'",
    ) == [(None, "null")]
    assert query(warehouse, "select tag_id from apsis_raw.profile_tags where profile_key = 'p-bad-events'") == [
        ("vip",)
    ]
    models = "stg_apsis__profiles stg_apsis__attributes stg_apsis__tags"
    assert runtime.run_dbt(["build", "--select", models, "--indirect-selection", "cautious"])
    assert query(
        warehouse, "select attribute_id from staging.stg_apsis__attributes where profile_key = 'p-bad-events'"
    ) == [("customer_id",)]
    assert scalar(warehouse, "select count(*) from staging.stg_apsis__attributes where value is null") == 0


# --- a failed export ----------------------------------------------------------------------------------------


def test_a_failed_export_is_retried_as_two_halves(api: ApsisEmulator, warehouse: Warehouse) -> None:
    api.state.inject_poll = [503, 410, 503]  # the day fails three times; its halves succeed
    stats = load_apsis(**WINDOW)
    assert [(r["start_at"], r["end_at"]) for r in api.state.requests] == [
        *[("2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z")] * 3,
        ("2026-11-01T00:00:00Z", "2026-11-01T12:00:00Z"),
        ("2026-11-01T12:00:00Z", "2026-11-02T00:00:00Z"),
    ]
    assert stats.windows == ["2026-11-01 00:00 .. 2026-11-01 12:00", "2026-11-01 12:00 .. 2026-11-02 00:00"]
    assert scalar(warehouse, "select count(*) from apsis_raw.exports") == 2


def test_an_export_failing_down_to_the_smallest_window_names_it(
    api: ApsisEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCES__APSIS__MIN_WINDOW_HOURS", "12")
    api.state.inject_poll = [503] * 6  # the day, then its first half: each three times
    result = elt("load", "apsis", "--start-at", "2026-11-01", "--end-at", "2026-11-02")
    assert result.returncode == 1
    stderr = " ".join(result.stderr.split())  # as one line, however the console wrapped it
    assert "could not produce the export of 2026-11-01T00:00:00Z .. 2026-11-01T12:00:00Z after 3 requests" in stderr
    assert "shorter than 12 h (SOURCES__APSIS__MIN_WINDOW_HOURS)" in stderr
    assert len(api.state.requests) == 6


def test_numbers_beyond_64_bits_are_values_not_a_failed_export(tmp_path: Path) -> None:
    """ijson's C parser stops at such a number: the rest of the file is read by its Python parser."""
    path = tmp_path / "export.json"
    big = "123456789012345678901234567890"

    def section(value: str, created_at: str) -> str:  # JSON text: 1e400 has no Python float to dump
        event = f'{{"correlationId": "c", "createdAt": {created_at}}}'
        return f'{{"sections": {{"s": {{"attributes": {{"n": {{"value": {value}}}}}, "events": [{event}]}}}}}}'

    profiles = {"p1": section("1", "1793520000000"), "p2": section(big, "1e400"), "p3": section("3", "1793520000000")}
    path.write_text("{" + ", ".join(f'"{key}": {profile}' for key, profile in profiles.items()) + "}")
    tables: dict[str, list[dict[str, object]]] = {}
    for name, batch in parse_export(path, "x"):
        tables.setdefault(name, []).extend(batch.to_pylist())
    assert [(r["profile_key"], r["value"], r["value_type"]) for r in tables["profile_attributes"]] == [
        ("p1", "1", "number"),
        ("p2", big, "number"),
        ("p3", "3", "number"),
    ]
    assert [r["profile_key"] for r in tables["events"]] == ["p1", "p3"]
    assert [(r["profile_key"], r["item"]) for r in tables["_rejects"]] == [("p2", "event 0")]


def test_an_export_that_is_not_json_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_text('{"p1": {"sections": {}}, "p2": {"sections": tru')
    with pytest.raises(ApsisError, match=r"export\.json: the export is not valid JSON after 1 profiles"):
        list(parse_export(path, "x"))


def test_a_long_wait_for_an_export_keeps_polling() -> None:
    """After a thousand 'not ready' answers (short polls, a slow export) the back-off is still a number."""
    client = ApsisClient("http://127.0.0.1:9", "id", "secret", poll_initial_interval=0.0, poll_max_interval=0.0)
    client._sleep(2_000)
