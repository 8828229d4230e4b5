"""Observing Ollama's models right after a boot: the service is active before it listens, so
observe asks again for a bounded time instead of reporting every model missing."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provision.change import observe
from provision.change.actions import ObservedUnit
from provision.change.host import Host
from provision.desired import DesiredModel, DesiredState, DesiredUnit

TAGS = {"models": [{"name": "llama3.1:8b-ctx8192", "model": "llama3.1:8b-ctx8192"}]}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def answering_after(rounds: int, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """ollama_state answers from the `rounds`-th round of asking on; returns who was asked."""
    asked: list[tuple[str, int]] = []

    def state(address: tuple[str, int]) -> tuple[str | None, frozenset[str] | None]:
        asked.append(address)
        if len(asked) >= rounds * 2:  # two addresses per round: the unit's and the stock port
            return "0.30.2", frozenset({"llama3.1:8b-ctx8192"})
        return None, None

    monkeypatch.setattr(observe, "ollama_state", state)
    return asked


UNITS = (DesiredUnit("ollama.service", listen=("127.0.0.1", 11500)),)


def test_a_service_that_starts_listening_late_is_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked = answering_after(3, monkeypatch)
    clock = FakeClock()
    found = observe.first_answering_ollama(UNITS, 10.0, clock, clock.sleep)
    assert found == ("0.30.2", frozenset({"llama3.1:8b-ctx8192"}))
    assert clock.slept == [observe.OLLAMA_RETRY_S] * 2
    assert asked[:2] == [("127.0.0.1", 11500), ("127.0.0.1", 11434)]


def test_the_wait_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    answering_after(10**6, monkeypatch)
    clock = FakeClock()
    assert observe.first_answering_ollama(UNITS, 10.0, clock, clock.sleep) == (None, None)
    assert 9.0 <= sum(clock.slept) <= 10.0


def test_without_a_running_unit_nobody_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = answering_after(2, monkeypatch)
    clock = FakeClock()
    assert observe.first_answering_ollama(UNITS, 0.0, clock, clock.sleep) == (None, None)
    assert clock.slept == [] and len(asked) == 2


@pytest.fixture
def late_ollama() -> Iterator[int]:
    """A port where an Ollama-shaped API starts answering 1 s from now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = json.dumps({"version": "0.30.2"} if self.path == "/api/version" else TAGS)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

    servers: list[http.server.HTTPServer] = []

    def start_late() -> None:
        time.sleep(1.0)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        servers.append(server)
        server.serve_forever()

    threading.Thread(target=start_late, daemon=True).start()
    yield port
    for server in servers:
        server.shutdown()


def test_a_real_api_that_comes_up_late(late_ollama: int) -> None:
    units = (DesiredUnit("ollama.service", listen=("127.0.0.1", late_ollama)),)
    assert observe.first_answering_ollama(units, 0.0) == (None, None)  # not up yet
    version, models = observe.first_answering_ollama(units, 10.0)
    assert version == "0.30.2" and models == frozenset({"llama3.1:8b-ctx8192"})


@pytest.mark.parametrize(
    ("active", "settle_s"), [("active", observe.OLLAMA_SETTLE_S), ("inactive", 0.0)]
)
def test_observe_waits_only_for_a_running_ollama_unit(
    active: str, settle_s: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[float] = []
    states = {"ollama.service": ObservedUnit("ollama.service", "enabled", active=active)}
    monkeypatch.setattr(observe, "unit_states", lambda host, names: states)
    monkeypatch.setattr(
        observe, "first_answering_ollama", lambda units, s: (seen.append(s), (None, None))[1]
    )
    desired = DesiredState(
        units=UNITS, models=(DesiredModel("llama3.1:8b-ctx8192", "/m", "llama3.1:8b"),)
    )
    observe.observe(Host(root=tmp_path, live=True), desired)
    assert seen == [settle_s]


def test_apply_waits_for_the_ollama_it_will_ask_to_answer(late_ollama: int) -> None:
    """A model action after a restart: the API comes up a second later (as after a RestartSec),
    and apply asks it then instead of failing on a refused connection."""
    from provision.change.apply import await_ollama
    from provision.errors import HostError

    with pytest.raises(HostError, match=f"Ollama does not answer on 127.0.0.1:{late_ollama}"):
        await_ollama(("127.0.0.1", late_ollama), 0.0)  # not up yet
    await_ollama(("127.0.0.1", late_ollama), 10.0)
