-- A line's clock is read once its row lock is held, not before.
--
-- A caller that waited for the lock would otherwise act on a moment older than the step taken
-- while it waited: admit the next positions at a time before the admissions ahead of them (and
-- move the admission clock back), or take a ticket as joined before the opening after the
-- opening had already placed the early tickets, leaving it without a position.

CREATE OR REPLACE FUNCTION line_join(p_sale uuid, p_user text, OUT outcome text, OUT ticket uuid)
LANGUAGE plpgsql AS $$
DECLARE
    s record;
    l record;
    now_ timestamptz;
    placed bigint;
BEGIN
    SELECT f.start_time, f.end_time, f.line_opens_s INTO s FROM flash_sales f WHERE f.id = p_sale;
    SELECT * INTO l FROM lines WHERE sale_id = p_sale FOR UPDATE;
    now_ := clock_timestamp();
    IF NOT FOUND OR s.line_opens_s IS NULL THEN
        outcome := 'none';
        RETURN;
    END IF;
    SELECT t.ticket INTO ticket FROM tickets t WHERE t.sale_id = p_sale AND t.user_id = p_user;
    IF FOUND THEN
        outcome := 'kept';
        RETURN;
    END IF;
    IF now_ >= s.end_time THEN
        outcome := 'ended';
    ELSIF l.closed_at IS NOT NULL THEN
        outcome := 'closed';
    ELSIF now_ < s.start_time - make_interval(secs => s.line_opens_s) THEN
        outcome := 'not_open';
    ELSIF now_ < s.start_time THEN
        INSERT INTO tickets (sale_id, user_id, arrival, joined_at, early)
        VALUES (p_sale, p_user, nextval('ticket_arrivals'), now_, true)
        RETURNING tickets.ticket INTO ticket;
        outcome := 'joined';
    ELSE
        PERFORM line_place_early(p_sale, s.start_time);
        UPDATE lines SET length = length + 1 WHERE sale_id = p_sale RETURNING length INTO placed;
        INSERT INTO tickets (sale_id, user_id, arrival, joined_at, early, position)
        VALUES (p_sale, p_user, nextval('ticket_arrivals'), now_, false, placed)
        RETURNING tickets.ticket INTO ticket;
        outcome := 'joined';
    END IF;
END $$;

CREATE OR REPLACE FUNCTION line_advance(p_sale uuid, OUT ordered boolean, OUT line_length bigint,
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
    now_ := clock_timestamp();
    IF NOT FOUND THEN
        RETURN;
    END IF;
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
