from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="message",
            name="offset",
            field=models.BigIntegerField(blank=True, null=True),
        ),
    ]
