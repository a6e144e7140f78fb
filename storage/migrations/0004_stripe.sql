-- Money in from Stripe (issue 8): customers and saved cards, top-ups and auto-recharges
-- (payments), Stripe's webhook events, and ledger rows that point at Stripe objects.

ALTER TABLE accounts ADD COLUMN IF NOT EXISTS stripe_customer_id text UNIQUE;
-- The default card: {payment_method, brand, last4, exp_month, exp_year}; NULL → no card on file.
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS card jsonb;
-- Auto-recharge: charge recharge_amount_micros when a charge leaves the balance below this.
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS recharge_below_micros bigint
    CHECK (recharge_below_micros IS NULL OR recharge_below_micros >= 0);
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS recharge_enabled boolean NOT NULL DEFAULT true;
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS recharge_failures integer NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS recharge_retry_at timestamptz;
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS recharge_off_reason text;
-- What the charge statement reads on the hot path: one stored flag, no join.
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS recharge_armed boolean
    GENERATED ALWAYS AS (recharge_enabled AND card IS NOT NULL AND recharge_below_micros IS NOT NULL) STORED;
-- Stripe refunds and disputes are the only debits that may take a balance below zero: as far
-- as their own sum and no further (every other statement keeps its own `balance >= x` guard).
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS clawback_micros bigint NOT NULL DEFAULT 0
    CHECK (clawback_micros >= 0);
ALTER TABLE accounts DROP CONSTRAINT IF EXISTS accounts_balance_micros_check;
ALTER TABLE accounts DROP CONSTRAINT IF EXISTS accounts_balance_floor;
ALTER TABLE accounts ADD CONSTRAINT accounts_balance_floor CHECK (balance_micros >= -clawback_micros);

ALTER TABLE ledger DROP CONSTRAINT IF EXISTS ledger_kind_check;
ALTER TABLE ledger ADD CONSTRAINT ledger_kind_check CHECK (kind IN (
    'grant', 'charge', 'refund', 'credit', 'topup', 'auto_recharge', 'stripe_refund', 'dispute'));
-- The PaymentIntent (topup, auto_recharge), Charge (stripe_refund) or Dispute (dispute) id.
ALTER TABLE ledger ADD COLUMN IF NOT EXISTS stripe_id text;
-- A PaymentIntent credits the ledger exactly once, whichever path reports it first.
CREATE UNIQUE INDEX IF NOT EXISTS ledger_one_credit_per_intent ON ledger (stripe_id)
    WHERE kind IN ('topup', 'auto_recharge');
CREATE UNIQUE INDEX IF NOT EXISTS ledger_one_debit_per_dispute ON ledger (stripe_id) WHERE kind = 'dispute';
CREATE INDEX IF NOT EXISTS ledger_stripe_refunds ON ledger (stripe_id) WHERE kind = 'stripe_refund';

-- One row per card payment, written before Stripe is called, so that a crash anywhere
-- leaves something the reconciliation (workers/billing.py) can finish.
CREATE TABLE IF NOT EXISTS payments (
    id               bigserial PRIMARY KEY,
    uid              text NOT NULL REFERENCES accounts(uid),
    kind             text NOT NULL CHECK (kind IN ('topup', 'auto_recharge')),
    amount_micros    bigint NOT NULL CHECK (amount_micros > 0),
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'requires_action', 'succeeded', 'failed')),
    payment_intent   text UNIQUE,
    client_secret    text,
    error            text,
    idempotency_key  text,
    -- Whoever drives the payment (a request, the recharge job, the reconciliation) holds it
    -- until then, so two of them never create or confirm the same payment at once.
    lease_until      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS payments_idempotency ON payments (uid, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- At most one auto-recharge in flight per account, whatever the concurrency.
CREATE UNIQUE INDEX IF NOT EXISTS payments_one_recharge ON payments (uid)
    WHERE kind = 'auto_recharge' AND status = 'pending';
CREATE INDEX IF NOT EXISTS payments_open ON payments (created_at, id) WHERE status IN ('pending', 'requires_action');

-- Every Stripe event, stored by its id in the transaction that acts on it: a replay does nothing.
CREATE TABLE IF NOT EXISTS stripe_events (
    id           text PRIMARY KEY,
    type         text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
