"""The security building blocks: API keys, challenge tokens, nonces, limits, receipts."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from portrait.security import keys as keys_module
from portrait.security.keys import ApiKeys, KeyConfigError, key_id
from portrait.security.limits import InFlightLimiter, RateLimiter
from portrait.security.nonces import (
    CLOCK_MARGIN_S, MemoryNonceStore, NonceStore, NonceStoreError, RedisNonceStore, StaleEpoch,
)
from portrait.security.receipts import (
    ReceiptError, ReceiptSigner, generate_key, receipt_key_id, seed_from_passphrase, verify_receipt,
)
from portrait.challenge import ACTIONS, MAX_RECORD_S, TAIL_S, WINDOW_S, ChallengeSpec, random_challenge
from portrait.security.tokens import (
    MAX_TOKEN_LENGTH, Challenge, ChallengeSigner, TokenError, parse_actions, parse_schedule,
)

KEY_A = "alpha-key-0123456789"
KEY_A2 = "alpha-rotated-key-9876"
KEY_B = "bravo-key-0123456789"
SECRET = b"s" * 32
EPOCH = "store-epoch-1"


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run_threads(n: int, target: Callable[[], object]) -> list[object]:
    """Run `target` on n threads released together; return their results."""
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def work(i: int) -> None:
        barrier.wait()
        results[i] = target()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results


# API keys ----------------------------------------------------------------------------


def test_keys_from_string() -> None:
    keys = ApiKeys.from_string(f" alpha:{KEY_A} , bravo:{KEY_B},alpha:{KEY_A2}, ")
    assert keys.tenant_for(KEY_A) == "alpha"
    assert keys.tenant_for(KEY_A2) == "alpha"
    assert keys.tenant_for(KEY_B) == "bravo"
    assert keys.tenants == {"alpha", "bravo"} and len(keys) == 3


def test_keys_unknown_or_odd_presented_keys_match_nothing() -> None:
    keys = ApiKeys.from_string(f"alpha:{KEY_A}")
    for presented in ("", KEY_A[:-1], KEY_A + "x", KEY_A.upper(), "x" * 5000, "\udcff" * 20, None, b"bytes"):
        assert keys.tenant_for(presented) is None  # type: ignore[arg-type]
    assert ApiKeys().tenant_for(KEY_A) is None


def test_keys_compared_against_every_configured_key(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = ApiKeys.from_string(f"alpha:{KEY_A},bravo:{KEY_B},alpha:{KEY_A2}")
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", spy)
    for presented, tenant in ((KEY_A, "alpha"), (KEY_B, "bravo"), ("not-a-key-at-all-123", None)):
        calls.clear()
        assert keys.tenant_for(presented) == tenant
        assert len(calls) == 3  # no early exit, whichever key matched
        assert all(len(a) == len(b) == 32 for a, b in calls)  # digests, not keys


def test_keys_hold_digests_only_and_repr_hides_them() -> None:
    keys = ApiKeys.from_string(f"alpha:{KEY_A},bravo:{KEY_B}")
    text = repr(keys) + str(keys) + repr(vars(keys))
    for key in (KEY_A, KEY_B):
        assert key not in text
    assert "alpha" in repr(keys) and "keys=2" in repr(keys)
    assert hashlib.sha256(KEY_A.encode()).digest() in {d for d, _ in keys._entries}


@pytest.mark.parametrize("value, message", [
    ("alpha:short-key", "too short"),
    ("alpha:" + "k" * 15, "too short"),
    (f"alpha{KEY_A}", "expected tenant:key"),
    (f":{KEY_A}", "tenant name"),
    (f"al pha:{KEY_A}", "tenant name"),
    (f"alpha:{KEY_A[:8]} {KEY_A[8:]}", "printable ASCII"),
    (f"alpha:{'k' * 1025}", "printable ASCII"),
    (f"alpha:{KEY_A},bravo:{KEY_A}", "same key is configured for tenants 'alpha' and 'bravo'"),
])
def test_keys_bad_config_rejected_without_revealing_the_key(value: str, message: str) -> None:
    with pytest.raises(KeyConfigError, match=message) as info:
        ApiKeys.from_string(value)
    secret_part = value.partition(":")[2]
    assert not secret_part or secret_part not in str(info.value)


def test_keys_same_key_twice_for_one_tenant_is_kept_once() -> None:
    assert len(ApiKeys.from_string(f"alpha:{KEY_A},alpha:{KEY_A}")) == 1


def test_keys_from_file_and_load(tmp_path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(f"# carriers\n\nalpha:{KEY_A}\n  # rotated key below\nalpha:{KEY_A2}\n")
    keys = ApiKeys.from_file(path)
    assert keys.tenant_for(KEY_A2) == "alpha" and len(keys) == 2
    merged = ApiKeys.load(f"bravo:{KEY_B}", path)
    assert {merged.tenant_for(k) for k in (KEY_A, KEY_A2, KEY_B)} == {"alpha", "bravo"}
    assert len(ApiKeys.load("", None)) == 0
    assert len(ApiKeys.load(None, path)) == 2
    path.write_text(f"alpha:{KEY_A}\nbravo:tiny\n")
    with pytest.raises(KeyConfigError, match=r"keys.txt line 2: the key of tenant 'bravo' is too short"):
        ApiKeys.from_file(path)
    with pytest.raises(KeyConfigError, match="cannot read API keys file"):
        ApiKeys.load(None, tmp_path / "missing.txt")
    path.write_text(f"alpha:{KEY_A}\n")
    with pytest.raises(KeyConfigError, match="same key"):
        ApiKeys.load(f"bravo:{KEY_A}", path)


def test_key_id_is_a_short_fingerprint() -> None:
    assert key_id(KEY_A) == hashlib.sha256(KEY_A.encode()).hexdigest()[:8]
    assert len(key_id("anything")) == 8 and key_id(KEY_A) != key_id(KEY_B)
    assert KEY_A not in key_id(KEY_A)


# Challenge tokens --------------------------------------------------------------------


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def signer(clock: Clock) -> ChallengeSigner:
    return ChallengeSigner(SECRET, ttl_s=120, clock=clock)


def sign_payload(payload: object, secret: bytes = SECRET) -> str:
    """A token over arbitrary payload bytes, correctly signed: to reach the checks that
    run after the signature."""
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    body = b64e(raw)
    return f"{body}.{b64e(hmac.new(secret, body.encode(), hashlib.sha256).digest())}"


def timed(actions: list[str], mirrored: bool = False) -> ChallengeSpec:
    """A challenge with prompts 2 s apart from 1 s (no validation: `issue` does that)."""
    schedule = tuple(1.0 + 2.0 * i for i in range(len(actions)))
    end = schedule[-1] + WINDOW_S[1] + TAIL_S if schedule else 1.0
    return ChallengeSpec(tuple(actions), schedule, WINDOW_S, end, mirrored)


def good_payload(clock: Clock, **changes: object) -> dict:
    payload = {"v": 4, "tenant": "alpha", "actions": ["blink", "turn_left"], "schedule": [1.0, 3.0],
               "window_s": list(WINDOW_S), "record_s": 3.0 + WINDOW_S[1] + TAIL_S, "mirrored": False,
               "client_named": False, "nonce": b64e(bytes(16)),
               "epoch": EPOCH, "iat": clock.now, "exp": clock.now + 120}
    payload.update(changes)
    return payload


def test_issue_and_verify(signer: ChallengeSigner, clock: Clock) -> None:
    issued = signer.issue("alpha", timed(["turn_left", "blink"]), epoch=EPOCH)
    assert isinstance(issued, Challenge)
    assert issued.actions == ["turn_left", "blink"] and issued.tenant == "alpha"
    assert issued.spec == timed(["turn_left", "blink"])
    assert issued.issued_at == clock.now and issued.expires_at == clock.now + 120 and issued.epoch == EPOCH
    assert len(b64d(issued.nonce)) == 16
    body, signature = issued.token.split(".")
    payload = json.loads(b64d(body))
    assert payload == {"v": 4, "tenant": "alpha", "actions": ["turn_left", "blink"], "schedule": [1.0, 3.0],
                       "window_s": list(WINDOW_S), "record_s": 3.0 + WINDOW_S[1] + TAIL_S, "mirrored": False,
                       "client_named": False, "nonce": issued.nonce,
                       "epoch": EPOCH, "iat": clock.now, "exp": clock.now + 120}
    assert b64d(signature) == hmac.new(SECRET, body.encode(), hashlib.sha256).digest()
    clock.now += 119.9
    assert signer.verify(issued.token, "alpha") == issued
    assert ChallengeSigner(SECRET, clock=clock).verify(issued.token, "alpha") == issued  # another replica
    assert signer.issue("alpha", timed(["blink"]), epoch=EPOCH).nonce != issued.nonce


def test_expired(signer: ChallengeSigner, clock: Clock) -> None:
    token = signer.issue("alpha", timed(["blink"]), epoch=EPOCH).token
    clock.now += 120
    with pytest.raises(TokenError) as info:
        signer.verify(token, "alpha")
    assert info.value.code == "expired_challenge" and "expired" in str(info.value)


def test_wrong_tenant(signer: ChallengeSigner) -> None:
    token = signer.issue("alpha", timed(["blink"]), epoch=EPOCH).token
    with pytest.raises(TokenError) as info:
        signer.verify(token, "bravo")
    assert info.value.code == "wrong_tenant"


def forged_variants(token: str) -> Iterator[str]:
    body, signature = token.split(".")
    payload = json.loads(b64d(body))
    yield f"{b64e(json.dumps({**payload, 'tenant': 'bravo'}).encode())}.{signature}"
    yield f"{b64e(json.dumps({**payload, 'exp': payload['exp'] + 3600}).encode())}.{signature}"
    yield f"{b64e(json.dumps({**payload, 'actions': ['blink']}).encode())}.{signature}"
    yield f"{b64e(json.dumps({**payload, 'mirrored': not payload['mirrored']}).encode())}.{signature}"
    yield f"{b64e(json.dumps({**payload, 'client_named': not payload['client_named']}).encode())}.{signature}"
    yield f"{b64e(json.dumps({**payload, 'schedule': [s + 1 for s in payload['schedule']]}).encode())}.{signature}"
    yield f"{b64e(b'{not json')}.{signature}"  # garbage with a bad signature: not parsed
    mac = bytearray(b64d(signature))
    mac[0] ^= 1
    yield f"{body}.{b64e(bytes(mac))}"
    yield f"{body}.{b64e(bytes(mac[:16]))}"
    yield f"{body}."
    yield sign_payload(payload, secret=b"t" * 32)


def test_forged(signer: ChallengeSigner) -> None:
    token = signer.issue("alpha", timed(["blink", "look_up"]), epoch=EPOCH).token
    for forged in forged_variants(token):
        with pytest.raises(TokenError) as info:
            signer.verify(forged, "bravo")
        assert info.value.code == "forged_challenge", forged


def test_malformed_structure(signer: ChallengeSigner) -> None:
    token = signer.issue("alpha", timed(["blink"]), epoch=EPOCH).token
    body, signature = token.split(".")
    noncanonical = signature[:-1] + chr(ord(signature[-1]) + 1)  # same bytes, other spelling
    assert b64d(noncanonical) == b64d(signature)
    for bad in ("", "nodot", body, f"{token}.x", f"{body}..{signature}", f"!!{body}.{signature}",
                f"{body}.{signature}=", f"{body} .{signature}", f"{body}.{signature[:-1]}ä",
                f"{body}.a", f"{body}.{noncanonical}", "a" * (MAX_TOKEN_LENGTH + 1),
                f"{body}.{signature}{'A' * MAX_TOKEN_LENGTH}", None, 42, b"bytes"):
        with pytest.raises(TokenError) as info:
            signer.verify(bad, "alpha")  # type: ignore[arg-type]
        assert info.value.code == "malformed_challenge", bad


def test_malformed_payload_even_when_signed(signer: ChallengeSigner, clock: Clock) -> None:
    assert signer.verify(sign_payload(good_payload(clock)), "alpha").actions == ["blink", "turn_left"]
    assert signer.verify(sign_payload(good_payload(clock, mirrored=True)), "alpha").spec.mirrored is True
    assert signer.verify(sign_payload(good_payload(clock, client_named=True)), "alpha").spec.client_named is True
    bad_payloads: list[object] = [
        b"{not json", b"\xff\xfe", b"[]", b'"string"', b"null",
        good_payload(clock, v=2), good_payload(clock, v=True), good_payload(clock, v="3"),
        good_payload(clock, client_named="false"), good_payload(clock, client_named=None),
        good_payload(clock, tenant=""), good_payload(clock, tenant=7),
        good_payload(clock, actions=["blink", "smile"]), good_payload(clock, actions=[]),
        good_payload(clock, actions=["blink", "blink"]), good_payload(clock, actions="blink"),
        good_payload(clock, schedule=[1.0]), good_payload(clock, schedule=[3.0, 1.0]),
        good_payload(clock, schedule=None), good_payload(clock, mirrored="false"), good_payload(clock, mirrored=0),
        good_payload(clock, window_s=[3.0, 0.3]), good_payload(clock, window_s=0.3),
        good_payload(clock, record_s="6"), good_payload(clock, record_s=None),
        good_payload(clock, nonce=""), good_payload(clock, nonce=5), good_payload(clock, nonce="n" * 65),
        good_payload(clock, epoch=""), good_payload(clock, epoch=7), good_payload(clock, epoch="e" * 65),
        good_payload(clock, iat="now"), good_payload(clock, exp=None), good_payload(clock, exp=True),
        good_payload(clock, exp=clock.now - 1), good_payload(clock, extra=1),
        json.dumps(good_payload(clock)).replace(str(clock.now + 120), "Infinity").encode(),
    ]
    without_nonce = good_payload(clock)
    del without_nonce["nonce"]
    bad_payloads.append(without_nonce)
    for payload in bad_payloads:
        with pytest.raises(TokenError) as info:
            signer.verify(sign_payload(payload), "alpha")
        assert info.value.code == "malformed_challenge", payload


def test_issue_validates(signer: ChallengeSigner) -> None:
    for actions in ([], ["smile"], ["blink", "blink"], list(ACTIONS) + ["blink"]):
        with pytest.raises(TokenError) as info:
            signer.issue("alpha", timed(actions), epoch=EPOCH)
        assert info.value.code == "invalid_actions"
    with pytest.raises(ValueError):
        signer.issue("", timed(["blink"]), epoch=EPOCH)
    for epoch in ("", "e" * 65, None):
        with pytest.raises(ValueError, match="epoch"):
            signer.issue("alpha", timed(["blink"]), epoch=epoch)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tenant name too long"):
        signer.issue("t" * 2000, timed(["blink"]), epoch=EPOCH)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        ChallengeSigner(b"short")
    with pytest.raises(ValueError):
        ChallengeSigner(SECRET, ttl_s=0)
    assert ChallengeSigner("x" * 32).issue("a", timed(["blink"]), epoch=EPOCH).token  # str secrets are UTF-8 encoded
    assert "sss" not in repr(signer)


def test_parse_actions() -> None:
    assert parse_actions(["look_down", "blink"]) == ["look_down", "blink"]
    assert parse_actions(("open_mouth", "blink", "open_mouth")) == ["open_mouth", "blink", "open_mouth"]
    for bad in ([], None, "blink", ["blink", "blink"], ["Blink"], ["blink", 1], [["blink"]],
                list(ACTIONS), ["turn_left", "blink", "blink"], {"blink": 1}):
        with pytest.raises(TokenError) as info:
            parse_actions(bad)
        assert info.value.code == "invalid_actions" and "blink" in str(info.value)


def test_parse_schedule() -> None:
    assert parse_schedule([1, 2.5], 2) == [1.0, 2.5]
    longest = MAX_RECORD_S - WINDOW_S[1] - TAIL_S
    assert parse_schedule([longest], 1) == [longest]
    for bad, count in (([1.0], 2), ([2.0, 1.0], 2), ([1.0, 1.0], 2), ([-0.5], 1), ([float("nan")], 1),
                       ([longest + 0.1], 1), ("1.0", 1), ([True], 1), (None, 1), ([], 0)):
        with pytest.raises(TokenError) as info:
            parse_schedule(bad, count)
        assert info.value.code == "invalid_schedule", bad


def test_random_challenges_round_trip_through_tokens(signer: ChallengeSigner) -> None:
    for mirrored in (False, True):
        spec = random_challenge(mirrored)
        assert signer.verify(signer.issue("alpha", spec, epoch=EPOCH).token, "alpha").spec == spec
    with pytest.raises(ValueError, match="schedule"):
        signer.issue("alpha", ChallengeSpec(("blink", "turn_left")), epoch=EPOCH)


# Nonces ------------------------------------------------------------------------------


def claim(store: NonceStore, nonce: str, expires_at: float) -> bool:
    """A claim under the store's current epoch."""
    return asyncio.run(store.claim(nonce, expires_at, asyncio.run(store.epoch())))


