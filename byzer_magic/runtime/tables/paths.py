"""Where a load's files are: local paths, ``file://``, and any filesystem pyarrow (or fsspec) reaches.

``resolve(path)`` returns the filesystem and the files ``path`` names with their sizes: a file, a
folder (every file below it), or a glob (``*``, ``?``, ``[...]``, and ``**`` for any depth). Names
starting with ``.`` are skipped, as Spark and glob do; ``skip_underscore`` also skips ``_``-names inside
folders (the ``_SUCCESS`` markers Spark and Hadoop write beside their data).

``s3://`` uses pyarrow's S3 filesystem: the endpoint comes from ``AWS_ENDPOINT_URL`` (or the URI's
``?endpoint_override=host:port&scheme=http``), the credentials from the notebook's ``AWS_ACCESS_KEY_ID``
/ ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` when set (they travel with the load to the Ray
workers), else from each node's own AWS configuration.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass

import pyarrow.fs as pafs

from byzer_magic.errors import ByzerError

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_MAGIC = re.compile(r"[*?[]")


@dataclass(frozen=True)
class Files:
    """The files of a load: ``paths`` as the filesystem names them, ``sizes`` in bytes."""
    filesystem: pafs.FileSystem
    paths: list[str]
    sizes: list[int]
    prefix: str  # ``s3://`` etc., prepended to a path to show it; '' for local files

    def shown(self, path: str) -> str:
        return self.prefix + path


def resolve(path: str, *, skip_underscore: bool = False) -> Files:
    """The filesystem and files that ``path`` names (see the module's docstring)."""
    text = path.strip()
    if not text:
        raise ByzerError("the path is empty")
    scheme = _SCHEME.match(text)
    if scheme is None or scheme.group(1).lower() == "file":
        return _local(path, re.sub(r"^file://", "", text), skip_underscore)
    fs, root = _filesystem(text, scheme.group(1).lower())
    prefix = scheme.group(0)
    infos = _remote_matches(fs, root, skip_underscore)
    if not infos:
        if _MAGIC.search(root):
            raise ByzerError(f"no files match {path}")
        raise ByzerError(f"no files to load: {path} does not exist or holds no files")
    return Files(fs, [i.path for i in infos], [i.size for i in infos], prefix)


def expand_paths(path: str) -> list[str]:
    """The local files ``path`` names (absolute paths), as ``resolve`` finds them."""
    files = resolve(path)
    return [files.shown(p) for p in files.paths]


# ----------------------------------------------------------------------------------------- local
def _local(path: str, local: str, skip_underscore: bool) -> Files:
    local = os.path.expanduser(local)
    matches = sorted(glob.glob(local, recursive=True)) if glob.has_magic(local) else [local]
    found: list[str] = []
    for match in matches:
        if os.path.isdir(match):
            for root, dirs, names in os.walk(match):
                dirs[:] = sorted(d for d in dirs if not _hidden(d, skip_underscore))
                found.extend(os.path.join(root, n) for n in sorted(names) if not _hidden(n, skip_underscore))
        elif os.path.isfile(match):
            found.append(match)
    if not found:
        if glob.has_magic(local):
            raise ByzerError(f"no files match {path}")
        reason = "holds no files" if os.path.isdir(local) else "does not exist"
        raise ByzerError(f"no files to load: {path} {reason}")
    files = [os.path.abspath(f) for f in dict.fromkeys(found)]
    return Files(pafs.LocalFileSystem(), files, [os.path.getsize(f) for f in files], "")


def _hidden(name: str, skip_underscore: bool) -> bool:
    return name.startswith(".") or (skip_underscore and name.startswith("_"))


# ---------------------------------------------------------------------------------------- remote
def _filesystem(uri: str, scheme: str) -> tuple[pafs.FileSystem, str]:
    try:
        fs, root = pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as exc:
        if "Unrecognized filesystem type" not in str(exc):
            raise ByzerError(f"cannot open {uri}: {_first_line(exc)}") from None
        return _fsspec(uri, scheme)
    if scheme in ("s3", "s3a", "s3n"):
        fs = _s3_with_credentials(fs)
    return fs, root


def _fsspec(uri: str, scheme: str) -> tuple[pafs.FileSystem, str]:
    """A scheme pyarrow lacks (``memory://``, ``oss://``, ...) through fsspec, when it knows it."""
    try:
        import fsspec  # noqa: PLC0415

        fs, root = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise ByzerError(f'cannot open {uri}: no filesystem for "{scheme}://" '
                         f"(pyarrow knows s3://, gs://, hdfs://, abfs://; fsspec: {_first_line(exc)})") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), root


def _s3_with_credentials(fs: pafs.FileSystem) -> pafs.FileSystem:
    """The same S3 filesystem with the notebook's AWS_* credentials written into it, if it has any."""
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not (key and secret):
        return fs
    _, (options,) = fs.__reduce__()
    options = {k: v for k, v in options.items() if k in (
        "region", "scheme", "endpoint_override", "connect_timeout", "request_timeout",
        "force_virtual_addressing")}
    options.update(access_key=key, secret_key=secret, session_token=os.environ.get("AWS_SESSION_TOKEN"))
    return pafs.S3FileSystem(**{k: v for k, v in options.items() if v not in (None, "", -1.0)})


def _remote_matches(fs: pafs.FileSystem, root: str, skip_underscore: bool) -> list[pafs.FileInfo]:
    magic = _MAGIC.search(root)
    if magic is None:
        info = _info(fs, root)
        if info.type == pafs.FileType.File:
            return [info]
        if info.type != pafs.FileType.Directory:
            return []
        return _listing(fs, root, recursive=True, skip_underscore=skip_underscore)
    base = root[:root.rfind("/", 0, magic.start()) + 1].rstrip("/")
    pattern = _glob_regex(root)
    recursive = "**" in root or "/" in root[len(base) + 1:]
    found = []
    for info in _listing(fs, base, recursive=recursive, skip_underscore=False):
        if not pattern.fullmatch(info.path):
            continue
        found.append(info)
    return sorted(found, key=lambda i: i.path)


def _info(fs: pafs.FileSystem, path: str) -> pafs.FileInfo:
    try:
        return fs.get_file_info(path)
    except OSError as exc:
        raise ByzerError(f"cannot read {path}: {_first_line(exc)}") from None


def _listing(fs: pafs.FileSystem, base: str, *, recursive: bool, skip_underscore: bool) -> list[pafs.FileInfo]:
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True, recursive=recursive))
    except OSError as exc:
        raise ByzerError(f"cannot list {base}: {_first_line(exc)}") from None
    relative = len(base.rstrip("/")) + 1
    return sorted((i for i in infos if i.type == pafs.FileType.File and not any(
        _hidden(part, skip_underscore) for part in i.path[relative:].split("/"))), key=lambda i: i.path)


def _glob_regex(pattern: str) -> re.Pattern:
    """A glob as a regex over whole paths: ``*``/``?`` stay within a folder, ``**`` spans folders."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
