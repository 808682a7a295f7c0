"""The one place that imports the ``webknossos`` library.

Its import would otherwise start a network version-check thread and warn about optional
image readers we never use; both are switched off here, before the import.
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("WEBKNOSSOS_SKIP_VERSION_CHECK", "True")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import webknossos as wk
    from webknossos.client.api_client.errors import ApiClientError, UnexpectedStatusError

__all__ = ["ApiClientError", "UnexpectedStatusError", "wk"]
