"""The log contract as a Dagster resource: which ad server's logs the loop reads.

The contract itself is :mod:`clickloop.contract`; this resource names its YAML file
(``CLICKLOOP_LOG_CONTRACT``), the simulator's own contract when empty.
"""

from dagster import ConfigurableResource

from clickloop.contract import LogContract
from clickloop.contract_file import load_contract
from clickloop.features import FeatureSpec


class LogContractResource(ConfigurableResource):
    """The log contract of the landing logs (a YAML file; empty: the simulator's)."""

    path: str = ""

    def get(self) -> LogContract:
        return load_contract(self.path or None)

    def features(self) -> FeatureSpec:
        return FeatureSpec.from_contract(self.get())
