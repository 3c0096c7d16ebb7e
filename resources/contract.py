"""The log contract as a Dagster resource: which ad server's logs the loop reads.

The contract itself is :mod:`clickloop.contract`; this resource names its YAML file
(``CLICKLOOP_LOG_CONTRACT``), the simulator's own contract when empty, and holds the key the
contract's personal ids are pseudonymised with (``CLICKLOOP_PSEUDONYM_KEY``, never logged; see
:mod:`clickloop.privacy` for what happens without one).
"""

from dagster import ConfigurableResource

from clickloop.contract import LogContract
from clickloop.contract_file import load_contract
from clickloop.features import FeatureSpec
from clickloop.privacy import Pseudonymiser, pseudonymiser_for


class LogContractResource(ConfigurableResource):
    """The log contract of the landing logs (a YAML file; empty: the simulator's)."""

    path: str = ""
    #: the pseudonymisation key of personal ids (``CLICKLOOP_PSEUDONYM_KEY``); empty: see
    #: :func:`clickloop.privacy.pseudonymiser_for`
    pseudonym_key: str = ""

    def get(self) -> LogContract:
        return load_contract(self.path or None)

    def features(self) -> FeatureSpec:
        return FeatureSpec.from_contract(self.get())

    def pseudonymiser(self) -> Pseudonymiser | None:
        """Personal ids to pseudonyms (None when the contract marks none); a
        :class:`clickloop.privacy.PrivacyError` when a real contract has no key."""
        return pseudonymiser_for(self.get(), self.pseudonym_key)
