-- One account per email: each creation looks the email up in accounts too, case-insensitively
-- (as `accounts set-password --email` already did). Not unique: older accounts may share one.
-- A hash index: only equality is asked, and an older account's email may be any length (the
-- CLI set none), longer than a B-tree entry may be (2704 bytes), which would fail this migration.
CREATE INDEX IF NOT EXISTS accounts_email_lower ON accounts USING hash (lower(email));