def test_memory_nonce_store_single_use_and_expiry() -> None:
    clock = Clock(1000.0)
    store = MemoryNonceStore(clock=clock)
    assert isinstance(store, NonceStore)
    assert claim(store, "n1", 1100.0) is True
    assert claim(store, "n1", 1100.0) is False
    assert claim(store, "n2", 1050.0) is True
    assert claim(store, "late", 1000.0) is False  # already expired: never claimable
    clock.now = 1060.0
    assert claim(store, "n3", 1200.0) is True and len(store) == 2  # n2 evicted on expiry
    assert claim(store, "n1", 1100.0) is False
    with pytest.raises(ValueError):
        claim(store, "", 2000.0)
    with pytest.raises(ValueError):
        claim(store, "x" * 129, 2000.0)


def test_memory_nonce_store_is_bounded() -> None:
    clock = Clock(0.0)
    store = MemoryNonceStore(max_entries=3, clock=clock)
    for nonce, exp in (("a", 30.0), ("b", 10.0), ("c", 20.0)):
        assert claim(store, nonce, exp)
    assert claim(store, "d", 40.0) is True
    assert len(store) == 3 and store.evicted == 1
    assert claim(store, "a", 30.0) is False and claim(store, "c", 20.0) is False
    assert claim(store, "b", 10.0) is True  # the soonest-expiring entry made room
    with pytest.raises(ValueError):
        MemoryNonceStore(max_entries=0)


