"""The connector plugin contract: what an integration type declares, and the declarations.

An integration type (a broker integration) is one `IntegrationPlugin`: the config a user enters
(`config_in`, a pydantic model: validation lives there), how each field is shown and protected
(`fields`: label, help text, secret or not), the config as it travels on the bus (`connection`,
secrets only as ciphertext), the statuses its connector reports, the command families it consumes
and the event families it emits, and the service that implements it. account-api's validation,
masking and encryption, its UI form, its health page and the AsyncAPI document read these
declarations instead of branching on the type.

Adding a broker: a `Broker` member (subjects), its connection model and declaration here, and its
connector service. See docs/adding-a-broker.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from brokerlink_shared.contracts.values import (
    IB_ACCOUNT_CODE,
    ClientId,
    GatewayAddress,
    IBConnection,
    IntegrationStatus,
    Port,
    SchwabConnection,
    Strict,
    validate_host,
)
from brokerlink_shared.subjects import (
    BALANCE_UPDATED,
    INTEGRATION_CONFIGURED,
    INTEGRATION_REMOVED,
    INTEGRATION_STATUS,
    INTEGRATION_TEST,
    REFRESH_FAILED,
    REFRESH_REQUESTED,
    SCHWAB_OAUTH_EXCHANGE,
    SCHWAB_TOKENS_ROTATED,
    Broker,
)

__all__ = [
    "PLUGINS",
    "SECRET_MASK",
    "ConfigError",
    "ConfigField",
    "FieldKind",
    "IBConfigIn",
    "IBFlexConfigIn",
    "IBFlexConnection",
    "IntegrationConnection",
    "IntegrationPlugin",
    "Masking",
    "SchwabConfigIn",
    "plugin_for",
]

# What a client sees instead of a stored secret (and may send back to keep it).
SECRET_MASK = "********"  # noqa: S105 - the mask shown instead of a secret

# The families every connector takes part in (the existing ones; a plugin may add its own).
COMMON_COMMANDS = (INTEGRATION_CONFIGURED, INTEGRATION_REMOVED, REFRESH_REQUESTED)
COMMON_EVENTS = (BALANCE_UPDATED, REFRESH_FAILED, INTEGRATION_STATUS)
COMMON_REQUESTS = (INTEGRATION_TEST,)


class FieldKind(StrEnum):
    """How a form renders a field."""

    TEXT = "text"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    SECRET = "secret"  # noqa: S105 - a field kind
    ADDRESS_LIST = "address_list"  # host:port lines


class Masking(StrEnum):
    """How a stored value is shown back to a client."""

    NONE = "none"  # shown as stored
    SECRET = "secret"  # noqa: S105 - never shown: a fixed mask when set, null when not
    PARTIAL = (
        "partial"  # identifiers that are not secret but not for screenshots either
    )


class ConfigError(ValueError):
    """A config cannot be stored as given; `field` names the offending field (never its value)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class ConfigField:
    """One field of an integration's config as a user sees it."""

    name: str
    label: str
    kind: FieldKind = FieldKind.TEXT
    help: str = ""
    required: bool = False  # required when the integration is first configured
    placeholder: str = ""
    masking: Masking = Masking.NONE
    # an update that omits the field keeps the stored value (secrets always do)
    keep_when_absent: bool = False
    default: str = ""  # what a new form shows
    locked: bool = False  # shown, not editable (IB's read-only flag)

    @property
    def secret(self) -> bool:
        return self.kind is FieldKind.SECRET

    @property
    def stored_as(self) -> str:
        """Column of the stored config: secrets are kept encrypted under `<name>_enc`."""
        return f"{self.name}_enc" if self.secret else self.name


