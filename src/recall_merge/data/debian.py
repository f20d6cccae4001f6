"""Data files from Debian packages, fetched without installing anything: ``apt-get download`` puts
the pinned ``.deb`` into the cache, ``dpkg-deb -x`` unpacks it into a folder beside it (no root,
no maintainer scripts run). A ``.deb`` already in that folder under apt's file name is used as
it is, which is the way on a machine without apt: fetch the file from any Debian mirror.

    python -m recall_merge.data.fetch_debian    # fetch and unpack every package below (setup.sh)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from recall_merge.data.task import DataError
from recall_merge.io.cache import cache_dir, file_lock

PACKAGES = {"wordnet-base": "1:3.0-37", "fortunes": "1:1.99.1-7.3"}  # Debian 12 (bookworm)
COMPLETE = ".unpacked"


def debian_dir() -> Path:
    """Where the ``.deb`` files and their unpacked trees live."""
    return cache_dir() / "debian"


def deb_name(package: str, version: str) -> str:
    """apt's file name for an architecture-independent package (``:`` written ``%3a``)."""
    return f"{package}_{version.replace(':', '%3a')}_all.deb"


def unpacked_dir(package: str) -> Path:
    return debian_dir() / deb_name(package, PACKAGES[package]).removesuffix(".deb")


def _fix(package: str) -> str:
    version = PACKAGES[package]
    return (f"on Debian or Ubuntu run 'apt-get update' (as root) once, then load the task again; "
            f"elsewhere, download {deb_name(package, version)} ({package} {version}) from a "
            f"Debian mirror into {debian_dir()}")


def _download(package: str, deb: Path) -> None:
    if shutil.which("apt-get") is None:
        raise DataError(f"the {package} tasks need Debian's apt-get, which this machine lacks",
                        _fix(package))
    command = ["apt-get", "download", f"{package}={PACKAGES[package]}"]
    result = subprocess.run(command, cwd=deb.parent, capture_output=True, text=True)
    if result.returncode != 0 or not deb.is_file():
        detail = " ".join((result.stderr or result.stdout or "").split())[-300:]
        raise DataError(f"apt-get could not download {package}={PACKAGES[package]}: {detail}",
                        _fix(package))


def _check_and_unpack(package: str, deb: Path, target: Path) -> None:
    from recall_merge.io.atomic import remove_marked_folder, replace_folder, temporary_folder_for

    if shutil.which("dpkg-deb") is None:
        raise DataError(f"unpacking {deb.name} needs dpkg-deb, which this machine lacks",
                        "install dpkg (it ships with every Debian and Ubuntu system)")
    fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version"],
                            capture_output=True, text=True)
    expected = f"Package: {package}\nVersion: {PACKAGES[package]}"
    if fields.returncode != 0 or fields.stdout.strip() != expected:
        raise DataError(f"{deb.name} is not {package} {PACKAGES[package]}",
                        f"delete it and load the task again; {_fix(package)}")
    temporary = temporary_folder_for(target)
    try:
        unpacked = subprocess.run(["dpkg-deb", "-x", str(deb), str(temporary)],
                                  capture_output=True, text=True)
        if unpacked.returncode != 0:
            raise DataError(f"dpkg-deb could not unpack {deb.name}: "
                            f"{' '.join(unpacked.stderr.split())[-300:]}",
                            f"delete it and load the task again; {_fix(package)}")
        (temporary / COMPLETE).write_text(f"{package} {PACKAGES[package]}\n")
        replace_folder(temporary, target)
    finally:
        remove_marked_folder(temporary)


def package_root(package: str, download: bool = True) -> Path:
    """The unpacked tree of ``package`` (its files under ``usr/share/...``), fetched and unpacked
    on first use unless ``download`` is False."""
    target = unpacked_dir(package)
    if (target / COMPLETE).is_file():
        return target
    deb = debian_dir() / deb_name(package, PACKAGES[package])
    if not download and not deb.is_file():
        raise DataError(f"{package} {PACKAGES[package]} is not in the cache ({debian_dir()})",
                        f"run: {sys.executable} -m recall_merge.data.fetch_debian")
    debian_dir().mkdir(parents=True, exist_ok=True)
    with file_lock(debian_dir() / f"{package}.lock"):
        if not (target / COMPLETE).is_file():
            if not deb.is_file():
                _download(package, deb)
            _check_and_unpack(package, deb, target)
    return target


def main() -> int:
    """Fetch every package; report each failure and go on (exit 1 if any failed)."""
    failed = 0
    for package in PACKAGES:
        try:
            print(f"{package}: {package_root(package)}")
        except DataError as error:
            failed += 1
            print(f"{package}: {error}", file=sys.stderr)
    return 1 if failed else 0