def test_memory_nonce_store_concurrent_claims() -> None:
    store = MemoryNonceStore()
    for round_ in range(5):
        results = run_threads(16, lambda: claim(store, f"race-{round_}", time.time() + 60))
        assert results.count(True) == 1 and results.count(False) == 15


def test_memory_nonce_store_release_gives_a_claim_back() -> None:
    clock = Clock(0.0)
    store = MemoryNonceStore(max_entries=2, clock=clock)
    assert claim(store, "a", 10.0) and not claim(store, "a", 10.0)
    asyncio.run(store.release("a"))
    assert len(store) == 0 and claim(store, "a", 10.0)  # the retry of a refused request
    assert claim(store, "b", 20.0) and claim(store, "c", 30.0)
    assert store.evicted == 1 and not claim(store, "b", 20.0)  # the stale heap entry of the release is skipped
    clock.now = 25.0
    assert claim(store, "b", 40.0) and len(store) == 2


def test_memory_nonce_store_refuses_tokens_of_another_epoch() -> None:
    """A process's memory is its store: after a restart, tokens issued before are refused."""
    before, after = MemoryNonceStore(), MemoryNonceStore()
    epoch = asyncio.run(before.epoch())
    assert epoch == asyncio.run(before.epoch()) != asyncio.run(after.epoch())
    assert asyncio.run(before.claim("n", time.time() + 60, epoch)) is True
    with pytest.raises(StaleEpoch) as info:
        asyncio.run(after.claim("n", time.time() + 60, epoch))
    assert info.value.current == asyncio.run(after.epoch()) and len(after) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    pytest.importorskip("redis", reason="the redis package is not installed (pip install redis)")
    import redis

    port = _free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("redis-server did not start")
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        process.terminate()
        process.wait(10)


