"""The three things Django needs from the gateway: connection tokens, the server
API (through `cent`), and a check that a proxy call comes from the gateway."""

import base64
import hashlib
import hmac
import json
import time

from cent import Client, Disconnect, DisconnectRequest, PublishRequest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def connection_token(user) -> str:
    """An HS256 connection JWT for `user`: `sub` is the user id, `info` the name."""
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {
        "sub": str(user.pk),
        "exp": int(time.time()) + settings.GATEWAY_TOKEN_TTL_SECONDS,
        "info": {"name": user.get_username()},
    }
    signing_input = ".".join(
        _b64(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    if not settings.GATEWAY_TOKEN_HMAC_SECRET:
        raise ImproperlyConfigured("set GATEWAY_TOKEN_HMAC_SECRET to the gateway's hmac_secret")
    key = settings.GATEWAY_TOKEN_HMAC_SECRET.encode()
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def api() -> Client:
    return Client(settings.GATEWAY_API_URL, settings.GATEWAY_API_KEY, timeout=3)


def room_channel(room: str) -> str:
    return f"chat:{room}"


def publish(room: str, data: dict) -> int:
    """Publish `data` to the room from the server side; returns its offset."""
    result = api().publish(PublishRequest(channel=room_channel(room), data=data))
    return result.offset


def disconnect_user(user_id: str, code: int, reason: str) -> None:
    """Close every connection of the user on every node."""
    api().disconnect(
        DisconnectRequest(user=user_id, disconnect=Disconnect(code=code, reason=reason))
    )


def from_gateway(request) -> bool:
    """Whether a proxy call carries the key configured in the proxy URLs."""
    key = settings.GATEWAY_PROXY_KEY
    return not key or hmac.compare_digest(request.GET.get("key", ""), key)
