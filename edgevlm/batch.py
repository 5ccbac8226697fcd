"""Batch captioning that loses nothing: `edgevlm caption DIR_OR_GLOB --out results.jsonl`.

    inputs  files, directories (their image files, sorted) and glob patterns, each image once
    output  one JSON object per line, appended, flushed and fsync'ed as soon as the image is done:
              {"image": "photos/a.png", "caption": "...", "tokens": 9, ...}   or
              {"image": "photos/b.png", "error": "b.png: corrupt or truncated image (...)"}
    resume  images with a record are skipped, so no image is recorded twice; a torn last line
            (the process was killed in the middle of a write) is cut off and that image redone

Every record goes out in one write(2) of a whole line, so after Ctrl-C, SIGKILL or a crash
the file holds complete records, at most followed by one unterminated fragment that the next
`--resume` removes. An flock keeps a second process from appending to the same file.
Torch-free; the captioning itself is the caller's `caption_one(image) -> record` function.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from edgevlm.errors import EdgeVLMError

IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
_GLOB_CHARS = set("*?[")


def expand_inputs(items: Iterable) -> list[str]:
    """Paths of the images named by `items`, in order, each once.

    An existing directory gives its files with an image suffix (sorted, not recursive); a name that
    does not exist and holds *, ? or [ is a glob pattern (** recurses); anything else is taken as
    one image path (a missing file becomes that image's error later). A pattern or directory that
    gives no image is an error.
    """
    out, seen = [], set()
    for item in items:
        item = os.fspath(item)
        if os.path.isdir(item):
            try:
                names = sorted(n for n in os.listdir(item) if n.lower().endswith(IMAGE_SUFFIXES))
            except OSError as exc:
                raise EdgeVLMError(f"{shown_path(item)}: cannot list this directory ({exc.strerror})") from None
            paths = [os.path.join(item, n) for n in names if os.path.isfile(os.path.join(item, n))]
            if not paths:
                raise EdgeVLMError(f"{shown_path(item)}: no image files in this directory "
                                   f"(looked for {', '.join(IMAGE_SUFFIXES)})")
        elif not os.path.exists(item) and _GLOB_CHARS & set(item):
            paths = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not paths:
                raise EdgeVLMError(f"no files match {shown_path(item)!r}")
        else:
            paths = [item]
        for path in paths:
            key = os.path.normpath(path)
            if key not in seen:
                seen.add(key)
                out.append(path)
    return out


def shown_path(path: str) -> str:
    """A user path for a message: as given when relative, else only its last component."""
    return path if not os.path.isabs(path) else (os.path.basename(os.path.normpath(path)) or path)


def parse_records(data: bytes, name: str) -> tuple[list[dict], int]:
    """(records, bytes to keep) of a results file's content. An unterminated last line is a torn
    write and is not kept; any other line that is not a JSON record is an error."""
    keep = data.rfind(b"\n") + 1  # everything after the last newline is a torn fragment
    records = []
    for number, line in enumerate(data[:keep].split(b"\n")[:-1], start=1):
        try:
            record = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("image"), str):
            raise EdgeVLMError(f"{name} line {number} is not an edgevlm record; "
                               f"fix or delete that line, or write to a new file")
        records.append(record)
    return records, keep


class ResultsFile:
    """An append-only JSONL results file, locked for one batch run."""

    def __init__(self, path, resume: bool = False):
        self.path = Path(path)
        existed = self.path.exists()
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise EdgeVLMError(f"cannot open {self.path.name} for writing: {exc.strerror}") from None
        try:
            self._lock()
            data = self._read_all()
            if data and not resume:
                raise EdgeVLMError(f"{self.path.name} already exists; add --resume to continue it "
                                   f"or choose another --out file")
            records, keep = parse_records(data, self.path.name)
            if keep < len(data):  # a torn last line from a killed run
                os.ftruncate(self.fd, keep)
                os.fsync(self.fd)
            if not existed:
                _fsync_dir(self.path.parent)  # make the new file's directory entry durable too
        except BaseException:
            os.close(self.fd)
            raise
        self.done = {os.path.normpath(r["image"]) for r in records}

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise EdgeVLMError(f"{self.path.name} is being written by another edgevlm process") from None

    def _read_all(self) -> bytes:
        chunks, offset = [], 0
        while chunk := os.pread(self.fd, 1 << 20, offset):
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def write(self, record: dict) -> None:
        """Append one record as one line, then fsync: once this returns, the record survives a crash."""
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        view = memoryview(data)
        try:
            while view:  # a regular file takes it in one write; loop in case of a short write
                view = view[os.write(self.fd, view):]
            os.fsync(self.fd)
        except OSError as exc:  # disk full, quota, I/O error: stop the batch with one line
            raise EdgeVLMError(f"cannot write to {self.path.name}: {exc.strerror}") from None
        self.done.add(os.path.normpath(record["image"]))

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> "ResultsFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. not allowed on this platform
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass
class BatchSummary:
    total: int  # images named by the inputs
    skipped: int  # already in the results file (--resume)
    captioned: int
    failed: int


def run_batch(images: list[str], results: ResultsFile, caption_one: Callable[[str], dict],
              progress: bool = True) -> BatchSummary:
    """Caption every image not yet in `results`, writing each record as soon as it is done.

    caption_one(image) returns the record's fields; an EdgeVLMError it raises becomes an error
    record and the batch goes on. Any other exception stops the batch (it is a bug, not bad input).
    """
    todo = [image for image in images if os.path.normpath(image) not in results.done]
    summary = BatchSummary(total=len(images), skipped=len(images) - len(todo), captioned=0, failed=0)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(images), initial=summary.skipped, unit="image", dynamic_ncols=True)
    try:
        for image in todo:
            try:
                record = {"image": image, **caption_one(image)}
                summary.captioned += 1
            except EdgeVLMError as exc:
                record = {"image": image, "error": str(exc)}
                summary.failed += 1
            results.write(record)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return summary


__all__ = ["expand_inputs", "parse_records", "ResultsFile", "BatchSummary", "run_batch", "shown_path", "IMAGE_SUFFIXES"]
