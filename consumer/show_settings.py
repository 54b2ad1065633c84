"""``streamseg settings``: the settings in effect (file, environment and options merged),
with every secret left out, as JSON."""

from __future__ import annotations

import argparse
import json
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from consumer.settings import Settings

#: What stands in for a secret.
HIDDEN = "***"
_SECRET_QUERY_OPTIONS = frozenset({"password", "username", "user"})
#: A ``kafka.extra`` property whose name holds one of these is a secret (or may hold one).
_SECRET_WORDS = ("password", "secret", "token", "credential", ".pem", "sasl.jaas", "oauthbearer")


def shown_settings(settings: Settings) -> dict[str, object]:
    """``settings`` as JSON-ready data; secrets (``kafka.sasl_password``, the credentials of
    ``redis.url``, properties of the ``kafka.*extra`` dicts named like secrets) replaced by
    `HIDDEN`, the
    rest of the URL kept (host, port, database)."""
    data: dict[str, object] = settings.model_dump(mode="json")
    redis_section = data["redis"]
    assert isinstance(redis_section, dict)
    redis_section["url"] = url_without_credentials(settings.redis.url.get_secret_value())
    kafka_section = data["kafka"]
    assert isinstance(kafka_section, dict)
    if kafka_section.get("sasl_password") is not None:
        kafka_section["sasl_password"] = HIDDEN
    # librdkafka properties may carry secrets too (ssl.key.password, sasl.oauthbearer...).
    for name in ("extra", "consumer_extra", "producer_extra"):
        extra = kafka_section[name]
        assert isinstance(extra, dict)
        kafka_section[name] = {
            k: HIDDEN if any(word in k.lower() for word in _SECRET_WORDS) else v
            for k, v in extra.items()
        }
    return data


def url_without_credentials(url: str) -> str:
    """``url`` with its user name and password (userinfo or query options) as `HIDDEN`."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{HIDDEN}@{netloc.rsplit('@', 1)[1]}"
    query = urlencode(
        [
            (k, HIDDEN if k.lower() in _SECRET_QUERY_OPTIONS or "password" in k.lower() else v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def settings_command(args: argparse.Namespace, settings: Settings) -> int:
    """Print the settings in effect as JSON."""
    print(json.dumps(shown_settings(settings), indent=2))
    return 0
