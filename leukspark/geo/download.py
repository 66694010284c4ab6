"""Fetch a GEO series' family SOFT file into a local cache folder.

The download itself is GEOparse's (it knows GEO's FTP layout). Around it this
module adds what a pipeline needs: a cache that is used without any network
access, a bounded wait, a clear error when GEO cannot be reached (with the exact
path where the user can place the file to work offline), and no partial file
ever left at the cache path.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

from leukspark.errors import GeoDownloadError, GeoFormatError
from leukspark.geo.soft import decompressed_chunks

__all__ = ["ACCESSION_PATTERN", "GEO_HOST", "cached_series_path", "fetch_series", "geo_series_url"]

ACCESSION_PATTERN = re.compile(r"^GSE\d+$")

#: The server GEOparse downloads family SOFT files from (over FTP).
GEO_HOST = "ftp.ncbi.nlm.nih.gov"
_GEO_FTP_PORT = 21
_PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "GEOPARSE_USE_HTTP_FOR_FTP")


def cached_series_path(accession: str, cache_dir: str | Path) -> Path:
    """Where the family SOFT of ``accession`` lives in the cache."""
    return Path(cache_dir) / f"{accession}_family.soft.gz"


def fetch_series(accession: str, cache_dir: str | Path, *, timeout: float = 30.0) -> Path:
    """Return the path of ``<cache_dir>/<accession>_family.soft.gz``, downloading it if absent.

    A file already in the cache is returned without touching the network. A
    download goes to a temporary folder inside the cache and is moved into place
    only once complete, so an interrupted download leaves nothing behind.
    ``timeout`` bounds each network wait (connect, read) in seconds.

    Raises GeoDownloadError for a malformed accession, when GEO cannot be
    reached, or when the download fails or is incomplete.
    """
    if not isinstance(accession, str) or not ACCESSION_PATTERN.fullmatch(accession):
        raise GeoDownloadError(
            f"{accession!r} is not a GEO series accession (expected GSE followed by digits, e.g. GSE13159)"
        )
    target = cached_series_path(accession, cache_dir)
    if target.is_file():
        return target
    _check_geo_reachable(accession, target, timeout)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{accession}-download-", dir=target.parent))
    except OSError as exc:
        raise GeoDownloadError(f"cannot use cache folder {target.parent}: {exc.strerror or exc}") from None
    try:
        downloaded = _download_with_geoparse(accession, staging, target, timeout)
        _check_complete_gzip(downloaded, accession, target)
        os.replace(downloaded, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def geo_series_url(accession: str) -> str:
    """GEO's download address of a series' family SOFT (GSE13159 -> .../GSE13nnn/GSE13159/soft/...)."""
    folder = re.sub(r"\d{1,3}$", "nnn", accession)
    return f"https://ftp.ncbi.nlm.nih.gov/geo/series/{folder}/{accession}/soft/{accession}_family.soft.gz"


def _offline_hint(accession: str, target: Path) -> str:
    return f"To work offline, download {geo_series_url(accession)} yourself and place it at {target}"


def _check_geo_reachable(accession: str, target: Path, timeout: float) -> None:
    """Fail fast, with a clear message, when GEO's server cannot be reached.

    GEOparse logs FTP failures and goes on, so its own error says little; a
    direct connection attempt tells "offline" apart from "download failed". With
    a proxy configured GEOparse switches to HTTP, so the direct check is skipped.
    """
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return
    problem = _connection_problem(GEO_HOST, _GEO_FTP_PORT, timeout)
    if problem is not None:
        raise GeoDownloadError(
            f"cannot download {accession}: GEO ({GEO_HOST}) could not be reached ({problem}). "
            + _offline_hint(accession, target)
        )


def _connection_problem(host: str, port: int, timeout: float) -> str | None:
    """None if a TCP connection to host:port opens within ``timeout``, else why not.

    Name resolution (getaddrinfo) ignores socket timeouts, so the attempt runs
    in a daemon thread that is simply abandoned if it takes too long.
    """
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(None)
        except OSError as exc:
            outcome.append(_describe_network_error(exc))

    worker = threading.Thread(target=attempt, name="geo-reachability", daemon=True)
    worker.start()
    worker.join(timeout + 1.0)
    if not outcome:
        return f"no answer within {timeout:g} s"
    return outcome[0]


def _describe_network_error(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"name resolution failed: {exc.strerror or exc}"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "the connection timed out"
    return exc.strerror or str(exc) or type(exc).__name__


def _download_with_geoparse(accession: str, staging: Path, target: Path, timeout: float) -> Path:
    """Let GEOparse download into ``staging``; return the downloaded file."""
    try:
        from GEOparse.GEOparse import get_GEO_file
    except ImportError as exc:  # pragma: no cover - GEOparse is a dependency
        raise GeoDownloadError(f"cannot download {accession}: GEOparse is not installed ({exc})") from None
    try:
        with _geoparse_quiet(), _default_socket_timeout(timeout):
            downloaded, _ = get_GEO_file(accession, destdir=str(staging), how="full", silent=True)
    except Exception as exc:  # GEOparse raises bare Exception/IOError subclasses
        raise GeoDownloadError(
            f"cannot download {accession} from GEO ({_geoparse_reason(exc)}); check that the "
            "accession exists and is public. " + _offline_hint(accession, target)
        ) from None
    return Path(downloaded)


@contextmanager
def _default_socket_timeout(timeout: float):
    # GEOparse passes no timeout to ftplib/requests; both fall back to the
    # process-wide socket default, set here for the duration of the download.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


@contextmanager
def _geoparse_quiet():
    # GEOparse's "silent" only hides the progress bar: its logger still prints
    # DEBUG lines and, on FTP errors, full tracebacks to stderr. Our error says it all.
    geoparse_logger = logging.getLogger("GEOparse")
    previous = geoparse_logger.level
    geoparse_logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        geoparse_logger.setLevel(previous)


def _geoparse_reason(exc: Exception) -> str:
    """The useful part of a GEOparse error ("Download failed due to '<reason>'. ID could be ...")."""
    text = str(exc).strip() or type(exc).__name__
    wrapped = re.match(r"Download failed due to '(.*)'\. ID could be", text, re.DOTALL)
    reason = wrapped.group(1) if wrapped else text
    return reason.splitlines()[0] if reason else type(exc).__name__


def _check_complete_gzip(path: Path, accession: str, target: Path) -> None:
    """GEOparse can keep a cut-off FTP transfer silently: check the gzip stream ends properly."""
    problem = None
    if not path.is_file() or path.stat().st_size == 0:
        problem = "no data was received"
    else:
        try:
            for _ in decompressed_chunks(path):
                pass
        except GeoFormatError as exc:
            problem = f"the downloaded file is incomplete or corrupt ({exc})"
    if problem:
        raise GeoDownloadError(
            f"cannot download {accession} from GEO: {problem}. " + _offline_hint(accession, target)
        )
