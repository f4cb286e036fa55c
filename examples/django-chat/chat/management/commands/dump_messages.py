import json

from django.core.management.base import BaseCommand

from chat.models import Message


class Command(BaseCommand):
    help = "Print a room's stored messages as JSON lines, in the order they were stored."

    def add_arguments(self, parser):
        parser.add_argument("room")

    def handle(self, *args, room, **options):
        for m in Message.objects.filter(room=room).select_related("user"):
            line = {
                "id": m.id,
                "user": m.user.get_username(),
                "text": m.text,
                "edited": m.edited,
                "offset": m.offset,
            }
            self.stdout.write(json.dumps(line))
