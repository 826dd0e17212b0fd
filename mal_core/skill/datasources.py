"""Data-source values: local files/folders, local ``*.tar.gz`` archives, ``s3://bucket/key`` objects or
``s3://bucket/prefix/`` folders.

Remote objects and archives are fetched once into a cache keyed by URI + ETag (a local archive: the SHA-256 of its
bytes, read in full on every run, so an archive replaced by another of the same size and time is never served from
the cache; an S3 folder: a digest of every key, size and ETag under the prefix), and archives are extracted safely:
absolute names, ``..``, links and device files are rejected. An S3 value that is not an object but has objects
under ``value/`` is read as a folder.

An archive is extracted into a temporary folder that is renamed into the cache only after the whole stream read
back without error (compression checksum included, and the tar end-of-archive marker where the headers stop); a
corrupt or truncated archive leaves no cache entry. Archive bombs are refused while extracting, before a member
is written, by limits overridable through the environment (see :data:`ARCHIVE_LIMIT_DEFAULTS`).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import lzma
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mal_core.config.skill_info import SkillInfo
from mal_core.errors import DataError, MalError
from mal_core.utils.io import atomic_write_text
from mal_core.utils.safe_paths import DISK_FULL_ERRNOS, disk_full_error

log = logging.getLogger(__name__)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")

#: Archive-bomb guard: environment variable -> default. ``MAL_ARCHIVE_MAX_RATIO``: bytes extracted per archive byte
#: (image archives are near 1:1; an archive may always expand to :data:`RATIO_ALLOWANCE_BYTES`);
#: ``MAL_ARCHIVE_MAX_MEMBERS``: files and folders; ``MAL_ARCHIVE_MAX_BYTES``: total bytes extracted.
ARCHIVE_LIMIT_DEFAULTS: dict[str, float] = {
    "MAL_ARCHIVE_MAX_RATIO": 100.0,
    "MAL_ARCHIVE_MAX_MEMBERS": 1_000_000,
    "MAL_ARCHIVE_MAX_BYTES": float(1 << 40),
}
RATIO_ALLOWANCE_BYTES = 64 << 20
#: Errors of the decompressors and tarfile when a stream is corrupt or cut short.
_STREAM_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)


class DataSourceError(MalError):
    """A data source is missing, unreachable or unsafe."""

    code = "invalid_data_source"


@dataclass(frozen=True)
class Resolved:
    """Where a data-source value ends up locally and how it got there."""

    key: str
    uri: str
    local_path: str
    kind: str
    cached: bool = False
    etag: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def default_cache_dir(jobs_root: Path) -> Path:
    """``$MAL_CACHE_DIR``, else ``<jobs_root>/.cache/datasources``; :class:`DataSourceError` (exit 2) naming
    ``MAL_CACHE_DIR`` when it (or the nearest existing folder above it) is a file rather than a folder."""
    env = os.environ.get("MAL_CACHE_DIR")
    if not env:  # under the jobs root, whose own checks name --jobs-root
        return jobs_root / ".cache" / "datasources"
    path = Path(env)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "" if existing == path else f" ({existing} above it)"
        raise DataSourceError(f"MAL_CACHE_DIR {str(path)!r}{where} is an existing file, expected a folder "
                              "(downloaded and extracted data sources are cached there)", field="MAL_CACHE_DIR",
                              hint="point MAL_CACHE_DIR at a folder, or move the file away")
    return path


#: Bytes read at a time when hashing a local archive.
HASH_CHUNK_BYTES = 1 << 20


def content_digest(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes, streamed in :data:`HASH_CHUNK_BYTES` chunks (memory stays constant)."""
    digest = hashlib.sha256()
    buf = bytearray(HASH_CHUNK_BYTES)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def is_archive(name: str) -> bool:
    """Whether ``name`` looks like a tar archive."""
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _cache_key(uri: str, version: str) -> str:
    return hashlib.sha256(f"{uri}\n{version}".encode()).hexdigest()[:24]


