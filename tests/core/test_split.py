"""The time split (by partition position, never at random), negative downsampling of the training
days, and the sets and manifest written for the model, the evaluation and the gate."""

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from clickloop.split import (
    SPLIT_COLUMN,
    TEST,
    TEST_SET,
    TRAIN,
    TRAINING_SET,
    VALIDATION,
    SplitManifest,
    SplitParams,
    TimeSplit,
    build_sets,
    build_test_set,
    build_training_set,
    choose_split,
    keep_row_sql,
    read_split_manifest,
    set_path,
    split_manifest_path,
    split_markdown,
)
from clickloop.storage import Warehouse
from tests.core.synthetic import KEYS, features_schema, write_features_days

DAYS = KEYS[:8]


@pytest.fixture(scope="module")
def five_days(tmp_path_factory: pytest.TempPathFactory) -> Warehouse:
    """features of the first five days, 3000 synthetic rows each."""
    warehouse = Warehouse(tmp_path_factory.mktemp("split") / "data")
    write_features_days(warehouse, KEYS[:5])
    return warehouse


# --- The split ------------------------------------------------------------------------------------


def test_split_takes_the_latest_day_as_test_and_the_window_before_it() -> None:
    split = choose_split(DAYS, DAYS[:6], train_days=3)
    assert split == TimeSplit(train=tuple(DAYS[1:4]), validation=DAYS[4], test=DAYS[5])
    assert max(split.train) < split.validation < split.test
    assert len(set(split.keys)) == 5 and split.keys == [*DAYS[1:4], DAYS[4], DAYS[5]]
    assert TimeSplit.from_dict(split.to_dict()) == split


def test_split_respects_the_configured_test_day_and_window() -> None:
    split = choose_split(DAYS, DAYS, train_days=2, test_day=DAYS[4])
    assert split == TimeSplit(train=(DAYS[1], DAYS[2]), validation=DAYS[3], test=DAYS[4])
    one = choose_split(DAYS, DAYS, train_days=1, test_day=DAYS[2])
    assert one.train == (DAYS[0],)


def test_split_refuses_gaps_short_histories_and_unknown_days() -> None:
    with pytest.raises(ValueError, match="missing"):
        choose_split(DAYS, [k for k in DAYS[:6] if k != DAYS[2]], train_days=3)
    with pytest.raises(ValueError, match="training day"):
        choose_split(DAYS, DAYS, train_days=3, test_day=DAYS[3])
    with pytest.raises(ValueError, match="not a partition key"):
        choose_split(DAYS, DAYS, train_days=1, test_day="1999-01-01")
    with pytest.raises(ValueError, match="no features partition"):
        choose_split(DAYS, [], train_days=1)
    with pytest.raises(ValueError, match="train_days must be >= 1"):
        choose_split(DAYS, DAYS, train_days=0)
    with pytest.raises(ValueError, match="increasing"):
        TimeSplit(train=(DAYS[2],), validation=DAYS[1], test=DAYS[3])
    with pytest.raises(ValueError, match="increasing"):
        TimeSplit(train=(DAYS[1],), validation=DAYS[1], test=DAYS[3])


def test_split_params_are_validated() -> None:
    with pytest.raises(ValueError, match="train_days"):
        SplitParams(train_days=0)
    for rate in (0.0, 1.5):
        with pytest.raises(ValueError, match="negative_downsampling_rate"):
            SplitParams(negative_downsampling_rate=rate)
    with pytest.raises(ValueError, match="downsampling rate"):
        keep_row_sql(0.0, 7)


# --- Downsampling ---------------------------------------------------------------------------------


def test_downsampled_sets_keep_clicks_and_a_share_of_negatives(five_days: Warehouse, tmp_path: Path) -> None:
    split = TimeSplit(train=tuple(KEYS[:3]), validation=KEYS[3], test=KEYS[4])
    paths = {k: five_days.partition_path("features", k) for k in split.keys}
    target = tmp_path / "training.parquet"
    with five_days.duckdb() as con:
        summary = build_training_set(con, split, paths, 0.25, 7, target)
        test_summary = build_test_set(con, split, paths, tmp_path / "test.parquet")
        again = build_training_set(con, split, paths, 0.25, 7, tmp_path / "again.parquet")
        other_seed = build_training_set(con, split, paths, 0.25, 8, tmp_path / "other.parquet")
    train, valid = summary[TRAIN], summary[VALIDATION]
    assert train.clicks == train.clicks_before_sampling
    assert train.rows_before_sampling == 9000
    negatives_kept = (train.rows - train.clicks) / (train.rows_before_sampling - train.clicks_before_sampling)
    assert 0.22 < negatives_kept < 0.28
    assert valid.rows == valid.rows_before_sampling == 3000  # validation is never downsampled
    assert test_summary.rows == 3000 and test_summary.clicks == test_summary.clicks_before_sampling
    assert again == summary  # the hash makes the sample deterministic
    assert pq.read_table(tmp_path / "again.parquet").equals(pq.read_table(target))
    assert other_seed[TRAIN].rows != train.rows  # … and the seed changes it
    table = pq.read_table(target)
    assert table.column_names == [*features_schema().names, SPLIT_COLUMN]
    days = {
        s: {t.date().isoformat() for t in table.filter(pc.equal(table[SPLIT_COLUMN], s))["ts"].to_pylist()}
        for s in (TRAIN, VALIDATION)
    }
    assert days == {TRAIN: set(split.train), VALIDATION: {split.validation}}
    test_ids = set(pq.read_table(tmp_path / "test.parquet")["impression_id"].to_pylist())
    assert not test_ids & set(table["impression_id"].to_pylist())
    assert keep_row_sql(1.0, 7) == "TRUE"


def test_sets_and_their_manifest(five_days: Warehouse) -> None:
    split = choose_split(KEYS[:5], five_days.partition_keys("features"), train_days=2)
    assert split == TimeSplit(train=(KEYS[1], KEYS[2]), validation=KEYS[3], test=KEYS[4])
    manifest = build_sets(five_days, split, SplitParams(train_days=2, negative_downsampling_rate=0.5))
    assert read_split_manifest(five_days) == manifest
    assert split_manifest_path(five_days).parent == five_days.root / TRAINING_SET
    assert manifest.negative_downsampling_rate == 0.5 and manifest.seed == 7
    assert set(manifest.summaries) == {TRAIN, VALIDATION, TEST}
    train = manifest.summaries[TRAIN]
    # the base rate is the training days' CTR before downsampling (what real traffic has)
    assert manifest.train_base_rate == pytest.approx(
        train.clicks_before_sampling / train.rows_before_sampling
    )
    assert 0.01 < manifest.train_base_rate < 0.2 and train.ctr > manifest.train_base_rate
    assert pq.read_table(set_path(five_days, TEST_SET)).num_rows == manifest.summaries[TEST].rows == 3000
    assert pq.read_table(set_path(five_days, TRAINING_SET)).num_rows == train.rows + 3000
    markdown = split_markdown(manifest)
    assert f"| train | {KEYS[1]} … {KEYS[2]} (2 d) |" in markdown and f"| test | {KEYS[4]} |" in markdown
    assert SplitManifest.from_json(manifest.to_json()) == manifest
    with pytest.raises(FileNotFoundError, match="materialize training_set/test_set first"):
        read_split_manifest(Warehouse(five_days.root / "empty"))
    with pytest.raises(FileNotFoundError, match="partition file"):
        build_sets(five_days, TimeSplit(train=(KEYS[3],), validation=KEYS[4], test=KEYS[5]), SplitParams())
