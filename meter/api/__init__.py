from meter.api.app import App, build_app
from meter.api.server import serve

__all__ = ["App", "build_app", "serve"]
