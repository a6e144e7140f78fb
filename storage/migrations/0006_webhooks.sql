-- Completion webhooks (issue 10): where a task's events go, the per-account signing secret,
-- and every delivery attempt.

-- The target and the events it wants (start, output, completed), set with the charge.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS webhook text;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS webhook_events text[];

-- Standard Webhooks secrets (``whsec_…``, Fernet under the master key). After a rotation the
-- previous secret keeps signing too until ``previous_until``.
CREATE TABLE IF NOT EXISTS webhook_secrets (
    uid                  text PRIMARY KEY REFERENCES accounts(uid),
    ciphertext           bytea NOT NULL,
    previous_ciphertext  bytea,
    previous_until       timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    rotated_at           timestamptz
);

-- One row per event to deliver (at most one per task and event): the outbox. The status the
-- task had when it happened is kept, so a late retry still sends that moment's document.
CREATE TABLE IF NOT EXISTS webhook_events (
    id               bigserial PRIMARY KEY,
    task_id          bigint NOT NULL REFERENCES tasks(id),
    uid              text NOT NULL REFERENCES accounts(uid),
    event            text NOT NULL CHECK (event IN ('start', 'output', 'completed')),
    url              text NOT NULL,
    task_status      text NOT NULL,
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (task_id, event)
);
CREATE INDEX IF NOT EXISTS webhook_events_due ON webhook_events (next_attempt_at) WHERE state = 'pending';

CREATE TABLE IF NOT EXISTS webhook_attempts (
    event_id     bigint NOT NULL REFERENCES webhook_events(id),
    attempt      integer NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    duration_ms  integer,
    status_code  integer,
    -- sending (in flight, or its worker died), delivered, retry, failed (stopped for good)
    outcome      text NOT NULL DEFAULT 'sending',
    error        text,
    PRIMARY KEY (event_id, attempt)
);

-- Events are recorded by the one statement that changes a task's status, whichever code path
-- ran it (worker, poll, cancel, sweeper), in its transaction. NOTIFY is delivered on commit, so
-- the webhooks pool enqueues a delivery only for events that exist. The trigger's WHEN clause
-- keeps tasks without a webhook free of any cost.
CREATE OR REPLACE FUNCTION syncnode_webhook_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ev  text;
    eid bigint;
BEGIN
    IF NEW.status = 'running' THEN
        ev := 'start';
    ELSIF NEW.status IN ('completed', 'failed', 'canceled') THEN
        -- "output" is when the output appears; ours appear only at the end, so a filter with
        -- "completed" gets that one delivery instead of two identical documents.
        IF 'completed' = ANY (NEW.webhook_events) THEN
            ev := 'completed';
        ELSIF NEW.status = 'completed' THEN
            ev := 'output';
        END IF;
    END IF;
    IF ev IS NULL OR NOT ev = ANY (NEW.webhook_events) THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_events (task_id, uid, event, url, task_status)
    VALUES (NEW.id, NEW.uid, ev, NEW.webhook, NEW.status)
    ON CONFLICT (task_id, event) DO NOTHING
    RETURNING id INTO eid;
    IF eid IS NOT NULL THEN
        PERFORM pg_notify('syncnode_webhooks', eid::text);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS tasks_webhook_event ON tasks;
CREATE TRIGGER tasks_webhook_event AFTER UPDATE OF status ON tasks FOR EACH ROW
    WHEN (NEW.webhook IS NOT NULL AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION syncnode_webhook_event();
