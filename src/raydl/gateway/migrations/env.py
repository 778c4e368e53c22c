"""Alembic's entry point: run the migrations on the configured URL (online mode only)."""

from alembic import context

from raydl.gateway.store import engine_for

url = context.config.get_main_option("sqlalchemy.url")
engine = engine_for(url)
try:
    with engine.connect() as connection:
        context.configure(connection=connection, render_as_batch=url.startswith("sqlite"))
        with context.begin_transaction():
            context.run_migrations()
finally:
    engine.dispose()
