-- The auto-recharge amount an account chose (POST /billing-threshold); NULL → the operator default.
ALTER TABLE accounts ADD COLUMN recharge_amount_micros bigint
    CHECK (recharge_amount_micros IS NULL OR recharge_amount_micros > 0);
