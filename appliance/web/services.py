"""What the web layer is given: the appliance's components, built elsewhere.

The composition root (``appliance.app``) builds one :class:`Services` and
hands it to :func:`appliance.web.create_app`; views reach it through
:func:`services` (``current_app.extensions["plowshare"]``).  Nothing in the web
layer constructs a store, a policy or a renderer of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from ..bootscripts import BootScripts
from ..config import Config
from ..events import EventLog
from ..kickstart import Renderer
from ..policy import BootPolicy
from ..store import Store

EXTENSION_KEY = "plowshare"


@dataclass(frozen=True)
class Services:
    config: Config
    store: Store
    policy: BootPolicy
    events: EventLog
    scripts: BootScripts
    renderer: Renderer


def services() -> Services:
    """The :class:`Services` of the app handling the current request."""
    return current_app.extensions[EXTENSION_KEY]
