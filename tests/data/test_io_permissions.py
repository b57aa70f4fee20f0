"""Files and folders the library writes get the permissions a plain ``open``/``mkdir`` would."""

from __future__ import annotations

import os
import stat
import tempfile

from unipercept.data.io import default_permissions


def test_folder_keeps_its_search_bits_and_files_get_no_exec_bits(tmp_path) -> None:
    umask = os.umask(0o022)
    try:
        folder = tempfile.mkdtemp(dir=tmp_path)  # created 0o700
        default_permissions(folder)
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o755
        handle, file = tempfile.mkstemp(dir=tmp_path)  # created 0o600
        os.close(handle)
        default_permissions(file)
        assert stat.S_IMODE(os.stat(file).st_mode) == 0o644
    finally:
        os.umask(umask)
