"""Output files of a conversion, written in a hidden staging folder and moved into place together.

Every file of one conversion (e.g. ``net.py`` and ``net.pt``) is first written under a staging
folder beside its destination, verified there, then renamed into place (``os.replace``, atomic
on one file system). A failure at any point removes the staging folder: nothing partial is left
behind and files already at the destinations are untouched. A destination folder that does not
exist is created (and removed again, with the folders created for it, when the conversion fails).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from caffe_compat.export.errors import ExportError


class StagedOutputs:
    """Context manager staging the given destination files (all in one folder).

    Args:
        destinations: the final paths; they must share a folder (created when missing) that is
            writable.
        protected: paths that must not be overwritten (the conversion's own inputs).
    """

    def __init__(self, destinations: list[Path], protected: list[Path] = ()) -> None:
        self.destinations = [Path(p) for p in destinations]
        folders = {p.parent.resolve() for p in self.destinations}
        if len(folders) != 1:
            raise ExportError(f"outputs {[str(p) for p in self.destinations]} must be in one folder")
        self.folder = folders.pop()
        guarded = {Path(p).resolve() for p in protected}
        for path in self.destinations:
            if path.resolve() in guarded:
                raise ExportError(
                    f"output {path} would overwrite an input of the conversion; choose another -o"
                )
            if path.is_dir():
                raise ExportError(f"cannot write {path}: it is a folder")
        self.missing: list[Path] = []  # folders to create, outermost first
        folder = self.folder
        while not folder.is_dir():
            if folder.exists() or folder.parent == folder:
                raise ExportError(f"cannot write {self.destinations[0]}: {folder} is not a folder")
            self.missing.insert(0, folder)
            folder = folder.parent
        self.created: list[Path] = []
        self.committed = False
        self.staging: Path | None = None

    def __enter__(self) -> StagedOutputs:
        for folder in self.missing:
            try:
                folder.mkdir()
            except OSError as exc:
                self._remove_created()
                raise ExportError(
                    f"cannot write {self.destinations[0]}: cannot create folder {folder} ({exc.strerror})"
                ) from None
            self.created.append(folder)
        try:
            self.staging = Path(tempfile.mkdtemp(prefix=".caffe-compat-convert-", dir=self.folder))
        except OSError as exc:
            self._remove_created()
            raise ExportError(
                f"cannot write {self.destinations[0]}: folder {self.folder} is not writable ({exc.strerror})"
            ) from None
        return self

    def _remove_created(self) -> None:
        """Remove the folders this conversion created (innermost first; only while empty)."""
        for folder in reversed(self.created):
            try:
                folder.rmdir()
            except OSError:
                break
        self.created = []

    def path(self, destination: Path) -> Path:
        """Where to write ``destination`` while staged (same file name, in the staging folder)."""
        if self.staging is None:
            raise RuntimeError("StagedOutputs used outside its with-block")
        return self.staging / Path(destination).name

    def commit(self) -> None:
        """Move every staged file to its destination."""
        for destination in self.destinations:
            staged = self.path(destination)
            if not staged.is_file():
                raise ExportError(f"internal error: {destination.name} was not written")
        for destination in self.destinations:
            try:
                os.replace(self.path(destination), destination)
            except OSError as exc:
                raise ExportError(f"cannot write {destination}: {exc.strerror}") from None
        self.committed = True

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        if not self.committed:
            self._remove_created()


def write_failure(path: Path, exc: OSError) -> ExportError:
    """An ExportError for an OSError raised while writing ``path`` (e.g. a full disk)."""
    return ExportError(f"cannot write {path}: {exc.strerror or exc}")
