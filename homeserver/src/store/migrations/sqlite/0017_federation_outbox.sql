-- Events waiting to be sent to other servers, written in the event's own transaction (issue
-- 15): nothing is lost across a crash, and memory stays bounded while a server is down.
CREATE TABLE federation_outbox (
    destination TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (destination, stream_pos)
);
