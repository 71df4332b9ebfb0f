"""The Ads Audiences page in the Airflow UI: an Airflow plugin (:mod:`.plugin`) serving a FastAPI app
(:mod:`.app`) behind Airflow's own authentication, with the page (``page.html``) and its JSON endpoint."""

from __future__ import annotations

#: where the api-server mounts the app (the DAGs' docs link to it)
URL_PREFIX = "/ads-audiences"
