-- Media: one row per media id. A row reserved with `/create` has no `uploaded_ts` until its
-- upload arrives; the bytes live in the media storage (files by default), not here.
CREATE TABLE media (
    media_id TEXT PRIMARY KEY,
    uploader TEXT NOT NULL,
    content_type TEXT,
    filename TEXT,
    size BIGINT,
    created_ts BIGINT NOT NULL,
    uploaded_ts BIGINT
);
CREATE INDEX media_pending ON media (uploader, created_ts) WHERE uploaded_ts IS NULL;

-- Thumbnails generated on demand, one per size and method.
CREATE TABLE media_thumbnails (
    media_id TEXT NOT NULL,
    width BIGINT NOT NULL,
    height BIGINT NOT NULL,
    method TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (media_id, width, height, method)
);