def test_redis_nonce_store(redis_url: str) -> None:
    import redis

    async def scenario() -> None:
        store = RedisNonceStore(redis_url, prefix="test:a:")
        assert isinstance(store, NonceStore)
        epoch = await store.epoch()
        expires_at = time.time() + 60
        assert await store.claim("n1", expires_at, epoch) is True
        assert await store.claim("n1", expires_at, epoch) is False
        other = RedisNonceStore(redis_url, prefix="test:a:")  # another replica
        assert await other.epoch() == epoch
        assert await other.claim("n1", expires_at, epoch) is False
        assert await store.claim("old", time.time() - 1, epoch) is False
        client = redis.Redis.from_url(redis_url)
        assert client.get("test:a:n1") and client.get("test:a:~epoch") == epoch.encode()
        assert 55 + CLOCK_MARGIN_S <= client.ttl("test:a:n1") <= 61 + CLOCK_MARGIN_S  # the token's life and the margin
        assert client.ttl("test:a:~epoch") == -1  # never expires
        await store.release("n1")
        assert client.get("test:a:n1") is None and await other.claim("n1", expires_at, epoch) is True
        assert "127.0.0.1" not in repr(store)
        client.close()
        await store.close()
        await other.close()

    asyncio.run(scenario())


def test_redis_nonce_store_concurrent_claims(redis_url: str) -> None:
    async def scenario() -> None:
        stores = [RedisNonceStore(redis_url, prefix="test:race:") for _ in range(16)]
        epoch = await stores[0].epoch()
        for round_ in range(3):
            results = await asyncio.gather(*(s.claim(f"r{round_}", time.time() + 60, epoch) for s in stores))
            assert results.count(True) == 1 and results.count(False) == 15
        for store in stores:
            await store.close()

    asyncio.run(scenario())


