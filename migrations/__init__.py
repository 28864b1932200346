"""Plain SQL migrations, applied in file-name order by ``flashflow migrate``."""
