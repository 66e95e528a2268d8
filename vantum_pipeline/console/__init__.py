"""The web console: calls in progress with their live transcript, finished
calls (transcript, interruptions, what the callee heard, per-turn latency,
cost by service, the recording) and campaign progress, served at
``/console`` by the Twilio server's aiohttp application.

``hub``        ``ConsoleHub``: the calls' views, fed by the pipelines, pushed to viewers
``campaigns``  ``CampaignStatsProvider``, the protocol campaign figures are read
               through, and ``InMemoryCampaignStats``
``app``        ``mount_console(app, hub, settings)``: the token-protected routes

    hub = ConsoleHub(recordings_dir="recordings")
    server = TwilioServer(settings, factory, registry=CallRegistry(on_record=hub.call_ended))
    mount_console(server.app, hub, ConsoleSettings.from_env())    # before the server starts

The page is plain HTML, CSS and JavaScript shipped in the package: no
front-end build step.
"""

from vantum_pipeline.console.app import ConsoleSettings, mount_console
from vantum_pipeline.console.campaigns import CampaignStats, CampaignStatsProvider, InMemoryCampaignStats
from vantum_pipeline.console.hub import CallView, ConsoleHub

__all__ = [
    "CallView",
    "CampaignStats",
    "CampaignStatsProvider",
    "ConsoleHub",
    "ConsoleSettings",
    "InMemoryCampaignStats",
    "mount_console",
]
