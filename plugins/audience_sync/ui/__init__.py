"""The Ads Audiences page in the Airflow UI: an Airflow plugin (:mod:`.plugin`) serving a FastAPI app
(:mod:`.app`) behind Airflow's own authentication, with the page (``page.html``) and its JSON endpoint."""
