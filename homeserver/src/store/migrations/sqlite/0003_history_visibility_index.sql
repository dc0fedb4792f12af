-- History visibility changes of a room are read on every visibility check.
CREATE INDEX events_history_visibility ON events (room_id, stream_pos) WHERE type = 'm.room.history_visibility';
