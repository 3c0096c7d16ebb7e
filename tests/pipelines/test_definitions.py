"""The code location, built from settings: the whole loop for the default settings, a lazy ``defs``
that reads the environment only when Dagster loads it, independent definitions for different
settings in one process, and an ad server with another log contract (labelled impressions, its own
column names, three slots, no price) run end to end."""

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, Definitions, in_process_executor, validate_run_config

from clickloop.evaluation import BASE_RATE, GROUND_TRUTH, HISTORICAL_CTR, MODEL, read_evaluation
from clickloop.online import UNKNOWN_VERSION
from clickloop.storage import Warehouse
from pipelines.cli.runner import LoopRunner
from pipelines.definitions import FORKSERVER_PRELOAD, build_defs
from pipelines.settings import Settings
from tests.assets.history import JobConfigRunner, metadata_of, open_test_instance

REPO = Path(__file__).resolve().parents[2]
LOOP_ASSETS = {
    "raw_impressions",
    "raw_clicks",
    "ad_events",
    "feature_stats",
    "serving_calibration",
    "features",
    "training_set",
    "test_set",
    "ctr_model",
    "model_evaluation",
    "champion_model",
    "drift_report",
    "online_metrics",
    "rollout_decision",
    "ad_catalog",
    "online_features",
    "validation_suite",
}
LOOP_EDGES = {
    ("raw_impressions", "ad_events"),
    ("raw_clicks", "ad_events"),
    ("ad_events", "feature_stats"),
    ("ad_events", "features"),
    ("feature_stats", "features"),
    ("ad_events", "serving_calibration"),
    ("feature_stats", "serving_calibration"),
    ("raw_impressions", "serving_calibration"),
    ("features", "training_set"),
    ("features", "test_set"),
    ("training_set", "ctr_model"),
    ("ctr_model", "model_evaluation"),
    ("training_set", "model_evaluation"),
    ("test_set", "model_evaluation"),
    ("model_evaluation", "champion_model"),
    ("features", "drift_report"),
    ("features", "online_metrics"),
    ("champion_model", "rollout_decision"),
    ("online_metrics", "rollout_decision"),
    ("ad_events", "ad_catalog"),
    ("feature_stats", "online_features"),
    ("ad_catalog", "online_features"),
    ("training_set", "validation_suite"),
    ("features", "validation_suite"),
}


def asset_names(defs: Definitions) -> set[str]:
    return {k.to_user_string() for k in defs.get_repository_def().asset_graph.get_all_asset_keys()}


def asset_edges(defs: Definitions) -> set[tuple[str, str]]:
    graph = defs.get_repository_def().asset_graph
    return {
        (p.to_user_string(), node.key.to_user_string())
        for node in graph.asset_nodes
        for p in node.parent_keys
    }


def check_names(defs: Definitions) -> set[str]:
    return {k.name for k in defs.get_repository_def().asset_graph.asset_check_keys}


def test_the_default_definitions_hold_the_whole_loop(tmp_path: Path) -> None:
    defs = build_defs(Settings(data_dir=tmp_path))
    repo = defs.get_repository_def()
    assert asset_names(defs) == LOOP_ASSETS
    assert asset_edges(defs) == LOOP_EDGES
    assert check_names(defs) == {
        f"{a}_expectations" for a in ("raw_impressions", "raw_clicks", "ad_events", "features")
    } | {"served_scores_match_model", "online_matches_offline", "features_learned_suite"}
    assert {j.name for j in repo.get_all_jobs() if not j.name.startswith("__")} == {
        "feature_stats_job",
        "ingest_job",
        "events_job",
        "training_job",
        "rollout_job",
        "online_features_job",
    }
    assert {s.name for s in repo.schedule_defs} == {"daily_refresh_schedule", "weekly_retraining_schedule"}
    assert {s.name for s in repo.sensor_defs} == {
        "events_after_ingest",
        "events_after_failed_ingest",
        "serving_stats_after_events",
        "drift_sensor",
        "quality_sensor",
        "novelty_sensor",
        "staleness_sensor",
        "redelivery_sensor",
        "events_after_redelivery",
        "rollout_sensor",
        "failure_alert_sensor",
        "retraining_alert_sensor",
    }
    assert set(repo.get_top_level_resources()) == {
        "warehouse",
        "model_registry",
        "monitoring_store",
        "log_contract",
        "log_source",
        "retrain_policy",
        "rollout",
        "online_store",
        "alerts",
        "dask_cluster",
        "reports",
    }
    assert defs.executor is not None and defs.executor.name == "multi_or_in_process_executor"
    assert build_defs(Settings(data_dir=tmp_path, executor="in_process")).executor is in_process_executor


