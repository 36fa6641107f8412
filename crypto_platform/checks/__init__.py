"""Asset checks on the lake assets and their MLflow logging.

Everything at module scope here is loaded into the Definitions (``DEFINITION_MODULES``):

- ``raw_*_checks``: schema, natural key, values, partition day, freshness (``checks/lake.py``);
- ``minute_bars_checks``: schema, key, OHLC invariants, day, agreement with XA, coverage (``checks/bars.py``);
- ``daily_open_close_checks``: the same plus a reconciliation with raw trades (``checks/daily.py``);
- ``landing_freshness_check`` and ``landing_freshness_sensor`` on the external ``landing_log``
  (``checks/landing.py``);
- ``mlflow_sensor``: every finished run's loads and check evaluations to MLflow (``checks/mlflow_events.py``).
"""

from crypto_platform.checks.bars import minute_bars_checks
from crypto_platform.checks.daily import daily_open_close_checks
from crypto_platform.checks.lake import raw_aggregates_checks, raw_book_checks, raw_quotes_checks, raw_trades_checks
from crypto_platform.checks.landing import landing_freshness_check, landing_freshness_sensor
from crypto_platform.checks.mlflow_events import mlflow_sensor

__all__ = [
    "daily_open_close_checks",
    "landing_freshness_check",
    "landing_freshness_sensor",
    "minute_bars_checks",
    "mlflow_sensor",
    "raw_aggregates_checks",
    "raw_book_checks",
    "raw_quotes_checks",
    "raw_trades_checks",
]
