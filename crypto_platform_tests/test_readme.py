"""The README names what is part of the platform's interface: every warehouse table with its columns,
every asset and every sensor. These tests fail when one is added without being documented."""

import re
from pathlib import Path

from crypto_platform import definitions
from crypto_platform.warehouse.tables import TABLES

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def section(title: str) -> str:
    return README.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_every_warehouse_table_is_listed_with_its_snowflake_name_and_columns() -> None:
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `(crypto_\w+)` \|.*$", section("Warehouse tables"), re.M)}
    for t in TABLES:
        assert t.name in rows, f"{t.name} is not in the README's warehouse table list"
        row = rows[t.name]
        assert f"`{t.snowflake}`" in row if t.snowflake else "MySQL only" in row, t.name
        listed = set(re.findall(r"\b[a-z_]+\b", row.split("|")[4]))
        assert sorted(c.name for c in t.columns if c.name not in listed) == [], t.name


def test_every_asset_and_sensor_is_named_in_the_readme() -> None:
    graph = definitions.defs.resolve_asset_graph()
    names = {k.to_user_string() for k in graph.get_all_asset_keys()}
    # The twelve warehouse copies are named by their pattern, mysql_* and snowflake_*.
    named = {n for n in names if f"`{n}`" in README or n.startswith(("mysql_", "snowflake_"))}
    assert sorted(names - named) == []
    assert "mysql_*" in README and "snowflake_*" in README
    assert sorted(s.name for s in definitions.defs.sensors or [] if f"`{s.name}`" not in README) == []