def _check_member(member: tarfile.TarInfo, archive: str) -> None:
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise DataSourceError(f"unsafe path {name!r} in archive {archive}", field="archive",
                              hint="archives must hold relative paths without '..'")
    if member.issym() or member.islnk():
        raise DataSourceError(f"archive {archive} holds a link {name!r}; links are not allowed", field="archive")
    if not (member.isfile() or member.isdir()):
        raise DataSourceError(f"archive {archive} holds a device/special file {name!r}", field="archive")


def archive_limits() -> dict[str, float]:
    """The archive-bomb limits: :data:`ARCHIVE_LIMIT_DEFAULTS` overridden by the environment."""
    out = {}
    for name, default in ARCHIVE_LIMIT_DEFAULTS.items():
        raw = os.environ.get(name, "").strip()
        try:
            value = float(raw) if raw else default
        except ValueError:
            value = -1.0
        if not value > 0:
            raise DataSourceError(f"environment variable {name}={raw!r} must be a positive number", field=name)
        out[name] = value
    return out


def _guarded_members(tar: tarfile.TarFile, label: str, archive_size: int,
                     free_bytes: int) -> Iterator[tarfile.TarInfo]:
    """The archive's members, read one header at a time, each checked (safety, limits) before it is extracted."""
    limits = archive_limits()
    max_ratio, max_members, max_bytes = (limits[k] for k in ARCHIVE_LIMIT_DEFAULTS)
    budget = max(max_ratio * archive_size, RATIO_ALLOWANCE_BYTES)
    count = total = 0
    for member in tar:
        _check_member(member, label)
        count += 1
        total += max(member.size, 0)
        if count > max_members:
            raise DataSourceError(f"archive {label} holds more than {int(max_members)} members "
                                  "(MAL_ARCHIVE_MAX_MEMBERS); refused", field="archive",
                                  hint="raise MAL_ARCHIVE_MAX_MEMBERS if the archive is trusted")
        if total > max_bytes:
            raise DataSourceError(f"archive {label} expands to more than {int(max_bytes)} bytes "
                                  "(MAL_ARCHIVE_MAX_BYTES); refused", field="archive",
                                  hint="raise MAL_ARCHIVE_MAX_BYTES if the archive is trusted")
        if total > budget:
            raise DataSourceError(f"archive {label} expands to more than {total} bytes from {archive_size} "
                                  f"compressed bytes (over {max_ratio:g}:1, MAL_ARCHIVE_MAX_RATIO); refused as a "
                                  "possible archive bomb", field="archive",
                                  hint="raise MAL_ARCHIVE_MAX_RATIO if the archive is trusted")
        if total > free_bytes:
            raise DataSourceError(f"archive {label} needs more than {total} bytes but the data cache has "
                                  f"{free_bytes} free", field="archive",
                                  hint="free disk space or point MAL_CACHE_DIR at a larger disk")
        yield member


def _read_to_end(tar: tarfile.TarFile, label: str) -> None:
    """Where the headers stopped there must be an end-of-archive block (a header that failed its checksum
    also stops tarfile); then the rest of the stream is read so the compression checksum is verified."""
    fileobj = tar.fileobj
    fileobj.seek(tar.offset)
    block = fileobj.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE or block.count(0) != tarfile.BLOCKSIZE:
        what = "ends without an end-of-archive marker" if not block else "has an unreadable header"
        raise tarfile.ReadError(f"the archive {what} at byte {tar.offset} of its tar stream")
    while fileobj.read(1 << 20):
        pass


def _stream_error(exc: BaseException) -> bool:
    return isinstance(exc, _STREAM_ERRORS) or (isinstance(exc, OSError) and exc.errno is None)


