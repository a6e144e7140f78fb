"""What requests carry besides their main body model: path and query parameters, and the bodies
that handlers check field by field (their messages name the field). ``/openapi.json`` documents
these; each states the rules its handler enforces, and ``tests/test_openapi*.py`` hold them to it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from jobs.names import KINDS
from jobs.results import PUBLIC_STATUS

# Query strings.

class UidQuery(BaseModel):
    uid: str | None = Field(None, description="Your own uid (checked against the credential)")


class JobQuery(UidQuery):
    job_id: str = Field(min_length=1, max_length=200)


_KINDS: list[JsonValue] = [*sorted(KINDS)]
_STATUSES: list[JsonValue] = [*sorted(set(PUBLIC_STATUS.values()))]


class TasksQuery(UidQuery):
    page: int = Field(1, ge=1, le=1_000_000)
    size: int = Field(10, ge=1, le=100)
    # Checked by the handler (ingress/tasks.py _filters); here so the description names them.
    kind: str | None = Field(None, description="Only tasks of this kind", json_schema_extra={"enum": _KINDS})
    status: str | None = Field(None, description="Only tasks in this status", json_schema_extra={"enum": _STATUSES})


class HistoryQuery(UidQuery):
    before: int | None = Field(None, ge=1, le=2**62, description="Entries older than this id")
    limit: int = Field(20, ge=1, le=100)
    size: int = Field(20, ge=1, le=100, description="The reference's name for limit")


class ReplicateHookQuery(BaseModel):
    job_id: str = Field(min_length=1, max_length=200)


# Path parameters.

# A task named in a path: its id or its job_id. Task ids are bigserial: more than 18 digits cannot
# exist and would overflow int8 in a query (a 500); int() alone would also take "+1", " 1", "1_0"
# and non-ASCII digits.
TASK_ID = r"[0-9]{1,18}"
JOB_ID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
TASK_REF = f"({TASK_ID}|{JOB_ID})"


class TaskPath(BaseModel):
    id: str = Field(pattern=f"^{TASK_REF}$", description="The task's id, or its job_id")


class ModelPath(BaseModel):
    model: str = Field(min_length=1, max_length=200, description="A model id as GET /v1/models lists it")


class FilePath(BaseModel):
    path: str = Field(min_length=1, description="<job_id>/<n>.<ext>, as a task's output names it")


# Bodies the handlers check field by field (their messages name the field); the same rules.

# Printable ASCII without spaces: a key goes into an Authorization header (httpx refuses
# anything else there, and a worker holding such a key crashed on every call of the account).
KEY_CHARS = "[!-~]*"
_KEY = Field(None, max_length=1000, json_schema_extra={"pattern": f"^{KEY_CHARS}$"},
             description="The key; null or \"\" removes it")
_ONE_OF_KEYS: list[JsonValue] = [{"required": [k]} for k in
                                  ("openrouter_key", "chatgpt_key", "replicate_key", "huggingface_key")]


class ProviderKeysUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": _ONE_OF_KEYS})
    uid: str | None = None
    openrouter_key: str | None = _KEY
    chatgpt_key: str | None = _KEY
    replicate_key: str | None = _KEY
    huggingface_key: str | None = _KEY


def _one_of(*names: str) -> list[JsonValue]:
    return [{"required": [n], "properties": {n: {"not": {"type": "null"}}}} for n in names]


class ThresholdUpdate(BaseModel):
    model_config = ConfigDict(json_schema_extra={"anyOf": _one_of("threshold", "recharge_below", "enabled")})
    uid: str | None = None
    threshold: float | None = Field(None, ge=1, le=10_000, description="Dollars to recharge")
    recharge_below: float | None = Field(None, ge=0, le=10_000, description="Recharge when below (dollars)")
    enabled: bool | None = None


class TopUpRequest(BaseModel):
    uid: str | None = None
    amount: float = Field(ge=5, le=1000, multiple_of=0.01,
                          description="Dollars, whole cents, within SYNCNODE_TOPUP_MIN..MAX (default 5..1000)")


PAYMENT_METHOD = "pm_[A-Za-z0-9_]{1,252}"


class CardAttach(BaseModel):
    uid: str | None = None
    payment_method: str = Field(json_schema_extra={"pattern": f"^{PAYMENT_METHOD}$"},
                                description="A confirmed Stripe PaymentMethod id")


class UidBody(BaseModel):
    uid: str | None = None


class PageTaskPath(BaseModel):
    id: str = Field(pattern=f"^{TASK_REF}$", description="The task's id, or its job_id (the page loads it)")


class KeyPrefixPath(BaseModel):
    prefix: str = Field(min_length=1, description="The first 8 characters of the key")


class UsageQuery(UidQuery):
    days: int = Field(30, ge=1, le=366)


# An account's email, however it arrives (POST /accounts, sign-up, sign-in, the CLI): what
# ingress/accounts.py valid_email enforces, by this very pattern. One @ and a dot after it; no
# whitespace, control, invisible or bidi characters inside (a CR/LF would inject a mail header,
# the others make two addresses look alike: Unicode's Default_Ignorable_Code_Point set, soft
# hyphen, Arabic letter mark, variation selectors and tags included). Blanks around are dropped.
# Spelled out rather than \s: Python's and JSON Schema's \s differ. At most 254 characters
# (RFC 5321's longest path), blanks included. The astral ranges are written \U........, which
# Python's re and the fuzzer's Rust engine read alike.
EMAIL_MAX = 254
_EMAIL_CHAR = (r"[^@\x00-\x20\x7f-\xa0\xad\u034f\u061c\u115f\u1160\u1680\u17b4\u17b5\u180b-\u180f"
               r"\u2000-\u200f\u2028-\u202f\u205f-\u206f\u3000\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufffb"
               r"\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]")
EMAIL_PATTERN = rf"^[\t\n\r ]*({_EMAIL_CHAR}{{1,64}}@{_EMAIL_CHAR}{{1,255}}\.{_EMAIL_CHAR}{{1,63}})[\t\n\r ]*$"


class SignUpRequest(BaseModel):
    email: str = Field(max_length=EMAIL_MAX, json_schema_extra={"pattern": EMAIL_PATTERN})
    password: str = Field(min_length=8, max_length=1024)


class SignInRequest(BaseModel):
    """An API key, or an email and its password."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [{"required": ["api_key"]},
                                                           {"required": ["email", "password"]}]})
    api_key: str | None = Field(None, min_length=1)
    email: str | None = Field(None, max_length=EMAIL_MAX, json_schema_extra={"pattern": EMAIL_PATTERN})
    password: str | None = Field(None, min_length=1)


class NextQuery(BaseModel):
    next: str | None = Field(None, description="Where to go after signing in (a local path)")
