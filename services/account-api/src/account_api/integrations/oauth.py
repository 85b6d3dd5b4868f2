"""The Schwab OAuth flow: start (a signed, single-use state) and the callback (the code
exchanged by the Schwab connector, the tokens stored on every account of that login)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets as pysecrets
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from brokerlink_shared.contracts.events import (
    SchwabOAuthExchangeReply,
    SchwabOAuthExchangeRequest,
)
from brokerlink_shared.crypto import SecretBox
from brokerlink_shared.messaging import request_model
from brokerlink_shared.subjects import SCHWAB_OAUTH_EXCHANGE, Topology
from faststream.nats import NatsBroker
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from account_api.actor import Actor
from account_api.audit.service import Change, audit
from account_api.config import Settings
from account_api.errors import AccountNotFound, Conflict, InvalidField
from account_api.integrations import lifecycle
from account_api.integrations.reads import owned_account
from account_api.integrations.refreshes import RefreshService
from account_api.integrations.repository import integration_state, of_login
from account_api.integrations.schemas import OAuthStartOut
from account_api.unit_of_work import UnitOfWork

CALLBACK_PATH = "/api/integrations/schwab/callback"


class SchwabOAuthFlow:
    def __init__(
        self,
        settings: Settings,
        secrets: SecretBox,
        broker: NatsBroker,
        topology: Topology,
        refreshes: RefreshService,
    ) -> None:
        self._settings = settings
        self._secrets = secrets
        self._broker = broker
        self._topology = topology
        self._refreshes = refreshes

    def _sign(self, nonce: str) -> str:
        key = self._settings.jwt_secret.get_secret_value().encode()
        mac = hmac.new(key, f"oauth-state:{nonce}".encode(), hashlib.sha256).digest()
        return f"{nonce}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"

    def _verify(self, state: str) -> str | None:
        nonce, _, _sig = state.partition(".")
        # Bytes: compare_digest refuses non-ASCII str, and the state comes from anyone's browser.
        if not nonce or not hmac.compare_digest(
            self._sign(nonce).encode(), state.encode()
        ):
            return None
        return nonce

    @property
    def callback_url(self) -> str:
        return self._settings.public_url.rstrip("/") + CALLBACK_PATH

    async def oauth_start(
        self, uow: UnitOfWork, actor: Actor, account_id: int
    ) -> OAuthStartOut:
        async with uow:
            account = await owned_account(uow, actor, account_id)
            if account.integration_type != "SCHWAB":
                raise Conflict(
                    "OAuth applies to Schwab integrations; configure one first",
                    field="type",
                )
            nonce = pysecrets.token_urlsafe(24)
            expires = datetime.now(UTC) + timedelta(
                seconds=self._settings.oauth_state_ttl_s
            )
            uow.oauth_states.add(nonce, actor.user_id, account.id, expires)
            await audit(uow, actor, Change("integration.reauth_start", account.id))
            await uow.commit()
            query = urlencode(
                {
                    "response_type": "code",
                    "client_id": (account.integration_config or {})["app_key"],
                    "redirect_uri": self.callback_url,
                    "state": self._sign(nonce),
                }
            )
            return OAuthStartOut(
                authorize_url=f"{self._settings.schwab_authorize_url}?{query}",
                expires_at=expires,
            )

    async def oauth_callback(
        self, uow: UnitOfWork, code: str, state: str, request_id: str
    ) -> tuple[int, bool, str]:
        """Finish the OAuth dance; returns (account id, success, message)."""
        nonce = self._verify(state)
        if nonce is None:
            raise InvalidField("invalid OAuth state", field="state")
        async with uow:
            row = await uow.oauth_states.consume(nonce, datetime.now(UTC))
            if row is None:
                raise InvalidField("OAuth state expired or already used", field="state")
            user_id, account_id = row.user_id, row.account_id
            account = await uow.accounts.owned(user_id, account_id)
            if account is None or account.integration_type != "SCHWAB":
                raise AccountNotFound()
            config = dict(account.integration_config or {})
            await uow.commit()  # the state is spent whatever happens next
        request = SchwabOAuthExchangeRequest(
            user_id=user_id,
            account_id=account_id,
            app_key=config["app_key"],
            app_secret_enc=config["app_secret_enc"],
            code_enc=self._secrets.encrypt(code),
            redirect_uri=self.callback_url,
            account_number=config.get("account_number"),
        )
        try:
            reply = await request_model(
                self._broker,
                self._topology.subject(SCHWAB_OAUTH_EXCHANGE),
                request,
                SchwabOAuthExchangeReply,
                timeout_s=self._settings.integration_test_timeout_s + 5,
            )
        except (NoRespondersError, NatsTimeout, TimeoutError):
            reply = SchwabOAuthExchangeReply(
                success=False, message="the Schwab connector did not answer"
            )
        actor = Actor(user_id=user_id, request_id=request_id)
        async with uow:
            siblings = await uow.accounts.sharing_login(user_id, config["app_key"])
            account = await owned_account(uow, actor, account_id, lock=True)
            integrations = uow.integrations
            current = account.integration_config or {}
            if (
                account.integration_type != "SCHWAB"
                or current.get("app_key") != config["app_key"]
            ):
                # The integration changed while the user was at Schwab: these tokens are not its.
                await audit(
                    uow,
                    actor,
                    Change(
                        "integration.reauth",
                        account_id,
                        detail={"success": False, "reason": "integration changed"},
                    ),
                )
                await uow.commit()
                return (
                    account_id,
                    False,
                    "the integration changed during sign-in; start again",
                )
            now = datetime.now(UTC)
            if not reply.success or not reply.token_enc:
                integrations.save(
                    account,
                    lifecycle.reauth_required(
                        integration_state(account), message=reply.message, now=now
                    ),
                )
                await audit(
                    uow,
                    actor,
                    Change("integration.reauth", account_id, detail={"success": False}),
                )
                await uow.commit()
                return account_id, False, reply.message
            # Only this login's accounts: other logins on the same app key keep their own.
            login_accounts = of_login(siblings, reply.login, reply.visible_accounts)
            for sibling in dict.fromkeys([*login_accounts, account]):
                integrations.save(
                    sibling,
                    lifecycle.tokens_rotated(
                        integration_state(sibling),
                        token_enc=reply.token_enc,
                        access_expires_at=reply.access_expires_at,
                        refresh_expires_at=reply.refresh_expires_at,
                        login=reply.login,
                        keep_newer=False,  # a fresh sign-in replaces whatever was stored
                    ),
                )
            integrations.save(
                account,
                lifecycle.reauth_succeeded(
                    integration_state(account),
                    account_hash=reply.account_hash,
                    correlation_id=request_id,
                    now=now,
                ),
            )
            await audit(
                uow,
                actor,
                Change(
                    "integration.reauth",
                    account_id,
                    ["tokens"],
                    detail={"success": True},
                ),
            )
            # Signed in: fetch the first balance now rather than at the next schedule.
            self._refreshes.stage(uow, account, correlation=request_id, job_id=None)
            await uow.commit()
            return account_id, True, reply.message
