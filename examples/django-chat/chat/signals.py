import logging

from cent import CentError
from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver

from . import gateway

log = logging.getLogger(__name__)

# Logging out ends the user's live sockets too, on every device (the gateway knows
# users, not sessions). 4500-4999 is terminal: the SDK does not reconnect.
LOGGED_OUT = 4502


@receiver(user_logged_out)
def close_sockets(sender, request, user, **kwargs):
    if user is None:
        return
    try:
        gateway.disconnect_user(str(user.pk), LOGGED_OUT, "logged out")
    except CentError as e:
        # The logout itself must not fail: the sockets then live until they drop
        # or their token expires, and a reconnect meets the connect proxy.
        log.warning("could not close the sockets of user %s: %s", user.pk, e)
