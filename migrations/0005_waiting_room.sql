-- A fair waiting room: a line of tickets in front of a sale.
--
-- A sale with a waiting room (`line_admit_per_s` set) lets buyers join its line from
-- `line_opens_s` before `start_time`. Everyone who joined before `start_time` is placed in one
-- random order at the opening: ascending sha256(seed || ticket id), with a seed drawn when the
-- room was made and published only as its sha256 (the commitment) until then. Later arrivals
-- go to the back in arrival order. Positions 1..admitted are admitted, `line_admit_per_s` a
-- second, each for `line_window_s` from its `admitted_at`.
ALTER TABLE flash_sales ADD COLUMN line_opens_s integer
    CONSTRAINT line_opens_range CHECK (line_opens_s BETWEEN 0 AND 604800);
ALTER TABLE flash_sales ADD COLUMN line_admit_per_s double precision
    CONSTRAINT line_admit_range CHECK (line_admit_per_s > 0 AND line_admit_per_s <= 100000);
ALTER TABLE flash_sales ADD COLUMN line_window_s integer
    CONSTRAINT line_window_range CHECK (line_window_s BETWEEN 1 AND 86400);
ALTER TABLE flash_sales ADD CONSTRAINT line_all_or_none CHECK (
    (line_opens_s IS NULL) = (line_admit_per_s IS NULL)
    AND (line_admit_per_s IS NULL) = (line_window_s IS NULL));

