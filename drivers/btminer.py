"""btminer API v2 privileged (encrypted) commands, with the token kept for its validity.

The protocol is pyasic's (``pyasic.rpc.btminer``): ``get_token`` gives ``time``, ``salt`` and
``newsalt``; ``pwd_md5`` is the md5-crypt body of the password with ``salt``, the token
(``sign``) the md5-crypt body of ``pwd_md5 + time`` with ``newsalt``; the command is JSON with
the token, zero-padded to 16 bytes, AES-256-ECB with key ``sha256(pwd_md5)``, base64, sent as
``{"enc": 1, "data": ...}``. Frames are byte-identical to pyasic's ``create_privileged_cmd``
(``tests/test_btminer.py`` holds that, and the reference test vector).

What pyasic does per command and this does not: a fresh request through its socket layer for the
token, two md5-crypt rounds (``pwd_md5`` depends only on the password and the rig's salt, so it
is computed once per salt here), pydantic validation of the token and a new cipher. pyasic keeps
a token for 30 minutes per miner object but never lets go of one the rig has forgotten (after a
reboot every write fails with ``check token err`` until its 30 minutes are up); here a token
error on a kept token costs one fresh token and one retry.

btminer keeps a table of 32 live tokens per rig, each valid for 30 minutes, and refuses a 33rd
(code 136): fetching one per command, as pyasic does across miner objects, can exhaust it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from drivers.transport import DriverError, decode, request
from policies.values import FailureKind

RPC_PORT = 4028
TOKEN_REUSE_S = 25 * 60.0
"""A token is reused for this long after it was asked for: btminer keeps it for 30 minutes;
the margin covers a rig whose clock runs fast and a command still in flight."""

CODE_OK = 131
CODE_TOKEN = 134
CODE_JSON = 23  # "json cmd err": also what a wrong password (a wrong AES key) looks like
CODE_DENIED = 45  # "can't access write cmd": the write API is locked on the rig
CODE_TOKEN_CHECK = 135  # "check token err": unknown or expired token
CODE_TOKEN_MAX = 136  # "token over max times": 32 live tokens already issued

_CRYPT64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
CRYPT_SALT = frozenset(_CRYPT64)


# Which digest bytes make each 4-character group of the md5-crypt body (the last byte, 11,
# alone makes the final 2 characters).
_MD5_CRYPT_GROUPS = ((0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5))
# Its 1,000 rounds: (odd round, index into the middles: 2 for the salt + 1 for pw).
_MD5_CRYPT_ROUNDS = tuple((i & 1, 2 * (i % 3 != 0) + (i % 7 != 0)) for i in range(1000))


def md5_crypt_body(secret: str, salt: str) -> str:
    """The third ``$`` field of ``md5_crypt(secret, salt)`` (``$1$<salt>$<body>``).

    Poul-Henning Kamp's md5-crypt, written out here so it needs neither the C library's
    ``crypt`` nor Python's ``crypt`` module (removed in 3.13): the secret is UTF-8, the salt
    at most its first 8 characters. ``tests/test_btminer.py`` checks it against passlib's
    ``md5_crypt``, which pyasic uses, on fixed and drawn inputs.
    """
    pw = secret.encode("utf-8")
    salt_b = salt.encode("utf-8")[:8]
    alternate = hashlib.md5(pw + salt_b + pw).digest()
    ctx = hashlib.md5(pw + b"$1$" + salt_b)
    for left in range(len(pw), 0, -16):
        ctx.update(alternate[: min(16, left)])
    bits = len(pw)
    while bits:
        ctx.update(b"\0" if bits & 1 else pw[:1])
        bits >>= 1
    digest = ctx.digest()
    # Round i hashes pw or the digest, then the salt unless i % 3 == 0, then pw unless
    # i % 7 == 0, then the digest or pw: one md5 call per round, its input one concatenation
    # of the digest with a precomputed run (pw + middle before it, or middle + pw after it).
    md5 = hashlib.md5
    middles = (b"", pw, salt_b, salt_b + pw)
    before = tuple(pw + middle for middle in middles)  # odd rounds: pw, middle, digest
    after = tuple(middle + pw for middle in middles)  # even rounds: digest, middle, pw
    for odd, which in _MD5_CRYPT_ROUNDS:
        digest = md5(before[which] + digest if odd else digest + after[which]).digest()
    out = []
    for a, b, c in _MD5_CRYPT_GROUPS:
        out.append(_crypt64((digest[a] << 16) | (digest[b] << 8) | digest[c], 4))
    out.append(_crypt64(digest[11], 2))
    return "".join(out)


def _crypt64(value: int, chars: int) -> str:
    """``chars`` characters of crypt's base-64 alphabet, least significant 6 bits first."""
    out = []
    for _ in range(chars):
        out.append(_CRYPT64[value & 0x3F])
        value >>= 6
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Key:
    """What a password and a rig's salt give: ``pwd_md5`` and the AES key derived from it."""

    pwd_md5: str
    cipher: Cipher[modes.ECB]


