-- One account per email: each creation looks the email up in accounts too, case-insensitively
-- (as `accounts set-password --email` already did). Not unique: older accounts may share one.
CREATE INDEX IF NOT EXISTS accounts_email_lower ON accounts (lower(email));
