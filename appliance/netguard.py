"""Offline enforcement: no weights from hubs, no endpoints outside the building.

The appliance sets the Hugging Face offline variables before transformers is imported, and
every configured model endpoint must be loopback or a host the operator listed explicitly in
RECKON_ALLOWED_HOSTS (comma-separated host names or IP addresses of on-prem servers).
"""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlsplit

from appliance.errors import NetworkPolicyError

OFFLINE_VARIABLES = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}


def enforce_offline() -> None:
    """Set the offline variables for this process and its children (idempotent)."""
    for name, value in OFFLINE_VARIABLES.items():
        os.environ[name] = value


def allowed_hosts() -> set[str]:
    raw = os.environ.get("RECKON_ALLOWED_HOSTS", "")
    return {host.strip().lower() for host in raw.split(",") if host.strip()}


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(url: str, *, setting: str = "endpoint") -> str:
    """Return `url` unchanged if it may be contacted, else raise NetworkPolicyError.

    `setting` names the configuration field in the error message.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise NetworkPolicyError(
            f"{setting}: {url!r} is not an http(s) URL; give e.g. http://127.0.0.1:11434"
        )
    host = parts.hostname or ""
    if not host:
        raise NetworkPolicyError(f"{setting}: {url!r} has no host name")
    if is_loopback(host) or host.lower() in allowed_hosts():
        return url
    raise NetworkPolicyError(
        f"{setting}: host {host!r} is neither loopback nor an allowed on-prem host. "
        "This appliance never contacts outside servers. If this is a server inside the "
        f"building, add it to RECKON_ALLOWED_HOSTS (e.g. RECKON_ALLOWED_HOSTS={host})."
    )
