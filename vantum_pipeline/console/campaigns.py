"""What the console reads about campaigns: a small protocol, and an in-memory implementation.

The console shows, per campaign, its progress (prospects done out of the
total, and the calls in progress), the count of each call outcome, and the
spend over time. It reads them from any ``CampaignStatsProvider``:
``vantum_pipeline.campaign.figures.StoreCampaignStats`` implements it over
the campaign store (``vantum campaign run`` and ``vantum worker`` mount the
console with it); ``InMemoryCampaignStats`` is one for tests, demos and
single-process runs without a store, fed by the telephony records of the calls::

    stats = InMemoryCampaignStats()
    stats.add_campaign("spring", name="Spring promotion", prospects=500, budget=40.0)
    registry = CallRegistry(on_record=lambda r: (hub.call_ended(r), stats.call_ended(r)))
    mount_console(server.app, hub, settings, campaigns=stats)

The provider is asked at most every few seconds per open console, each time
within a timeout; a provider that fails or hangs is logged and the console
shows the campaigns without fresh figures.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from vantum_pipeline.errors import ConfigurationError, ProtocolError
from vantum_pipeline.telephony.outcome import CallRecord

__all__ = ["CampaignStats", "CampaignStatsProvider", "InMemoryCampaignStats"]


@dataclass(frozen=True, slots=True)
class CampaignStats:
    """One campaign's figures, as the console shows them.

    ``done`` prospects have a final outcome out of ``prospects``;
    ``in_progress`` calls are being placed or are on the line;
    ``outcomes`` counts calls by outcome (``completed``, ``retry_later``,
    …, or the app's own); ``spend`` is the cumulative dollars over time,
    as ``(unix seconds, total so far)`` points in time order.
    """

    campaign_id: str
    name: str
    prospects: int
    done: int
    outcomes: Mapping[str, int]
    spend: Sequence[tuple[float, float]]
    state: str = "running"
    budget: float | None = None
    in_progress: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign_id": self.campaign_id,
            "name": self.name,
            "state": self.state,
            "prospects": self.prospects,
            "done": self.done,
            "in_progress": self.in_progress,
            "progress": 0.0 if self.prospects <= 0 else min(1.0, self.done / self.prospects),
            "outcomes": dict(sorted(self.outcomes.items())),
            "spend": [[round(at, 3), round(total, 6)] for at, total in self.spend],
            "spent": round(self.spend[-1][1], 6) if self.spend else 0.0,
            "budget": self.budget,
        }

    @classmethod
    def from_dict(cls, data: Any) -> CampaignStats:
        """The inverse of ``as_dict`` (figures another process published); ProtocolError naming what is wrong."""
        try:
            outcomes = {str(name): int(count) for name, count in data["outcomes"].items()}
            spend = [(float(at), float(total)) for at, total in data["spend"]]
            budget = data.get("budget")
            return cls(
                campaign_id=str(data["campaign_id"]),
                name=str(data["name"]),
                prospects=int(data["prospects"]),
                done=int(data["done"]),
                outcomes=outcomes,
                spend=spend,
                state=str(data.get("state", "running")),
                budget=None if budget is None else float(budget),
                in_progress=int(data.get("in_progress", 0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProtocolError(f"campaign figures: {type(exc).__name__} {exc} in {str(data)[:200]!r}") from None


@runtime_checkable
class CampaignStatsProvider(Protocol):
    """Where the console reads campaign figures from."""

    async def campaign_stats(self) -> Sequence[CampaignStats]:
        """Every campaign worth showing, most recent first. Cancel-safe."""
        ...


#: Outcomes after which a prospect is not called again.
FINAL_OUTCOMES = frozenset({"completed", "unreachable", "remove", "canceled"})


@dataclass(slots=True)
class _Campaign:
    name: str
    prospects: int
    budget: float | None
    state: str = "running"
    outcomes: dict[str, int] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    done_count: int = 0
    spend: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=2000))
    spent: float = 0.0


class InMemoryCampaignStats:
    """A ``CampaignStatsProvider`` kept in memory; see the module docstring.

    A prospect is done after a final outcome (``FINAL_OUTCOMES``); calls
    without a prospect id count one prospect each. The spend series keeps
    the last 2000 points per campaign.
    """

    def __init__(self, *, clock: Any = time.time) -> None:
        self._clock = clock
        self._campaigns: dict[str, _Campaign] = {}

    def add_campaign(
        self, campaign_id: str, *, name: str | None = None, prospects: int, budget: float | None = None
    ) -> None:
        if prospects < 0:
            raise ConfigurationError(f"campaign {campaign_id!r}: prospects must be >= 0, got {prospects}")
        self._campaigns[campaign_id] = _Campaign(name or campaign_id, prospects, budget)

    def set_state(self, campaign_id: str, state: str) -> None:
        self._campaign(campaign_id).state = state

    def record(
        self,
        campaign_id: str,
        outcome: str,
        cost: float,
        *,
        prospect_id: str | None = None,
        at: float | None = None,
    ) -> None:
        """Count one call of ``campaign_id``."""
        campaign = self._campaign(campaign_id)
        campaign.outcomes[outcome] = campaign.outcomes.get(outcome, 0) + 1
        if outcome in FINAL_OUTCOMES:
            if prospect_id is None:
                campaign.done_count += 1
            elif prospect_id not in campaign.done:
                campaign.done.add(prospect_id)
                campaign.done_count += 1
        campaign.spent += max(0.0, cost)
        campaign.spend.append((self._clock() if at is None else at, campaign.spent))

    def call_ended(self, record: CallRecord) -> None:
        """Count a telephony record (``CallRegistry(on_record=...)``); calls of no known campaign are ignored."""
        if record.campaign_id is None or record.campaign_id not in self._campaigns:
            return
        self.record(record.campaign_id, record.outcome.value, record.cost, prospect_id=record.prospect_id)

    async def campaign_stats(self) -> Sequence[CampaignStats]:
        return [
            CampaignStats(
                campaign_id=campaign_id,
                name=campaign.name,
                prospects=campaign.prospects,
                done=campaign.done_count,
                outcomes=dict(campaign.outcomes),
                spend=list(campaign.spend),
                state=campaign.state,
                budget=campaign.budget,
            )
            for campaign_id, campaign in reversed(self._campaigns.items())
        ]

    def _campaign(self, campaign_id: str) -> _Campaign:
        try:
            return self._campaigns[campaign_id]
        except KeyError:
            raise ConfigurationError(f"unknown campaign {campaign_id!r}") from None
