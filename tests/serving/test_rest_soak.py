"""REST connections as clients use them: many opened at once, kept alive or not, and kept in step after errors.

Loopback only, bounded in requests and time. Zero errors are allowed: a reset
connection is a failed request to the client (bench/serving.py's REST cell once
died of one), whichever side made it.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading

import pytest
from conformance_models import half_plus

from fmnist.serving import server as serving_server

BODY = json.dumps({"instances": [2.0]}).encode()
ANSWER = {"predictions": [3.0]}
TIMEOUT = 10.0  # seconds any one connection may wait: a stall fails the test instead of hanging it


@pytest.fixture(scope="module")
def rest_port(tmp_path_factory):
    base = tmp_path_factory.mktemp("soak") / "half_plus_two"
    half_plus(base / "1", 2.0)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = serving_server.ServerConfig(
        port=0, rest_api_port=port, model_name="default", model_base_path=str(base), file_system_poll_wait_seconds=0
    )
    server = serving_server.start(config)
    yield server.rest_port
    server.stop()


def _call(connection: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None):
    connection.request(method, path, body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def _predict(connection: http.client.HTTPConnection) -> None:
    assert _call(connection, "POST", "/v1/models/default:predict", BODY) == (200, ANSWER)


@pytest.mark.slow
def test_a_burst_of_kept_alive_and_fresh_connections_is_never_reset(rest_port):
    """Half the threads keep one connection each, half open a new one per request, all starting at
    once: far more connections than socketserver's listen backlog of 5, which once reset them."""
    threads, kept_requests, fresh_requests = 32, 25, 8
    start = threading.Barrier(2 * threads)
    errors: list[BaseException] = []
    done = [0]
    lock = threading.Lock()

    def kept_alive() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", rest_port, timeout=TIMEOUT)
        start.wait()
        try:
            for _ in range(kept_requests):
                _predict(connection)
                with lock:
                    done[0] += 1
        finally:
            connection.close()

    def fresh() -> None:
        start.wait()
        for _ in range(fresh_requests):
            connection = http.client.HTTPConnection("127.0.0.1", rest_port, timeout=TIMEOUT)
            try:
                _predict(connection)
            finally:
                connection.close()
            with lock:
                done[0] += 1

    def guarded(work) -> None:
        try:
            work()
        except BaseException as error:  # every failure counts, resets above all
            with lock:
                errors.append(error)
            start.abort()

    workers = [threading.Thread(target=guarded, args=(kept_alive,)) for _ in range(threads)]
    workers += [threading.Thread(target=guarded, args=(fresh,)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not any(worker.is_alive() for worker in workers), "a connection hung"
    assert errors == [], f"{len(errors)} failed, e.g. {errors[:3]!r}"
    assert done[0] == threads * (kept_requests + fresh_requests)


@pytest.mark.parametrize(
    "method, path, body, status",
    [
        ("POST", "/v1/models/default:bogus", BODY, 400),  # malformed path: answered before the body matters
        ("POST", "/elsewhere", BODY, 404),
        ("DELETE", "/v1/models/default", BODY, 400),
        ("POST", "/v1/models/default:predict", b'{"instances": [2.0', 400),  # JSON that does not parse
        ("POST", "/v1/models/missing:predict", BODY, 404),
    ],
)
def test_a_kept_alive_connection_stays_in_step_after_an_error(rest_port, method, path, body, status):
    """An error answered before the body was needed once left the body unread: the next request on
    the connection was then answered for those bytes (an HTML 400 "Bad request syntax")."""
    connection = http.client.HTTPConnection("127.0.0.1", rest_port, timeout=TIMEOUT)
    try:
        for _ in range(2):
            assert _call(connection, method, path, body)[0] == status
            _predict(connection)
    finally:
        connection.close()
