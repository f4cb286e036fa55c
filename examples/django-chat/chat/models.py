from django.conf import settings
from django.db import models


class Message(models.Model):
    """A chat message, stored by the publish proxy before the room sees it, or by
    the `send` RPC together with the room's offset (`offset`)."""

    room = models.CharField(max_length=100, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    text = models.TextField()
    created = models.DateTimeField(auto_now_add=True)
    edited = models.BooleanField(default=False)
    # The room's offset of the publication; set by the `send` RPC only (the
    # publish proxy answers before the gateway assigns it).
    offset = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["id"]

    def as_event(self):
        """What the room receives for this message."""
        return {
            "type": "message",
            "id": self.id,
            "user": self.user.get_username(),
            "text": self.text,
            "created": self.created.isoformat(),
        }
