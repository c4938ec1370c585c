import os

import pytest

from ppihd.utils.fileio import atomic_path, tmp_name


def test_atomic_path_replaces_on_success(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with atomic_path(str(target)) as tmp:
        assert tmp == tmp_name(str(target)) == f"{target}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write("new")
        assert target.read_text() == "old"          # not visible before the block ends
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_atomic_path_keeps_old_file_and_removes_tmp_on_error(tmp_path):
    target = tmp_path / "b.png"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="^writer died$"):   # the writer's own error, unchanged
        with atomic_path(str(target), ".png") as tmp:
            assert tmp.endswith(".png")
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("writer died")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["b.png"]
