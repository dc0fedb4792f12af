-- Push actions: which local members an event notifies and highlights, decided by each one's
-- push rules and written with the event — one row per event, however many members it notifies.
-- `notify` and `highlight` list user ids as `,@a:x,@b:x,`; `actions` maps user id → actions.
-- Unread and highlight counts are the rows after a member's read position that name them.
CREATE TABLE push_events (
    room_id TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    notify TEXT NOT NULL,
    highlight TEXT NOT NULL,
    actions TEXT NOT NULL,
    PRIMARY KEY (room_id, stream_pos)
);

-- Where each member last wrote in a room: whoever writes has read what came before. Apart from
-- receipts so that its update (one per batch of messages) touches no index (a HOT update).
CREATE TABLE own_reads (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    event_pos BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

-- HTTP pushers (Push Gateway API).
CREATE TABLE pushers (
    user_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    app_display_name TEXT NOT NULL,
    device_display_name TEXT NOT NULL,
    profile_tag TEXT,
    lang TEXT NOT NULL,
    data TEXT NOT NULL,
    -- The device that set it: deleting the device deletes the pusher.
    device_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (app_id, pushkey, user_id)
);
CREATE INDEX pushers_user ON pushers (user_id);

-- Outbox of pushes to send, written in the event's transaction; removed once delivered.
CREATE TABLE push_queue (
    user_id TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    highlight BOOLEAN NOT NULL,
    actions TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, stream_pos)
);
CREATE INDEX push_queue_due ON push_queue (next_attempt_ts);
