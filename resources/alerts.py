"""Alerts delivered to a webhook (``CLICKLOOP_ALERT_WEBHOOK``): a JSON POST per alert.

Unset, alerts are only logged. The URL is a secret (chat webhooks carry their token in it): it
comes from the environment and is never printed; errors name its host only.
"""

import json
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from dagster import ConfigurableResource

from clickloop.alerts import Alert


class AlertDeliveryError(RuntimeError):
    """The webhook refused or did not answer."""


class AlertWebhook(ConfigurableResource):
    """Posts alerts (failed blocking checks, launched retrainings, rollbacks) to a webhook."""

    url: str = ""
    timeout_seconds: float = 5.0

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def send(self, alert: Alert) -> bool:
        """POST the alert's JSON; False when no webhook is configured, AlertDeliveryError when the
        webhook does not take it."""
        if not self.url:
            return False
        request = urllib.request.Request(
            self.url,
            data=json.dumps(alert.payload()).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        host = urlsplit(self.url).netloc
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            raise AlertDeliveryError(f"alert webhook at {host} answered {exc.code}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise AlertDeliveryError(f"alert webhook at {host} unreachable: {exc}") from None
        if not 200 <= status < 300:
            raise AlertDeliveryError(f"alert webhook at {host} answered {status}")
        return True