def test_step_processes_fork_from_a_server_that_imported_the_code_location(tmp_path: Path) -> None:
    """Dagster's default spawns each step's process from a new interpreter (about 5 s of imports
    per step here); the code location's executor forks them from a server that imported
    FORKSERVER_PRELOAD once per run. A run's config may still limit or replace it, or pick one
    process for the whole run, as with Dagster's default."""
    job = build_defs(Settings(data_dir=tmp_path)).resolve_job_def("ingest_job")

    def execution(run_config: dict) -> dict:
        return validate_run_config(job, run_config)["execution"]["multi_or_in_process_executor"]

    default = execution({})["multiprocess"]
    assert default["start_method"] == {"forkserver": {"preload_modules": list(FORKSERVER_PRELOAD)}}
    assert default["max_concurrent"] is None  # as many as the CPUs
    # a module the server cannot import is skipped silently: each must exist
    assert FORKSERVER_PRELOAD[0] == "pipelines.definitions"
    assert all(importlib.util.find_spec(module) is not None for module in FORKSERVER_PRELOAD)
    chosen = {"max_concurrent": 1, "preload_modules": ["dagster"]}
    run = execution({"execution": {"config": {"multiprocess": chosen}}})["multiprocess"]
    assert run["max_concurrent"] == 1 and run["start_method"]["forkserver"]["preload_modules"] == ["dagster"]
    assert set(execution({"execution": {"config": {"in_process": {}}}})) == {"in_process"}


def test_building_the_definitions_warns_nothing_from_this_code(tmp_path: Path) -> None:
    """Every command loads the definitions: a preview, beta or deprecation warning raised at one of
    this repository's lines would be printed before each command's output."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        repo = build_defs(Settings(data_dir=tmp_path)).get_repository_def()
        daily = [
            repo.get_job(name).partitions_def for name in ("ingest_job", "events_job", "feature_stats_job")
        ]
        repo.get_all_jobs()
    assert all(p is not None and p.get_first_partition_key() == "2026-10-01" for p in daily)
    ours = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if w.filename.startswith(str(REPO))]
    assert ours == []


def test_the_code_location_is_lazy(code_location: dict) -> None:
    """Importing ``pipelines.definitions`` reads no settings; Dagster's loader calls ``defs`` and
    the environment decides the calendar (``tests/pipelines/conftest.py`` loads it in a fresh
    process with its own environment)."""
    import pipelines.definitions

    assert not isinstance(pipelines.definitions.defs, Definitions)
    assert callable(pipelines.definitions.defs)
    assert code_location["reads_at_import"] == 0
    assert code_location["reads_at_load"] == 1
    assert code_location["target"] == "defs"
    assert code_location["first_partition"] == "2026-09-01"  # CLICKLOOP_START_DATE
    assert code_location["history_window"] == [-4, -2]  # CLICKLOOP_FEATURE_WINDOW_DAYS=3: D-4 … D-2
    assert set(code_location["assets"]) == LOOP_ASSETS


def first_key_and_window(defs: Definitions) -> tuple[str, tuple[int, int]]:
    repo = defs.get_repository_def()
    mapping = repo.asset_graph.get_partition_mapping(AssetKey("feature_stats"), AssetKey("ad_events"))
    return repo.get_job("ingest_job").partitions_def.get_first_partition_key(), (
        mapping.start_offset,
        mapping.end_offset,
    )


def ingested(defs: Definitions) -> set[str]:
    """The assets ``ingest_job`` materializes."""
    job = defs.get_repository_def().get_job("ingest_job")
    return {k.to_user_string() for k in job.asset_layer.executable_asset_keys}


def test_two_settings_give_two_independent_definitions(tmp_path: Path) -> None:
    contract = tmp_path / "labelled_exchange.yaml"
    contract.write_text(LABELLED_CONTRACT)
    first = build_defs(Settings(data_dir=tmp_path / "first", start_date="2026-10-01"))
    second = build_defs(
        Settings(
            data_dir=tmp_path / "second",
            start_date="2026-11-01",
            feature_window_days=2,
            executor="in_process",
            log_contract=str(contract),
            log_source="landing",
            resources={"log_source": {"landing_dir": str(tmp_path / "landing")}},
        )
    )
    # building the second changed nothing of the first
    assert first_key_and_window(first) == ("2026-10-01", (-8, -2))
    assert first_key_and_window(second) == ("2026-11-01", (-3, -2))
    assert "raw_clicks" in asset_names(first) and "raw_clicks" not in asset_names(second)
    assert first.executor is not None and first.executor.name == "multi_or_in_process_executor"
    assert second.executor is in_process_executor
    assert ingested(first) == {"raw_impressions", "raw_clicks"}
    assert ingested(second) == {"raw_impressions"}

    # both run in this process, each with its own resources and folders
    for defs, name, day in ((first, "first", "2026-10-01"), (second, "second", "2026-11-01")):
        report = LoopRunner(defs, open_test_instance(tmp_path / f"{name}_home")).run(
            "feature_stats_job", day, echo=False
        )
        assert report.success, report.failures
    assert sorted(
        p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("*/feature_stats/*/part-0.parquet")
    ) == [
        "first/feature_stats/date=2026-10-01/part-0.parquet",
        "second/feature_stats/date=2026-11-01/part-0.parquet",
    ]


# --- Another ad server ------------------------------------------------------------------------------

LABELLED_CONTRACT = """
name: labelled_exchange
description: An exchange that logs every impression with its outcome; three slots, no price.
impressions:
  fields:
    - {source: imp, column: impression_id, type: string}
    - {source: event_time, column: ts, type: timestamp, format: epoch_ms}
    - {source: req, column: request_id, type: string}
    - {source: visitor, column: user_id, type: string}
    - {source: creative, column: ad_id, type: string, side: ad}
    - {source: brand, type: string, side: ad}
    - {source: publisher, type: string}
    - {source: platform, type: string, required: false}
    - {source: slot, column: position, type: int, allowed: [1, 2, 3]}
