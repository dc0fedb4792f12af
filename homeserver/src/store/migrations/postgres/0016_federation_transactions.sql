-- Transactions other servers sent us, with our answer: a repeated transaction (the sender
-- lost our answer) gets the same answer and changes nothing (issue 15).
CREATE TABLE federation_inbound_txns (
    origin TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    response TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, txn_id)
);
