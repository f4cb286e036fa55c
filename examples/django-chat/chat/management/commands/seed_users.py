from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create users (name:password, a trailing '!' makes a moderator), e.g. alice:pw mod:pw!"

    def add_arguments(self, parser):
        parser.add_argument("users", nargs="+")

    def handle(self, *args, users, **options):
        model = get_user_model()
        for spec in users:
            name, _, password = spec.partition(":")
            staff = password.endswith("!")
            user, _ = model.objects.get_or_create(username=name, defaults={"is_staff": staff})
            user.set_password(password.removesuffix("!"))
            user.save()
            self.stdout.write(f"{name} (id {user.pk}{', moderator' if staff else ''})")
