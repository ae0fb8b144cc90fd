"""`serve package` builds each archive in a marked staging folder; the staging folders and temporaries
of a packager killed part-way are swept by the next one, and nothing unmarked is (issue 20)."""

from __future__ import annotations

import os
import time

from fsutil.owned import MARKER_NAME, mark_owned
from serve.package import STAGING_KIND, package


def make_old(path) -> None:
    hour_ago = time.time() - 3600
    os.utime(path, (hour_ago, hour_ago))


def test_stale_staging_is_swept_and_unmarked_folders_are_kept(digits_export, tmp_path):
    store = tmp_path / "model_store"
    stale_staging = mark_owned(store / ".digits.k1ll3d.tmp", STAGING_KIND)  # as `kill -9` left it
    (stale_staging / "digits.mar").write_bytes(b"half an archive")
    stale_file = store / ".digits.mar.x7.tmp"
    stale_file.write_bytes(b"partial")
    foreign = store / ".someone-elses.tmp"  # our naming pattern, but no marker: not ours
    foreign.mkdir()
    (foreign / "data").write_bytes(b"keep")
    for path in (stale_staging, stale_file, foreign):
        make_old(path)

    archive = package(digits_export, store, name="digits")
    assert archive == store / "digits.mar" and archive.stat().st_size > 0
    assert sorted(p.name for p in store.iterdir()) == [".someone-elses.tmp", "digits.mar"]
    assert (foreign / "data").read_bytes() == b"keep" and not (foreign / MARKER_NAME).exists()