@functools.lru_cache(maxsize=256)
def password_key(password: str, salt: str) -> Key:
    """``pwd_md5`` and the cipher for ``password`` on a rig with ``salt`` (cached: a fleet
    shares one factory salt per password, and md5-crypt costs about 0.2 ms)."""
    pwd_md5 = md5_crypt_body(password, salt)
    aes = algorithms.AES(hashlib.sha256(pwd_md5.encode()).digest())
    return Key(pwd_md5, Cipher(aes, modes.ECB()))


def encrypt_command(key: Key, command: dict[str, Any]) -> bytes:
    """The wire frame for ``command`` (which carries its ``token``), as pyasic builds it."""
    raw = json.dumps(command).encode()
    raw += b"\0" * (-len(raw) % 16)
    enc = key.cipher.encryptor()
    data = base64.b64encode(enc.update(raw) + enc.finalize()).decode()
    return json.dumps({"enc": 1, "data": data}).encode()


def decrypt_reply(key: Key, data: str) -> dict[str, Any]:
    """The JSON object inside an encrypted reply; ValueError when it is not one."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64") from exc
    if not raw or len(raw) % 16:
        raise ValueError(f"{len(raw)} bytes, not a whole number of AES blocks")
    dec = key.cipher.decryptor()
    plain = (dec.update(raw) + dec.finalize()).rstrip(b"\0")
    try:
        value = json.loads(plain)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("does not decrypt to JSON (wrong password?)") from exc
    if not isinstance(value, dict):
        raise ValueError("does not decrypt to a JSON object")
    return value


@dataclass(frozen=True, slots=True)
class Token:
    sign: str
    key: Key
    password: str
    fetched_at: float  # on the session's clock


class Refused(DriverError):
    """The rig answered with an error; ``code`` is btminer's (None if it gave none)."""

    def __init__(self, code: int | None, detail: str) -> None:
        super().__init__(FailureKind.BAD_REPLY, detail)
        self.code = code


def _code(reply: dict[str, Any]) -> int | None:
    code = reply.get("Code")
    if isinstance(code, int):
        return code
    try:
        return int(str(code))
    except ValueError:
        return None


def _refusal(what: str, reply: dict[str, Any]) -> Refused:
    code, msg = _code(reply), reply.get("Msg")
    text = f"{what}: rig refused: {msg} (code {code})"
    if code == CODE_DENIED:
        text += "; the write API is locked on the rig (unlock it with the Whatsminer tool)"
    elif code == CODE_JSON:
        text += "; it could not decrypt the command: wrong API password?"
    elif code == CODE_TOKEN_MAX:
        text += "; the rig has 32 live tokens already (another client?): try again later"
    return Refused(code, text)


