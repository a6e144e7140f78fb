-- Web UI sign-in (issue 9): an email + argon2id password per account, kept apart from
-- accounts.email (which older accounts may share or lack) so one login email maps to one uid.
CREATE TABLE IF NOT EXISTS web_logins (
    email          text PRIMARY KEY,       -- lower-cased
    uid            text NOT NULL UNIQUE REFERENCES accounts(uid),
    password_hash  text NOT NULL,          -- argon2id, PHC string
    updated_at     timestamptz NOT NULL DEFAULT now()
);
-- The home page's spend chart reads charges and refunds per day.
CREATE INDEX IF NOT EXISTS ledger_uid_created ON ledger (uid, created_at);
