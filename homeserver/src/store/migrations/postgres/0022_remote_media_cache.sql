-- Other servers' media and thumbnails as fetched for our users (issue 15): kept in the media
-- storage under `cache_id` (a hash of server, media id and variant), so each is fetched once.
CREATE TABLE remote_media_cache (
    cache_id TEXT PRIMARY KEY,
    server_name TEXT NOT NULL,
    media_id TEXT NOT NULL,
    -- '' for the file, `{width}x{height}-{method}` for a thumbnail.
    variant TEXT NOT NULL,
    content_type TEXT NOT NULL,
    filename TEXT,
    size BIGINT NOT NULL,
    fetched_ts BIGINT NOT NULL
);
CREATE INDEX remote_media_cache_media ON remote_media_cache (server_name, media_id);
