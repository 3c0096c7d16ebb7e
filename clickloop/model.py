"""The CTR model as XGBoost sees it: its input frame, its files, and its predictions.

A model file is XGBoost's own format (UBJSON, never a pickle) and carries everything a scorer
needs: the feature names and types (categorical or numeric), the training categories, and the
negative downsampling rate it was trained with (a booster attribute), so :func:`predict_ctr` gives
the probability on real traffic wherever the file is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import xgboost as xgb

from clickloop.contract import require_columns
from clickloop.split import TimeSplit
from clickloop.storage import StoragePath, Warehouse, atomic_write_bytes, atomic_write_text, is_remote

CTR_MODEL = "ctr_model"
#: Booster attribute holding the negative downsampling rate w the model was trained with.
DOWNSAMPLING_ATTR = "negative_downsampling_rate"
#: registry tags of a model version: the days it was tested and validated on (every day before the
#: validation day was a training day)
TEST_DAY_TAG = "test_day"
VALIDATION_DAY_TAG = "validation_day"
#: Booster attribute holding the training categories (JSON): XGBoost drops its own when early
#: stopping cuts the booster at its best iteration, and would then read category codes by position.
CATEGORIES_ATTR = "training_categories"


def correct_downsampled(q: np.ndarray | float, rate: float) -> np.ndarray:
    """The probability on real traffic of a prediction ``q`` of a model trained with a share
    ``rate`` of the negatives: p = q / (q + (1 - q) / rate)."""
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"downsampling rate must be in (0, 1], not {rate}")
    q = np.asarray(q, dtype=np.float64)
    return q / (q + (1.0 - q) / rate)


def to_model_frame(
    table: pa.Table | Mapping[str, np.ndarray | pd.Series],
    columns: Sequence[str],
    categorical: Sequence[str],
    categories: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """The ``columns`` of a features table as XGBoost wants them: ``category`` dtype for the
    ``categorical`` ones, float32 for the rest.

    Training: leave ``categories`` out; each categorical column gets its sorted distinct values.
    Prediction: pass the model's categories (:func:`model_categories`). XGBoost >= 3.1 stores the
    training categories in the model and re-codes a frame's categories by name, but it raises on a
    category it has not seen; pinning the frame to the training categories turns a new ad's
    advertiser, a new device or a new site into a missing value, which the trees route down their
    learned default branch. XGBoost also refuses a categorical column with no category at all
    (every value null and no ``categories``): a ValueError here.
    """
    names = table.column_names if isinstance(table, pa.Table) else list(table)
    require_columns(names, columns, "the features table")
    if categories is not None:
        require_columns(list(categories), categorical, "the model's categories")
    data: dict[str, pd.Series] = {}
    for name in columns:
        values = _as_series(table, name)
        if name in categorical:
            known = None if categories is None else list(categories[name])
            if isinstance(values.dtype, pd.CategoricalDtype) and known is not None:
                column = values.cat.set_categories(known).array
            else:
                column = pd.Categorical(values, categories=known)
            if len(column.categories) == 0:
                raise ValueError(
                    f"categorical feature {name!r} has no value: XGBoost cannot take a categorical "
                    "column without categories; pass the model's categories"
                )
            data[name] = pd.Series(column, name=name)
        else:
            data[name] = values.astype("float32")
    return pd.DataFrame(data)


def _as_series(table: pa.Table | Mapping[str, np.ndarray | pd.Series], name: str) -> pd.Series:
    """One column as a pandas Series on a fresh 0..n-1 index (so columns of any origin align)."""
    if isinstance(table, pa.Table):
        return table.column(name).to_pandas()
    values = table[name]
    if isinstance(values, pd.Series):
        return values.reset_index(drop=True)
    return pd.Series(values)


def model_categories(booster: xgb.Booster) -> dict[str, list[str]]:
    """The categories a booster was trained with, per categorical feature (empty if none)."""
    container = booster.get_categories(export_to_arrow=True)
    if container.empty():
        stored = booster.attr(CATEGORIES_ATTR)
        return json.loads(stored) if stored else {}
    return {
        name: [str(v) for v in array.to_pylist()] for name, array in container.to_arrow() if array is not None
    }


def model_features(booster: xgb.Booster) -> tuple[list[str], list[str]]:
    """(every feature, the categorical ones) of a booster, in its order."""
    names = list(booster.feature_names or [])
    types = list(booster.feature_types or ["float"] * len(names))
    return names, [n for n, t in zip(names, types, strict=True) if t == "c"]


def save_booster(booster: xgb.Booster, target: Path) -> Path:
    """Save in XGBoost's own format (UBJSON for ``.ubj``, JSON for ``.json``), atomically."""
    suffix = target.suffix.lstrip(".")
    if suffix not in ("ubj", "json"):
        raise ValueError(f"model files are .ubj or .json, not {target.name}")
    return atomic_write_bytes(target, bytes(booster.save_raw(raw_format=suffix)))


