"""Polygon REST as a Dagster resource: where to call, with which key, and how patiently.

The key is bound as ``dg.EnvVar("POLYGON_API_KEY")`` when a real key is configured, so the Dagster
UI and run config show the variable name, never the key. The simulator's key is not a secret.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg

from crypto_platform.polygon.rest_client import PolygonRest, RestPolicy
from crypto_platform.settings import SIMULATOR_API_KEY, Settings


class PolygonRestResource(dg.ConfigurableResource):
    """REST access for the daily open/close asset and gap repair."""

    base_url: str
    api_key: str
    pairs: list[str]
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    retries: int = 5
    max_retry_after_s: float = 60.0
    # Set when the URL is the built-in simulator's: it is started (detached, once) before the first call.
    local_simulator_state_dir: str = ""
    # With it, the simulator started on demand also publishes Flat Files on this port (the zero-setup
    # history: the settings point POLYGON_S3_ENDPOINT there, with the simulator's own S3 keys).
    local_simulator_s3_port: int = 0

    def ensure_local_simulator(self) -> None:
        """Start the built-in simulator (with its Flat Files) if this resource points at it and nothing serves."""
        if not self.local_simulator_state_dir:
            return
        from crypto_platform.local.stack import ensure_service, port_open, simulator_service_at

        port = urlsplit(self.base_url).port or 80
        service = simulator_service_at(port, s3_port=self.local_simulator_s3_port or None)
        said = ensure_service(service, Path(self.local_simulator_state_dir))
        if said:
            dg.get_dagster_logger().info(said)
        if self.local_simulator_s3_port and not port_open(service.host, self.local_simulator_s3_port):
            dg.get_dagster_logger().warning(
                f"the simulator on port {port} does not serve Flat Files on {self.local_simulator_s3_port} (it was "
                "started without them), so reading history from them fails: `make stop` and run again to restart it "
                "with Flat Files, or set CRYPTO_HISTORY_SOURCE=rest"
            )

    def client(self) -> PolygonRest:
        self.ensure_local_simulator()
        policy = RestPolicy(
            connect_timeout_s=self.connect_timeout_s,
            read_timeout_s=self.read_timeout_s,
            retries=self.retries,
            max_retry_after_s=self.max_retry_after_s,
        )
        return PolygonRest(self.base_url, self.api_key, policy)


def build_polygon_rest_resource(settings: Settings) -> PolygonRestResource:
    key: str = SIMULATOR_API_KEY if settings.uses_simulator else dg.EnvVar("POLYGON_API_KEY")  # type: ignore[assignment]
    simulator_url = f"http://{settings.simulator_host}:{settings.simulator_port}"
    local = settings.uses_simulator and settings.rest_url == simulator_url and settings.simulator_host == "127.0.0.1"
    local_s3 = local and settings.s3_endpoint.rstrip("/") == f"http://127.0.0.1:{settings.simulator_s3_port}"
    return PolygonRestResource(
        base_url=settings.rest_url,
        api_key=key,
        pairs=list(settings.pairs),
        local_simulator_state_dir=str(settings.state_dir) if local else "",
        local_simulator_s3_port=settings.simulator_s3_port if local_s3 else 0,
    )
