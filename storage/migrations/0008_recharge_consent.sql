-- Billing review fixes (issue 8 follow-up).

-- Auto-recharge charges a card only after its holder switched it on (POST /billing-threshold
-- {"enabled": true}); saving a card no longer arms it. Rows that exist keep their value: an
-- operator who wants existing accounts to opt in again runs
--   UPDATE accounts SET recharge_enabled = false WHERE ...;
-- by hand (README "Billing").
ALTER TABLE accounts ALTER COLUMN recharge_enabled SET DEFAULT false;
-- When the last auto-recharge was credited: a cool-down (SYNCNODE_RECHARGE_COOLDOWN_SECONDS)
-- keeps a burst of paid calls from charging the card again right after it.
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS recharge_succeeded_at timestamptz;

-- What Stripe says it received for a payment (amount_received); the ledger credits this, and a
-- row where it differs from amount_micros is the record of a mismatch.
ALTER TABLE payments ADD COLUMN IF NOT EXISTS received_micros bigint;

-- The PaymentIntent a refund, dispute or dispute reversal belongs to, so that the debits of one
-- payment are capped at what it credited. Rows written before this migration have none and are
-- not counted toward the cap.
ALTER TABLE ledger ADD COLUMN IF NOT EXISTS stripe_intent text;
CREATE INDEX IF NOT EXISTS ledger_stripe_intent ON ledger (stripe_intent) WHERE stripe_intent IS NOT NULL;

-- A won dispute gives its debit back, once per dispute.
ALTER TABLE ledger DROP CONSTRAINT IF EXISTS ledger_kind_check;
ALTER TABLE ledger ADD CONSTRAINT ledger_kind_check CHECK (kind IN (
    'grant', 'charge', 'refund', 'credit', 'topup', 'auto_recharge', 'stripe_refund', 'dispute',
    'dispute_reversal'));
CREATE UNIQUE INDEX IF NOT EXISTS ledger_one_reversal_per_dispute ON ledger (stripe_id)
    WHERE kind = 'dispute_reversal';
