"""Balance history use cases."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from account_api.accounts.repository import AccountRepository
from account_api.actor import Actor
from account_api.audit.service import Change, audit
from account_api.db import UnitOfWork
from account_api.errors import AccountNotFound, Conflict, NotFound
from account_api.history.repository import HistoryRepository
from account_api.history.schemas import HistoryIn, HistoryOut, HistoryUpdate


async def _check_owner(uow: UnitOfWork, actor: Actor, account_id: int) -> None:
    if await AccountRepository(uow.session).owned(actor.user_id, account_id) is None:
        raise AccountNotFound()


async def list_history(
    uow: UnitOfWork, actor: Actor, account_id: int
) -> list[HistoryOut]:
    async with uow:
        await _check_owner(uow, actor, account_id)
        return [
            HistoryOut.model_validate(r)
            for r in await HistoryRepository(uow.session).for_account(account_id)
        ]


async def add_history(
    uow: UnitOfWork, actor: Actor, account_id: int, body: HistoryIn
) -> HistoryOut:
    async with uow:
        await _check_owner(uow, actor, account_id)
        row = await HistoryRepository(uow.session).upsert(
            account_id, body.date, body.balance, note=body.note
        )
        await audit(
            uow,
            actor,
            Change("history.upsert", account_id, sorted(body.model_fields_set)),
        )
        out = HistoryOut.model_validate(row)
        await uow.commit()
        return out


async def update_history(
    uow: UnitOfWork, actor: Actor, account_id: int, history_id: int, body: HistoryUpdate
) -> HistoryOut:
    async with uow:
        await _check_owner(uow, actor, account_id)
        row = await HistoryRepository(uow.session).get(account_id, history_id)
        if row is None:
            raise NotFound("history entry not found")
        changed = []
        for field in ("date", "balance", "note"):
            if field in body.model_fields_set and getattr(body, field) is not None:
                setattr(row, field, getattr(body, field))
                changed.append(field)
        await audit(uow, actor, Change("history.update", account_id, changed))
        try:
            await uow.session.flush()
        except IntegrityError:
            raise Conflict(
                "another entry already exists for that date", field="date"
            ) from None
        out = HistoryOut.model_validate(row)
        await uow.commit()
        return out


async def delete_history(
    uow: UnitOfWork, actor: Actor, account_id: int, history_id: int
) -> None:
    async with uow:
        await _check_owner(uow, actor, account_id)
        repo = HistoryRepository(uow.session)
        row = await repo.get(account_id, history_id)
        if row is None:
            raise NotFound("history entry not found")
        await repo.delete(row)
        await audit(
            uow,
            actor,
            Change("history.delete", account_id, detail={"date": row.date.isoformat()}),
        )
        await uow.commit()
