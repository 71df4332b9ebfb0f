# audience-sync image: the official Airflow image + this project's dependencies + the package itself.
#
# The tag below must match the `apache-airflow==` pin in requirements.txt (tests/unit/test_docker_compose.py
# checks it), so pip never up- or downgrades the Airflow that ships in the image.
# No secrets are baked in: connections come from the environment (.env) or a secrets backend at runtime.
FROM apache/airflow:3.3.2-python3.11

# Dependencies first, so editing the code does not invalidate this (slow) layer. No `-c constraints.txt`:
# transitive dependencies the image already ships stay at the versions of the image's own constraints.
COPY requirements.txt /opt/audience-sync/requirements.txt
RUN pip install --no-cache-dir -r /opt/audience-sync/requirements.txt

# The package (plugins/audience_sync) and its console script `audience-sync`; dependencies are already in.
# Owned by airflow because setuptools writes build metadata next to the sources.
COPY --chown=airflow:root pyproject.toml /opt/audience-sync/pyproject.toml
COPY --chown=airflow:root plugins/ /opt/audience-sync/plugins/
# (`command -v` rather than running it: importing Airflow at build time would bake a generated airflow.cfg,
# with its Fernet key and JWT secret, into the image.)
RUN pip install --no-cache-dir --no-deps /opt/audience-sync \
    && command -v audience-sync
