import json
import re

from cent import CentError
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
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


def _reject(message):
    return JsonResponse({"error": {"code": 400, "message": message, "temporary": False}})


@csrf_exempt
def publish_proxy(request):
    """A client's publication: validate, store, and return what the room receives."""
    body = _proxy_request(request)
    if body is None:
        return HttpResponseForbidden()
    channel = body.get("channel", "")
    room_name = channel.removeprefix("chat:")
    data = body.get("data")
    text = data.get("text") if isinstance(data, dict) else None
    if not isinstance(text, str) or not text.strip():
        return _reject("empty message")
    text = text.strip()
    if len(text) > settings.CHAT_MAX_TEXT:
        return _reject(f"longer than {settings.CHAT_MAX_TEXT} characters")
    if not ROOM_NAME.match(room_name):
        return _reject("no such room")
    user_id = str(body.get("user", ""))
    user = get_user_model().objects.filter(pk=user_id).first() if user_id.isdigit() else None
    if user is None:
        return _reject("unknown user")
    message = Message.objects.create(room=room_name, user=user, text=text)
    return JsonResponse({"result": {"data": message.as_event()}})