def safe_extract(archive: Path, dest: Path, label: str | None = None) -> Path:
    """Extract ``archive`` into ``dest``, checking every member as it is read; returns the image root folder.

    Members go to a temporary folder beside ``dest``, renamed to ``dest`` only when the whole archive read back
    without error; on any error the temporary folder is removed and ``dest`` is left as it was. The root is
    ``dest`` itself, or its only entry when the archive holds a single top-level folder.
    """
    label = label or str(archive)
    archive_size = max(archive.stat().st_size, 1)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
    try:
        try:
            tar = tarfile.open(archive, "r:*")
        except (*_STREAM_ERRORS, OSError) as exc:
            raise DataSourceError(f"{label} is not a readable tar archive: {exc}", field="archive") from exc
        with tar:
            tar.errorlevel = 2
            free = shutil.disk_usage(dest.parent).free
            try:
                tar.extractall(tmp, members=_guarded_members(tar, label, archive_size, free), filter="data")
                _read_to_end(tar, label)
            except Exception as exc:
                if not _stream_error(exc):
                    raise
                raise DataSourceError(f"{label} is corrupt or truncated ({type(exc).__name__}: {exc}); nothing "
                                      "was extracted", field="archive",
                                      hint="re-create or re-upload the archive") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    entries = [p for p in dest.iterdir() if not p.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else dest


def _s3_client() -> Any:
    import boto3  # lazy

    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)


def split_s3(uri: str, *, folder: bool = False) -> tuple[str, str]:
    """(bucket, key) of ``s3://bucket/key``; with ``folder`` the key is a prefix ending in ``/`` (or empty)."""
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if folder:
        if not bucket:
            raise DataSourceError(f"{uri!r} must name a bucket: s3://bucket/prefix/", field="s3")
        return bucket, key if not key or key.endswith("/") else key + "/"
    if not bucket or not key or key.endswith("/"):
        raise DataSourceError(f"{uri!r} must name one object: s3://bucket/path/file", field="s3")
    return bucket, key


def _s3_error(exc: Exception, uri: str, key: str) -> DataSourceError:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
    if str(code) in ("NoSuchKey", "404", "NotFound"):
        return DataSourceError(f"{key}: {uri} does not exist (NoSuchKey)", field=key,
                               hint="check the bucket/key; the data-source table in skill.md lists the file names")
    if str(code) in ("NoSuchBucket",):
        return DataSourceError(f"{key}: bucket of {uri} does not exist (NoSuchBucket)", field=key)
    if str(code) in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return DataSourceError(f"{key}: access to {uri} denied ({code})", field=key,
                               hint="check AWS credentials (default chain) and AWS_ENDPOINT_URL")
    return DataSourceError(f"{key}: cannot read {uri}: {exc}", field=key)


def s3_head(uri: str, key: str) -> str:
    """The object's ETag; a clear error when it is missing or unreachable."""
    from botocore.exceptions import BotoCoreError, ClientError  # lazy

    bucket, obj = split_s3(uri)
    try:
        head = _s3_client().head_object(Bucket=bucket, Key=obj)
    except (ClientError, BotoCoreError) as exc:
        raise _s3_error(exc, uri, key) from exc
    return str(head.get("ETag", "")).strip('"')


def _fetch_s3(uri: str, key: str, cache: Path, etag: str) -> tuple[Path, bool]:
    """Download the object (ETag ``etag``, from :func:`s3_head`) into the cache; returns (file, cache hit)."""
    from botocore.exceptions import BotoCoreError, ClientError  # lazy

    bucket, obj = split_s3(uri)
    check_s3_key(uri, key)
    entry = cache / _cache_key(uri, etag)
    target = entry / obj.rsplit("/", 1)[-1]
    if target.is_file():
        return target, True
    entry.mkdir(parents=True, exist_ok=True)
    tmp = entry / f".{target.name}.part"
    try:
        _s3_client().download_file(bucket, obj, str(tmp))
        os.replace(tmp, target)
    except (ClientError, BotoCoreError) as exc:
        raise _s3_error(exc, uri, key) from exc
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise disk_full_error(target, exc) from exc
        raise DataSourceError(f"{key}: cannot store {uri} as {target}: {exc.strerror}", field=key) from exc
    finally:
        tmp.unlink(missing_ok=True)  # a failed or cut-short download leaves no .part
    return target, False


