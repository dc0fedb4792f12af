-- Push actions move onto the event rows they belong to: a message is one row written, not three
-- (events, push_events, own_reads), which is what a send costs the database most.
-- `push_notify` and `push_highlight` list the local members the event notifies / highlights as
-- `,@a:x,@b:x,` (NULL: nobody); `push_actions` maps user id → actions. `read_by_sender`: the
-- sender has read the room up to this event (every event they send, except profile changes).
ALTER TABLE events ADD COLUMN push_notify TEXT;
ALTER TABLE events ADD COLUMN push_highlight TEXT;
ALTER TABLE events ADD COLUMN push_actions TEXT;
ALTER TABLE events ADD COLUMN read_by_sender BOOLEAN NOT NULL DEFAULT 0;

UPDATE events SET push_notify = p.notify, push_highlight = p.highlight, push_actions = p.actions
FROM push_events p WHERE p.stream_pos = events.stream_pos;
UPDATE events SET read_by_sender = 1 WHERE stream_pos IN (SELECT event_pos FROM own_reads);

DROP TABLE push_events;
DROP TABLE own_reads;
