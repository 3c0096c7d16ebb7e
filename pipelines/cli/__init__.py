"""Command-line tools that drive the loop through Dagster: ``run`` (make run), ``scenario`` (make
scenario), ``rollback`` (make rollback) and ``databases`` (clickloop-databases)."""