def check_s3_key(uri: str, key: str) -> None:
    """An S3 value whose key has a ``.`` or ``..`` part (``s3://b/data/..``) is a :class:`DataSourceError` naming
    it: the key's last part becomes a local file name, and these name folders."""
    rest = uri[len("s3://"):].partition("/")[2]
    bad = [p for p in rest.split("/") if p in (".", "..")]
    if bad:
        raise DataSourceError(f"{key}: S3 key {rest!r} of {uri} has a {bad[0]!r} part; an object or folder key "
                              "must be a path of plain names (no '.' or '..' parts)", field=key,
                              hint="give the object's or folder's own key, e.g. s3://bucket/data/annotations.json")


def s3_list(uri: str, key: str) -> list[dict[str, Any]]:
    """Every object under the folder ``uri`` as ``{Key, Size, ETag}`` (paginated); [] when there is none."""
    from botocore.exceptions import BotoCoreError, ClientError  # lazy

    bucket, prefix = split_s3(uri, folder=True)
    objects: list[dict[str, Any]] = []
    try:
        for page in _s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            objects += [{"Key": o["Key"], "Size": int(o.get("Size", 0)), "ETag": str(o.get("ETag", "")).strip('"')}
                        for o in page.get("Contents", []) if not o["Key"].endswith("/")]
    except (ClientError, BotoCoreError) as exc:
        raise _s3_error(exc, uri, key) from exc
    return objects


def _relative(obj_key: str, prefix: str, uri: str, key: str) -> PurePosixPath:
    rel = PurePosixPath(obj_key[len(prefix):])
    if not rel.parts or rel.is_absolute() or ".." in rel.parts or obj_key.startswith("/"):
        raise DataSourceError(f"{key}: unsafe object name {obj_key!r} under {uri}", field=key,
                              hint="object names under an S3 folder must be relative paths without '..'")
    return rel


def _folder_version(objects: list[dict[str, Any]]) -> str:
    listing = "\n".join(f"{o['Key']}\t{o['Size']}\t{o['ETag']}" for o in sorted(objects, key=lambda o: o["Key"]))
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def _folder_entry(uri: str, objects: list[dict[str, Any]], cache: Path) -> tuple[Path, str]:
    """(cache entry folder, listing version) of an S3 folder; the files go to ``<entry>/folder``."""
    version = _folder_version(objects)
    return cache / _cache_key(uri, version), version


