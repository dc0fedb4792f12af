-- Transaction ids live on the event row: one insert per event instead of two, and the unique
-- index is what makes a repeated PUT with the same transaction id idempotent.
DROP TABLE event_txns;
CREATE UNIQUE INDEX events_txn ON events (sender, txn_device, txn_id) WHERE txn_id IS NOT NULL;