@dataclass(frozen=True, slots=True)
class IntegrationPlugin:
    """Everything the rest of the system needs to know about one integration type."""

    integration_type: Broker
    label: str
    short_label: (
        str  # in messages: "app_key is required when Schwab is first configured"
    )
    summary: str
    service: str
    config_in: type[BaseModel]
    connection: type[Strict]
    fields: tuple[ConfigField, ...]
    statuses: frozenset[IntegrationStatus]
    consumes: tuple[str, ...] = COMMON_COMMANDS
    emits: tuple[str, ...] = COMMON_EVENTS
    answers: tuple[str, ...] = COMMON_REQUESTS
    # stored fields that belong to one login: kept while the `credential_fields` stay the same,
    # dropped when they change (a new login has none of the old one's tokens); those the config
    # model lacks are written only by the connector or a sign-in, never by a client
    login_bound_fields: tuple[str, ...] = ()
    credential_fields: tuple[str, ...] = ()
    # flags shown instead of managed values: {flag name: stored field}
    flags: dict[str, str] = field(default_factory=dict)
    # set once the user has signed in with the broker (OAuth); None: no sign-in step
    sign_in_field: str | None = None
    reauth_help: str = ""
    docs_url: str = ""
    # how long a connection test may take when the broker is slower than the usual deadline
    test_timeout_s: float | None = None
    # a valid config (made-up values): the API's example, and what generic tests configure
    example: dict[str, Any] = field(default_factory=dict)

    @property
    def secret_fields(self) -> tuple[ConfigField, ...]:
        return tuple(f for f in self.fields if f.secret)

    @property
    def stored_secret_names(self) -> frozenset[str]:
        """Stored names that hold ciphertext (entered secrets and managed tokens)."""
        return frozenset(f.stored_as for f in self.secret_fields) | frozenset(
            name for name in self.login_bound_fields if name.endswith("_enc")
        )

    def config_field(self, name: str) -> ConfigField | None:
        return next((f for f in self.fields if f.name == name), None)

    def stored_config(
        self,
        incoming: BaseModel,
        previous: dict[str, Any] | None,
        encrypt: Callable[[str], str],
    ) -> dict[str, Any]:
        """The config to store from a validated `config_in`: secrets encrypted (an omitted or
        masked secret keeps the stored one), fields declared `keep_when_absent` kept when
        omitted, login-bound fields dropped when a credential changes."""
        prev = previous or {}
        data = incoming.model_dump()
        out: dict[str, Any] = {}
        for name in type(incoming).model_fields:
            decl = self.config_field(name)
            value = data[name]
            if decl is not None and decl.secret:
                text = value.get_secret_value() if value is not None else None
                if text in (None, "", SECRET_MASK):
                    if not prev.get(decl.stored_as):
                        if decl.required:
                            raise ConfigError(name, self._required_message(name))
                        continue
                    out[decl.stored_as] = prev[decl.stored_as]
                else:
                    out[decl.stored_as] = encrypt(str(text))
                continue
            if value is None and decl is not None and decl.keep_when_absent:
                if name not in prev:
                    if decl.required:
                        raise ConfigError(name, self._required_message(name))
                    continue  # first time: the bus model's default (e.g. no backups)
                value = prev[name]
            if value is None and decl is not None and decl.required:
                raise ConfigError(name, self._required_message(name))
            out[name] = value
        same_login = all(out.get(c) == prev.get(c) for c in self.credential_fields)
        for name in self.login_bound_fields:
            if out.get(name) is not None:
                continue  # the request set it
            kept = prev.get(name) if same_login else None
            if kept is not None or name.endswith("_enc") or name in out:
                out[name] = kept
        return self.connection.model_validate(self._bus_values(out)).model_dump(
            mode="json", exclude={"type"}
        ) | {k: v for k, v in out.items() if k not in self.connection.model_fields}

    def _required_message(self, name: str) -> str:
        return f"{name} is required when {self.short_label} is first configured"

    def _bus_values(self, stored: dict[str, Any]) -> dict[str, Any]:
        fields = self.connection.model_fields
        return {k: v for k, v in stored.items() if k in fields and k != "type"}

    def public_config(self, stored: dict[str, Any]) -> dict[str, Any]:
        """The stored config as a client may see it: secrets masked, tokens reduced to flags."""
        hidden = self.stored_secret_names | set(self.flags.values())
        names = [*self.config_in.model_fields, *(k for k in stored if k not in hidden)]
        out: dict[str, Any] = {}
        for name in dict.fromkeys(names):
            decl = self.config_field(name)
            if decl is not None and decl.secret:
                out[name] = SECRET_MASK if stored.get(decl.stored_as) else None
            elif name.endswith("_enc") or name in _NEVER_SHOWN:
                continue
            elif decl is not None and decl.masking is Masking.PARTIAL:
                out[name] = _partial(stored.get(name))
            else:
                out[name] = stored.get(name)
        for flag, source in self.flags.items():
            out[flag] = bool(stored.get(source, False))
        return out

    def bus_connection(self, stored: dict[str, Any]) -> Strict:
        """The stored config as it travels to the connector (secrets stay ciphertext)."""
        return self.connection.model_validate(self._bus_values(stored))

    def same_login(
        self, before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
    ) -> bool:
        """Whether a config change keeps the login (and its tokens): always for a type without a
        sign-in; for one with, when it stays this type (`before` None means it did not) and its
        credential fields are unchanged."""
        if self.sign_in_field is None:
            return True
        if before is None or after is None:
            return False
        return all(before.get(c) == after.get(c) for c in self.credential_fields)

    def signed_in(self, stored: dict[str, Any] | None) -> bool | None:
        """Whether the sign-in step is done; None for a type without one."""
        if self.sign_in_field is None:
            return None
        return bool((stored or {}).get(self.sign_in_field))

    def can_refresh(self, stored: dict[str, Any] | None) -> bool:
        """Whether a refresh could succeed now (a type with a sign-in step needs it done)."""
        return self.signed_in(stored) is not False

    def form(self) -> dict[str, object]:
        """The declaration as the UI renders it (JSON-ready; no validation rules beyond hints)."""
        schema = self.config_in.model_json_schema()
        props = schema.get("properties", {})
        return {
            "type": self.integration_type.value,
            "prefix": self.integration_type.value.lower().replace("_", "-"),
            "label": self.label,
            "short_label": self.short_label,
            "sign_in": self.sign_in_field is not None,
            # the public flag that tells a finished sign-in (e.g. Schwab's has_tokens)
            "sign_in_flag": next(
                (f for f, src in self.flags.items() if src == self.sign_in_field), None
            ),
            "summary": self.summary,
            "statuses": sorted(s.value for s in self.statuses),
            "reauth_help": self.reauth_help,
            "docs_url": self.docs_url,
            "fields": [
                {
                    "name": f.name,
                    "id": f.name.replace("_", "-"),
                    "label": f.label,
                    "kind": f.kind.value,
                    "help": f.help,
                    "required": f.required,
                    "placeholder": f.placeholder,
                    "default": f.default,
                    "locked": f.locked,
                    "masked": f.masking is not Masking.NONE,
                    "keep": f.keep_when_absent or f.secret,
                    "secret": f.secret,
                    "pattern": _pattern(props.get(f.name, {})),
                }
                for f in self.fields
            ],
        }


