"""The credit system the journal was built for: agents, minting, spending, transfers.

Each agent is an entity stream. A transfer is one atomic ``append_events`` of a debit and a
credit with both agents' expected versions, so a balance can never go negative: a debit is
only stored if the agent is still at the version its balance was read at.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass, field

from .base import BaseEventJournal
from .envelope import EventEnvelope
from .errors import ConcurrencyError
from .projections import Projection

AGENT_CREATED = "agent.created"
MINTED = "credits.minted"
SPENT = "credits.spent"
DEBITED = "credits.transfer_debited"
CREDITED = "credits.transfer_credited"
_DELTA = {MINTED: 1, SPENT: -1, DEBITED: -1, CREDITED: 1}


async def _backoff() -> None:
    # A lost race usually means the winner's append is still being made durable: wait a
    # moment instead of spinning on a cache it has not updated yet.
    await asyncio.sleep(random.uniform(0.0005, 0.002))


class Overdraft(Exception):
    """The agent's balance does not cover the amount; nothing was written."""


def apply_balance(balances: dict[str, int], event: EventEnvelope) -> dict[str, int]:
    """The balances projection's fold: agent id -> credits."""
    sign = _DELTA.get(event.event_type)
    if sign is not None and event.entity_id is not None:
        balances[event.entity_id] = balances.get(event.entity_id, 0) + sign * event.payload["amount"]
    elif event.event_type == AGENT_CREATED and event.entity_id is not None:
        balances.setdefault(event.entity_id, 0)
    return balances


BALANCES = Projection(name="balances", initial=dict, apply=apply_balance, state_type=dict[str, int])


@dataclass
class _Agent:
    version: int = 0
    balance: int = 0


@dataclass
class CreditLedger:
    """Commands on the credit system. The in-memory view is only a cache of each agent's
    (version, balance); the journal's expected-version check is what enforces the rules."""

    journal: BaseEventJournal
    actor_id: str = "credit-demo"
    agents: dict[str, _Agent] = field(default_factory=dict)
    conflicts_retried: int = 0
    overdrafts_refused: int = 0

    def _event(self, event_type: str, agent_id: str, payload: dict, correlation_id: uuid.UUID | None = None) -> EventEnvelope:
        return EventEnvelope.new(event_type, {"agent_id": agent_id, **payload}, actor_id=self.actor_id,
                                 entity_id=agent_id, correlation_id=correlation_id)

    async def create_agent(self, agent_id: str, skill_level: float) -> None:
        await self.journal.append_event(self._event(AGENT_CREATED, agent_id, {"skill_level": skill_level}), expected_version=0)
        self.agents[agent_id] = _Agent(version=1)

    async def mint(self, agent_id: str, amount: int) -> None:
        await self._single(agent_id, MINTED, amount)

    async def spend(self, agent_id: str, amount: int) -> None:
        await self._single(agent_id, SPENT, -amount)

    async def _single(self, agent_id: str, event_type: str, delta: int) -> None:
        while True:
            agent = self.agents[agent_id]
            version, balance = agent.version, agent.balance
            if balance + delta < 0:
                self.overdrafts_refused += 1
                raise Overdraft(f"{agent_id} has {balance}, cannot spend {-delta}")
            try:
                await self.journal.append_event(self._event(event_type, agent_id, {"amount": abs(delta)}), expected_version=version)
            except ConcurrencyError:
                self.conflicts_retried += 1
                await _backoff()  # let the winner record its outcome, then re-read
                continue
            agent.version, agent.balance = version + 1, balance + delta
            return

    async def transfer(self, source: str, target: str, amount: int) -> None:
        if source == target:
            raise ValueError("a transfer needs two different agents")
        while True:
            src, dst = self.agents[source], self.agents[target]
            src_version, src_balance, dst_version = src.version, src.balance, dst.version
            if src_balance < amount:
                self.overdrafts_refused += 1
                raise Overdraft(f"{source} has {src_balance}, cannot transfer {amount}")
            correlation = uuid.uuid4()
            events = [
                self._event(DEBITED, source, {"amount": amount, "to": target}, correlation),
                self._event(CREDITED, target, {"amount": amount, "from": source}, correlation),
            ]
            try:
                await self.journal.append_events(events, expected_versions={source: src_version, target: dst_version})
            except ConcurrencyError:
                self.conflicts_retried += 1
                await _backoff()
                continue
            src.version, src.balance = src_version + 1, src_balance - amount
            dst.version, dst.balance = dst_version + 1, dst.balance + amount
            return
