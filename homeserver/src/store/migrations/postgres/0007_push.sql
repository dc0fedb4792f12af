-- Push actions: the result of evaluating each member's push rules on an event that notifies
-- them, written with the event. Unread and highlight counts are those after the member's read
-- receipt.
CREATE TABLE push_actions (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    actions TEXT NOT NULL,
    highlight BOOLEAN NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, stream_pos)
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
