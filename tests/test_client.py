"""The API client against requests-mock (every status and body shape) and, for the
deadline, against the fake API over loopback."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import requests_mock as rm
from conftest import make_key
from fakeapi import FakeExecAPI, summary_body
from harness import fake_api, wait_until

from exporter import __version__
from exporter.client import (
    MAX_BODY_BYTES,
    BadRequest,
    ConnectionFailed,
    ExecClient,
    Forbidden,
    InvalidResponse,
    Member,
    NotFound,
    Page,
    ParticipantRow,
    RateLimited,
    Summary,
    Timeout,
    Unauthorized,
    UpstreamError,
    parse_summary,
)

BASE = "https://api.example.test/rest/v1"
URL = f"{BASE}/scenarios/discovery-call/analytics/summary"
EXAMPLE: dict[str, Any] = summary_body()  # the OpenAPI example

@pytest.fixture
def client() -> ExecClient:
    return ExecClient(BASE, make_key(), timeout=2)


def test_summary_fields_units_and_headers(client: ExecClient, requests_mock: rm.Mocker) -> None:
    requests_mock.get(URL, json=EXAMPLE)
    summary = client.summary("discovery-call", {})
    assert summary == Summary(
        participants=45, sessions=128, average_best_score=74.2, average_best_rank="silver",
        average_score_lift=18.5, practice_seconds=742 * 60,
        average_session_duration_seconds=348,
        rank_participants={"gold": 12, "silver": 18, "bronze": 10, "unranked": 5})
    sent = requests_mock.last_request
    assert sent.headers["Authorization"] == f"Bearer {make_key()}"
    assert sent.headers["User-Agent"] == f"exec-exporter/{__version__}"


def test_filters_reach_the_query_string(client: ExecClient, requests_mock: rm.Mocker) -> None:
    requests_mock.get(URL, json=EXAMPLE)
    client.summary("discovery-call", {"group_ids": "g1,g2", "user_emails": "a+b@x.com",
                                      "start_date": "2026-07-01T00:00:00Z",
                                      "exclude_system_users": "true"})
    query = requests_mock.last_request.url.split("?", 1)[1]
    assert "group_ids=g1,g2" in query
    assert "user_emails=a%2Bb@x.com" in query
    assert "start_date=2026-07-01T00:00:00Z" in query
    assert "exclude_system_users=true" in query
    assert requests_mock.last_request.qs["user_emails"] == ["a+b@x.com"]


def test_scenario_id_is_path_escaped(client: ExecClient, requests_mock: rm.Mocker) -> None:
    requests_mock.get(f"{BASE}/scenarios/a%2Fb/analytics/summary", json={})
    client.summary("a/b", {})
    assert requests_mock.called


def test_non_ascii_slug_is_percent_encoded_as_utf8(client: ExecClient,
                                                  requests_mock: rm.Mocker) -> None:
    requests_mock.get(f"{BASE}/scenarios/%C3%A9quipe-d%C3%A9couverte/analytics/summary",
                      json=EXAMPLE)
    assert client.summary("équipe-découverte", {}).participants == 45
    sent = requests_mock.last_request
    assert sent.url == f"{BASE}/scenarios/%C3%A9quipe-d%C3%A9couverte/analytics/summary"


def test_nulls_missing_and_unknown_fields(client: ExecClient, requests_mock: rm.Mocker) -> None:
    requests_mock.get(URL, json={"participant_count": 0, "average_best_score": None,
                                 "brand_new_field": {"x": 1}})
    summary = client.summary("discovery-call", {})
    assert summary.participants == 0
    assert summary.average_best_score is None
    assert summary.sessions is None
    assert summary.rank_participants is None


def test_missing_ranks_count_zero() -> None:
    summary = parse_summary({"score_distribution": [{"rank": "gold", "count": 3}]})
    assert summary.rank_participants == {"gold": 3, "silver": 0, "bronze": 0, "unranked": 0}


@pytest.mark.parametrize(("body", "message"), [
    ([1, 2], "the body is not an object"),
    ({"participant_count": "forty"}, "participant_count is str, expected a number"),
    ({"participant_count": 4.5}, "participant_count is 4.5, expected a whole number"),
    ({"average_best_score": 250}, "average_best_score is 250, outside 0-100"),
    ({"average_best_rank": "platinum"}, "average_best_rank is 'platinum', not one of"),
    ({"score_distribution": {"gold": 1}}, "score_distribution is not a list"),
    ({"score_distribution": [{"rank": "gold", "count": -1}]},
     "score_distribution[0].count is -1, below 0"),
    ({"score_distribution": [{"count": 1}]}, "score_distribution[0].rank is missing"),
    ({"score_distribution": [{"rank": "gold"}, {"rank": "gold"}]},
     "score_distribution lists 'gold' twice"),
])
def test_an_invalid_summary_names_the_field(body: object, message: str) -> None:
    with pytest.raises(InvalidResponse) as caught:
        parse_summary(body)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize("body", [
    [1, 2],
    "text",
    {"participant_count": "forty"},
    {"participant_count": -1},
    {"participant_count": 4.5},
    {"participant_count": True},
    {"total_sessions": -3},
    {"average_best_score": 250},
    {"average_best_score": -0.1},
    {"average_best_rank": "platinum"},
    {"total_practice_minutes": -1},
    {"average_session_duration_seconds": "long"},
    {"score_distribution": {"gold": 1}},
    {"score_distribution": [{"rank": "platinum", "count": 1}]},
    {"score_distribution": [{"rank": "gold", "count": -1}]},
    {"score_distribution": [{"rank": "gold", "count": 1}, {"rank": "gold", "count": 2}]},
    {"score_distribution": ["gold"]},
])
def test_wrong_types_and_impossible_values_are_invalid(
        client: ExecClient, requests_mock: rm.Mocker, body: object) -> None:
    requests_mock.get(URL, text=json.dumps(body))
    with pytest.raises(InvalidResponse) as caught:
        client.summary("discovery-call", {})
    assert caught.value.reason == "invalid_response"
    # An answer came: the code label is its status, not "error".
    assert caught.value.code == "200"


def test_invalid_json(client: ExecClient, requests_mock: rm.Mocker) -> None:
    requests_mock.get(URL, text="{not json")
    with pytest.raises(InvalidResponse, match="not valid JSON") as caught:
        client.summary("discovery-call", {})
    assert caught.value.code == "200"


def test_oversized_body_by_header_and_by_stream(client: ExecClient,
                                                requests_mock: rm.Mocker) -> None:
    big = b" " * (MAX_BODY_BYTES + 10)
    requests_mock.get(URL, content=big)
    with pytest.raises(InvalidResponse, match="1 MiB") as by_header:
        client.summary("discovery-call", {})
    assert by_header.value.code == "200"
    requests_mock.get(URL, content=big, headers={"Content-Length": "12"})
    with pytest.raises(InvalidResponse, match="1 MiB") as by_stream:
        client.summary("discovery-call", {})
    assert by_stream.value.code == "200"


ERROR_CASES = [
    (401, {"error": {"type": "authentication_error", "code": "invalid_api_key",
                     "message": "Invalid or inactive API key"}}, Unauthorized, "unauthorized"),
    (403, {"error": {"type": "authorization_error", "code": "workspace_inactive",
                     "message": "Workspace inactive"}}, Forbidden, "forbidden"),
    (404, {"error": {"type": "not_found", "message": "Scenario not found: x"}},
     NotFound, "not_found"),
    (400, {"error": {"type": "invalid_request", "code": "bad_date", "message": "bad"}},
     BadRequest, "bad_request"),
    (500, {"error": {"type": "server_error"}}, UpstreamError, "server_error"),
    (503, "<html><body>Service Unavailable</body></html>", UpstreamError, "server_error"),
]


@pytest.mark.parametrize(("status", "body", "kind", "reason"), ERROR_CASES)
def test_statuses_map_to_typed_errors(client: ExecClient, requests_mock: rm.Mocker,
                                      status: int, body: object, kind: type, reason: str) -> None:
    if isinstance(body, str):
        requests_mock.get(URL, status_code=status, text=body)
    else:
        requests_mock.get(URL, status_code=status, json=body)
    with pytest.raises(kind) as caught:
        client.summary("discovery-call", {})
    assert caught.value.reason == reason
    assert caught.value.code == str(status)
    assert make_key() not in str(caught.value)


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"json": {"error": {"type": "rate_limit_error", "retry_after": 17}}}, 17.0),
    ({"json": {"error": {"type": "rate_limit_error"}, "retry_after": 23}}, 23.0),
    ({"json": {"error": {"type": "rate_limit_error"}}, "headers": {"Retry-After": "41"}}, 41.0),
    ({"text": "slow down", "headers": {"Retry-After": "5"}}, 5.0),
    ({"json": {}}, 60.0),
])
def test_retry_after_from_all_three_places(client: ExecClient, requests_mock: rm.Mocker,
                                           kwargs: dict[str, Any], expected: float) -> None:
    requests_mock.get(URL, status_code=429, **kwargs)
    with pytest.raises(RateLimited) as caught:
        client.summary("discovery-call", {})
    assert caught.value.retry_after == expected
    assert caught.value.reason == "rate_limited"


def test_timeout_and_connection_errors(client: ExecClient, requests_mock: rm.Mocker) -> None:
    requests_mock.get(URL, exc=requests.ReadTimeout("read timed out"))
    with pytest.raises(Timeout) as timeout:
        client.summary("discovery-call", {})
    assert timeout.value.code == "error" and timeout.value.reason == "timeout"
    requests_mock.get(URL, exc=requests.ConnectionError("refused"))
    with pytest.raises(ConnectionFailed) as refused:
        client.summary("discovery-call", {})
    assert refused.value.reason == "connection"


def test_redirects_are_not_followed(client: ExecClient, requests_mock: rm.Mocker) -> None:
    # Following a redirect could carry the bearer key to another host.
    requests_mock.get(URL, status_code=302, headers={"Location": "https://elsewhere.test/"})
    with pytest.raises(InvalidResponse) as caught:
        client.summary("discovery-call", {})
    assert requests_mock.call_count == 1
    assert caught.value.code == "302"


def test_list_page(client: ExecClient, requests_mock: rm.Mocker) -> None:
    requests_mock.get(f"{BASE}/workspace/groups",
                      json={"data": [{"id": "g1"}], "pagination": {"total_pages": 3}})
    assert client.list_page("/workspace/groups", {"page": "1"}) == Page(
        ({"id": "g1"},), 1, None, 3)
    # A page number the envelope leaves out is the one asked for; no pagination at all is
    # one page whose total is its length.
    assert client.list_page("/workspace/groups", {"page": "2"}).page == 2
    requests_mock.get(f"{BASE}/workspace/groups", json={"data": [{"id": "g1"}, {"id": "g2"}]})
    assert client.list_page("/workspace/groups", {}) == Page(
        ({"id": "g1"}, {"id": "g2"}), 1, 2, 1)

@pytest.mark.parametrize("kwargs", [
    {"json": {"items": []}},
    {"json": {"data": "nope"}},
    {"json": {"data": [], "pagination": {"total_pages": "3"}}},
    {"text": "[not json"},
    {"content": b" " * (MAX_BODY_BYTES + 1)},
])
def test_invalid_list_page_carries_the_status(client: ExecClient, requests_mock: rm.Mocker,
                                             kwargs: dict[str, Any]) -> None:
    requests_mock.get(f"{BASE}/workspace/groups", **kwargs)
    with pytest.raises(InvalidResponse) as caught:
        client.list_page("/workspace/groups", {})
    assert caught.value.code == "200"


def test_repr_hides_the_key(client: ExecClient) -> None:
    assert make_key() not in repr(client)


def test_summary_round_trips_through_json() -> None:
    summary = parse_summary(EXAMPLE)
    assert Summary.from_json(json.loads(json.dumps(summary.to_json()))) == summary
    broken = summary.to_json() | {"average_best_score": 250}
    with pytest.raises(InvalidResponse):
        Summary.from_json(broken)


# --- the deadline: api.timeout bounds the whole request -------------------------

BOUND = 5.0  # generous: the client must give up at its 1 s timeout, not after ~30 s


def outcome_within(call: Callable[[], object], bound: float = BOUND) -> object:
    """Run ``call`` on a thread; its result or exception, failing if it outlives ``bound``."""
    box: list[object] = []

    def run() -> None:
        try:
            box.append(call())
        except Exception as exc:
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(bound)
    assert not thread.is_alive(), f"the request was still running after {bound}s"
    return box[0]


def request_workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "exec-api-request"]


@pytest.fixture
def api() -> Iterator[FakeExecAPI]:
    with fake_api({"discovery-call": 45}) as fake:
        yield fake


@pytest.mark.parametrize("fault", ["trickle_headers", "trickle_body"])
def test_timeout_is_a_deadline_for_the_whole_answer(api: FakeExecAPI, fault: str) -> None:
    """One byte every 0.5 s never trips a per-read timeout; the deadline gives up anyway."""
    client = ExecClient(api.base_url, make_key(), timeout=1)
    assert client.summary("discovery-call", {}).participants == 45  # a pooled connection
    api.set_fault(None, fault)
    error = outcome_within(lambda: client.summary("discovery-call", {}))
    assert isinstance(error, Timeout), error
    assert error.reason == "timeout" and error.code == "error"
    # The worker was woken (its socket shut down), not left reading the trickle.
    wait_until(lambda: not request_workers(), BOUND, what="the request's worker to end")
    # The pool holds no broken connection: the next request works.
    api.set_fault(None, None)
    assert client.summary("discovery-call", {}).participants == 45
    client.close()


def test_slow_trickle_within_the_deadline_succeeds(api: FakeExecAPI) -> None:
    api.set_fault(None, "trickle_headers", interval=0.001)
    client = ExecClient(api.base_url, make_key(), timeout=30)
    assert client.summary("discovery-call", {}).participants == 45


def test_timeout_covers_name_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    """getaddrinfo() heeds no socket timeout: a resolver that hangs still ends at the deadline."""
    resolving = threading.Event()
    release = threading.Event()
    real = socket.getaddrinfo

    def slow_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "slow-dns.test":
            resolving.set()
            release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "temporary failure")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    client = ExecClient("http://slow-dns.test/rest/v1", make_key(), timeout=1)
    try:
        error = outcome_within(lambda: client.summary("discovery-call", {}))
        assert resolving.is_set()
        assert isinstance(error, Timeout), error
    finally:
        release.set()
    wait_until(lambda: not request_workers(), BOUND, what="the request's worker to end")


# --- participants and members ---------------------------------------------------

PARTICIPANTS_URL = f"{BASE}/scenarios/discovery-call/analytics/participants"
ENTRY: dict[str, Any] = {  # the OpenAPI example row
    "user": {"id": "u1a2b3c4d5e6", "email": "jane@acme.com", "first_name": "Jane",
             "last_name": "Smith"},
    "session_count": 4, "first_score": 55, "first_rank": "bronze", "best_score": 88,
    "best_rank": "gold", "lift_percentage": 33, "total_duration_seconds": 1240,
}


def page_body(items: list[Any], total: int, pages: int, page: int = 1) -> dict[str, Any]:
    return {"data": items, "pagination": {"page": page, "page_size": 100,
                                          "total_count": total, "total_pages": pages}}


def test_participants_page_rows_and_pagination(client: ExecClient,
                                               requests_mock: rm.Mocker) -> None:
    null_row = {**ENTRY, "user": {"id": "u2", "email": None}, "first_score": None,
                "first_rank": None, "best_score": None, "best_rank": None,
                "lift_percentage": None, "unknown_new_field": [1]}
    requests_mock.get(PARTICIPANTS_URL, json=page_body([ENTRY, null_row], 250, 3, page=2))
    page = client.participants("discovery-call", {"page": "2", "page_size": "100",
                                                  "start_date": "2026-07-01T00:00:00Z"})
    assert page.items == (
        ParticipantRow("u1a2b3c4d5e6", "jane@acme.com", 4, 55.0, 88.0, 33.0, 1240.0),
        ParticipantRow("u2", None, 4, None, None, None, 1240.0))
    assert (page.page, page.total_count, page.total_pages) == (2, 250, 3)
    query = requests_mock.last_request.url.split("?", 1)[1]
    assert "page=2" in query and "start_date=2026-07-01T00:00:00Z" in query


@pytest.mark.parametrize(("change", "message"), [
    ({"session_count": "4"}, "data[0]: session_count is str"),
    ({"session_count": -1}, "session_count is -1"),
    ({"best_score": 120}, "best_score is 120"),
    ({"best_rank": "platinum"}, "data[0].best_rank"),
    ({"user": None}, "data[0].user is not an object"),
    ({"user": {"email": "x@y.z"}}, "data[0].user.id"),
    ({"user": {"id": "u", "email": 7}}, "data[0].user.email is int"),
])
def test_participants_strict_types(client: ExecClient, requests_mock: rm.Mocker,
                                   change: dict[str, Any], message: str) -> None:
    requests_mock.get(PARTICIPANTS_URL, json=page_body([{**ENTRY, **change}], 1, 1))
    with pytest.raises(InvalidResponse) as caught:
        client.participants("discovery-call", {})
    assert message.split(": ")[-1] in str(caught.value)


@pytest.mark.parametrize("body", [
    [ENTRY], {"data": "rows"}, {"data": [], "pagination": {"total_count": "3"}},
    {"data": [], "pagination": {"total_pages": -1}}, {"data": [], "pagination": []},
])
def test_participants_page_shape(client: ExecClient, requests_mock: rm.Mocker,
                                 body: object) -> None:
    requests_mock.get(PARTICIPANTS_URL, json=body)
    with pytest.raises(InvalidResponse):
        client.participants("discovery-call", {})


def test_members_page_flat_and_nested(client: ExecClient, requests_mock: rm.Mocker) -> None:
    flat = {"id": "u7", "email": "a@acme.com", "role": "member"}
    nested = {"id": "m1n2o3p4q5r6", "user": {"id": "u7v8w9x0y1z2", "email": "jane@acme.com"},
              "role": "admin"}
    requests_mock.get(f"{BASE}/workspace/members", json=page_body([flat, nested], 2, 1))
    page = client.members({"group_ids": "g1", "page": "1", "page_size": "100"})
    assert page.items == (Member("u7", "a@acme.com"), Member("u7v8w9x0y1z2", "jane@acme.com"))
    assert "group_ids=g1" in requests_mock.last_request.url
    requests_mock.get(f"{BASE}/workspace/members", json=page_body([{"email": "a@b.c"}], 1, 1))
    with pytest.raises(InvalidResponse, match=r"data\[0\]\.id"):
        client.members({})


def test_a_nested_member_names_the_field_in_its_user(client: ExecClient,
                                                     requests_mock: rm.Mocker) -> None:
    nested = {"id": "m1", "user": {"id": "u7", "email": 7}, "role": "admin"}
    requests_mock.get(f"{BASE}/workspace/members", json=page_body([nested], 1, 1))
    with pytest.raises(InvalidResponse, match=r"^data\[0\]\.user\.email is int"):
        client.members({})


@pytest.mark.parametrize(("change", "message"), [
    ({"rank_participants": {"gold": -1}}, "score_distribution[0].count is -1, below 0"),
    ({"rank_participants": {"platinum": 1}}, "score_distribution[0].rank is 'platinum'"),
    ({"practice_seconds": -60.0}, "total_practice_minutes is -1.0, below 0"),
    ({"average_score_lift": 101}, "average_lift_percentage is 101, outside -100-100"),
])
def test_a_restored_summary_is_checked_by_the_api_rules(change: dict[str, Any],
                                                        message: str) -> None:
    saved = parse_summary(EXAMPLE).to_json() | change
    with pytest.raises(InvalidResponse, match=f"^{re.escape(message)}"):
        Summary.from_json(saved)
