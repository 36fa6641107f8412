"""Resources: one module per external system, all built from :class:`~crypto_platform.settings.Settings`.

:func:`build_resources` is the one place where settings become Dagster resources, so local versus
production is decided once (the README lists the stand-ins). Building is cheap and side-effect
free: no connection is opened until an asset, check or sensor uses a resource. Add a resource with
one line in the dict.
"""

from __future__ import annotations

from typing import Any

from crypto_platform.settings import Settings


def build_resources(settings: Settings) -> dict[str, Any]:
    """Resource key -> resource for ``dg.Definitions(resources=...)``."""
    from crypto_platform.resources.dagster_storage import build_dagster_storage_resource
    from crypto_platform.resources.lake import build_lake_resource
    from crypto_platform.resources.mlflow import build_mlflow_resource
    from crypto_platform.resources.mysql import build_sql_tables_resource
    from crypto_platform.resources.polygon import build_polygon_rest_resource
    from crypto_platform.resources.snowflake import build_snowflake_resource
    from crypto_platform.resources.stream import build_stream_resource

    return {
        "snowflake": build_snowflake_resource(settings),
        "sql_tables": build_sql_tables_resource(settings),
        "mlflow": build_mlflow_resource(settings),
        "polygon_rest": build_polygon_rest_resource(settings),
        "lake": build_lake_resource(settings),
        "stream": build_stream_resource(settings),
        "dagster_storage": build_dagster_storage_resource(settings),
    }
