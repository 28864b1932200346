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

-- A press that found every unit held or confirmed asks for a place: decided in one call
-- under the sale's row lock (the lock a lapse, a cancel and a commit take), so the lock is
-- held for one round trip. outcome: 'ended', 'standing' (the user has a row: purchase_id),
-- 'sold_out' (every unit confirmed), 'free' (a unit is free in the ledger), 'waiting' (the
-- user's place, kept) or 'placed' (a new place at the back); with a place, its position in
-- the line (1 is next) and the line's length.
CREATE FUNCTION waitlist_join(p_sale uuid, p_user text, OUT outcome text, OUT place bigint,
                              OUT line_position bigint, OUT line_length bigint,
                              OUT purchase_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
    s record;
    held bigint;
BEGIN
    SELECT f.total_stock, f.sold, clock_timestamp() >= f.end_time AS ended INTO s
      FROM flash_sales f WHERE f.id = p_sale FOR UPDATE;
    IF NOT FOUND OR s.ended THEN
        outcome := 'ended';
        RETURN;
    END IF;
    SELECT p.id INTO purchase_id FROM purchases p WHERE p.sale_id = p_sale AND p.user_id = p_user;
    IF FOUND THEN
        outcome := 'standing';
        RETURN;
    END IF;
    SELECT count(*) INTO held FROM purchases p
     WHERE p.sale_id = p_sale AND p.expires_at IS NOT NULL AND p.confirmed_at IS NULL;
    IF s.sold - held >= s.total_stock THEN
        outcome := 'sold_out';
        RETURN;
    END IF;
    IF s.sold < s.total_stock THEN
        outcome := 'free';
        RETURN;
    END IF;
    SELECT w.place INTO place FROM waitlist w
     WHERE w.sale_id = p_sale AND w.user_id = p_user AND w.offered_at IS NULL;
    IF FOUND THEN
        outcome := 'waiting';
    ELSE
        -- New, or back in line after an offer: a new place at the back.
        INSERT INTO waitlist AS w (sale_id, user_id, place)
        VALUES (p_sale, p_user, nextval('waitlist_places'))
        ON CONFLICT (sale_id, user_id) DO UPDATE SET place = excluded.place,
            offered_at = NULL, purchase_id = NULL, joined_at = clock_timestamp()
        RETURNING w.place INTO place;
        outcome := 'placed';
    END IF;
    SELECT count(*) FILTER (WHERE w.place <= waitlist_join.place), count(*)
      INTO line_position, line_length
      FROM waitlist w WHERE w.sale_id = p_sale AND w.offered_at IS NULL;
END $$;
