-- EDUs waiting to be sent to other servers (issue 15): to-device messages and device-list
-- updates, durable like the event outbox, sent in order per destination.
CREATE TABLE federation_edu_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    edu_type TEXT NOT NULL,
    content TEXT NOT NULL
);
CREATE INDEX federation_edu_outbox_destination ON federation_edu_outbox (destination, id);
