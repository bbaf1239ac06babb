"""A bank-accounts system written as eventsourcing's documentation writes one, stored in
eventstore by setting one variable: ``PERSISTENCE_MODULE=eventstore.integrations.eventsourcing``.

``BankAccounts`` takes deposits (a snapshot every 5 events); ``Statements``, a process
application, keeps a ledger per account from BankAccounts' events, each processed exactly once
(its tracking is stored in the same write as its ledger events). The run is resumable: the
deposits to make are fixed (deposit ``i`` puts ``i + 1`` into account ``i % ACCOUNTS``), and
where a run stopped is read back from the accounts themselves, so a killed run picks up where
its last acknowledged deposit left off.

    python examples/eventsourcing_bank.py run 2000      # make deposits 0..1999 (resuming)
    python examples/eventsourcing_bank.py verify 2000   # check balances and ledgers; exit 1 if wrong

The journal comes from the environment (``DATABASE_URL``, or ``EVENT_JOURNAL_PATH`` per
application: ``BANKACCOUNTS_EVENT_JOURNAL_PATH`` and ``STATEMENTS_EVENT_JOURNAL_PATH``).
"""

from __future__ import annotations

import json
import os
import sys
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate, DomainEventProtocol, event
from eventsourcing.persistence import IntegrityError
from eventsourcing.system import ProcessApplication, SingleThreadedRunner, System

ACCOUNTS = 7


class BankAccount(Aggregate):
    @event("Opened")
    def __init__(self, number: int) -> None:
        self.number = number
        self.balance = 0

    @staticmethod
    def create_id(number: int) -> UUID:
        return uuid5(NAMESPACE_URL, f"/accounts/{number}")

    @event("Credited")
    def credit(self, amount: int) -> None:
        self.balance += amount


class Ledger(Aggregate):
    """What Statements has seen of one account: each credit's amount, by account version."""

    @event("Started")
    def __init__(self, account_id: UUID) -> None:
        self.account_id = account_id
        self.credits: dict[str, int] = {}

    @staticmethod
    def create_id(account_id: UUID) -> UUID:
        return uuid5(NAMESPACE_URL, f"/ledgers/{account_id}")

    @event("Recorded")
    def record(self, account_version: int, amount: int) -> None:
        if str(account_version) in self.credits:  # processed twice: the run is wrong
            raise AssertionError(f"credit {account_version} of {self.account_id} recorded twice")
        self.credits[str(account_version)] = amount


class BankAccounts(Application[UUID]):
    snapshotting_intervals = {BankAccount: 5}  # noqa: RUF012 (eventsourcing's documented form)

    def account(self, number: int) -> BankAccount:
        account_id = BankAccount.create_id(number)
        try:
            return self.repository.get(account_id)
        except Exception:  # not opened yet
            account = BankAccount(number)
            try:
                self.save(account)
            except IntegrityError:  # opened by a run that was killed after saving
                return self.repository.get(account_id)
            return account

    def deposit(self, number: int, amount: int) -> None:
        account = self.account(number)
        account.credit(amount)
        self.save(account)


class Statements(ProcessApplication[UUID]):
    @singledispatchmethod
    def policy(self, domain_event: DomainEventProtocol[UUID], processing_event: ProcessingEvent[UUID]) -> None:
        """Only credits make ledger entries."""

    @policy.register(BankAccount.Credited)
    def _(self, domain_event: BankAccount.Credited, processing_event: ProcessingEvent[UUID]) -> None:
        ledger_id = Ledger.create_id(domain_event.originator_id)
        try:
            ledger = self.repository.get(ledger_id)
        except Exception:
            ledger = Ledger(domain_event.originator_id)
        ledger.record(domain_event.originator_version, domain_event.amount)  # type: ignore[attr-defined]
        processing_event.collect_events(ledger)


def system() -> System:
    return System(pipes=[[BankAccounts, Statements]])


def deposits_made(accounts: BankAccounts) -> int:
    """How many of the fixed deposits are stored: account k has had deposits k, k+7, ..."""
    made = 0
    for number in range(ACCOUNTS):
        account = accounts.account(number)
        made += account.version - 1  # version 1 is "Opened"
    return made


def run(total: int) -> None:
    runner = SingleThreadedRunner(system())
    runner.start()
    try:
        accounts = runner.get(BankAccounts)
        start = deposits_made(accounts)
        # Deposits go round the accounts, so the next one is the first account behind the others.
        counts = [accounts.account(n).version - 1 for n in range(ACCOUNTS)]
        for i in range(start, total):
            number = i % ACCOUNTS
            if counts[number] * ACCOUNTS + number != i:
                raise AssertionError(f"deposit {i} is out of turn: counts {counts}")
            accounts.deposit(number, i + 1)
            counts[number] += 1
            if i % 25 == 0:
                print(f"deposit {i}", flush=True)
        runner.get(Statements).pull_and_process("BankAccounts")  # catch up what a killed run left
    finally:
        runner.stop()


def verify(total: int) -> dict[str, object]:
    runner = SingleThreadedRunner(system())
    runner.start()
    try:
        accounts = runner.get(BankAccounts)
        statements = runner.get(Statements)
        statements.pull_and_process("BankAccounts")
        problems = []
        for number in range(ACCOUNTS):
            account = accounts.account(number)
            expected = {str(v + 2): (number + v * ACCOUNTS) + 1 for v in range(len(range(number, total, ACCOUNTS)))}
            if account.balance != sum(expected.values()) or account.version - 1 != len(expected):
                problems.append(f"account {number}: balance {account.balance}, version {account.version}")
            ledger = statements.repository.get(Ledger.create_id(account.id))
            if ledger.credits != expected:
                problems.append(f"ledger of account {number}: {len(ledger.credits)} credits, {len(expected)} expected")
        snapshots = sum(
            1 for number in range(ACCOUNTS)
            if accounts.snapshots and list(accounts.snapshots.get(BankAccount.create_id(number), desc=True, limit=1))
        )
        return {"deposits": total, "problems": problems, "accounts_with_snapshots": snapshots}
    finally:
        runner.stop()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("run", "verify") or not argv[1].isdigit():
        print(__doc__, file=sys.stderr)
        return 2
    os.environ.setdefault("PERSISTENCE_MODULE", "eventstore.integrations.eventsourcing")
    total = int(argv[1])
    if argv[0] == "run":
        run(total)
        return 0
    report = verify(total)
    print(json.dumps(report))
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