label: {source: was_clicked}
features:
  categorical: [platform, brand]
  entities:
    - {name: creative, columns: [ad_id]}
    - {name: publisher, columns: [publisher]}
  user_activity: true
  policy_invariant_history: true
slices: [platform, position]
quality:
  max_quarantine_share: 0.02
  ctr_range: [0.005, 0.5]
"""
REQUESTS_PER_DAY = 1_500
SLOTS = 3
CREATIVES = 60
PLATFORMS = ("web", "app", "tv")


def labelled_day(day: str) -> tuple[list[str], dict[str, int]]:
    """The JSON lines of one day of the labelled exchange (deterministic), with a little dirt: two
    lines in a fourth slot, one truncated line, one line logged twice. Returns the lines and what
    the day holds."""
    quality = np.random.default_rng(0).normal(0.0, 0.8, CREATIVES)  # fixed per creative
    rng = np.random.default_rng([1, int(day.replace("-", ""))])
    start_ms = int(np.datetime64(day, "ms").astype(np.int64))
    records = []
    for r in range(REQUESTS_PER_DAY):
        ts = start_ms + int(rng.integers(0, 86_400_000 - 1_000))
        platform = PLATFORMS[int(rng.choice(3, p=[0.5, 0.4, 0.1]))]
        visitor = f"v{int(rng.integers(0, 400))}"
        publisher = f"pub{int(rng.integers(0, 20))}"
        for slot, creative in enumerate(rng.choice(CREATIVES, SLOTS, replace=False), start=1):
            logit = -2.4 + quality[creative] + 0.6 * (platform == "app") - 0.7 * (slot - 1)
            records.append(
                {
                    "imp": f"{day}-{r}-{slot}",
                    "event_time": ts + slot,
                    "req": f"{day}-{r}",
                    "visitor": visitor,
                    "creative": f"cr{creative}",
                    "brand": f"brand{creative % 8}",
                    "publisher": publisher,
                    "platform": platform,
                    "slot": slot,
                    "was_clicked": bool(rng.random() < 1 / (1 + np.exp(-logit))),
                }
            )
    for i in (5, 6):
        records[i]["slot"] = 4
    lines = [json.dumps(r) for r in records]
    lines.insert(100, lines[100][:37])  # a truncated line
    lines.append(lines[10])  # a line logged twice
    valid = [r for r in records if r["slot"] != 4]
    return lines, {
        "lines": len(lines),
        "valid": len(valid) + 1,
        "events": len(valid),
        "clicks": sum(r["was_clicked"] for r in valid),
        "requests": len({r["req"] for r in valid}),
    }


def test_a_labelled_landing_contract_runs_end_to_end(tmp_path: Path) -> None:
    contract = tmp_path / "labelled_exchange.yaml"
    contract.write_text(LABELLED_CONTRACT)
    landing = tmp_path / "landing"
    settings = Settings(
        data_dir=tmp_path / "data",
        log_source="landing",
        log_contract=str(contract),
        executor="in_process",
        resources={"log_source": {"landing_dir": str(landing)}},
    )
    defs = build_defs(settings)
    assert asset_names(defs) == LOOP_ASSETS - {"raw_clicks"}  # no click log
    assert ("raw_clicks", "ad_events") not in asset_edges(defs)
    assert check_names(defs) == {
        f"{a}_expectations" for a in ("raw_impressions", "ad_events", "features")
    } | {
        "online_matches_offline",  # no served predictions logged: no skew check
        "features_learned_suite",
    }

    keys = ["2026-10-01", "2026-10-02", "2026-10-03"]
    expected = {}
    for key in keys:
        lines, expected[key] = labelled_day(key)
        folder = landing / "impressions" / f"date={key}"
        folder.mkdir(parents=True)
        (folder / "part-0.jsonl").write_text("\n".join(lines) + "\n")

    instance = open_test_instance(tmp_path / "dagster_home")
    runner = JobConfigRunner(
        defs,
        instance,
        {
            "training_job": {
                "training_and_test_sets": {"config": {"train_days": 1}},
                "ctr_model": {
                    "config": {
                        "n_trials": 0,
                        "max_depth": 3,
                        "learning_rate": 0.1,
                        "min_child_weight": 5.0,
                        "num_boost_round": 200,
                        "nthread": 1,
                    }
                },
            }
        },
    )
    for key in keys:  # the labels come with the impressions: a day is joined as soon as it lands
        for job in ("feature_stats_job", "ingest_job", "events_job"):
            report = runner.run(job, key, echo=False)
            assert report.success, (job, key, report.failures)
            assert all(report.checks.values()), (job, key, report.checks)
    training = runner.run("training_job", echo=False)
    assert training.success, training.failures
    # the suite learned from this contract's features: its own categorical columns
    learned = metadata_of(instance, "validation_suite")["expectations"]
    assert "new_category:platform" in learned and "new_category:brand" in learned

    # the contract's policy_invariant_history: slot factors fitted on the window (the exchange's slots
    # cost 0.7 logit each: about 0.5 and 0.25 of the top slot's clicks at these CTRs)
    stats = metadata_of(instance, "feature_stats", keys[2])  # its window: the first day
    assert stats["slot_1_factor"] == 1.0
    assert 0.35 < stats["slot_2_factor"] < 0.7 and 0.12 < stats["slot_3_factor"] < 0.4
    assert "slot_2_factor" not in metadata_of(instance, "feature_stats", keys[0])  # no history yet

    for key in keys:
        raw = metadata_of(instance, "raw_impressions", key)
        assert raw["lines_read"] == expected[key]["lines"]
        assert (raw["valid_rows"], raw["quarantined_rows"]) == (expected[key]["valid"], 3)
        assert raw["log_contract"].startswith("labelled_exchange (clicks as a label on impressions")
        events = metadata_of(instance, "ad_events", key)
        assert events["dagster/row_count"] == expected[key]["events"]
        assert events["duplicate_impressions"] == 1
        assert events["clicked"] == expected[key]["clicks"]
        assert events["attribution_window_hours"] == "labelled impressions"
        assert metadata_of(instance, "features", key)["dagster/row_count"] == expected[key]["events"]

        # no price, no served predictions: clicks per 1000 requests is the business metric
        online = metadata_of(instance, "online_metrics", key)
        assert online["business_metric"] == "clicks_per_1000_requests"
        assert online["requests"] == expected[key]["requests"]
        assert online["clicks_per_1000_requests"] == pytest.approx(  # shown to 4 significant digits
            1000 * expected[key]["clicks"] / expected[key]["requests"], rel=5e-4
        )
        assert online["business_value"] == online["clicks_per_1000_requests"]
        assert online["revenue"] is None and online["revenue_per_1000_requests"] is None
        assert online["oracle_capture"] is None and online["calibration"] is None
        assert online["model_versions"] == UNKNOWN_VERSION

    data = Path(settings.data_dir)
    raw_columns = pq.read_schema(data / "raw_impressions" / f"date={keys[0]}" / "part-0.parquet").names
    assert {
        "impression_id",
        "ts",
        "request_id",
        "user_id",
        "ad_id",
        "brand",
        "publisher",
        "platform",
        "position",
        "clicked",
    } <= set(raw_columns)
    assert not {"bid_cpc", "model_version", "predicted_ctr", "imp", "slot", "was_clicked"} & set(raw_columns)

    drift = metadata_of(instance, "drift_report", keys[2])
    assert drift["reference_days"] == ", ".join(keys[:2])
    assert drift["prediction_drift_score"] is None  # the logs carry no served prediction

    model = training.metadata["ctr_model"]
    assert model["model_version"] == "1"
    evaluation = read_evaluation(Warehouse(data))
    assert evaluation.test_day == keys[2] and evaluation.split["train"] == [keys[0]]
    assert set(evaluation.metrics) == {MODEL, BASE_RATE, HISTORICAL_CTR}
    assert GROUND_TRUTH not in evaluation.metrics  # real logs: no ground truth
    assert evaluation.metrics[MODEL].normalized_entropy < evaluation.metrics[BASE_RATE].normalized_entropy
    slices = training.metadata["model_evaluation"]["slices"]
    assert "| platform | app |" in slices and "| position | 3 |" in slices
    gate = training.metadata["champion_model"]
    assert gate["decision"] == "promoted", gate["criteria"]
    # its upstream checks: the features (its suite and the learned suite's), events and
    # impressions of the 3 days (no click log)
    assert gate["upstream_checks_verified"] == 12
