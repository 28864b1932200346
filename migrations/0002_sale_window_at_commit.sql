-- A purchase commits only inside its sale's window, by PostgreSQL's clock, checked when the
-- transaction commits: hosts with skewed clocks, or a commit that waited on a lock past the
-- end, cannot sell late. The error names which side of the window was missed.
CREATE FUNCTION purchases_within_window() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    opens  timestamptz;
    closes timestamptz;
BEGIN
    SELECT start_time, end_time INTO opens, closes FROM flash_sales WHERE id = NEW.sale_id;
    IF clock_timestamp() < opens THEN
        RAISE EXCEPTION 'sale_not_started' USING ERRCODE = 'FFW01';
    ELSIF clock_timestamp() >= closes THEN
        RAISE EXCEPTION 'sale_ended' USING ERRCODE = 'FFW02';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER purchases_within_window AFTER INSERT ON purchases
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    EXECUTE FUNCTION purchases_within_window();

-- When the row was written, by the database clock (its commit follows within the trigger).
ALTER TABLE purchases ADD COLUMN committed_at timestamptz NOT NULL DEFAULT clock_timestamp();
