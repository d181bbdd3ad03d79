"""The service over real HTTP under property-based fuzzing: requests built from its OpenAPI document and
raw requests (bodies, content types, paths, duplicated framing headers); whatever is sent, a 2xx or a
4xx, never a 5xx or a traceback, and the worker keeps answering exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import h11
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server_utils import running_server
from serving_reference import assert_matches_brute_force, reference_arrays

pytestmark = pytest.mark.slow

USER = "0"


@pytest.fixture(scope="session")
def artifact(tiny_mf_artifact) -> Path:
    """The session's tiny MF artifact (tests/conftest.py), trained and exported once."""
    return tiny_mf_artifact


@pytest.fixture(scope="module")
def server(artifact):
    """SPARSEREC_BATCH_ROUTE=always: concurrent /recommend calls go through BentoML's dispatcher
    (the default, auto, keeps a catalogue this small out of it; see test_serving.py::test_shedding_...).
    A 3 s body timeout bounds the fuzzed requests that promise more body than they send."""
    with running_server(artifact, via="cli", SPARSEREC_BATCH_ROUTE="always", SPARSEREC_BODY_TIMEOUT_S="3") as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def reference(artifact):
    return reference_arrays(artifact)


# --------------------------------------------------------------------------- fuzzing
# Property-based, against the live server: whatever is sent, a 2xx or a 4xx, never a 5xx or a
# traceback, and the worker keeps serving. Bounded by example counts (~400 requests in all).
FUZZ_SETTINGS = dict(
    deadline=None, database=None, derandomize=True, print_blob=True, suppress_health_check=list(HealthCheck)
)


def _assert_not_a_server_error(response_status: int, text: str, what: object) -> None:
    assert response_status < 500, (what, response_status, text[:500])
    if response_status >= 400:
        assert "Traceback" not in text and "IODescriptor" not in text, (what, text[:500])


def test_fuzz_from_the_openapi_document(server, client):
    """schemathesis reads the service's own /docs.json and generates valid and invalid calls
    (positive and negative modes) for every operation in it."""
    import schemathesis
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_url(server.url + "/docs.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {"/recommend", "/recommend_batch", "/ping", "/similar_items", "/similar_items_batch", "/admin/reload"} <= {
        op.path for op in operations
    }
    calls = 0
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=25, **FUZZ_SETTINGS)
            def check(case):
                nonlocal calls
                response = case.call(base_url=server.url, timeout=30)
                calls += 1
                _assert_not_a_server_error(response.status_code, response.text, (case.method, case.path, case.body))

            try:
                check()
            except Unsatisfiable:  # negative mode of an operation without inputs (GET /livez)
                assert mode is schemathesis.GenerationMode.NEGATIVE, operation.path
    assert calls >= 100
    assert client.post("/recommend", json={"user_id": USER, "k": 1}).status_code == 200


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "user_id": _JSON_VALUES | st.sampled_from(["0", "1", "nobody", ""]),
        "k": _JSON_VALUES | st.integers(-5, 400),
        "exclude_seen": _JSON_VALUES,
        "queries": st.lists(
            st.dictionaries(st.sampled_from(["user_id", "k", "exclude_seen", "x"]), _JSON_VALUES, max_size=4),
            max_size=5,
        )
        | _JSON_VALUES,
    },
)
_BODIES = (
    _FIELDS.map(lambda d: json.dumps(d).encode())
    | _JSON_VALUES.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=300)
)
_CONTENT_TYPES = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "multipart/form-data",
        "multipart/form-data; boundary=zz",
        "application/x-www-form-urlencoded",
        "application/vnd.bentoml+pickle",
        "application/octet-stream",
        "*/*",
        "",
    ]
) | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=40)
_PATHS = st.sampled_from(
    [
        "/recommend",
        "/recommend_batch",
        "/ping",
        "/info",
        "/livez",
        "/readyz",
        "/metrics",
        "/docs.json",
        "/schema.json",
        "/",
        "/recommend/",
        "/recommend_batch/submit",
        "/nope",
    ]
) | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=30).map(lambda p: "/" + p)
_HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=40)


# header-level cases: framing headers sent twice, with conflicting or equal values
_DUPLICATES = st.lists(
    st.tuples(
        st.sampled_from(["content-type", "content-encoding", "content-length", "transfer-encoding"]),
        st.sampled_from(
            [
                "application/json",
                "multipart/form-data; boundary=zz",
                "application/x-www-form-urlencoded",
                "gzip",
                "identity",
                "gzip, identity",
                "chunked",
                "0",
                "100000",
            ]
        )
        | _HEADER_TEXT,
    ),
    max_size=3,
)


@given(
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]),
    path=_PATHS,
    content_type=_CONTENT_TYPES,
    body=_BODIES,
    extra=st.dictionaries(
        st.sampled_from(
            [
                "content-encoding",
                "accept",
                "transfer-encoding-x",
                "x-request-id",
                "accept-encoding",
                "expect-x",
                "cookie",
            ]
        ),
        _HEADER_TEXT,
        max_size=3,
    ),
    duplicates=_DUPLICATES,
)
@settings(max_examples=200, **FUZZ_SETTINGS)
def test_fuzz_raw_requests(server, method, path, content_type, body, extra, duplicates):
    """hypothesis, outside the schema: any method, path, content type, headers (framing headers
    duplicated too) and body bytes."""
    headers = dict(extra)
    if content_type is not None:
        headers["content-type"] = content_type
    headers = [(name, value.encode("latin-1")) for name, value in headers.items()]  # raw header bytes
    headers += [(name, value.encode("latin-1")) for name, value in duplicates]
    try:
        response = httpx.request(method, server.url + path, content=body, headers=headers, timeout=30)
    except (httpx.LocalProtocolError, h11.LocalProtocolError):  # the client refuses to send it (a bad header,
        return  # a body longer or shorter than the Content-Length given)
    _assert_not_a_server_error(response.status_code, response.text, (method, path, headers, body[:100]))


def test_worker_survives_the_fuzzing(client, reference):
    """After everything above, the same worker still answers correctly."""
    answer = client.post("/recommend", json={"user_id": reference["user_ids"][1], "k": 3}).json()
    assert_matches_brute_force(reference, answer, 3, True)
