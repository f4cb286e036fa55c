from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver

from . import gateway

# Logging out ends the user's live sockets too, on every device (the gateway knows
# users, not sessions). 4500-4999 is terminal: the SDK does not reconnect.
LOGGED_OUT = 4502


@receiver(user_logged_out)
def close_sockets(sender, request, user, **kwargs):
    if user is not None:
        gateway.disconnect_user(str(user.pk), LOGGED_OUT, "logged out")