-- One line per sale with a waiting room: its seed, and where admission stands.
CREATE TABLE lines (
    sale_id     uuid        PRIMARY KEY REFERENCES flash_sales (id) ON DELETE CASCADE,
    -- 32 bytes from two version-4 UUIDs (pg_strong_random): 244 random bits
    seed        bytea       NOT NULL DEFAULT decode(
                    replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'),
    -- when the tickets joined before the opening were placed: the seed is public from then
    ordered_at  timestamptz,
    -- tickets with a position; positions 1..admitted are admitted
    length      bigint      NOT NULL DEFAULT 0,
    admitted    bigint      NOT NULL DEFAULT 0,
    -- the admission clock: `admit_per_s` a second from here
    advanced_at timestamptz,
    -- the line closed: no more joins, no more admissions
    closed_at   timestamptz,
    closed_why  text        CHECK (closed_why IN ('sold_out', 'ended'))
);

CREATE TABLE tickets (
    ticket      uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    sale_id     uuid        NOT NULL REFERENCES flash_sales (id) ON DELETE CASCADE,
    user_id     text        NOT NULL CHECK (length(user_id) BETWEEN 1 AND 255),
    -- arrival order, across every worker and host
    arrival     bigint      NOT NULL,
    joined_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    early       boolean     NOT NULL,
    position    bigint,
    admitted_at timestamptz,
    UNIQUE (sale_id, user_id),
    UNIQUE (sale_id, position)
);
CREATE SEQUENCE ticket_arrivals;

-- A sale given a waiting room gets its line (and its seed) at once, so the commitment is
-- published from the start.
CREATE FUNCTION flash_sales_line() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.line_admit_per_s IS NOT NULL THEN
        INSERT INTO lines (sale_id) VALUES (NEW.id) ON CONFLICT (sale_id) DO NOTHING;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER flash_sales_line AFTER INSERT OR UPDATE OF line_admit_per_s ON flash_sales
    FOR EACH ROW EXECUTE FUNCTION flash_sales_line();

-- Place the tickets that joined before the opening, once, the line locked by the caller.
CREATE FUNCTION line_place_early(p_sale uuid, p_start timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    l record;
    placed bigint;
BEGIN
    SELECT * INTO l FROM lines WHERE sale_id = p_sale;
    IF l.ordered_at IS NOT NULL THEN
        RETURN;
    END IF;
    UPDATE tickets t SET position = o.n
      FROM (SELECT ticket, row_number() OVER (
                ORDER BY sha256(l.seed || convert_to(ticket::text, 'UTF8'))) AS n
              FROM tickets WHERE sale_id = p_sale AND early) o
     WHERE t.ticket = o.ticket;
    GET DIAGNOSTICS placed = ROW_COUNT;
    -- The admission clock starts one admission's time before the opening: the first ticket
    -- is admitted at the opening, not a beat after it.
    UPDATE lines SET ordered_at = clock_timestamp(), length = placed,
           advanced_at = p_start - make_interval(secs => 1 / (
               SELECT line_admit_per_s FROM flash_sales WHERE id = p_sale))
     WHERE sale_id = p_sale;
END $$;

-- A buyer asks for a ticket. Before the opening joins share the line's row lock (the
-- opening takes it alone), so they go in parallel and none lands after the opening placed
-- the early tickets; from the opening on, a join takes it alone to number its position, so
-- later arrivals are numbered in the order they commit. The clock is read once the lock is
-- held: a join that waited for it acts on the moment it got it. outcome: 'none' (no waiting
-- room), 'not_open' (before the line opens), 'ended', 'closed' (sold out), 'kept' (the
-- user's own ticket, again), 'joined' (a new one), or 'again': the line opened while this
-- join waited for its shared lock; asked again, it takes the lock alone.
CREATE FUNCTION line_join(p_sale uuid, p_user text, OUT outcome text, OUT ticket uuid,
                          OUT joined_at timestamptz, OUT early boolean,
                          OUT line_position bigint, OUT admitted_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    s record;
    l record;
    shared boolean;
    now_ timestamptz;
    placed bigint;
BEGIN
    SELECT f.start_time, f.end_time, f.line_opens_s INTO s FROM flash_sales f WHERE f.id = p_sale;
    IF s.line_opens_s IS NULL THEN
        outcome := 'none';
        RETURN;
    END IF;
    SELECT t.ticket, t.joined_at, t.early, t.position, t.admitted_at
      INTO ticket, joined_at, early, line_position, admitted_at
      FROM tickets t WHERE t.sale_id = p_sale AND t.user_id = p_user;
    IF FOUND THEN
        outcome := 'kept';
        RETURN;
    END IF;
    shared := clock_timestamp() < s.start_time;
    IF shared THEN
        SELECT * INTO l FROM lines WHERE sale_id = p_sale FOR SHARE;
    ELSE
        SELECT * INTO l FROM lines WHERE sale_id = p_sale FOR UPDATE;
    END IF;
    now_ := clock_timestamp();
    IF NOT FOUND THEN
        outcome := 'none';
    ELSIF now_ >= s.end_time THEN
        outcome := 'ended';
    ELSIF l.closed_at IS NOT NULL THEN
        outcome := 'closed';
    ELSIF now_ < s.start_time - make_interval(secs => s.line_opens_s) THEN
        outcome := 'not_open';
    ELSIF now_ < s.start_time AND l.ordered_at IS NULL THEN
        INSERT INTO tickets (sale_id, user_id, arrival, joined_at, early)
        VALUES (p_sale, p_user, nextval('ticket_arrivals'), now_, true)
        ON CONFLICT (sale_id, user_id) DO NOTHING
        RETURNING tickets.ticket INTO ticket;
        outcome := 'joined';
    ELSIF shared THEN
        -- Taking the lock alone while others share it could deadlock: ask again instead.
        outcome := 'again';
        RETURN;
    ELSE
        PERFORM line_place_early(p_sale, s.start_time);
        UPDATE lines SET length = length + 1 WHERE sale_id = p_sale RETURNING length INTO placed;
        INSERT INTO tickets (sale_id, user_id, arrival, joined_at, early, position)
        VALUES (p_sale, p_user, nextval('ticket_arrivals'), now_, false, placed)
        ON CONFLICT (sale_id, user_id) DO NOTHING
        RETURNING tickets.ticket INTO ticket;
        IF ticket IS NULL THEN
            UPDATE lines SET length = length - 1 WHERE sale_id = p_sale;
        END IF;
        outcome := 'joined';
    END IF;
    IF outcome = 'joined' AND ticket IS NULL THEN
        -- The same user joined at the same moment elsewhere: theirs is the one.
        SELECT t.ticket INTO ticket FROM tickets t WHERE t.sale_id = p_sale AND t.user_id = p_user;
        outcome := 'kept';
    END IF;
    -- The ticket as it stands, in the same call (the caller's statement cannot see a row
    -- this function wrote).
    SELECT t.joined_at, t.early, t.position, t.admitted_at
      INTO joined_at, early, line_position, admitted_at
      FROM tickets t WHERE t.ticket = line_join.ticket;
END $$;

-- Move the line on: place the early tickets once the sale opens, then admit the next
-- tickets in order, `line_admit_per_s` a second since the last admission (a line that ran
-- empty does not bank the time it stood idle). Returns the line as it stands.
CREATE FUNCTION line_advance(p_sale uuid, OUT ordered boolean, OUT line_length bigint,
                             OUT admitted bigint, OUT closed_why text)
LANGUAGE plpgsql AS $$
DECLARE
    s record;
    l record;
    now_ timestamptz;
    due bigint;
    took bigint;
BEGIN
    SELECT f.start_time, f.end_time, f.line_admit_per_s AS rate INTO s
      FROM flash_sales f WHERE f.id = p_sale;
    SELECT * INTO l FROM lines WHERE sale_id = p_sale FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- Read once the lock is held: a step that waited for it never admits a position at a
    -- moment before the ones ahead of it, nor moves the admission clock back.
    now_ := clock_timestamp();
    IF l.closed_at IS NULL AND now_ >= s.end_time THEN
        UPDATE lines SET closed_at = now_, closed_why = 'ended' WHERE sale_id = p_sale;
        l.closed_why := 'ended';
        l.closed_at := now_;
    END IF;
    IF l.ordered_at IS NULL AND now_ >= s.start_time THEN
        PERFORM line_place_early(p_sale, s.start_time);
        SELECT * INTO l FROM lines WHERE sale_id = p_sale;
    END IF;
    IF l.ordered_at IS NOT NULL AND l.closed_at IS NULL THEN
        due := floor(s.rate * extract(epoch FROM now_ - l.advanced_at));
        took := least(due, l.length - l.admitted);
        IF took > 0 THEN
            UPDATE tickets SET admitted_at = now_
             WHERE sale_id = p_sale AND position > l.admitted AND position <= l.admitted + took;
        END IF;
        l.admitted := l.admitted + greatest(took, 0);
        UPDATE lines SET admitted = l.admitted,
               advanced_at = CASE WHEN took < due THEN now_
                                  ELSE advanced_at + make_interval(secs => due / s.rate) END
         WHERE sale_id = p_sale;
    END IF;
    ordered := l.ordered_at IS NOT NULL;
    line_length := l.length;
    admitted := l.admitted;
    closed_why := l.closed_why;
END $$;

-- The key admission tokens are signed with, the same for every process and host: drawn once,
-- by whichever process asks first.
CREATE TABLE signing_keys (
    name   text        PRIMARY KEY,
    secret bytea       NOT NULL,
    made_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
