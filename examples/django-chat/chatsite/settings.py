"""Settings for the example: a plain Django site plus the gateway's four values.

Everything a deployment changes comes from the environment; the defaults run it on
one machine for development.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = BASE_DIR.parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "chatsite.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
WSGI_APPLICATION = "chatsite.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB", BASE_DIR / "db.sqlite3"),
        # Every transaction takes the write lock when it begins: chat.views.rpc_proxy
        # holds it across its publish, so sends are stored in the room's order
        # (and nothing fails with "database is locked" on a lock upgrade).
        "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

STATIC_URL = "static/"
# The pinned centrifuge-js browser build the gateway embeds for its demo page
# (with its licence), served here as /static/centrifuge/centrifuge.js.
STATICFILES_DIRS = [("centrifuge", REPO_DIR / "gateway" / "assets" / "demo")]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "index"
LOGOUT_REDIRECT_URL = "login"

# The gateway. The HMAC secret is the gateway's [token] hmac_secret
# (GATEWAY_TOKEN_HMAC_SECRET); the API key its api_key (GATEWAY_API_KEY).
GATEWAY_WS_URL = os.environ.get("GATEWAY_WS_URL", "ws://127.0.0.1:8000/connection/websocket")
GATEWAY_API_URL = os.environ.get("GATEWAY_API_URL", "http://127.0.0.1:8000/api")
GATEWAY_API_KEY = os.environ.get("GATEWAY_API_KEY", "")
GATEWAY_TOKEN_HMAC_SECRET = os.environ.get("GATEWAY_TOKEN_HMAC_SECRET", "")
GATEWAY_TOKEN_TTL_SECONDS = 15 * 60
# The gateway cannot add a header of its own to proxy calls, so the proxy URLs
# carry this key (?key=...); empty turns the check off (development only).
GATEWAY_PROXY_KEY = os.environ.get("GATEWAY_PROXY_KEY", "")
# Longest message text the publish proxy accepts.
CHAT_MAX_TEXT = 500
