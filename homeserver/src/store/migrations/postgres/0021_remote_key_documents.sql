-- Each other server's latest key document, exactly as it signed it (issue 15): served, with
-- our signature added, to servers that ask us as a notary (`/_matrix/key/v2/query`).
CREATE TABLE remote_key_documents (
    server_name TEXT PRIMARY KEY,
    document TEXT NOT NULL,
    fetched_ts BIGINT NOT NULL
);
