"""crypto_platform: Polygon.io (Massive) crypto market data as trustworthy warehouse tables."""

import warnings

__version__ = "0.1.0"

# Every partitioned asset sets a backfill policy on purpose (Dagster still calls the parameter beta);
# one warning per asset on every code-server start and run only buries the log lines that matter.
warnings.filterwarnings("ignore", message=r"Parameter `backfill_policy` .* is currently in beta")
