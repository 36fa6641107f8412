"""crypto_platform: Polygon.io (Massive) crypto market data as trustworthy warehouse tables."""

__version__ = "0.1.0"