def load_booster(path: StoragePath) -> xgb.Booster:
    """A model file, local or on object storage."""
    if is_remote(path):
        booster = xgb.Booster()
        booster.load_model(bytearray(path.read_bytes()))
        return booster
    return xgb.Booster(model_file=str(path))


def downsampling_rate_of(booster: xgb.Booster) -> float:
    """The negative downsampling rate stored in a model (1.0 when it has none)."""
    value = booster.attr(DOWNSAMPLING_ATTR)
    return 1.0 if value is None else float(value)


def model_frame_for(
    booster: xgb.Booster,
    table: pa.Table | Mapping[str, np.ndarray | pd.Series],
    categories: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """The frame a booster scores, pinned to its categories (unseen ones become missing);
    ``categories``: the booster's own, when a caller already read them."""
    names, categorical = model_features(booster)
    known = categories if categories is not None else model_categories(booster)
    return to_model_frame(table, names, categorical, known or None)


def predict_frame(booster: xgb.Booster, frame: pd.DataFrame) -> np.ndarray:
    """Click probabilities on real traffic of a model frame, corrected for the model's negative
    downsampling."""
    raw = booster.inplace_predict(frame)
    return correct_downsampled(np.asarray(raw, dtype=np.float64), downsampling_rate_of(booster))


def predict_ctr(booster: xgb.Booster, table: pa.Table) -> np.ndarray:
    """Click probabilities on real traffic for rows of a features table."""
    return predict_frame(booster, model_frame_for(booster, table))


# --- The latest trained model ---------------------------------------------------------------------


def model_dir(warehouse: Warehouse) -> Path:
    return warehouse.root / "models" / CTR_MODEL


@dataclass(frozen=True)
class ModelManifest:
    """The latest trained model: what the evaluation and the gate read."""

    version: str
    run_id: str
    #: the model file, relative to the warehouse root (a data folder can move)
    model_path: str
    split: TimeSplit
    negative_downsampling_rate: float
    best_iteration: int
    valid_logloss: float
    params: dict[str, Any]

    def to_json(self) -> str:
        data = asdict(self)
        data["split"] = self.split.to_dict()
        return json.dumps(data, indent=2, default=str)

    @classmethod
    def from_json(cls, text: str) -> ModelManifest:
        data = json.loads(text)
        data["split"] = TimeSplit.from_dict(data["split"])
        return cls(**data)


def model_file(warehouse: Warehouse, manifest: ModelManifest) -> Path:
    return warehouse.root / manifest.model_path


def manifest_path(warehouse: Warehouse) -> Path:
    return model_dir(warehouse) / "manifest.json"


def write_model_manifest(warehouse: Warehouse, manifest: ModelManifest) -> Path:
    return atomic_write_text(manifest_path(warehouse), manifest.to_json())


def read_model_manifest(warehouse: Warehouse) -> ModelManifest:
    path = manifest_path(warehouse)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: materialize {CTR_MODEL} first")
    return ModelManifest.from_json(path.read_text())


def served_version(version: str) -> str:
    """How a registered version names itself in the impressions it serves (``model_version``)."""
    return f"{CTR_MODEL}-v{version}"
