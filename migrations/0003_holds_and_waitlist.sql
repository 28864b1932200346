-- Holds with a payment window, and the waitlist behind them.
--
-- A sale with `hold_seconds` sells holds: a winning press commits a `purchases` row with
-- `expires_at` (the database clock plus the window), and payment sets `confirmed_at`. A row
-- without `expires_at` is a purchase with no payment step, as before. Every row counts in
-- `sold`, held or confirmed, so the stock constraint keeps held + confirmed <= total.
--
-- A hold that lapses or is cancelled leaves `purchases` (its unit back in `sold`) for
-- `hold_endings`, in the same transaction that hands the unit to the first in the waitlist.
ALTER TABLE flash_sales ADD COLUMN hold_seconds integer
    CONSTRAINT hold_seconds_range CHECK (hold_seconds BETWEEN 1 AND 86400);

ALTER TABLE purchases ADD COLUMN expires_at timestamptz;
ALTER TABLE purchases ADD COLUMN confirmed_at timestamptz;

-- The holds still waiting for payment: what the expiry sweep and the tally read.
CREATE INDEX purchases_held ON purchases (sale_id, expires_at)
    WHERE expires_at IS NOT NULL AND confirmed_at IS NULL;
CREATE INDEX purchases_due ON purchases (expires_at)
    WHERE expires_at IS NOT NULL AND confirmed_at IS NULL;

-- Payment counts only before the hold's end, by PostgreSQL's clock when it commits: a late
-- confirm and the lapse that frees the unit can never both win.
CREATE FUNCTION purchases_confirm_in_time() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.confirmed_at IS NOT NULL AND OLD.confirmed_at IS NULL
       AND clock_timestamp() >= NEW.expires_at THEN
        RAISE EXCEPTION 'hold_expired' USING ERRCODE = 'FFH01';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER purchases_confirm_in_time AFTER UPDATE ON purchases
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    EXECUTE FUNCTION purchases_confirm_in_time();

CREATE TABLE hold_endings (
    purchase_id uuid        PRIMARY KEY,
    sale_id     uuid        NOT NULL REFERENCES flash_sales (id) ON DELETE CASCADE,
    user_id     text        NOT NULL,
    outcome     text        NOT NULL CHECK (outcome IN ('lapsed', 'cancelled')),
    expires_at  timestamptz NOT NULL,
    ended_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- the hold the unit went on to, when someone was waiting for it
    offered_to  uuid,
    offered_user text,
    -- whether the gate in Redis has been told; a process that died first leaves it false
    gate_done   boolean     NOT NULL DEFAULT false
);

CREATE INDEX hold_endings_user ON hold_endings (sale_id, user_id, ended_at DESC);
CREATE INDEX hold_endings_gate ON hold_endings (ended_at) WHERE NOT gate_done;

-- One place per user per sale; `place` orders the line (taken under the sale's row lock, so
-- its order is the order of the commits). A place that was offered a unit keeps its row.
CREATE TABLE waitlist (
    sale_id     uuid        NOT NULL REFERENCES flash_sales (id) ON DELETE CASCADE,
    user_id     text        NOT NULL CHECK (length(user_id) BETWEEN 1 AND 255),
    place       bigint      NOT NULL,
    joined_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    offered_at  timestamptz,
    purchase_id uuid,
    PRIMARY KEY (sale_id, user_id)
);

CREATE SEQUENCE waitlist_places;
CREATE INDEX waitlist_line ON waitlist (sale_id, place) WHERE offered_at IS NULL;
