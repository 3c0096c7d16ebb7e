"""Where the HTML reports (Evidently drift, Great Expectations Data Docs) can be opened from the UI.

They are files under ``<data_dir>/reports``. A browser does not open a ``file://`` link from the
UI's http page, so ``make ui`` serves that folder over HTTP on 127.0.0.1 and sets
``CLICKLOOP_REPORTS_URL``; with it, an asset's metadata links the report (a URL the UI opens on a
click); without it, the metadata gives the file's path.
"""

from pathlib import Path

from dagster import ConfigurableResource, MetadataValue

from clickloop.presentation import report_url


class ReportsSite(ConfigurableResource):
    """The reports folder (``root``) and the HTTP address it is served at (``base_url``; empty:
    not served)."""

    root: str
    base_url: str = ""

    def link(self, path: Path | str) -> MetadataValue:
        """The report at ``path`` as metadata: its URL when the folder is served, else its path."""
        url = report_url(self.base_url, self.root, str(path))
        return MetadataValue.url(url) if url else MetadataValue.path(str(path))
