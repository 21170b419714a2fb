"""The stock Antminer web client against every framing HTTP/1.1 allows, over real sockets.

The server is ``tests/webrig.py``, written for these tests (not the simulator), framing its
replies each way HTTP/1.1 allows (and 401s with and without a body); its RPC port answers with
a real S19 Pro ``stats`` capture. The stock driver reads the mode (observe) and sets it
(apply) through each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from webrig import FRAMINGS, Rig, _read_request, web_rig

from drivers import webdigest
from drivers.stock import AntminerStock
from drivers.transport import DriverError
from policies.values import FailureKind, Mode


@pytest.fixture
async def web() -> AsyncIterator[tuple[Rig, AntminerStock]]:
    async with web_rig() as pair:
        yield pair


@pytest.mark.parametrize("auth401", ["body", "empty"])
@pytest.mark.parametrize("framing", FRAMINGS)
async def test_mode_read_and_set_in_every_framing(
    web: tuple[Rig, AntminerStock], framing: str, auth401: str
) -> None:
    rig, driver = web
    rig.framing, rig.auth401, rig.work_mode = framing, auth401, "1"
    obs = await driver.observe(5.0, time.time())
    assert obs.mode is Mode.SLEEP, obs.errors
    assert not any("mode not confirmed" in e for e in obs.errors), obs.errors
    assert obs.hashrate_ths == pytest.approx(110.56689, abs=0.01)  # the capture's GHS 5s

    result = await driver.apply(Mode.LOW, None, 5.0)
    assert result.sent
    assert rig.posted and rig.posted[-1]["miner-mode"] == 3
    assert rig.work_mode == "3"
    obs = await driver.observe(5.0, time.time())
    assert obs.mode is Mode.LOW, obs.errors


async def test_the_challenge_is_remembered_and_one_connection_carries_a_burst(
    web: tuple[Rig, AntminerStock],
) -> None:
    rig, driver = web
    rig.framing = "chunked"
    await driver.observe(5.0, time.time())
    # 401, get_miner_conf, summary, stats: four requests on one connection
    assert rig.requests == [
        "GET /cgi-bin/get_miner_conf.cgi",
        "GET /cgi-bin/get_miner_conf.cgi",
        "GET /cgi-bin/summary.cgi",
        "GET /cgi-bin/stats.cgi",
    ]
    assert rig.connections == 1
    await driver.apply(Mode.NORMAL, None, 5.0)
    # the remembered challenge: no 401 this time; a new connection for the new burst
    assert rig.requests[4:] == [
        "GET /cgi-bin/get_miner_conf.cgi",
        "POST /cgi-bin/set_miner_conf.cgi",
    ]
    assert rig.connections == 2


async def test_a_new_nonce_earns_one_retry(web: tuple[Rig, AntminerStock]) -> None:
    rig, driver = web
    await driver.apply(Mode.LOW, None, 5.0)
    rig.nonce = "fresh"
    await driver.apply(Mode.SLEEP, None, 5.0)
    assert rig.work_mode == "1"


async def test_wrong_credentials_are_named(web: tuple[Rig, AntminerStock]) -> None:
    _rig, driver = web
    session = webdigest.WebSession("127.0.0.1", "root", "wrong", driver.web_port)
    with pytest.raises(DriverError, match="refused the credentials for user 'root'"):
        await session.get_json("/cgi-bin/get_miner_conf.cgi", 5.0)
    await session.release()


async def test_an_endless_body_is_an_error_not_a_hang(web: tuple[Rig, AntminerStock]) -> None:
    rig, driver = web
    rig.huge = True
    started = time.monotonic()
    with pytest.raises(DriverError) as caught:
        await driver.apply(Mode.LOW, None, 10.0)
    assert caught.value.kind is FailureKind.BAD_REPLY
    assert f"reply over {webdigest.MAX_BODY} bytes" in caught.value.detail
    assert time.monotonic() - started < 5.0
    obs = await driver.observe(10.0, time.time())  # the status read still stands
    assert any("reply over" in e for e in obs.errors)


async def test_a_stalled_body_keeps_the_deadline(web: tuple[Rig, AntminerStock]) -> None:
    rig, driver = web
    rig.stall = True
    with pytest.raises(DriverError) as caught:
        await driver.apply(Mode.LOW, None, 0.5)
    assert caught.value.kind is FailureKind.TIMEOUT


async def test_a_broken_chunked_body_is_a_bad_reply() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(DriverError) as caught:
            await webdigest.get_json("127.0.0.1", "/cgi-bin/x.cgi", "root", "root", 5.0, port)
        assert caught.value.kind is FailureKind.BAD_REPLY
        assert "broken HTTP reply" in caught.value.detail
    finally:
        server.close()


async def test_basic_auth_is_named() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(
            b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm="x"\r\n'
            b"Content-Length: 0\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(DriverError, match="asks for 'Basic' auth, not digest"):
            await webdigest.get_json("127.0.0.1", "/cgi-bin/x.cgi", "root", "root", 5.0, port)
    finally:
        server.close()


async def test_nobody_listening_is_unreachable() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(DriverError) as caught:
        await webdigest.get_json("127.0.0.1", "/", "root", "root", 5.0, port)
    assert caught.value.kind is FailureKind.UNREACHABLE