_NEVER_SHOWN = frozenset({"access_token", "refresh_token", "login"})


def _partial(value: object) -> str | None:
    """An identifier shown only in part: its first four characters."""
    if not value:
        return None
    text = str(value)
    return text[:4] + "…" if len(text) > 8 else "…"


def _pattern(prop: dict[str, object]) -> str | None:
    if isinstance(prop.get("pattern"), str):
        return str(prop["pattern"])
    options = prop.get("anyOf")
    for option in options if isinstance(options, list) else []:
        if isinstance(option, dict) and isinstance(option.get("pattern"), str):
            return str(option["pattern"])
    return None


class _In(BaseModel):
    """Config as a client sends it: unknown fields rejected (so tokens cannot be injected)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# ---- IB (IB Gateway / TWS through ib-connector) -------------------------------------------


class IBConfigIn(_In):
    host: Annotated[str, Field(min_length=1, max_length=253)]
    port: Port
    client_id: ClientId
    account_code: Annotated[str, Field(pattern=IB_ACCOUNT_CODE)] | None = None
    read_only: bool = True
    backups: (
        Annotated[
            list[GatewayAddress],
            Field(
                max_length=8,
                description="tried in order when the main gateway is down; "
                "absent keeps the stored list, [] clears it",
            ),
        ]
        | None
    ) = None

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return validate_host(value)

    @field_validator("read_only")
    @classmethod
    def _read_only(cls, value: bool) -> bool:
        if not value:
            raise ValueError("brokerlink only uses the IB API read-only")
        return value


IB = IntegrationPlugin(
    integration_type=Broker.IB,
    label="Interactive Brokers (IB Gateway / TWS)",
    short_label="IB",
    summary="Live balances through an IB Gateway or TWS you run; accounts on one gateway "
    "share one API session.",
    service="ib-connector",
    config_in=IBConfigIn,
    connection=IBConnection,
    fields=(
        ConfigField(
            "host",
            "Host",
            help="IB Gateway / TWS host",
            required=True,
            default="localhost",
        ),
        ConfigField(
            "port",
            "Port",
            FieldKind.INTEGER,
            help="4001 live / 4002 paper (Gateway); 7496 / 7497 (TWS)",
            required=True,
            default="4001",
        ),
        ConfigField(
            "client_id",
            "Client ID",
            FieldKind.INTEGER,
            help="accounts on the same gateway share one API session",
            required=True,
            default="1",
        ),
        ConfigField(
            "account_code",
            "Account code",
            help="e.g. U1234567; needed when the gateway manages several",
            placeholder="U1234567",
        ),
        ConfigField(
            "read_only",
            "Read-only",
            FieldKind.BOOLEAN,
            help="brokerlink only reads from IB; it never places orders.",
            locked=True,
        ),
        ConfigField(
            "backups",
            "Backup gateways",
            FieldKind.ADDRESS_LIST,
            help="optional: one host:port per line, tried in order when the primary is down",
            keep_when_absent=True,
        ),
    ),
    statuses=frozenset(
        {
            IntegrationStatus.PENDING,
            IntegrationStatus.CONNECTED,
            IntegrationStatus.DISCONNECTED,
            IntegrationStatus.ERROR,
        }
    ),
    example={
        "host": "127.0.0.1",
        "port": 4001,
        "client_id": 7,
        "account_code": "U1234567",
    },
)


# ---- Schwab (Trader API through schwab-connector) -----------------------------------------


class SchwabConfigIn(_In):
    app_key: (
        Annotated[
            str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
        ]
        | None
    ) = None
    app_secret: Annotated[SecretStr, Field(min_length=1, max_length=256)] | None = None
    account_number: Annotated[str, Field(pattern=r"^\d{4,12}$")] | None = None
    account_hash: (
        Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9]+$")]
        | None
    ) = None


SCHWAB = IntegrationPlugin(
    integration_type=Broker.SCHWAB,
    label="Charles Schwab",
    short_label="Schwab",
    summary="Balances through the Schwab Trader API: your developer app key and secret, then "
    "a sign-in with Schwab (valid 7 days).",
    service="schwab-connector",
    config_in=SchwabConfigIn,
    connection=SchwabConnection,
    fields=(
        ConfigField(
            "app_key",
            "App key",
            help="from your app at developer.schwab.com",
            required=True,
            masking=Masking.PARTIAL,
            keep_when_absent=True,
        ),
        ConfigField(
            "app_secret",
            "App secret",
            FieldKind.SECRET,
            help="stored encrypted; leave blank to keep the saved one",
            required=True,
            masking=Masking.SECRET,
        ),
        ConfigField(
            "account_number",
            "Account number",
            help="optional when the login sees one account",
            keep_when_absent=True,
        ),
    ),
    statuses=frozenset(
        {
            IntegrationStatus.PENDING,
            IntegrationStatus.CONNECTED,
            IntegrationStatus.ERROR,
            IntegrationStatus.EXPIRING_SOON,
            IntegrationStatus.REAUTH_REQUIRED,
        }
    ),
    emits=(*COMMON_EVENTS, SCHWAB_TOKENS_ROTATED),
    answers=(*COMMON_REQUESTS, SCHWAB_OAUTH_EXCHANGE),
    login_bound_fields=("token_enc", "account_hash", "unverified", "login"),
    credential_fields=("app_key",),
    flags={"has_tokens": "token_enc", "unverified": "unverified"},
    sign_in_field="token_enc",
    reauth_help="Sign in with Schwab again (Re-authenticate): Schwab ends a sign-in after 7 days.",
    docs_url="https://developer.schwab.com",
    example={"app_key": "example-app-key", "app_secret": "example-app-secret-4711"},
)


# ---- IB Flex Web Service (daily statements through ibflex-connector) ----------------------

FLEX_TOKEN_HELP = (
    "IB Client Portal → Performance & Reports → Flex Queries → Flex Web Service "  # noqa: S105 - help text
    "Configuration: generate a token (valid up to a year; optionally IP-restricted)"
)


class IBFlexConfigIn(_In):
    # optional so that an update can keep the saved token; required when first configured
    token: Annotated[SecretStr, Field(min_length=8, max_length=64)] | None = None
    query_id: Annotated[str, Field(pattern=r"^\d{1,12}$")]
    account_code: Annotated[str, Field(pattern=IB_ACCOUNT_CODE)] | None = None

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        text = value.get_secret_value() if value is not None else SECRET_MASK
        if text != SECRET_MASK and not (text.isascii() and text.isalnum()):
            raise ValueError("the token has letters and digits only")
        return value


class IBFlexConnection(Strict):
    """IB Flex Web Service config as it travels on the bus; the token only as ciphertext."""

    type: Literal["IB_FLEX"] = "IB_FLEX"
    token_enc: str = Field(
        description="Flex Web Service token, encrypted with the SecretBox"
    )
    query_id: Annotated[str, Field(pattern=r"^\d{1,12}$")]
    account_code: Annotated[str, Field(pattern=IB_ACCOUNT_CODE)] | None = None


IB_FLEX = IntegrationPlugin(
    integration_type=Broker.IB_FLEX,
    label="Interactive Brokers (Flex Web Service)",
    short_label="IB Flex",
    summary="Daily balances, positions and cash from an IB Flex Query: no gateway to run. "
    "The query needs the sections Account Information, Net Asset Value (NAV) in Base, "
    "Open Positions and Cash Report.",
    service="ibflex-connector",
    config_in=IBFlexConfigIn,
    connection=IBFlexConnection,
    fields=(
        ConfigField(
            "token",
            "Flex Web Service token",
            FieldKind.SECRET,
            help=FLEX_TOKEN_HELP
            + "; stored encrypted, leave blank to keep the saved one",
            required=True,
            masking=Masking.SECRET,
        ),
        ConfigField(
            "query_id",
            "Flex Query ID",
            help="Performance & Reports → Flex Queries → your Activity Flex Query's ID",
            required=True,
            placeholder="123456",
        ),
        ConfigField(
            "account_code",
            "Account code",
            help="optional: which account, when the query covers several",
            placeholder="U1234567",
        ),
    ),
    statuses=frozenset(
        {
            IntegrationStatus.PENDING,
            IntegrationStatus.CONNECTED,
            IntegrationStatus.ERROR,
            IntegrationStatus.EXPIRING_SOON,
            IntegrationStatus.REAUTH_REQUIRED,
        }
    ),
    reauth_help="Generate a new Flex Web Service token: " + FLEX_TOKEN_HELP + ".",
    # two HTTPS calls spaced by IB's throttle, and IB generating the statement in between
    test_timeout_s=45.0,
    docs_url="https://www.interactivebrokers.com/campus/ibkr-api-page/flex-web-service/",
    example={"token": "918273645546372819000111", "query_id": "654321"},
)


PLUGINS: dict[Broker, IntegrationPlugin] = {
    p.integration_type: p for p in (IB, SCHWAB, IB_FLEX)
}

IntegrationConnection = Annotated[
    IBConnection | SchwabConnection | IBFlexConnection, Field(discriminator="type")
]


def plugin_for(integration_type: Broker | str) -> IntegrationPlugin:
    """The declaration of an integration type (KeyError for an unknown one)."""
    return PLUGINS[Broker(integration_type)]
