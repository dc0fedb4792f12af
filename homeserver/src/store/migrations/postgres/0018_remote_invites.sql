-- Invites of our users to rooms this server does not have (issue 15): the invite event, the
-- stripped state the inviting server sent to show with it, and later the rejection. Each row
-- takes a stream position, so sync shows it like a membership event of a known room.
CREATE TABLE remote_memberships (
    stream_pos BIGINT PRIMARY KEY,
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    membership TEXT NOT NULL,
    event_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    room_version TEXT NOT NULL,
    json TEXT NOT NULL,
    invite_state TEXT NOT NULL
);
CREATE INDEX remote_memberships_user ON remote_memberships (user_id, stream_pos);
