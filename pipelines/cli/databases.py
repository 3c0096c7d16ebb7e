"""`clickloop-databases URL [URL ...]`: create the PostgreSQL databases the deployment
needs when they do not exist yet (compose runs it before MLflow's server starts).

Dagster and MLflow must not share a database: both create tables named ``runs`` and
``alembic_version``. The monitoring store's tables (``online_metrics``, ``drift_metrics``) may live
beside Dagster's.
"""

import click
import psycopg2
from psycopg2 import sql
from sqlalchemy.engine import make_url


def ensure_database(url: str) -> bool:
    """Create the database of ``url`` on its server unless it exists; True if it created it."""
    parsed = make_url(url)
    if not parsed.get_backend_name().startswith("postgresql"):
        raise ValueError(f"not a PostgreSQL URL: {parsed.render_as_string(hide_password=True)}")
    name = parsed.database
    admin = psycopg2.connect(
        host=parsed.host,
        port=parsed.port or 5432,
        user=parsed.username,
        password=parsed.password,
        dbname="postgres",
    )
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone():
                return False
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            return True
    finally:
        admin.close()


@click.command()
@click.argument("urls", nargs=-1, required=True)
def cli(urls: tuple[str, ...]) -> None:
    """Create the PostgreSQL database of each URL unless it exists."""
    for url in urls:
        created = ensure_database(url)
        shown = make_url(url).render_as_string(hide_password=True)
        click.echo(f"{'created' if created else 'exists '} {shown}")


if __name__ == "__main__":
    cli()
