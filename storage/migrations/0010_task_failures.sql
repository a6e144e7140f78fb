-- What ended a failed task, beside its message: a replay (same Idempotency-Key) answers from the
-- row, and must answer as the first request was answered from the worker's result. client_error
-- decides 400 or 502; the provider's answer (its HTTP status, Retry-After, OpenAI error code and
-- param) decides /v1's 429 and what the OpenAI SDK shows as e.code / e.param. Null where nothing
-- was said: rows written before this migration, cancels, tasks no provider answer ended.
ALTER TABLE tasks
    ADD COLUMN IF NOT EXISTS client_error boolean,
    ADD COLUMN IF NOT EXISTS upstream_status integer,
    ADD COLUMN IF NOT EXISTS upstream_retry_after double precision,
    ADD COLUMN IF NOT EXISTS upstream_code text,
    ADD COLUMN IF NOT EXISTS upstream_param text;
