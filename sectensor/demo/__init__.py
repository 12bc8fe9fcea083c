"""The demo app: base model and protected model side by side (`python app.py`).

`settings` reads flags and environment variables, `service` does the work (no Gradio), `examples` holds the
gallery, and `ui` lays out the Gradio interface.
"""

from .service import DemoService
from .settings import DemoSettings, settings_from

__all__ = ["DemoService", "DemoSettings", "settings_from"]
