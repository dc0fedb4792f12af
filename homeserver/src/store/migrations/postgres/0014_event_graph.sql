-- The room as an event graph (issue 15). Federation brings events out of order, forked and
-- sometimes rejected, so the graph is data: `prev_events` and `auth_events` are edge tables,
-- indexed both ways (backfill, missing events and auth chains are SQL walks); events known
-- without a place in the timeline (outliers, rejected and soft-failed events) are kept apart
-- with their status and reason; `/messages` pages in topological order (depth, then stream).
CREATE TABLE event_edges (
    event_id TEXT NOT NULL,
    prev_event_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (event_id, prev_event_id)
);
CREATE INDEX event_edges_prev ON event_edges (prev_event_id);
CREATE INDEX event_edges_room ON event_edges (room_id);

CREATE TABLE event_auth_edges (
    event_id TEXT NOT NULL,
    auth_event_id TEXT NOT NULL,
    PRIMARY KEY (event_id, auth_event_id)
);
CREATE INDEX event_auth_edges_auth ON event_auth_edges (auth_event_id);

-- Events that are not (or not yet) part of the room's timeline: an outlier is known without
-- the state before it (an invite's room, an auth event); a rejected event failed the auth
-- rules; a soft-failed event passed them but not against the room's current state. None of
-- them is shown to clients or counts as a forward extremity.
CREATE TABLE events_outside_timeline (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    depth BIGINT NOT NULL,
    json TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('outlier', 'rejected', 'soft_failed')),
    reason TEXT,
    received_ts BIGINT NOT NULL
);
CREATE INDEX events_outside_timeline_room ON events_outside_timeline (room_id, status);

-- The topological order `/messages` pages through.
CREATE INDEX events_topological ON events (room_id, depth, stream_pos);

-- Existing events: their edges from their JSON (redaction keeps both lists).
INSERT INTO event_edges (event_id, prev_event_id, room_id)
SELECT DISTINCT e.event_id, p.value, e.room_id FROM events e, jsonb_array_elements_text(e.json::jsonb -> 'prev_events') AS p(value);
INSERT INTO event_auth_edges (event_id, auth_event_id)
SELECT DISTINCT e.event_id, a.value FROM events e, jsonb_array_elements_text(e.json::jsonb -> 'auth_events') AS a(value);
