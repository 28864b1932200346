"""Flash Flow: a flash-sale server that sells a small stock to a stampede, exactly."""

from .settings import Settings, SettingsError

__all__ = ["Settings", "SettingsError", "__version__"]

__version__ = "0.1.0"