def test_redis_nonce_store_that_loses_its_data_refuses_the_old_epoch(redis_url: str) -> None:
    """Data lost (here FLUSHDB, as a restart without persistence would): a token issued
    before, spent or not, is refused; the store has a new epoch for new tokens."""
    import redis

    async def scenario() -> None:
        store = RedisNonceStore(redis_url, prefix="test:flush:")
        epoch = await store.epoch()
        assert await store.claim("spent", time.time() + 60, epoch) is True
        redis.Redis.from_url(redis_url).flushdb()
        for nonce in ("spent", "unused"):
            with pytest.raises(StaleEpoch) as info:
                await store.claim(nonce, time.time() + 60, epoch)
        fresh = info.value.current
        assert fresh != epoch and await store.epoch() == fresh
        assert await store.claim("spent", time.time() + 60, fresh) is True
        await store.close()

    asyncio.run(scenario())


def test_redis_nonce_store_with_a_clock_behind_redis_claims_once(redis_url: str) -> None:
    """This replica's clock is 60 s behind Redis's and the token has 10 s left by it: an
    absolute expiry (EXAT) would be in Redis's past, stored and forgotten at once, so the
    token could be claimed again and again; the claim's life is relative instead."""

    async def scenario() -> list[bool]:
        behind = RedisNonceStore(redis_url, prefix="test:skew:", clock=lambda: time.time() - 60)
        epoch = await behind.epoch()
        expires_at = time.time() - 60 + 10
        claims = [await behind.claim("n", expires_at, epoch) for _ in range(3)]
        await behind.close()
        return claims

    assert asyncio.run(scenario()) == [True, False, False]


