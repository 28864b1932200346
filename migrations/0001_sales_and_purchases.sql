-- Sales and purchases. PostgreSQL is the source of truth: the unique constraint gives a
-- user at most one purchase per sale, and the `sold` counter, kept by a statement-level
-- trigger for every writer, cannot pass the stock.
CREATE TABLE flash_sales (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    product_name text        NOT NULL CHECK (length(product_name) BETWEEN 1 AND 200),
    total_stock  integer     NOT NULL CHECK (total_stock >= 0),
    sold         integer     NOT NULL DEFAULT 0,
    start_time   timestamptz NOT NULL,
    end_time     timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT sold_within_stock CHECK (sold >= 0 AND sold <= total_stock),
    CONSTRAINT window_ordered CHECK (end_time > start_time)
);

CREATE INDEX flash_sales_window ON flash_sales (start_time, end_time);

CREATE TABLE purchases (
    id           uuid        PRIMARY KEY,
    sale_id      uuid        NOT NULL REFERENCES flash_sales (id) ON DELETE CASCADE,
    user_id      text        NOT NULL CHECK (length(user_id) BETWEEN 1 AND 255),
    purchased_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT one_purchase_per_user UNIQUE (sale_id, user_id)
);

CREATE FUNCTION purchases_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE flash_sales f SET sold = f.sold + n.c
      FROM (SELECT sale_id, count(*) AS c FROM inserted GROUP BY sale_id) n
     WHERE f.id = n.sale_id;
    RETURN NULL;
END $$;

CREATE FUNCTION purchases_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE flash_sales f SET sold = f.sold - n.c
      FROM (SELECT sale_id, count(*) AS c FROM deleted GROUP BY sale_id) n
     WHERE f.id = n.sale_id;
    RETURN NULL;
END $$;

CREATE TRIGGER purchases_sold_up AFTER INSERT ON purchases
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT
    EXECUTE FUNCTION purchases_count_inserted();

CREATE TRIGGER purchases_sold_down AFTER DELETE ON purchases
    REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT
    EXECUTE FUNCTION purchases_count_deleted();
