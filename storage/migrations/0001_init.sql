-- Accounts, credentials, tasks and the ledger. Money is integer micro-dollars.
CREATE TABLE accounts (
    uid             text PRIMARY KEY,
    email           text,
    -- A cache of SUM(ledger.amount_micros), updated in the same statement as each ledger row.
    balance_micros  bigint NOT NULL DEFAULT 0 CHECK (balance_micros >= 0),
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    key_hash    bytea PRIMARY KEY,          -- sha256 of the key; the key itself is never stored
    uid         text NOT NULL REFERENCES accounts(uid),
    prefix      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_uid ON api_keys (uid);

CREATE TABLE provider_keys (
    uid         text NOT NULL REFERENCES accounts(uid),
    name        text NOT NULL,              -- openrouter_key, chatgpt_key, replicate_key, huggingface_key
    ciphertext  bytea NOT NULL,             -- Fernet under the master key
    masked      text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (uid, name)
);

CREATE TABLE tasks (
    id               bigserial PRIMARY KEY,
    job_id           text NOT NULL UNIQUE,
    uid              text NOT NULL REFERENCES accounts(uid),
    kind             text NOT NULL,
    pool             text NOT NULL,
    model            text,
    prompt           text,
    request          jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'completed', 'failed', 'canceled')),
    output           jsonb,
    error            text,
    cost_micros      bigint NOT NULL,
    refunded         boolean NOT NULL DEFAULT false,
    provider_id      text,
    idempotency_key  text,
    request_hash     bytea,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz
);
CREATE UNIQUE INDEX tasks_idempotency ON tasks (uid, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_listing ON tasks (uid, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX tasks_pending ON tasks (pool, created_at) WHERE status IN ('queued', 'running');

CREATE TABLE ledger (
    id             bigserial PRIMARY KEY,
    uid            text NOT NULL REFERENCES accounts(uid),
    amount_micros  bigint NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('grant', 'charge', 'refund', 'credit', 'topup')),
    task_id        bigint REFERENCES tasks(id),
    reason         text,
    created_at     timestamptz NOT NULL DEFAULT now()
);
-- A task is refunded at most once, whatever races finish it.
CREATE UNIQUE INDEX ledger_one_refund ON ledger (task_id) WHERE kind = 'refund';
CREATE UNIQUE INDEX ledger_one_charge ON ledger (task_id) WHERE kind = 'charge';
CREATE INDEX ledger_uid ON ledger (uid, id DESC);