def test_redis_nonce_store_unreachable_fails_closed() -> None:
    pytest.importorskip("redis", reason="the redis package is not installed (pip install redis)")

    async def scenario() -> None:
        store = RedisNonceStore(f"redis://127.0.0.1:{_free_port()}/0", timeout_s=0.5)
        with pytest.raises(NonceStoreError, match="unavailable"):
            await store.claim("n", time.time() + 60, "epoch")
        with pytest.raises(NonceStoreError, match="unavailable"):
            await store.epoch()

    asyncio.run(scenario())


def test_redis_nonce_store_that_stops_answering_fails_within_its_timeout_and_undoes_the_claim(redis_url: str) -> None:
    """Failure injection on the real server: SIGSTOP keeps its socket open and silent. The
    claim is refused within the timeout; Redis runs it when it resumes, and the undo sent
    after it on the same connection, so the token can still be claimed once."""
    import redis

    pid = redis.Redis.from_url(redis_url).info()["process_id"]

    async def scenario() -> tuple[float, list[bool]]:
        store = RedisNonceStore(redis_url, prefix="test:stop:", timeout_s=0.3)
        epoch = await store.epoch()
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.perf_counter()
            with pytest.raises(NonceStoreError):
                await store.claim("n", time.time() + 60, epoch)
            with pytest.raises(NonceStoreError):
                await store.epoch()
            seconds = time.perf_counter() - started
        finally:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while store._settling:  # the late answers are read and the connections handed back
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        claims = [await store.claim("n", time.time() + 60, epoch) for _ in range(2)]
        await store.close()
        return seconds, claims

    seconds, claims = asyncio.run(scenario())
    assert seconds < 2.0 and claims == [True, False]


def test_redis_nonce_store_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(RuntimeError, match="pip install redis"):
        RedisNonceStore("redis://127.0.0.1:6379/0")


# Limits ------------------------------------------------------------------------------


def rate(limiter: RateLimiter, tenant: str) -> float:
    return asyncio.run(limiter.try_acquire(tenant))


