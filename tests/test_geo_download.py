"""fetch_series: cache hits without network, clear offline errors, no partial files in the cache."""

from __future__ import annotations

import gzip
import shutil
import socket
import time
from pathlib import Path

import pytest

from leukspark.errors import GeoDownloadError
from leukspark.geo import download
from leukspark.geo.download import ACCESSION_PATTERN, GEO_HOST, cached_series_path, fetch_series

pytest.importorskip("GEOparse")
import GEOparse.GEOparse  # noqa: E402  (after the skip: the fakes below patch it)

OFFLINE_TIMEOUT_S = 5.0


def _forbid_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(GEOparse.GEOparse, "get_GEO_file", refuse)


def _geo_is_reachable() -> bool:
    try:
        with socket.create_connection((GEO_HOST, 21), timeout=3):
            return True
    except OSError:
        return False


def _files_under(folder) -> list:
    return sorted(p for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture
def pretend_geo_is_reachable(monkeypatch):
    monkeypatch.setattr(download, "_connection_problem", lambda host, port, timeout: None)


@pytest.mark.parametrize(
    "accession", ["GSE", "gse781", "GSM11805", "GSE781 ", "GSE781\n", "GSE78a", "", "../GSE781", 781]
)
def test_malformed_accession_is_refused_without_network(monkeypatch, tmp_path, accession):
    _forbid_network(monkeypatch)
    with pytest.raises(GeoDownloadError, match="GSE"):
        fetch_series(accession, tmp_path)
    assert _files_under(tmp_path) == []


def test_accession_pattern_and_url():
    assert ACCESSION_PATTERN.match("GSE13159") and not ACCESSION_PATTERN.match("GSE13159x")
    # GEO's folder layout, as GEOparse builds it: the last three digits become "nnn".
    assert download.geo_series_url("GSE13159").endswith("/series/GSE13nnn/GSE13159/soft/GSE13159_family.soft.gz")
    assert "/series/GSEnnn/GSE781/" in download.geo_series_url("GSE781")


def test_unusable_cache_folder(tmp_path, pretend_geo_is_reachable):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(GeoDownloadError, match="cache folder"):
        fetch_series("GSE781", blocker / "cache")


def test_cached_file_is_returned_without_network(monkeypatch, tmp_path, geo_data_dir):
    target = tmp_path / "GSE781_family.soft.gz"
    shutil.copyfile(geo_data_dir / "GSE781_family.soft.gz", target)
    before = target.read_bytes()
    _forbid_network(monkeypatch)
    assert fetch_series("GSE781", tmp_path) == target
    assert target.read_bytes() == before
    assert fetch_series("GSE781", str(tmp_path)) == target  # a str cache_dir works too


def test_offline_for_real_gives_a_clear_error_and_leaves_no_file(tmp_path):
    if _geo_is_reachable():
        pytest.skip("GEO is reachable from here: the real offline path cannot be exercised")
    cache = tmp_path / "cache"
    started = time.monotonic()
    with pytest.raises(GeoDownloadError) as caught:
        fetch_series("GSE781", cache, timeout=OFFLINE_TIMEOUT_S)
    assert time.monotonic() - started < 2 * OFFLINE_TIMEOUT_S + 2
    message = str(caught.value)
    assert "GSE781" in message and "could not be reached" in message
    assert str(cached_series_path("GSE781", cache)) in message
    assert "\n" not in message and "Traceback" not in message
    assert _files_under(cache) == []


def test_real_geoparse_failure_offline_is_wrapped(tmp_path, capfd, pretend_geo_is_reachable):
    """Skip the reachability probe so that GEOparse itself meets the missing network."""
    if _geo_is_reachable():
        pytest.skip("GEO is reachable from here: GEOparse would really download")
    with pytest.raises(GeoDownloadError) as caught:
        fetch_series("GSE781", tmp_path, timeout=OFFLINE_TIMEOUT_S)
    message = str(caught.value)
    assert "GSE781" in message and str(tmp_path / "GSE781_family.soft.gz") in message
    assert _files_under(tmp_path) == []
    assert "Traceback" not in capfd.readouterr().err  # GEOparse's logger is kept quiet


def test_offline_simulated_gives_the_same_error(monkeypatch, tmp_path):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    for name in download._PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(GeoDownloadError) as caught:
        fetch_series("GSE2", tmp_path, timeout=OFFLINE_TIMEOUT_S)
    message = str(caught.value)
    assert "GSE2" in message and "could not be reached" in message and "name resolution" in message
    assert str(tmp_path / "GSE2_family.soft.gz") in message
    assert _files_under(tmp_path) == []


def test_failed_download_leaves_no_partial_file(monkeypatch, tmp_path, pretend_geo_is_reachable):
    def partial_then_fail(geo, destdir, **kwargs):
        (Path(destdir) / f"{geo}_family.soft.gz").write_bytes(b"\x1f\x8b partial")
        raise OSError("Download failed due to 'connection reset'")

    monkeypatch.setattr(GEOparse.GEOparse, "get_GEO_file", partial_then_fail)
    with pytest.raises(GeoDownloadError) as caught:
        fetch_series("GSE781", tmp_path)
    assert "GSE781" in str(caught.value) and "connection reset" in str(caught.value)
    assert _files_under(tmp_path) == []


def test_silently_truncated_download_is_rejected(monkeypatch, tmp_path, geo_data_dir, pretend_geo_is_reachable):
    """GEOparse keeps a cut-off FTP transfer without raising; the gzip check catches it."""
    data = (geo_data_dir / "GSM11805.txt.gz").read_bytes()

    def truncated(geo, destdir, **kwargs):
        path = Path(destdir) / f"{geo}_family.soft.gz"
        path.write_bytes(data[: len(data) // 2])
        return str(path), "GSE"

    monkeypatch.setattr(GEOparse.GEOparse, "get_GEO_file", truncated)
    with pytest.raises(GeoDownloadError, match="incomplete"):
        fetch_series("GSE781", tmp_path)
    assert _files_under(tmp_path) == []


def test_successful_download_lands_at_the_cache_path(monkeypatch, tmp_path, geo_data_dir, pretend_geo_is_reachable):
    source = geo_data_dir / "GSE781_family.soft.gz"
    calls = []

    def fake_download(geo, destdir, **kwargs):
        calls.append((geo, destdir, kwargs, socket.getdefaulttimeout()))
        path = Path(destdir) / f"{geo}_family.soft.gz"
        shutil.copyfile(source, path)
        return str(path), "GSE"

    monkeypatch.setattr(GEOparse.GEOparse, "get_GEO_file", fake_download)
    timeout_before = socket.getdefaulttimeout()
    cache = tmp_path / "cache"
    target = fetch_series("GSE781", cache, timeout=12.5)
    assert target == cache / "GSE781_family.soft.gz"
    assert target.read_bytes() == source.read_bytes()
    assert gzip.decompress(target.read_bytes()).startswith(b"^DATABASE")
    assert _files_under(cache) == [target]  # the staging folder is gone
    [(geo, destdir, kwargs, timeout_during)] = calls
    assert geo == "GSE781" and kwargs.get("how") == "full" and destdir.startswith(str(cache))
    assert timeout_during == 12.5 and socket.getdefaulttimeout() == timeout_before
