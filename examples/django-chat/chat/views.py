import json
import re

from cent import CentError
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpResponseForbidden, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from . import gateway
from .models import Message

ROOM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
# The connect proxy's refusal: 4500-4999 closes the socket for good (the SDK
# does not reconnect), which is right until the user logs in again.
LOGIN_REQUIRED = {"disconnect": {"code": 4501, "reason": "login required"}}


def index(request):
    if request.method == "POST":
        return redirect("room", room_name=request.POST.get("room_name", "lobby"))
    return render(request, "chat/index.html")


@login_required
def room(request, room_name):
    if not ROOM_NAME.match(room_name):
        raise Http404("no such room")
    recent = Message.objects.filter(room=room_name).select_related("user").order_by("-id")[:50]
    return render(
        request,
        "chat/room.html",
        {
            "room_name": room_name,
            "channel": gateway.room_channel(room_name),
            "ws_url": settings.GATEWAY_WS_URL,
            "recent": [m.as_event() for m in reversed(recent)],
        },
    )


def token(request):
    """A connection JWT for the logged-in user (the SDK's getToken asks here)."""
    if not request.user.is_authenticated:
        return JsonResponse({"error": "login required"}, status=403)
    return JsonResponse({"token": gateway.connection_token(request.user)})


@require_POST
def moderate(request, pk):
    """A moderator edits or deletes a message; the room hears it from the server."""
    if not request.user.is_staff:
        return HttpResponseForbidden("moderators only")
    message = get_object_or_404(Message, pk=pk)
    if request.POST.get("action") == "delete":
        message.delete()
        event = {"type": "delete", "id": pk}
    else:
        message.text = request.POST.get("text", "").strip()[: settings.CHAT_MAX_TEXT]
        message.edited = True
        message.save(update_fields=["text", "edited"])
        event = {"type": "edit", "id": pk, "text": message.text}
    try:
        offset = gateway.publish(message.room, event)
    except CentError as e:
        # Stored, not announced: the clients see it on their next page load.
        return JsonResponse({"ok": False, "error": str(e)}, status=502)
    return JsonResponse({"ok": True, "offset": offset})


def _proxy_request(request):
    """The proxy call's JSON body, or None when it is not from the gateway."""
    if request.method != "POST" or not gateway.from_gateway(request):
        return None
    try:
        return json.loads(request.body)
    except ValueError:
        return None


@csrf_exempt
def connect_proxy(request):
    """A tokenless WebSocket connect: the forwarded Cookie carries the session."""
    if _proxy_request(request) is None:
        return HttpResponseForbidden()
    user = request.user
    if not user.is_authenticated:
        return JsonResponse(LOGIN_REQUIRED)
    name = user.get_username()
    return JsonResponse(
        {"result": {"user": str(user.pk), "info": {"name": name}, "data": {"username": name}}}
    )


def _error(code, message, temporary=False):
    return JsonResponse({"error": {"code": code, "message": message, "temporary": temporary}})


def _chat_message(body, room_name, data):
    """(room, user, text) of a message a client sends, or the error to answer."""
    text = data.get("text") if isinstance(data, dict) else None
    if not isinstance(text, str) or not text.strip():
        return _error(400, "empty message")
    text = text.strip()
    if len(text) > settings.CHAT_MAX_TEXT:
        return _error(400, f"longer than {settings.CHAT_MAX_TEXT} characters")
    if not isinstance(room_name, str) or not ROOM_NAME.match(room_name):
        return _error(400, "no such room")
    user_id = str(body.get("user", ""))
    user = get_user_model().objects.filter(pk=user_id).first() if user_id.isdigit() else None
    if user is None:
        return _error(400, "unknown user")
    return room_name, user, text


@csrf_exempt
def publish_proxy(request):
    """A client's publication: validate, store, and return what the room receives.

    Rows follow the order in which this view ran; the room's offsets follow the
    order in which the gateway published the answers. For two connections sending
    at once the two orders can differ: `rpc_proxy`'s `send` keeps them equal.
    """
    body = _proxy_request(request)
    if body is None:
        return HttpResponseForbidden()
    checked = _chat_message(body, body.get("channel", "").removeprefix("chat:"), body.get("data"))
    if isinstance(checked, JsonResponse):
        return checked
    room_name, user, text = checked
    message = Message.objects.create(room=room_name, user=user, text=text)
    return JsonResponse({"result": {"data": message.as_event()}})


@csrf_exempt
def rpc_proxy(request):
    """`client.rpc("send", {"room", "text"})`: store and publish in one transaction.

    The transaction holds the database's write lock (settings: SQLite's
    `transaction_mode = IMMEDIATE`; on PostgreSQL, `select_for_update()` on a room
    row) across the server API publish, so sends are stored in the order the room
    receives them, and each row keeps its offset. A failed publish rolls the row
    back and the client gets a temporary error to retry.
    """
    body = _proxy_request(request)
    if body is None:
        return HttpResponseForbidden()
    if body.get("method") != "send":
        return _error(104, "method not found")
    data = body.get("data")
    checked = _chat_message(body, data.get("room") if isinstance(data, dict) else None, data)
    if isinstance(checked, JsonResponse):
        return checked
    room_name, user, text = checked
    try:
        with transaction.atomic():
            message = Message.objects.create(room=room_name, user=user, text=text)
            message.offset = gateway.publish(room_name, message.as_event())
            message.save(update_fields=["offset"])
    except CentError as e:
        return _error(100, f"not published: {e}", temporary=True)
    return JsonResponse({"result": {"data": {"id": message.id, "offset": message.offset}}})
