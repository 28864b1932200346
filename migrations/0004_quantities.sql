-- More than one unit per buyer, up to the sale's per-user limit.
--
-- A purchase (or hold) takes `quantity` units, all or none, in one row: still one row per
-- user per sale. `sold` counts units, so the stock constraint keeps the units held and
-- confirmed within the stock. A waiting place asks for a quantity, and an offer gives it all.
ALTER TABLE flash_sales ADD COLUMN per_user_limit integer NOT NULL DEFAULT 1
    CONSTRAINT per_user_limit_range CHECK (per_user_limit BETWEEN 1 AND 100);

ALTER TABLE purchases ADD COLUMN quantity integer NOT NULL DEFAULT 1
    CONSTRAINT quantity_positive CHECK (quantity >= 1);
ALTER TABLE hold_endings ADD COLUMN quantity integer NOT NULL DEFAULT 1;
-- The holds a unit of this ending went to beyond `offered_to`: one ending of several units
-- may serve several places.
ALTER TABLE hold_endings ADD COLUMN offered_also uuid[];
ALTER TABLE hold_endings ADD COLUMN offered_also_users text[];
ALTER TABLE waitlist ADD COLUMN quantity integer NOT NULL DEFAULT 1
    CONSTRAINT waitlist_quantity_positive CHECK (quantity >= 1);

-- `buyers` counts the rows beside `sold`'s units, kept by the same triggers: what the
-- reconciler weighs a gate's holders against without counting the rows.
ALTER TABLE flash_sales ADD COLUMN buyers integer NOT NULL DEFAULT 0;
UPDATE flash_sales f SET buyers = (SELECT count(*) FROM purchases p WHERE p.sale_id = f.id);

CREATE OR REPLACE FUNCTION purchases_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE flash_sales f SET sold = f.sold + n.c, buyers = f.buyers + n.b
      FROM (SELECT sale_id, sum(quantity) AS c, count(*) AS b FROM inserted
             GROUP BY sale_id) n
     WHERE f.id = n.sale_id;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION purchases_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE flash_sales f SET sold = f.sold - n.c, buyers = f.buyers - n.b
      FROM (SELECT sale_id, sum(quantity) AS c, count(*) AS b FROM deleted
             GROUP BY sale_id) n
     WHERE f.id = n.sale_id;
    RETURN NULL;
END $$;

-- Nobody takes more than the sale's limit, whichever process wrote the row and whatever its
-- copy of the sale said. Checked as the row is written (not deferred), so a batch's writer
-- can refuse that one row alone; a row of one unit is never over any limit and skips it.
CREATE FUNCTION purchases_within_limit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    most integer;
BEGIN
    SELECT per_user_limit INTO most FROM flash_sales WHERE id = NEW.sale_id;
    IF NEW.quantity > most THEN
        RAISE EXCEPTION 'over_limit %', most USING ERRCODE = 'FFQ01';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER purchases_within_limit BEFORE INSERT ON purchases
    FOR EACH ROW WHEN (NEW.quantity > 1)
    EXECUTE FUNCTION purchases_within_limit();

-- As in migration 0003, with the quantity asked: 'short' when fewer units than that are not
-- yet confirmed (final: `remaining` says how many are), 'free' when that many are free in
-- the ledger. A place is given only while fewer units than it asks are free, and keeps its
-- quantity: asking again answers the same place, whatever quantity is asked.
DROP FUNCTION waitlist_join(uuid, text);

CREATE FUNCTION waitlist_join(p_sale uuid, p_user text, p_quantity integer DEFAULT 1,
                              OUT outcome text, OUT place bigint,
                              OUT line_position bigint, OUT line_length bigint,
                              OUT purchase_id uuid, OUT remaining integer)
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
    SELECT coalesce(sum(p.quantity), 0) INTO held FROM purchases p
     WHERE p.sale_id = p_sale AND p.expires_at IS NOT NULL AND p.confirmed_at IS NULL;
    remaining := s.total_stock - (s.sold - held);
    IF remaining <= 0 THEN
        outcome := 'sold_out';
        RETURN;
    END IF;
    IF remaining < p_quantity THEN
        outcome := 'short';
        RETURN;
    END IF;
    IF s.total_stock - s.sold >= p_quantity THEN
        outcome := 'free';
        RETURN;
    END IF;
    SELECT w.place INTO place FROM waitlist w
     WHERE w.sale_id = p_sale AND w.user_id = p_user AND w.offered_at IS NULL;
    IF FOUND THEN
        outcome := 'waiting';
    ELSE
        -- New, or back in line after an offer: a new place at the back.
        INSERT INTO waitlist AS w (sale_id, user_id, place, quantity)
        VALUES (p_sale, p_user, nextval('waitlist_places'), p_quantity)
        ON CONFLICT (sale_id, user_id) DO UPDATE SET place = excluded.place,
            offered_at = NULL, purchase_id = NULL, joined_at = clock_timestamp(),
            quantity = excluded.quantity
        RETURNING w.place INTO place;
        outcome := 'placed';
    END IF;
    SELECT count(*) FILTER (WHERE w.place <= waitlist_join.place), count(*)
      INTO line_position, line_length
      FROM waitlist w WHERE w.sale_id = p_sale AND w.offered_at IS NULL;
END $$;