def _fetch_s3_folder(uri: str, key: str, cache: Path, objects: list[dict[str, Any]]) -> tuple[Path, str, bool]:
    """Download every object under the prefix into the cache (all or nothing); returns (folder, version, hit)."""
    from botocore.exceptions import BotoCoreError, ClientError  # lazy

    bucket, prefix = split_s3(uri, folder=True)
    entry, version = _folder_entry(uri, objects, cache)
    dest, marker = entry / "folder", entry / "folder.ok"
    if marker.is_file() and dest.is_dir():
        return dest, version, True
    entry.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".folder-", dir=entry))
    client = _s3_client()
    try:
        for obj in objects:
            target = tmp / _relative(obj["Key"], prefix, uri, key)
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(target))
    except (ClientError, BotoCoreError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _s3_error(exc, uri, key) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    marker.write_text(str(len(objects)))
    return dest, version, False


def _s3_probe(value: str, key: str) -> tuple[list[dict[str, Any]] | None, str | None]:
    """``(listing, None)`` when ``value`` is a folder (ends in ``/``, names only a bucket, or is no object but has
    objects under it), else ``(None, etag)`` of the object; one HEAD request for an object."""
    check_s3_key(value, key)
    if value.endswith("/") or value.count("/") == 2:
        objects = s3_list(value, key)
        if not objects:
            raise DataSourceError(f"{key}: no objects under {value}", field=key,
                                  hint="check the bucket/prefix; an S3 folder must hold the files themselves")
        return objects, None
    try:
        return None, s3_head(value, key)
    except DataSourceError as exc:
        if "NoSuchKey" not in exc.message:
            raise
        objects = s3_list(value, key)
        if not objects:
            raise
        return objects, None


def _extract_cached(archive: Path, uri: str, version: str, cache: Path, key: str) -> tuple[Path, bool]:
    dest = cache / _cache_key(uri, version) / "extracted"
    marker = dest.parent / "extracted.ok"
    if marker.is_file() and dest.is_dir():
        root = marker.read_text().strip()
        return Path(root), True
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        root = safe_extract(archive, dest, label=uri)
    except DataSourceError as exc:
        shutil.rmtree(dest.parent, ignore_errors=True)  # no cache entry (nor a bad download) is left behind
        raise DataSourceError(f"{key}: {exc.message}", field=key, hint=exc.hint) from exc
    atomic_write_text(marker, str(root))
    return root, False


def resolve_value(key: str, value: str, cache: Path, *, dry_run: bool = False) -> Resolved:
    """Turn one data-source value into a local path (downloading / extracting into ``cache`` as needed)."""
    if value.startswith("s3://"):
        folder, etag = _s3_probe(value, key)
        if folder is not None:
            if dry_run:
                entry, version = _folder_entry(value, folder, cache)
                return Resolved(key, value, str(entry / "folder"), "s3_folder", etag=version)
            path, version, hit = _fetch_s3_folder(value, key, cache, folder)
            return Resolved(key, value, str(path), "s3_folder", cached=hit, etag=version)
        if dry_run:
            return Resolved(key, value, str(cache / _cache_key(value, etag)), "s3", etag=etag)
        path, hit = _fetch_s3(value, key, cache, etag)
        if is_archive(path.name):
            root, hit2 = _extract_cached(path, value, etag, cache, key)
            return Resolved(key, value, str(root), "s3_archive", cached=hit and hit2, etag=etag)
        return Resolved(key, value, str(path), "s3", cached=hit, etag=etag)
    if "://" in value:
        raise DataSourceError(f"{key}: unsupported URI scheme in {value!r}; use a local path or s3://",
                              field=key)
    path = Path(value).expanduser()
    if not path.exists():
        raise DataSourceError(f"{key}: {value} does not exist", field=key)
    if path.is_file() and is_archive(path.name):
        try:  # keyed on content: same size and time (tar pads, cp -p / rsync -t keep times) are not the same data
            version = f"sha256:{content_digest(path)}"
        except OSError as exc:
            raise DataSourceError(f"{key}: cannot read {value}: {exc.strerror}", field=key) from exc
        uri = str(path.resolve())
        if dry_run:
            return Resolved(key, value, str(cache / _cache_key(uri, version)), "local_archive")
        root, hit = _extract_cached(path, uri, version, cache, key)
        return Resolved(key, value, str(root), "local_archive", cached=hit)
    return Resolved(key, value, str(path.resolve()), "local")


def resolve_data_sources(info: SkillInfo, action: str, values: dict[str, Any], cache: Path, *,
                         dry_run: bool = False) -> list[Resolved]:
    """Check and resolve every data-source key of ``action``; a missing mandatory key is an error naming it."""
    out = []
    for key, src in info.data_sources.get(action, {}).items():
        value = values.get(key)
        if value in (None, ""):
            if src.optional:
                continue
            raise DataSourceError(
                f"missing data source {key} ({src.source}: {src.path}) for {action}", field=key,
                hint=f'add it, e.g. --spec-overrides \'{{"{key}": "s3://bucket/data/{src.path}"}}\'')
        if not isinstance(value, str):
            raise DataError(f"{key} must be a path or s3:// URI, got {value!r}", field=key)
        out.append(resolve_value(key, value, cache, dry_run=dry_run))
    return out
