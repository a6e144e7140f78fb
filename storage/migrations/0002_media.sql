-- Media predictions (issue 3): per-task Replicate state, and where each account's outputs go.

-- One row per media task, created with the task's first run. The prediction id itself lives
-- on tasks.provider_id; this holds what only fire-and-poll needs.
CREATE TABLE predictions (
    job_id             text PRIMARY KEY REFERENCES tasks(job_id),
    -- Set just before the create POST: a retried job that finds it set but no provider_id
    -- knows a prediction may exist and must look for it instead of creating another.
    create_started_at  timestamptz,
    -- The Standard Webhooks secret of the Replicate account that ran it (Fernet), when a
    -- webhook was requested.
    webhook_secret     bytea,
    cancel_requested   boolean NOT NULL DEFAULT false,
    provider_status    text,
    polls              integer NOT NULL DEFAULT 0,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE storage_configs (
    uid         text PRIMARY KEY REFERENCES accounts(uid),
    provider    text NOT NULL CHECK (provider IN ('default', 's3', 'bunny')),
    settings    jsonb NOT NULL,             -- the non-secret fields
    ciphertext  bytea,                      -- Fernet JSON of the secret fields
    masked      jsonb NOT NULL,             -- the secret fields, masked, for GET /storage
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX tasks_running_predictions ON tasks (pool, updated_at)
    WHERE status = 'running' AND provider_id IS NOT NULL;