def test_rate_limiter_burst_then_refusal_and_isolation() -> None:
    limiter = RateLimiter(rate=1.0, burst=3)  # 3 in any 3 s window
    assert [rate(limiter, "alpha") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = rate(limiter, "alpha")
    assert 0 < wait <= 3.0  # Retry-After: until the oldest request leaves the window
    assert rate(limiter, "bravo") == 0.0  # another tenant's window is its own
    assert rate(limiter, "alpha") > 0  # refusals count nothing, so the wait does not grow
    assert "shared=False" in repr(limiter)


def test_rate_limiter_window_follows_the_settings() -> None:
    assert (RateLimiter(20, 40).item.amount, RateLimiter(20, 40).item.get_expiry()) == (40, 2)
    assert (RateLimiter(0.5, 2).item.amount, RateLimiter(0.5, 2).item.get_expiry()) == (2, 4)
    assert RateLimiter(100, 1).item.get_expiry() == 1  # the window is at least a second


def test_rate_limiter_validates() -> None:
    for bad_rate, burst in ((0, 1), (-1, 1), (float("nan"), 1), (float("inf"), 1), (1, 0)):
        with pytest.raises(ValueError):
            RateLimiter(bad_rate, burst)


def test_rate_limiter_is_shared_by_replicas_through_redis(redis_url: str) -> None:
    async def scenario() -> list[float]:
        replicas = [RateLimiter(1.0, 4, redis_url, prefix="test:rate") for _ in range(2)]
        return [await replicas[i % 2].try_acquire("alpha") for i in range(5)]

    waits = asyncio.run(scenario())
    assert waits[:4] == [0.0] * 4 and waits[4] > 0  # 4 in the window across both, not 4 each


def test_rate_limiter_falls_back_to_the_process_when_redis_is_down() -> None:
    limiter = RateLimiter(1.0, 2, f"redis://127.0.0.1:{_free_port()}/0", timeout_s=0.3)

    async def scenario() -> tuple[list[float], float]:
        started = time.perf_counter()
        waits = [await limiter.try_acquire("alpha") for _ in range(3)]
        return waits, time.perf_counter() - started

    waits, seconds = asyncio.run(scenario())
    assert waits[:2] == [0.0, 0.0] and waits[2] > 0
    assert seconds < 0.3 * 2  # one failed Redis call (refused at once, or the 0.3 s limit), not three


def test_in_flight_limiter() -> None:
    limiter = InFlightLimiter(2)
    assert limiter.acquire("alpha") and limiter.acquire("alpha")
    assert limiter.acquire("alpha") is False
    assert limiter.acquire("bravo") is True  # per tenant
    assert limiter.in_flight("alpha") == 2
    limiter.release("alpha")
    assert limiter.acquire("alpha") is True
    limiter.release("alpha")
    limiter.release("alpha")
    limiter.release("bravo")
    assert limiter.in_flight("alpha") == 0
    with pytest.raises(RuntimeError, match="release without acquire"):
        limiter.release("alpha")
    with pytest.raises(ValueError):
        InFlightLimiter(0)


def test_in_flight_limiter_gives_a_named_tenant_its_own_cap() -> None:
    """The demo's tenant has a cap of its own, apart from every carrier's."""
    limiter = InFlightLimiter(3, {"demo": 1})
    assert limiter.acquire("demo") and limiter.acquire("demo") is False
    assert all(limiter.acquire("alpha") for _ in range(3)) and limiter.acquire("alpha") is False
    with pytest.raises(ValueError):
        InFlightLimiter(3, {"demo": 0})


def test_client_named_challenges_are_marked_in_the_token(signer: ChallengeSigner) -> None:
    from portrait.challenge import random_schedule

    named = signer.verify(signer.issue("alpha", random_schedule(["blink", "turn_left"]), epoch=EPOCH).token, "alpha")
    drawn = signer.verify(signer.issue("alpha", random_challenge(), epoch=EPOCH).token, "alpha")
    assert named.spec.client_named is True and drawn.spec.client_named is False
    assert ChallengeSpec.timed(["blink"], [1.0], client_named=True).claims()["client_named"] is True


def test_in_flight_limiter_concurrent() -> None:
    limiter = InFlightLimiter(4)
    results = run_threads(16, lambda: limiter.acquire("alpha"))
    assert results.count(True) == 4 and limiter.in_flight("alpha") == 4


# Receipts ----------------------------------------------------------------------------

CLAIMS = {"rid": "r-1", "tenant": "alpha", "iat": 1_700_000_000, "decision": "accept", "reasons": [],
          "inputs": {"id_image_sha256": "ab" * 32, "video_sha256": "cd" * 32},
          "scores": {"match": {"score": 0.71, "threshold": 0.36}}, "models": {"sface": "2021dec"}}


@pytest.fixture(scope="module")
def receipt_signer() -> ReceiptSigner:
    return ReceiptSigner(generate_key())


def test_receipt_round_trip(receipt_signer: ReceiptSigner) -> None:
    token = receipt_signer.sign(CLAIMS)
    header_b64, payload_b64, signature_b64 = token.split(".")
    raw_public = receipt_signer.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert json.loads(b64d(header_b64)) == {"alg": "EdDSA", "typ": "portrait-receipt+jws",
                                             "kid": hashlib.sha256(raw_public).hexdigest()[:16]}
    assert json.loads(b64d(payload_b64)) == CLAIMS and len(b64d(signature_b64)) == 64
    pem = receipt_signer.public_key_pem()
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert verify_receipt(token, pem) == CLAIMS
    assert verify_receipt(token, pem.decode()) == CLAIMS
    jwk = receipt_signer.public_jwk()
    assert jwk["kty"] == "OKP" and b64d(jwk["x"]) == raw_public and jwk["kid"] == receipt_signer.kid


def test_receipt_tampered(receipt_signer: ReceiptSigner) -> None:
    token = receipt_signer.sign(CLAIMS)
    pem = receipt_signer.public_key_pem()
    header_b64, payload_b64, signature_b64 = token.split(".")
    signature = bytearray(b64d(signature_b64))
    signature[5] ^= 1
    tampered = [
        f"{header_b64}.{b64e(json.dumps({**CLAIMS, 'decision': 'reject'}).encode())}.{signature_b64}",
        f"{header_b64}.{payload_b64}.{b64e(bytes(signature))}",
        f"{header_b64}.{payload_b64}.{b64e(bytes(signature[:32]))}",
        f"{header_b64}.{payload_b64}.",
    ]
    for bad in tampered:
        with pytest.raises(ReceiptError) as info:
            verify_receipt(bad, pem)
        assert info.value.code == "bad_signature"


def test_receipt_wrong_key(receipt_signer: ReceiptSigner) -> None:
    token = receipt_signer.sign(CLAIMS)
    other = ReceiptSigner(generate_key())
    with pytest.raises(ReceiptError) as info:
        verify_receipt(token, other.public_key_pem())
    assert info.value.code == "wrong_key"
    # the kid is only a hint: relabelled for the other key, the signature still fails
    _, payload_b64, signature_b64 = token.split(".")
    header = b64e(json.dumps({"alg": "EdDSA", "typ": "portrait-receipt+jws", "kid": other.kid}).encode())
    with pytest.raises(ReceiptError) as info:
        verify_receipt(f"{header}.{payload_b64}.{signature_b64}", other.public_key_pem())
    assert info.value.code == "bad_signature"


def test_receipt_malformed(receipt_signer: ReceiptSigner) -> None:
    pem = receipt_signer.public_key_pem()
    token = receipt_signer.sign(CLAIMS)
    header_b64, payload_b64, signature_b64 = token.split(".")
    seed = bytes(range(32))
    signer = ReceiptSigner(seed)
    raw_key = Ed25519PrivateKey.from_private_bytes(seed)

    def signed(header: dict, payload: bytes) -> str:
        text = f"{b64e(json.dumps(header).encode())}.{b64e(payload)}"
        return f"{text}.{b64e(raw_key.sign(text.encode()))}"

    good_header = {"alg": "EdDSA", "typ": "portrait-receipt+jws", "kid": signer.kid}
    cases = [
        (pem, ""), (pem, "a.b"), (pem, token + ".x"), (pem, f"!{token}"), (pem, "x" * 70_000), (pem, None),
        (pem, f"{b64e(b'not json')}.{payload_b64}.{signature_b64}"),
        (pem, f"{b64e(b'[]')}.{payload_b64}.{signature_b64}"),
        (signer.public_key_pem(), signed({**good_header, "alg": "none"}, b"{}")),
        (signer.public_key_pem(), signed({**good_header, "alg": "HS256"}, b"{}")),
        (signer.public_key_pem(), signed({**good_header, "typ": "JWT"}, b"{}")),
        (signer.public_key_pem(), signed(good_header, b"[1, 2]")),
        (signer.public_key_pem(), signed(good_header, b"{oops")),
    ]
    for key, bad in cases:
        with pytest.raises(ReceiptError) as info:
            verify_receipt(bad, key)  # type: ignore[arg-type]
        assert info.value.code == "malformed_receipt", bad
    assert verify_receipt(signed(good_header, b'{"ok": true}'), signer.public_key_pem()) == {"ok": True}


def test_receipt_bad_public_key(receipt_signer: ReceiptSigner) -> None:
    token = receipt_signer.sign(CLAIMS)
    ec_public = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for key in (b"not a key", "", ec_public, generate_key()):
        with pytest.raises(ReceiptError) as info:
            verify_receipt(token, key)
        assert info.value.code == "bad_key"


def test_receipt_keys() -> None:
    pem = generate_key()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert ReceiptSigner(pem).kid == ReceiptSigner(pem.decode()).kid
    assert ReceiptSigner(generate_key()).kid != ReceiptSigner(pem).kid
    assert ReceiptSigner.from_seed("dev").kid == ReceiptSigner.from_seed(b"dev").kid
    assert ReceiptSigner.from_seed("dev").kid != ReceiptSigner.from_seed("prod").kid
    assert len(seed_from_passphrase("dev")) == 32
    assert ReceiptSigner.random().kid != ReceiptSigner.random().kid
    signer = ReceiptSigner(seed_from_passphrase("dev"))
    assert receipt_key_id(signer.public_key) == signer.kid and signer.kid in repr(signer)
    ec_private = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(ValueError, match="must be an Ed25519 key"):
        ReceiptSigner(ec_private)
    with pytest.raises(ValueError, match="neither"):
        ReceiptSigner(b"short")
    with pytest.raises(ValueError):
        signer.sign({"score": float("nan")})
    with pytest.raises(TypeError):
        signer.sign(["not", "a", "dict"])  # type: ignore[arg-type]
