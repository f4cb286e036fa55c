"""Helpers shared by the Python interop scripts (cent_api.py, sdk_interop.py).

Bounded waits, one line per step, and on failure the reason plus the SDK's own
debug log (every frame it sent and received), then exit 1. Nothing here waits
without a timeout.
"""

import asyncio
import base64
import collections
import json
import logging
import os
import sys
import time

from centrifuge import ClientEventHandler, SubscriptionEventHandler

#: Upper bound for any single wait.
WAIT_S = 5.0
#: How long to watch for events that should not come.
QUIET_S = 0.3

_started = time.monotonic()
#: The last lines of the centrifuge SDK's debug log, for the failure report.
_sdk_log = collections.deque(maxlen=400)
#: INTEROP_TRACE=1 (as for ../sdk/interop.mjs) also streams that log to stderr.
_TRACE = os.environ.get("INTEROP_TRACE") == "1"


class _RingHandler(logging.Handler):
    def emit(self, record):
        try:
            line = f"{elapsed()}s {record.name} {self.format(record)}"
        except Exception:  # a log line must never break a check
            return
        _sdk_log.append(line)
        if _TRACE:
            print(line, file=sys.stderr, flush=True)


def capture_sdk_log():
    """Keep the SDK's debug log (frames in and out) for the failure report."""
    logger = logging.getLogger("centrifuge")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(_RingHandler())
    logger.propagate = False


def elapsed():
    return f"{time.monotonic() - _started:.3f}"


def step(msg):
    print(f"[{elapsed()}s] {msg}", flush=True)


class CheckFailed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise CheckFailed(what)


def canonical(v):
    return json.dumps(v, sort_keys=True, default=repr)


def eq(actual, expected, what):
    a, e = canonical(actual), canonical(expected)
    check(a == e, f"{what}: expected {e}, got {a}")


def fail(reason, extra=None):
    """Print the reason (stdout and stderr), the SDK log, a final JSON line; exit 1."""
    print(f"FAIL: {reason}", flush=True)
    print(f"FAIL: {reason}", file=sys.stderr)
    if extra:
        print(extra, file=sys.stderr)
    lines = list(_sdk_log)
    print(f"centrifuge SDK log ({len(lines)} last lines):", file=sys.stderr)
    print("\n".join(lines), file=sys.stderr, flush=True)
    print(json.dumps({"ok": False, "reason": str(reason)}), flush=True)
    sys.exit(1)


def versions():
    """The installed versions of the two packages under test."""
    from importlib.metadata import version

    return {"cent": version("cent"), "centrifuge-python": version("centrifuge-python")}


def position(p):
    """An offset and epoch (a stream position, a result) as a dict."""
    return {"offset": p.offset, "epoch": p.epoch}


def counts(s):
    """Presence stats as a dict."""
    return {"num_clients": s.num_clients, "num_users": s.num_users}


def code_reason(ctx):
    """The code and reason of an SDK event."""
    return {"code": ctx.code, "reason": ctx.reason}


def jwt_sub(token):
    """The `sub` claim of a JWT (no verification: the gateway does that)."""
    parts = token.split(".")
    check(len(parts) == 3, "token is not a JWT")
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    return json.loads(base64.urlsafe_b64decode(payload))["sub"]


async def within(awaitable, what, timeout=WAIT_S):
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise CheckFailed(f"timed out after {timeout} s waiting for {what}") from None


class Inbox:
    """Events of one kind, queued until taken in order; `next` waits (bounded)."""

    def __init__(self, name):
        self.name = name
        self.queue = asyncio.Queue()

    def push(self, item):
        self.queue.put_nowait(item)

    async def next(self, what=None):
        return await within(self.queue.get(), what or self.name)

    async def until(self, pred, what):
        """Take items until one matches `pred`, failing on the timeout."""
        deadline = time.monotonic() + WAIT_S
        while True:
            left = deadline - time.monotonic()
            item = await within(self.queue.get(), what, timeout=max(left, 0.001))
            if pred(item):
                return item

    async def quiet(self, what, seconds=QUIET_S):
        """Assert nothing arrives for `seconds`."""
        await asyncio.sleep(seconds)
        items = []
        while not self.queue.empty():
            items.append(self.queue.get_nowait())
        check(not items, f"{what}: unexpected {items!r}")

    def drain(self):
        while not self.queue.empty():
            self.queue.get_nowait()


class ClientEvents(ClientEventHandler):
    """Client-level events, server-side subscriptions' included, in inboxes."""

    def __init__(self, label):
        self.label = label
        self.connecting = Inbox(f"{label} connecting")
        self.connected = Inbox(f"{label} connected")
        self.disconnected = Inbox(f"{label} disconnected")
        self.errors = []
        self.server_subscribed = Inbox(f"{label} server-side subscribed")
        self.server_unsubscribed = Inbox(f"{label} server-side unsubscribed")
        self.server_pubs = Inbox(f"{label} server-side publication")

    async def on_connecting(self, ctx):
        self.connecting.push(ctx)

    async def on_connected(self, ctx):
        self.connected.push(ctx)

    async def on_disconnected(self, ctx):
        self.disconnected.push(ctx)

    async def on_error(self, ctx):
        self.errors.append(ctx)
        _sdk_log.append(f"{elapsed()}s {self.label} client error event {ctx!r}")

    async def on_subscribed(self, ctx):
        self.server_subscribed.push(ctx)

    async def on_unsubscribed(self, ctx):
        self.server_unsubscribed.push(ctx)

    async def on_publication(self, ctx):
        self.server_pubs.push(ctx)


class SubEvents(SubscriptionEventHandler):
    """One subscription's events in inboxes."""

    def __init__(self, label):
        self.label = label
        self.subscribing = Inbox(f"{label} subscribing")
        self.subscribed = Inbox(f"{label} subscribed")
        self.unsubscribed = Inbox(f"{label} unsubscribed")
        self.pubs = Inbox(f"{label} publication")
        self.joins = Inbox(f"{label} join")
        self.leaves = Inbox(f"{label} leave")
        self.errors = []

    async def on_subscribing(self, ctx):
        self.subscribing.push(ctx)

    async def on_subscribed(self, ctx):
        self.subscribed.push(ctx)

    async def on_unsubscribed(self, ctx):
        self.unsubscribed.push(ctx)

    async def on_publication(self, ctx):
        self.pubs.push(ctx)

    async def on_join(self, ctx):
        self.joins.push(ctx)

    async def on_leave(self, ctx):
        self.leaves.push(ctx)

    async def on_error(self, ctx):
        self.errors.append(ctx)
        _sdk_log.append(f"{elapsed()}s {self.label} subscription error event {ctx!r}")


def run(main, overall_s):
    """Run `main()` bounded by `overall_s`; any failure exits 1 with the report."""
    capture_sdk_log()

    async def bounded():
        try:
            return await asyncio.wait_for(main(), overall_s)
        except asyncio.TimeoutError:
            raise CheckFailed(f"the whole script took over {overall_s} s") from None

    try:
        asyncio.run(bounded())
    except CheckFailed as e:
        fail(e)
    except Exception as e:  # an SDK or library error is a failure too
        import traceback

        fail(f"{type(e).__name__}: {e}", traceback.format_exc())
    sys.stdout.flush()
    sys.exit(0)