class BtminerSession:
    """Privileged commands to one rig, the token kept for TOKEN_REUSE_S.

    ``clock`` (monotonic seconds) is injected so token expiry is tested without waiting.
    """

    def __init__(
        self, address: str, port: int = RPC_PORT, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.address = address
        self.port = port
        self.clock = clock
        self.token: Token | None = None

    async def command(
        self, cmd: str, params: dict[str, str], password: str, timeout_s: float
    ) -> dict[str, Any]:
        """Send privileged ``cmd`` and return the rig's decrypted (successful) reply.

        Uses the kept token when it is young enough; when the rig refuses a kept token (it
        rebooted, or the token expired on its clock) or cannot decrypt with it (the password
        changed), fetches a fresh one and sends once more. Raises DriverError with the rig's
        code and message otherwise.
        """
        deadline = time.monotonic() + timeout_s
        token = self.token
        if token is not None and (
            token.password != password or self.clock() - token.fetched_at >= TOKEN_REUSE_S
        ):
            token = self.token = None
        if token is not None:
            try:
                return await self._send(token, cmd, params, deadline)
            except Refused as exc:
                # 135: the rig forgot the token (rebooted) or it expired on the rig's clock;
                # 23: it cannot decrypt with the kept key (its salt or password changed)
                if exc.code not in (CODE_TOKEN_CHECK, CODE_JSON):
                    raise
                self.token = None
        token = await self._fetch_token(password, deadline)
        return await self._send(token, cmd, params, deadline)

    async def _fetch_token(self, password: str, deadline: float) -> Token:
        asked_at = self.clock()
        try:
            raw = await _request(self.address, self.port, b'{"command":"get_token"}', deadline)
            reply = decode(raw)
        except DriverError as exc:
            raise DriverError(exc.kind, f"get_token: {exc.detail}") from None
        if reply.get("STATUS") != "S":
            raise _refusal("get_token", reply)
        msg = reply.get("Msg")
        fields = ("time", "salt", "newsalt")
        if not isinstance(msg, dict) or not all(isinstance(msg.get(f), str) for f in fields):
            raise DriverError(FailureKind.BAD_REPLY, "get_token: no Msg.time/salt/newsalt")
        stamp, salt, newsalt = (str(msg[f]) for f in fields)
        for name, value in (("salt", salt), ("newsalt", newsalt)):
            if not value or not set(value) <= CRYPT_SALT or len(value) > 8:
                raise DriverError(FailureKind.BAD_REPLY, f"get_token: bad {name} {value!r}")
        key = password_key(password, salt)
        token = Token(md5_crypt_body(key.pwd_md5 + stamp, newsalt), key, password, asked_at)
        self.token = token
        return token

    async def _send(
        self, token: Token, cmd: str, params: dict[str, str], deadline: float
    ) -> dict[str, Any]:
        frame = encrypt_command(token.key, {"cmd": cmd, **params, "token": token.sign})
        try:
            reply = decode(await _request(self.address, self.port, frame, deadline))
        except DriverError as exc:
            raise DriverError(exc.kind, f"{cmd}: {exc.detail}") from None
        enc = reply.get("enc")
        if enc is None:  # errors come back in plain text
            if reply.get("STATUS") == "S":
                return reply
            raise _refusal(cmd, reply)
        if not isinstance(enc, str):
            raise DriverError(FailureKind.BAD_REPLY, f"{cmd}: reply 'enc' is not a string")
        try:
            inner = decrypt_reply(token.key, enc)
        except ValueError as exc:
            raise DriverError(FailureKind.BAD_REPLY, f"{cmd}: encrypted reply {exc}") from None
        if inner.get("STATUS") != "S":
            raise _refusal(cmd, inner)
        return inner


async def _request(address: str, port: int, payload: bytes, deadline: float) -> bytes:
    left = deadline - time.monotonic()
    if left <= 0:
        raise DriverError(FailureKind.TIMEOUT, "no time left in the deadline")
    return await request(address, port, payload, left)
