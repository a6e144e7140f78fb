-- Per-account limit overrides (issue 11, POST /admin/limits). One JSON object per account:
-- {"rate": {"<route group>": per second}, "burst": {"<route group>": requests},
--  "in_flight": {"<pool>": tasks}}; what it does not name comes from the settings.
CREATE TABLE IF NOT EXISTS account_limits (
    uid         text PRIMARY KEY REFERENCES accounts(uid),
    overrides   jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(overrides) = 'object'),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
