"""The pure core: campaign model, identifier normalisation, planning and ledger rules.

Nothing in this package imports Airflow.
"""

from __future__ import annotations
