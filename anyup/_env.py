"""Environment settings read in one place: the cache folder, debug mode, offline mode, network probe.

* ``ANYUP_CACHE_DIR``: where downloads and caches go (default ``~/.cache/anyup``). The older
  spelling ``ANYUP_CACHE`` still works for one release, with a ``DeprecationWarning``.
* ``ANYUP_DEBUG=1``: the CLI shows full tracebacks (same as ``--debug``).
* ``ANYUP_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``: never try the network; fail at once with a message
  saying how to pass a local file.
"""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path
from urllib.parse import urlparse

ENV_CACHE_DIR = "ANYUP_CACHE_DIR"
ENV_CACHE_DEPRECATED = "ANYUP_CACHE"
ENV_DEBUG = "ANYUP_DEBUG"
ENV_OFFLINE = ("ANYUP_OFFLINE", "HF_HUB_OFFLINE")
NETWORK_TIMEOUT_S = 3.0  # the one connection probe before a download

_TRUE = ("1", "true", "yes", "on")
_reachable: dict[str, bool] = {}  # host -> probe result, so a machine without network is detected once


def cache_dir() -> Path:
    """``$ANYUP_CACHE_DIR`` (or the deprecated ``$ANYUP_CACHE``), else ``~/.cache/anyup``."""
    value = os.environ.get(ENV_CACHE_DIR)
    if not value and os.environ.get(ENV_CACHE_DEPRECATED):
        warnings.warn(
            f"{ENV_CACHE_DEPRECATED} is deprecated and will be removed in the next release; set {ENV_CACHE_DIR}",
            DeprecationWarning,
            stacklevel=2,
        )
        value = os.environ[ENV_CACHE_DEPRECATED]
    return Path(value).expanduser() if value else Path.home() / ".cache" / "anyup"


def debug_enabled() -> bool:
    return os.environ.get(ENV_DEBUG, "").strip().lower() in _TRUE


def offline_mode() -> str | None:
    """The variable that switches the network off (``"HF_HUB_OFFLINE=1"``), or ``None``."""
    for name in ENV_OFFLINE:
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return f"{name}={os.environ[name]}"
    return None


def network_available(url_or_host: str) -> bool:
    """Whether ``host:443`` accepts a TCP connection within a few seconds (probed once per host)."""
    host = urlparse(url_or_host).hostname or url_or_host
    if host not in _reachable:
        try:
            with socket.create_connection((host, 443), timeout=NETWORK_TIMEOUT_S):
                _reachable[host] = True
        except OSError:
            _reachable[host] = False
    return _reachable[host]


def require_network(url_or_host: str, what: str, how_offline: str) -> None:
    """Raise ``RuntimeError`` at once when offline mode is set or the host is unreachable.

    ``what`` names the download, ``how_offline`` says how to pass a local file instead.
    """
    switch = offline_mode()
    if switch:
        raise RuntimeError(f"{what} needs the network but {switch} is set. {how_offline}")
    if not network_available(url_or_host):
        host = urlparse(url_or_host).hostname or url_or_host
        raise RuntimeError(f"{what} needs the network but {host} cannot be reached (offline?). {how_offline}")
