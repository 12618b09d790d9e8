"""``%byzerllm tables``."""
from byzer_magic.magics.cmd import CommandParser, command

parser = CommandParser("tables", "List the session's tables: name, schema, and row count when known "
                                 "without reading.")


@command(parser)
def tables_command(magic, args):
    import pandas as pd  # noqa: PLC0415

    from byzer_magic.magics.display import schema_text  # noqa: PLC0415
    from byzer_magic.runtime import tables  # noqa: PLC0415

    rows = [{"table": name, "schema": schema_text(tables.schema_of(ds)), "rows": tables.cheap_count(ds)}
            for name, ds in magic.session.tables.items()]
    if not rows:
        print("no tables yet: `load`, `select` and `run ... as TableRepartition` make them")
        return None
    return pd.DataFrame(rows, columns=["table", "schema", "rows"]).astype({"rows": "Int64"})
