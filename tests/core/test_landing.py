"""The landing folder: one folder per log and UTC day, files in name order, formats by extension."""

from datetime import date
from pathlib import Path

import pytest

from clickloop.landing import MissingPartitionError, file_format, list_log_files, partition_folder

DAY = date(2026, 10, 3)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("part-1.jsonl", ("jsonl", False)),
        ("part-1.JSONL.GZ", ("jsonl", True)),
        ("part-1.ndjson.gz", ("jsonl", True)),
        ("part-1.json", ("jsonl", False)),
        ("export.csv", ("csv", False)),
        ("export.csv.gz", ("csv", True)),
        ("export.parquet", ("parquet", False)),
    ],
)
def test_format_comes_from_the_extension(name: str, expected: tuple[str, bool]) -> None:
    assert file_format(Path(name)) == expected


@pytest.mark.parametrize("name", ["README.txt", "export.parquet.gz", "part-1.jsonl.zip", "csv"])
def test_other_files_are_not_logs(name: str) -> None:
    with pytest.raises(ValueError, match="not a log file"):
        file_format(Path(name))


def test_missing_landing_folder_names_folder_and_date(tmp_path: Path) -> None:
    with pytest.raises(MissingPartitionError, match=r"clicks.*2026-10-03.*date=2026-10-03"):
        list_log_files(tmp_path, "clicks", DAY)
    folder = partition_folder(tmp_path, "clicks", DAY)
    assert folder == tmp_path.resolve() / "clicks" / "date=2026-10-03"
    folder.mkdir(parents=True)
    (folder / "README.txt").write_text("not a log")
    (folder / "sub.jsonl").mkdir()  # a folder is never a log file
    with pytest.raises(MissingPartitionError, match="holds no"):
        list_log_files(tmp_path, "clicks", DAY)
    for name in ("part-2.csv", "part-1.jsonl.gz", "part-3.parquet"):
        (folder / name).write_bytes(b"")
    assert [p.name for p in list_log_files(tmp_path, "clicks", DAY)] == [
        "part-1.jsonl.gz",
        "part-2.csv",
        "part-3.parquet",
    ]
    with pytest.raises(ValueError, match="unknown log kind 'views'"):
        list_log_files(tmp_path, "views", DAY)  # type: ignore[arg-type]
