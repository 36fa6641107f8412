"""``crypto_alerts``: price, volume-spike and whale-trade alerts, muted during gaps and repair floods."""
